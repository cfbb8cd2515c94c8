"""The AlloyDB Python connector's admin channel (always TLS gRPC, v1beta) against `serve --tls-auto`."""

import json
import os
import subprocess
import sys

import pytest
import requests
from cryptography.hazmat.primitives import serialization

from certs import check_client_leaf
from conftest import LOCATION, PROJECT

pytestmark = pytest.mark.timeout(120)


def test_connector_gets_connection_info_and_certificate_over_tls(start_server, tmp_path):
    s = start_server(str(tmp_path), ["--tls-auto"])
    ca_file = tmp_path / "tls-ca.pem"
    assert ca_file.exists()
    # Set up the cluster and instance over REST, trusting the server's CA.
    headers = {"Authorization": f"Bearer {s.token}"}
    parent = f"projects/{PROJECT}/locations/{LOCATION}"
    r = requests.post(f"{s.url}/alloydb/v1/{parent}/clusters?clusterId=conn", json={}, headers=headers,
                      verify=str(ca_file), timeout=30)
    assert r.status_code == 200, r.text
    r = requests.post(f"{s.url}/alloydb/v1/{parent}/clusters/conn/instances?instanceId=primary",
                      json={"instanceType": "PRIMARY"}, headers=headers, verify=str(ca_file), timeout=30)
    assert r.status_code == 200, r.text
    ip_address = r.json()["response"]["ipAddress"]

    env = dict(os.environ, GRPC_DEFAULT_SSL_ROOTS_FILE_PATH=str(ca_file))
    probe = subprocess.run(
        [sys.executable, os.path.join(os.path.dirname(__file__), "connector_probe.py"), s.addr, s.token, PROJECT,
         LOCATION, "conn", "primary"],
        env=env, capture_output=True, text=True, timeout=90, cwd=os.path.dirname(__file__),
    )
    assert probe.returncode == 0, probe.stderr
    got = json.loads(probe.stdout)
    assert got["ip_addrs"]["PRIVATE"] == ip_address
    public = serialization.load_pem_public_key(got["public_key"].encode())
    check_client_leaf(got["cert_chain"][0], got["ca_cert"], public)

    # Without the server's CA the connector's TLS channel refuses the server.
    env.pop("GRPC_DEFAULT_SSL_ROOTS_FILE_PATH")
    env["GRPC_DEFAULT_SSL_ROOTS_FILE_PATH"] = "/etc/ssl/certs/ca-certificates.crt"
    # gRPC keeps retrying a failed handshake, so a refusal shows as an error or as no answer at all.
    try:
        refused = subprocess.run(
            [sys.executable, os.path.join(os.path.dirname(__file__), "connector_probe.py"), s.addr, s.token,
             PROJECT, LOCATION, "conn", "primary"],
            env=env, capture_output=True, text=True, timeout=10, cwd=os.path.dirname(__file__),
        )
        assert refused.returncode != 0
    except subprocess.TimeoutExpired:
        pass
