"""AlloyDB instances you can connect to: the unmodified AlloyDB Python connector (pg8000 and asyncpg) gets
its certificate from clustercred, dials the instance endpoint on port 5433 and talks to a real PostgreSQL."""

import json
import os
import random
import subprocess
import sys

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
