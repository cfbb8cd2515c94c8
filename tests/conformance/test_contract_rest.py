"""Raw REST details beyond test_rest_raw.py: enum encoding on reads, proto3 JSON input rules, Duration JSON,
error bodies on every prefix, query booleans and validateOnly, the agent-token exchange's JSON in and out."""

import base64
import uuid

import pytest
import requests
from cryptography import x509

import test_gkemulticloud as g
from certs import p256_key, spki_pem
from conftest import PARENT

pytestmark = pytest.mark.timeout(60)
INT = "$alt=json;enum-encoding=int"


def call(server, method, path, token="admin", **kw):
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {server.token if token == 'admin' else token}"
    return requests.request(method, server.url + path, headers=headers, timeout=10, **kw)


def google_error(resp, http, status):
    assert resp.status_code == http, (resp.status_code, resp.text)
    assert resp.headers["content-type"].startswith("application/json"), resp.headers
    error = resp.json()["error"]
    assert error["code"] == http and error["status"] == status and error["message"], error
    return error


def ok(resp):
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    return resp.json()


@pytest.fixture
def cluster(server, uid):
    ok(call(server, "POST", f"/alloydb/v1/{PARENT}/clusters?clusterId={uid}", json={}))
    return f"{PARENT}/clusters/{uid}"


def test_enum_encoding_on_reads(server, cluster):
    assert ok(call(server, "GET", f"/alloydb/v1/{cluster}?{INT}"))["state"] == 1  # READY
    assert ok(call(server, "GET", f"/alloydb/v1/{cluster}"))["state"] == "READY"
    listed = ok(call(server, "GET", f"/alloydb/v1/{PARENT}/clusters?{INT}"))["clusters"]
    assert all(isinstance(c["state"], int) for c in listed)
    inst = ok(call(server, "POST", f"/alloydb/v1/{cluster}/instances?instanceId=primary&{INT}",
                   json={"instanceType": "PRIMARY"}))["response"]
    assert inst["instanceType"] == 1 and inst["state"] == 1
    # Enum values may be sent as numbers too (proto3 JSON).
    inst = ok(call(server, "POST", f"/alloydb/v1/{cluster}/instances?instanceId=pool", json={"instanceType": 2}))
    assert inst["response"]["instanceType"] == "READ_POOL"


def test_input_json_rules(server, cluster):
    pem = spki_pem(p256_key())
    gcc = f"/alloydb/v1/{cluster}:generateClientCertificate"
    # The proto field names are accepted as well as lowerCamelCase.
    body = ok(call(server, "POST", gcc, json={"public_key": pem, "cert_duration": "7200s"}))
    leaf = x509.load_pem_x509_certificate(body["pemCertificateChain"][0].encode())
    assert (leaf.not_valid_after_utc - leaf.not_valid_before_utc).total_seconds() == 7200 + 60
    assert set(body) >= {"pemCertificateChain", "caCert"}
    # Duration JSON with fractional seconds.
    body = ok(call(server, "POST", gcc, json={"publicKey": pem, "certDuration": "5400.000s"}))
    leaf = x509.load_pem_x509_certificate(body["pemCertificateChain"][0].encode())
    assert (leaf.not_valid_after_utc - leaf.not_valid_before_utc).total_seconds() == 5400 + 60

    for bad in [{"publicKey": pem, "noSuchField": 1}, {"publicKey": pem, "certDuration": "an hour"},
                {"publicKey": pem, "certDuration": 3600}, {"publicKey": 5}, {"publicKey": pem, "requestId": 7},
                [pem], "just a string"]:
        error = google_error(call(server, "POST", gcc, json=bad), 400, "INVALID_ARGUMENT")
        if isinstance(bad, dict) and "noSuchField" in bad:
            assert "noSuchField" in error["message"]
    google_error(call(server, "POST", gcc, data=b'{"publicKey": "x"'), 400, "INVALID_ARGUMENT")
    google_error(call(server, "POST", gcc, data=b"\xff\xfe"), 400, "INVALID_ARGUMENT")
    # Unknown fields are rejected at any depth.
    error = google_error(call(server, "POST", f"/alloydb/v1/{PARENT}/clusters?clusterId=nested-{uuid.uuid4().hex[:6]}",
                              json={"initialUser": {"user": "postgres", "bogusInner": True}}), 400, "INVALID_ARGUMENT")
    assert "bogusInner" in error["message"]


def test_create_query_rules(server, uid):
    base = f"/alloydb/v1/{PARENT}/clusters"
    google_error(call(server, "POST", base, json={}), 400, "INVALID_ARGUMENT")  # no clusterId
    ok(call(server, "POST", f"{base}?clusterId={uid}&validateOnly=true", json={}))
    google_error(call(server, "GET", f"{base}/{uid}"), 404, "NOT_FOUND")
    ok(call(server, "POST", f"{base}?clusterId={uid}&validateOnly=False", json={}))
    ok(call(server, "GET", f"{base}/{uid}?alt=json"))  # gcloud's alt=json
    google_error(call(server, "POST", f"{base}?clusterId={uid}", json={}), 409, "ALREADY_EXISTS")
    ok(call(server, "DELETE", f"{base}/{uid}?force=false"))
    google_error(call(server, "DELETE", f"{base}/{uid}?force=False"), 404, "NOT_FOUND")


@pytest.mark.parametrize("prefix", ["alloydb", "edgecontainer", "gkemulticloud"])
def test_error_bodies_on_every_prefix(server, prefix):
    collection = "attachedClusters" if prefix == "gkemulticloud" else "clusters"
    path = f"/{prefix}/v1/{PARENT}/{collection}"
    google_error(call(server, "GET", path, token=None), 401, "UNAUTHENTICATED")
    google_error(call(server, "GET", path, token="nope"), 401, "UNAUTHENTICATED")
    google_error(call(server, "GET", f"{path}/missing-one"), 404, "NOT_FOUND")
    google_error(call(server, "GET", f"{path}/Bad_Id"), 400, "INVALID_ARGUMENT")
    for unknown in [f"/{prefix}/v1/nothing/here", f"/{prefix}/v9/{PARENT}/{collection}", f"/{prefix}/",
                    f"/{prefix}/v1/{PARENT}/{collection}/x/y/z/w"]:
        r = call(server, "GET", unknown)
        google_error(r, 404, "NOT_FOUND")
        assert "<html" not in r.text.lower()
    # Outside every prefix, with no token: 401 or 404, but google.rpc JSON either way.
    r = call(server, "GET", "/nowhere", token=None)
    assert r.status_code in (401, 404) and "error" in r.json()


def test_agent_token_json_in_and_out(server, uid):
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    g.create(server.gke("rest"), uid, key)
    path = f"/gkemulticloud/v1/{PARENT}/attachedClusters/{uid}:generateAttachedClusterAgentToken"
    for body in [
        {"subjectToken": g.sa_token(key), "subjectTokenType": g.JWT_TYPE, "version": "1.2.3",
         "grantType": g.EXCHANGE, "requestedTokenType": g.ACCESS_TOKEN},
        {"subject_token": g.sa_token(key), "subject_token_type": g.JWT_TYPE, "version": "1.2.3"},
    ]:
        out = ok(call(server, "POST", path, token=None, json=body))
        assert set(out) == {"access_token", "expires_in", "token_type"}
        assert out["token_type"] == "Bearer" and isinstance(out["expires_in"], int) and 0 < out["expires_in"] <= 3600
        assert out["access_token"].count(".") == 2
    # A refusal is google.rpc JSON too, with a client error code.
    r = call(server, "POST", path, token=None, json={"subjectToken": "x.y.z", "subjectTokenType": g.JWT_TYPE,
                                                      "version": "1"})
    assert r.status_code in (400, 401), r.text
    assert r.json()["error"]["status"] in ("INVALID_ARGUMENT", "UNAUTHENTICATED")
    google_error(call(server, "POST", path, token=None, json={"subjectToken": g.sa_token(key),
                                                              "subjectTokenType": g.JWT_TYPE, "version": "1",
                                                              "accessToken": "x"}), 400, "INVALID_ARGUMENT")


def test_attached_cluster_jwks_is_base64_bytes_in_json(server, uid):
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    base = f"/gkemulticloud/v1/{PARENT}/attachedClusters"
    body = {"oidcConfig": {"issuerUrl": g.ISSUER, "jwks": base64.b64encode(g.jwks(key)).decode()},
            "platformVersion": "1.30.0-gke.1", "distribution": "generic", "fleet": {"project": "projects/p"}}
    created = ok(call(server, "POST", f"{base}?attachedClusterId={uid}", json=body))["response"]
    assert base64.b64decode(created["oidcConfig"]["jwks"]) == g.jwks(key)
    garbage = dict(body, oidcConfig={"issuerUrl": g.ISSUER, "jwks": base64.b64encode(b"garbage").decode()})
    google_error(call(server, "POST", f"{base}?attachedClusterId={uid}-g", json=garbage), 400, "INVALID_ARGUMENT")
    not_base64 = dict(body, oidcConfig={"issuerUrl": g.ISSUER, "jwks": "%%%"})
    google_error(call(server, "POST", f"{base}?attachedClusterId={uid}-h", json=not_base64), 400, "INVALID_ARGUMENT")
