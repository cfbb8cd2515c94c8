"""gcloud alloydb users against a server whose clusters' database users are roles in a real PostgreSQL.

The server (a replica pair in the PostgreSQL run) is started with --alloydb-backend pointing at the test database
server; every step is checked in pg_roles / pg_authid / pg_auth_members through psql. Roles are named after the
test's uid and dropped at the end."""

import base64
import hashlib
import hmac
import json
import os
import re
import shutil
import subprocess

import pytest

from conftest import LOCATION, PARENT, PROJECT, ReplicaPair, Server

pytestmark = pytest.mark.timeout(300)


def backend_url():
    return (os.environ.get("CLUSTERCRED_CONFORMANCE_POSTGRES") or os.environ.get("CLUSTERCRED_TEST_POSTGRES")
            or "postgres://postgres@127.0.0.1:5432/test")


def quote_ident(name):
    return '"' + name.replace('"', '""') + '"'


def quote_literal(text):
    return "'" + text.replace("'", "''") + "'"


def psql(sql):
    exe = shutil.which("psql")
    assert exe, "these tests read the backend database with psql"
    p = subprocess.run([exe, backend_url(), "-XAtq", "-v", "ON_ERROR_STOP=1", "-c", sql],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    return [line for line in p.stdout.splitlines() if line]


def role(name):
    """(can_login, password verifier or None) of a role, or None when it does not exist."""
    rows = psql(f"SELECT rolcanlogin, coalesce(rolpassword, '<null>') FROM pg_authid "
                f"WHERE rolname = {quote_literal(name)}")
    if not rows:
        return None
    login, password = rows[0].split("|", 1)
    return login == "t", None if password == "<null>" else password


def memberships(name):
    return psql("SELECT r.rolname FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.roleid "
                f"JOIN pg_roles u ON u.oid = m.member WHERE u.rolname = {quote_literal(name)} ORDER BY 1")


def verifier_is_for(verifier, password):
    """Whether a SCRAM-SHA-256 verifier (PostgreSQL's form) was made from `password` (ASCII: no SASLprep)."""
    m = re.fullmatch(r"SCRAM-SHA-256\$(\d+):([^$]+)\$([^:]+):(.+)", verifier)
    assert m, verifier
    iterations, salt, stored_key = int(m[1]), base64.b64decode(m[2]), m[3]
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    return base64.b64encode(hashlib.sha256(client_key).digest()).decode() == stored_key


@pytest.fixture(scope="module")
def users_server(tmp_path_factory):
    """A server (or, for the PostgreSQL run, a replica pair) whose AlloyDB clusters use the test database."""
    base = str(tmp_path_factory.mktemp("users-server"))
    args = ["--alloydb-backend", backend_url()]
    postgres = os.environ.get("CLUSTERCRED_CONFORMANCE_POSTGRES")
    s = ReplicaPair(base, postgres, extra_args=args) if postgres else Server(base, args)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def gcloud(users_server, tmp_path_factory):
    """gcloud pointed at the server through api_endpoint_overrides, authenticated with the admin token."""
    config = tmp_path_factory.mktemp("gcloud-users-config")
    token_file = config / "token"
    token_file.write_text(users_server.token)
    env = dict(os.environ, CLOUDSDK_CONFIG=str(config), CLOUDSDK_CORE_DISABLE_PROMPTS="1")

    def run(*args, check=True):
        cmd = ["gcloud", *args, f"--access-token-file={token_file}", "--format=json"]
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        if check and p.returncode != 0:
            raise AssertionError(f"{' '.join(args)} failed: {p.stderr}")
        return p

    for key, value in [
        ("core/project", PROJECT),
        ("component_manager/disable_update_check", "true"),
        ("core/disable_usage_reporting", "true"),
        ("api_endpoint_overrides/alloydb", f"{users_server.url}/alloydb/"),
    ]:
        subprocess.run(["gcloud", "config", "set", key, value], env=env, check=True, capture_output=True, timeout=60)
    return run


@pytest.fixture
def roles_made(uid):
    """Names of roles the test makes in the backend, dropped afterwards whatever happened."""
    made = []
    yield made
    for name in reversed(made):
        psql(f"DROP ROLE IF EXISTS {quote_ident(name)}")


def test_gcloud_manages_database_users_as_postgres_roles(users_server, gcloud, uid, roles_made):
    from google.cloud import alloydb_v1 as t

    users_server.alloydb("rest").create_cluster(parent=PARENT, cluster_id=uid, cluster=t.Cluster()).result(timeout=30)
    where = [f"--cluster={uid}", f"--region={LOCATION}"]
    reader, writer = f"{uid}_reader", f"{uid}_writer"
    app, sa = f"{uid}_app", f"{uid}-sa@{PROJECT}.iam"
    roles_made.extend([reader, writer, app, sa])
    psql(f"CREATE ROLE {quote_ident(reader)}; CREATE ROLE {quote_ident(writer)}")

    # A password user (gcloud's default type BUILT_IN): a login role whose verifier is for that password.
    password = f"first-{uid}"
    created = json.loads(gcloud("alloydb", "users", "create", app, *where, f"--password={password}",
                                f"--db-roles={reader}").stdout)
    assert created == {"name": f"{PARENT}/clusters/{uid}/users/{app}", "userType": "ALLOYDB_BUILT_IN",
                       "databaseRoles": [reader]}
    login, verifier = role(app)
    assert login and verifier_is_for(verifier, password)
    assert memberships(app) == [reader]

    # An IAM user: a login role without any password.
    created = json.loads(gcloud("alloydb", "users", "create", sa, *where, "--type=IAM_BASED").stdout)
    assert created["userType"] == "ALLOYDB_IAM_USER"
    assert created["name"] == f"{PARENT}/clusters/{uid}/users/{sa}"
    assert role(sa) == (True, None)

    # Listed, never with a password.
    p = gcloud("alloydb", "users", "list", *where)
    assert password not in p.stdout
    listed = {u["name"].rsplit("/", 1)[1]: u for u in json.loads(p.stdout)}
    assert set(listed) == {app, sa}
    assert all("password" not in u for u in listed.values())

    # set-password changes the verifier and nothing else.
    second = f"second-{uid}"
    gcloud("alloydb", "users", "set-password", app, *where, f"--password={second}")
    login, verifier = role(app)
    assert login and verifier_is_for(verifier, second) and not verifier_is_for(verifier, password)
    assert memberships(app) == [reader]

    # set-roles grants and revokes; --keep-extra-roles keeps what is not listed.
    out = json.loads(gcloud("alloydb", "users", "set-roles", app, *where, f"--db-roles={reader},{writer}").stdout)
    assert sorted(out["databaseRoles"]) == sorted([reader, writer])
    assert memberships(app) == sorted([reader, writer])
    gcloud("alloydb", "users", "set-roles", app, *where, f"--db-roles={writer}")
    assert memberships(app) == [writer]
    gcloud("alloydb", "users", "set-roles", app, *where, f"--db-roles={reader}", "--keep-extra-roles=true")
    assert memberships(app) == sorted([reader, writer])
    # A role the database does not have: refused, naming it, and nothing changes.
    p = gcloud("alloydb", "users", "set-roles", app, *where, f"--db-roles={uid}_nosuch", check=False)
    assert p.returncode != 0 and "INVALID_ARGUMENT" in p.stderr and f"{uid}_nosuch" in p.stderr, p.stderr
    assert memberships(app) == sorted([reader, writer])
    # A role that exists in PostgreSQL but is no user of ours.
    p = gcloud("alloydb", "users", "create", reader, *where, "--password=x", check=False)
    assert p.returncode != 0 and "ALREADY_EXISTS" in p.stderr, p.stderr

    # delete drops the roles.
    gcloud("alloydb", "users", "delete", app, *where)
    gcloud("alloydb", "users", "delete", sa, *where)
    assert role(app) is None and role(sa) is None
    assert json.loads(gcloud("alloydb", "users", "list", *where).stdout) == []
    p = gcloud("alloydb", "users", "delete", app, *where, check=False)
    assert p.returncode != 0 and "NOT_FOUND" in p.stderr, p.stderr
