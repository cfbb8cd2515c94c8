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
    wait_for_endpoint(s.ip)
    return s


def wait_for_endpoint(ip):
    """Endpoints follow new instances within a second; a test dials straight after the create."""
    import socket

    for _ in range(100):
        try:
            socket.create_connection((ip, 5433), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"no endpoint on {ip}:5433")


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


def test_go_connector_refresh_replayed_then_dial(instance):
    """The Go connector's refresh as it makes it (v1alpha REST under the admin URL's path prefix, GAPIC's
    `$alt=json;enum-encoding=int`, a PKCS#1 RSA-2048 key, connectionInfo and generateClientCertificate at
    once), then its dial: TLS 1.3 to the address, trusting only caCert with the IP as server name, the
    metadata exchange (on by default), and a query."""
    import concurrent.futures
    import socket
    import ssl
    import struct

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    s = instance
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pkcs1 = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.PKCS1).decode()
    assert pkcs1.startswith("-----BEGIN RSA PUBLIC KEY-----")
    headers = {"Authorization": f"Bearer {s.token}", "Content-Type": "application/json",
               "x-goog-api-client": "gl-go/1.24 gapic/1.0 gax/2.14 rest/UNKNOWN"}
    from urllib.parse import quote
    cluster = s.instance_uri.rsplit("/instances/", 1)[0]
    query = "?%24alt=json%3Benum-encoding%3Dint"
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        # GAPIC REST also names the routing parameter in x-goog-request-params.
        info_f = pool.submit(requests.get, f"{s.url}/alloydb/v1alpha/{s.instance_uri}/connectionInfo{query}",
                             headers=dict(headers, **{"x-goog-request-params": f"parent={quote(s.instance_uri)}"}),
                             verify=s.ca, timeout=30)
        cert_f = pool.submit(requests.post, f"{s.url}/alloydb/v1alpha/{cluster}:generateClientCertificate{query}",
                             json={"publicKey": pkcs1, "certDuration": "3600s", "useMetadataExchange": True},
                             headers=dict(headers, **{"x-goog-request-params": f"parent={quote(cluster)}"}),
                             verify=s.ca, timeout=30)
        info, cert = info_f.result(), cert_f.result()
    assert info.status_code == 200, info.text
    assert cert.status_code == 200, cert.text
    ip = info.json()["ipAddress"]
    chain = cert.json()["pemCertificateChain"]

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_verify_locations(cadata=cert.json()["caCert"])
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                serialization.NoEncryption())
    import tempfile
    with tempfile.NamedTemporaryFile("w", suffix=".pem") as bundle:
        bundle.write("".join(chain) + key_pem.decode())
        bundle.flush()
        ctx.load_cert_chain(bundle.name)
    with socket.create_connection((ip, 5433), timeout=30) as raw, ctx.wrap_socket(raw, server_hostname=ip) as tls:
        assert tls.version() == "TLSv1.3"
        # MetadataExchangeRequest{user_agent, auth_type: DB_NATIVE, oauth2_token}: the Go connector sends its
        # token with DB_NATIVE too, and reads the answer with two single reads (length, then message).
        def field(tag, data):
            n, size = len(data), b""
            while True:
                size += bytes([(n & 0x7F) | (0x80 if n > 0x7F else 0)])
                n >>= 7
                if not n:
                    return bytes([tag]) + size + data
        body = (field(0x0A, b"alloydb-go-connector/1.18.4") + bytes([0x10, 0x01])
                + field(0x1A, s.token.encode()))
        tls.sendall(struct.pack(">I", len(body)) + body)
        assert tls.recv(4) == b"\x00\x00\x00\x02"
        assert tls.recv(2) == b"\x08\x01"
        params = b"user\x00postgres\x00database\x00" + backend_db().encode() + b"\x00\x00"
        tls.sendall(struct.pack(">II", len(params) + 8, 196608) + params)
        sql = b"SELECT 6 * 7\x00"
        got = b""
        while b"Z\x00\x00\x00\x05I" not in got:  # ReadyForQuery after the login
            got += tls.recv(65536)
        assert got.startswith(b"R\x00\x00\x00\x08\x00\x00\x00\x00"), got[:20]  # AuthenticationOk
        tls.sendall(b"Q" + struct.pack(">I", len(sql) + 4) + sql)
        answer = b""
        while b"Z\x00\x00\x00\x05" not in answer:
            answer += tls.recv(65536)
        assert b"D\x00\x00\x00\x0c\x00\x01\x00\x00\x00\x0242" in answer, answer
        tls.sendall(b"X\x00\x00\x00\x04")
