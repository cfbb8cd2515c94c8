"""Run by test_connector.py in its own process, so GRPC_DEFAULT_SSL_ROOTS_FILE_PATH is read fresh: drives the
AlloyDB Python connector's admin client (TLS gRPC, v1beta) exactly as Connector.connect() does before dialling
the instance, and prints what it got."""

import asyncio
import json
import sys

from google.cloud.alloydbconnector.client import AlloyDBClient
from google.cloud.alloydbconnector.utils import generate_keys

from conftest import StaticTokenCredentials


async def main(endpoint, token, project, region, cluster, instance):
    client = AlloyDBClient(endpoint, None, StaticTokenCredentials(token), driver="pg8000")
    keys = asyncio.create_task(generate_keys())
    info = await client.get_connection_info(project, region, cluster, instance, keys)
    # Loads the chain and the connector's private key into an SSL context: fails unless they belong together.
    await info.create_ssl_context()
    _, public_pem = await keys
    print(json.dumps({"ip_addrs": info.ip_addrs, "cert_chain": info.cert_chain, "ca_cert": info.ca_cert,
                      "public_key": public_pem}))


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:]))
