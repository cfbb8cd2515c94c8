"""AlloyDB instances you can connect to: the unmodified AlloyDB Python connector (pg8000 and asyncpg) gets
its certificate from clustercred, dials the instance endpoint on port 5433 and talks to a real PostgreSQL."""

import json
import os
import random
import subprocess
import sys
import time

import pytest
import requests

from conftest import LOCATION, PROJECT

pytestmark = pytest.mark.timeout(180)

HERE = os.path.dirname(__file__)
BACKEND = os.environ.get("CLUSTERCRED_TEST_POSTGRES", "postgres://postgres@127.0.0.1:5432/test")


def backend_db():
    return BACKEND.rsplit("/", 1)[-1].split("?")[0]


def first_address():
    # Every test server hands out its own loopback addresses, so parallel runs never share port 5433.
    return f"127.{random.randint(2, 250)}.{random.randint(0, 255)}.1"


@pytest.fixture
def instance(start_server, tmp_path):
    s = start_server(str(tmp_path), ["--tls-auto", "--alloydb-backend", BACKEND,
                                     "--alloydb-first-address", first_address()])
    ca = str(tmp_path / "tls-ca.pem")
    headers = {"Authorization": f"Bearer {s.token}"}
    parent = f"projects/{PROJECT}/locations/{LOCATION}"
    r = requests.post(f"{s.url}/alloydb/v1/{parent}/clusters?clusterId=ep", json={}, headers=headers, verify=ca,
                      timeout=30)
    assert r.status_code == 200, r.text
    r = requests.post(f"{s.url}/alloydb/v1/{parent}/clusters/ep/instances?instanceId=primary",
                      json={"instanceType": "PRIMARY"}, headers=headers, verify=ca, timeout=30)
    assert r.status_code == 200, r.text
    s.ca = ca
    s.instance_uri = f"{parent}/clusters/ep/instances/primary"
    s.ip = r.json()["response"]["ipAddress"]
    return s


def session(s, driver, user, password="", iam=False, token=None):
    env = dict(os.environ, GRPC_DEFAULT_SSL_ROOTS_FILE_PATH=s.ca)
    table = f"conn_{driver}_{random.randint(0, 1 << 30)}"
    return subprocess.run(
        [sys.executable, os.path.join(HERE, "connector_session.py"), s.addr, token or s.token, s.instance_uri,
         driver, user, password, backend_db(), "1" if iam else "0", table],
        env=env, capture_output=True, text=True, timeout=120, cwd=HERE,
    )


@pytest.mark.parametrize("driver", ["pg8000", "asyncpg"])
def test_connector_quick_start_reaches_postgres(instance, driver):
    """DB_NATIVE: pg8000 asks for the metadata exchange, asyncpg does not; both reach PostgreSQL."""
    result = session(instance, driver, "postgres")
    assert result.returncode == 0, result.stderr[-3000:]
    got = json.loads(result.stdout)
    assert got == {"rows": [[1, "one"], [2, "two"]], "current_user": "postgres"}


def gcloud(env, token_file, *args):
    p = subprocess.run(["gcloud", *args, f"--access-token-file={token_file}"], env=env, capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, f"gcloud {' '.join(args)}: {p.stderr}"
    return p


@pytest.fixture
def iam_instance(start_server, tmp_path):
    """A PostgreSQL of its own with TLS and cert auth behind the instance; a service account with the client
    and database-user roles and an IAM database user made with gcloud; its key file as the ADC."""
    from pg_cluster import TlsPostgres

    pg = TlsPostgres()
    try:
        (tmp_path / "cc").mkdir()
        s = start_server(str(tmp_path / "cc"), ["--tls-auto", "--alloydb-backend", pg.url,
                                                "--alloydb-first-address", first_address()])
        ca_file = tmp_path / "cc" / "alloydb-backend-ca.pem"
        for _ in range(100):
            if ca_file.exists():
                break
            time.sleep(0.05)
        pg.trust_clients_of(ca_file.read_text())

        config = tmp_path / "gcloud"
        config.mkdir()
        token_file = config / "token"
        token_file.write_text(s.token)
        env = dict(os.environ, CLOUDSDK_CONFIG=str(config), CLOUDSDK_CORE_DISABLE_PROMPTS="1",
                   REQUESTS_CA_BUNDLE=str(tmp_path / "cc" / "tls-ca.pem"))
        for key, value in [("core/project", PROJECT), ("component_manager/disable_update_check", "true"),
                           ("core/disable_usage_reporting", "true"),
                           ("core/custom_ca_certs_file", str(tmp_path / "cc" / "tls-ca.pem")),
                           ("api_endpoint_overrides/alloydb", f"{s.url}/alloydb/"),
                           ("api_endpoint_overrides/iam", f"{s.url}/iam/"),
                           ("api_endpoint_overrides/cloudresourcemanager", f"{s.url}/cloudresourcemanager/")]:
            subprocess.run(["gcloud", "config", "set", key, value], env=env, check=True, capture_output=True,
                           timeout=60)
        gcloud(env, token_file, "alloydb", "clusters", "create", "ep", f"--region={LOCATION}",
               "--password=unused", "--network=default")
        gcloud(env, token_file, "alloydb", "instances", "create", "primary", "--cluster=ep",
               f"--region={LOCATION}", "--instance-type=PRIMARY", "--cpu-count=2")
        gcloud(env, token_file, "iam", "service-accounts", "create", "db-iam")
        email = f"db-iam@{PROJECT}.iam.clustercred.internal"
        key = tmp_path / "db-iam.json"
        gcloud(env, token_file, "iam", "service-accounts", "keys", "create", str(key), f"--iam-account={email}")
        for role in ("roles/alloydb.client", "roles/alloydb.databaseUser"):
            gcloud(env, token_file, "projects", "add-iam-policy-binding", PROJECT,
                   f"--member=serviceAccount:{email}", f"--role={role}")
        db_user = f"db-iam@{PROJECT}.iam"
        # A role of the database's own that may create tables (PostgreSQL 15 no longer lets everyone).
        pg.sql("CREATE ROLE app_writers; GRANT USAGE, CREATE ON SCHEMA public TO app_writers")
        gcloud(env, token_file, "alloydb", "users", "create", db_user, "--cluster=ep", f"--region={LOCATION}",
               "--type=IAM_BASED", "--db-roles=app_writers")
        assert pg.sql(f"SELECT rolcanlogin FROM pg_roles WHERE rolname = '{db_user}'") == "t"
        assert pg.sql(f"SELECT pg_has_role('{db_user}', 'app_writers', 'MEMBER')") == "t"
        s.ca = str(tmp_path / "cc" / "tls-ca.pem")
        s.instance_uri = f"projects/{PROJECT}/locations/{LOCATION}/clusters/ep/instances/primary"
        s.key_file = str(key)
        s.db_user = db_user
        yield s
    finally:
        pg.stop()


@pytest.mark.parametrize("driver", ["pg8000", "asyncpg"])
def test_connector_auto_iam_logs_in_as_the_service_account(iam_instance, driver):
    """enable_iam_auth=True with Application Default Credentials (the service account's key file, whose
    token_uri is clustercred's): pg8000 sends the token in the metadata exchange, asyncpg as the password;
    either way PostgreSQL sees the IAM database user, and no password was ever set."""
    s = iam_instance
    env = dict(os.environ, GRPC_DEFAULT_SSL_ROOTS_FILE_PATH=s.ca, GOOGLE_APPLICATION_CREDENTIALS=s.key_file,
               REQUESTS_CA_BUNDLE=s.ca)
    result = subprocess.run(
        [sys.executable, os.path.join(HERE, "connector_session.py"), s.addr, "adc", s.instance_uri, driver,
         s.db_user, "", "postgres", "1", f"iam_{driver}"],
        env=env, capture_output=True, text=True, timeout=120, cwd=HERE,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout) == {"rows": [[1, "one"], [2, "two"]], "current_user": s.db_user}
