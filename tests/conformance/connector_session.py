"""Run by test_instance_endpoint.py in its own process (GRPC_DEFAULT_SSL_ROOTS_FILE_PATH is read when gRPC
starts): the AlloyDB Python connector's quick-start code, with only the admin endpoint and the credentials
changed, then a few queries. Prints what the database answered, as JSON.

usage: connector_session.py ENDPOINT TOKEN INSTANCE_URI DRIVER USER PASSWORD DB IAM(0|1) TABLE
TOKEN "adc" means Application Default Credentials (GOOGLE_APPLICATION_CREDENTIALS), as the quick start has it.
"""

import asyncio
import datetime
import json
import sys

from google.cloud.alloydbconnector import AsyncConnector, Connector

from conftest import StaticTokenCredentials


class Credentials(StaticTokenCredentials):
    """A clustercred access token, with the expiry the connector logs."""

    def __init__(self, token):
        super().__init__(token)
        self.expiry = datetime.datetime.utcnow() + datetime.timedelta(hours=1)


def credentials(token):
    return None if token == "adc" else Credentials(token)


def queries(run, table):
    run(f'CREATE TABLE IF NOT EXISTS "{table}" (id int PRIMARY KEY, note text)')
    run(f'INSERT INTO "{table}" VALUES (1, \'one\'), (2, \'two\')')
    rows = run(f'SELECT id, note FROM "{table}" ORDER BY id')
    user = run("SELECT current_user")[0][0]
    run(f'DROP TABLE "{table}"')
    return {"rows": [list(r) for r in rows], "current_user": user}


def with_pg8000(endpoint, token, uri, user, password, db, iam, table):
    connector = Connector(alloydb_api_endpoint=endpoint, credentials=credentials(token),
                          enable_iam_auth=iam)
    try:
        conn = connector.connect(uri, "pg8000", user=user, password=password or None, db=db)
        cur = conn.cursor()

        def run(sql):
            cur.execute(sql)
            try:
                return cur.fetchall()
            except Exception:
                return []

        out = queries(run, table)
        conn.commit()
        conn.close()
        return out
    finally:
        connector.close()


async def with_asyncpg(endpoint, token, uri, user, password, db, iam, table):
    async with AsyncConnector(alloydb_api_endpoint=endpoint, credentials=credentials(token),
                              enable_iam_auth=iam) as connector:
        conn = await connector.connect(uri, "asyncpg", user=user, password=password, db=db)
        results = []

        async def go():
            for sql in pending:
                results.append([tuple(r) for r in await conn.fetch(sql)])

        # asyncpg is async; queries() is not: collect the statements, then run them in order.
        pending = []

        def run(sql):
            pending.append(sql)
            return [("?",)]

        queries(run, table)
        await go()
        await conn.close()
        return {"rows": [list(r) for r in results[2]], "current_user": results[3][0][0]}


def main(endpoint, token, uri, driver, user, password, db, iam, table):
    iam = iam == "1"
    if driver == "pg8000":
        out = with_pg8000(endpoint, token, uri, user, password, db, iam, table)
    else:
        out = asyncio.run(with_asyncpg(endpoint, token, uri, user, password, db, iam, table))
    print(json.dumps(out))


if __name__ == "__main__":
    main(*sys.argv[1:])
