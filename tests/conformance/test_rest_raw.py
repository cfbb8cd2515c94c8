"""Raw REST requests: JSON naming, enum encoding, and Google's error shape for bad input."""

import pytest
import requests

from conftest import PARENT

pytestmark = pytest.mark.timeout(60)


def call(server, method, path, token="admin", **kw):
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {server.token if token == 'admin' else token}"
    return requests.request(method, server.url + path, headers=headers, timeout=10, **kw)


def assert_google_error(resp, http, status):
    assert resp.status_code == http, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    error = resp.json()["error"]
    assert error["code"] == http and error["status"] == status and error["message"]
    return error


def test_enum_encoding_int_and_names(server, uid):
    r = call(server, "POST", f"/alloydb/v1/{PARENT}/clusters?clusterId={uid}&$alt=json;enum-encoding=int", json={})
    assert r.status_code == 200, r.text
    assert r.json()["response"]["state"] == 1
    r = call(server, "GET", f"/alloydb/v1/{PARENT}/clusters/{uid}?alt=json")
    assert r.json()["state"] == "READY"
    r = call(server, "DELETE", f"/alloydb/v1/{PARENT}/clusters/{uid}?force=False")
    assert r.status_code == 200, r.text


def test_bad_input_gets_google_errors(server, uid):
    error = assert_google_error(
        call(server, "POST", f"/alloydb/v1/{PARENT}/clusters?clusterId={uid}", json={"noSuchField": 1}),
        400, "INVALID_ARGUMENT")
    assert "noSuchField" in error["message"]
    assert_google_error(call(server, "POST", f"/alloydb/v1/{PARENT}/clusters?clusterId={uid}", data="{oops"),
                        400, "INVALID_ARGUMENT")
    assert_google_error(call(server, "GET", f"/alloydb/v1/{PARENT}/clusters?unknownParam=1"), 400, "INVALID_ARGUMENT")
    assert_google_error(call(server, "GET", "/definitely/not/a/route"), 404, "NOT_FOUND")
    assert_google_error(call(server, "GET", f"/alloydb/v1/{PARENT}/clusters", token=None), 401, "UNAUTHENTICATED")
    assert_google_error(call(server, "GET", f"/alloydb/v1/{PARENT}/clusters", token="bogus"), 401, "UNAUTHENTICATED")
    # The server is still up and nothing half-written remains.
    r = call(server, "GET", f"/alloydb/v1/{PARENT}/clusters/{uid}")
    assert_google_error(r, 404, "NOT_FOUND")


def test_agent_token_response_uses_documented_snake_case(server):
    # Reuses the gkemulticloud helpers for a valid subject token.
    import test_gkemulticloud as g
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    import base64
    body = {"oidcConfig": {"issuerUrl": g.ISSUER, "jwks": base64.b64encode(g.jwks(key)).decode()},
            "platformVersion": "1.30.0-gke.1", "distribution": "generic", "fleet": {"project": f"projects/{g.PROJECT}"}}
    r = call(server, "POST", f"/gkemulticloud/v1/{PARENT}/attachedClusters?attachedClusterId=snake", json=body)
    assert r.status_code == 200, r.text
    r = call(server, "POST", f"/gkemulticloud/v1/{PARENT}/attachedClusters/snake:generateAttachedClusterAgentToken",
             token=None, json={"subjectToken": g.sa_token(key), "subjectTokenType": g.JWT_TYPE, "version": "1"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"access_token", "expires_in", "token_type"}
    assert isinstance(body["expires_in"], int)
