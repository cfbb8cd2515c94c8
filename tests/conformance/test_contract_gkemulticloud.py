"""GKE Multi-Cloud contract details beyond test_gkemulticloud.py: required fields, validate_only, more subject
tokens that must be refused (each with exactly INVALID_ARGUMENT or UNAUTHENTICATED), the issued token's keys."""

import base64
import json
import time

import jwt
import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from google.api_core import exceptions

import test_gkemulticloud as g
from conftest import PARENT, PROJECT

pytestmark = pytest.mark.timeout(120)


def status_of(exc):
    """The canonical code name of a client exception, on either transport."""
    response = getattr(exc, "response", None)
    if isinstance(response, requests.Response):
        return response.json()["error"]["status"]
    return exc.grpc_status_code.name


@pytest.fixture(scope="module")
def key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def test_required_fields_and_validate_only(server, transport, key, uid):
    from google.cloud import gke_multicloud_v1 as t

    client = server.gke(transport)
    for what, fields in {
        "no distribution": dict(distribution=""),
        "no oidc config": dict(oidc_config=t.AttachedOidcConfig()),
        "jwks not JSON": dict(oidc_config=t.AttachedOidcConfig(issuer_url=g.ISSUER, jwks=b"\x00\xff{")),
        "jwks without keys": dict(oidc_config=t.AttachedOidcConfig(issuer_url=g.ISSUER, jwks=b'{"kid": "x"}')),
    }.items():
        with pytest.raises(exceptions.BadRequest) as e:
            g.create(client, uid, key, **fields)
            pytest.fail(f"{what} accepted")
        assert status_of(e.value) == "INVALID_ARGUMENT", what
    for bad in ["Upper", "a-", "a" * 64]:
        with pytest.raises(exceptions.BadRequest):
            g.create(client, bad, key)
    cluster = t.AttachedCluster(
        oidc_config=t.AttachedOidcConfig(issuer_url=g.ISSUER, jwks=g.jwks(key)), platform_version="1.30.0-gke.1",
        distribution="generic", fleet=t.Fleet(project=f"projects/{PROJECT}"))
    client.create_attached_cluster(request=t.CreateAttachedClusterRequest(
        parent=PARENT, attached_cluster_id=uid, attached_cluster=cluster, validate_only=True))
    with pytest.raises(exceptions.NotFound):
        client.get_attached_cluster(name=f"{PARENT}/attachedClusters/{uid}")
    # Nothing half-made blocks the real create.
    assert g.create(client, uid, key).name == f"{PARENT}/attachedClusters/{uid}"


def test_fleet_project_is_required(server, transport, key, uid):
    from google.cloud import gke_multicloud_v1 as t

    client = server.gke(transport)
    for fleet in [t.Fleet(), None]:
        with pytest.raises(exceptions.BadRequest) as e:
            g.create(client, uid, key, fleet=fleet)
            pytest.fail(f"fleet={fleet!r} accepted")
        assert status_of(e.value) == "INVALID_ARGUMENT"


def test_list_pages_and_delete_operation(server, transport, key, uid):
    from google.cloud import gke_multicloud_v1 as t

    client = server.gke(transport)
    parent = f"projects/{uid}/locations/us-west1"
    for i in range(3):
        client.create_attached_cluster(parent=parent, attached_cluster_id=f"a{i}", attached_cluster=t.AttachedCluster(
            oidc_config=t.AttachedOidcConfig(issuer_url=g.ISSUER, jwks=g.jwks(key)),
            platform_version="1.30.0-gke.1", distribution="generic",
            fleet=t.Fleet(project=f"projects/{PROJECT}"))).result(timeout=30)
    pages = list(client.list_attached_clusters(
        request=t.ListAttachedClustersRequest(parent=parent, page_size=1)).pages)
    assert all(len(p.attached_clusters) <= 1 for p in pages)
    assert sorted(c.name for p in pages for c in p.attached_clusters) == [
        f"{parent}/attachedClusters/a{i}" for i in range(3)]
    op = client.delete_attached_cluster(name=f"{parent}/attachedClusters/a0")
    assert op.done() and op.operation.response.type_url == "type.googleapis.com/google.protobuf.Empty"


def test_audience_forms_accepted(server, transport, key, uid):
    cluster = g.create(server.gke(transport), uid, key)
    client = server.gke(transport, token=None)
    for aud in [g.AUDIENCE, [g.AUDIENCE], ["https://kubernetes.default.svc", g.AUDIENCE]]:
        resp = g.exchange(client, cluster.name, g.sa_token(key, aud=aud))
        assert resp.access_token and resp.token_type == "Bearer"
    # The optional RFC 8693 fields may be left out.
    resp = g.exchange(client, cluster.name, g.sa_token(key), grant_type="", requested_token_type="")
    assert resp.access_token


def test_more_refused_subject_tokens(server, transport, key, uid):
    admin = server.gke(transport)
    cluster = g.create(admin, uid, key)
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    other_cluster = g.create(admin, uid + "-o", other_key)
    client = server.gke(transport, token=None)
    now = int(time.time())
    good = g.sa_token(key)
    head, body, sig = good.split(".")
    ec_key = ec.generate_private_key(ec.SECP256R1())

    def b64(obj):
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")

    refused = {
        "no sub": g.sa_token(key, sub=None),
        "sub without name": g.sa_token(key, sub="system:serviceaccount:ns"),
        "sub with empty namespace": g.sa_token(key, sub="system:serviceaccount::name"),
        "sub with empty name": g.sa_token(key, sub="system:serviceaccount:ns:"),
        "sub with extra part": g.sa_token(key, sub="system:serviceaccount:ns:name:x"),
        "no exp": g.sa_token(key, exp=None),
        "no aud": g.sa_token(key, aud=None),
        "aud of another project": g.sa_token(key, aud=["other-project.svc.id.goog"]),
        "no iss": g.sa_token(key, iss=None),
        "issuer with trailing slash": g.sa_token(key, iss=g.ISSUER + "/"),
        "alg none, empty signature": f"{b64({'alg': 'none', 'kid': 'k1'})}.{body}.",
        "alg None spelled differently": f"{b64({'alg': 'None', 'kid': 'k1'})}.{body}.",
        "ES256 under the RSA key's kid": g.sa_token(ec_key, alg="ES256"),
        "PS256 instead of RS256": g.sa_token(key, alg="PS256"),
        "RS512 instead of RS256": g.sa_token(key, alg="RS512"),
        "signature stripped": f"{head}.{body}.",
        "signature of another token": f"{head}.{body}.{g.sa_token(key, sub='system:serviceaccount:x:y').split('.')[2]}",
        "valid for the other cluster only": g.sa_token(other_key),
        "two parts": f"{head}.{body}",
        "four parts": f"{good}.{sig}",
        "header not JSON": f"{base64.urlsafe_b64encode(b'nope').decode().rstrip('=')}.{body}.{sig}",
        "expired long ago": g.sa_token(key, exp=now - 86400, iat=now - 90000, nbf=now - 90000),
    }
    for what, token in refused.items():
        with pytest.raises((exceptions.BadRequest, exceptions.Unauthorized)) as e:
            g.exchange(client, cluster.name, token)
            pytest.fail(f"{what}: a token was issued")
        assert status_of(e.value) in {"INVALID_ARGUMENT", "UNAUTHENTICATED"}, (what, status_of(e.value))
    # The other cluster's own token still works there: the refusals above were about the token, not the keys.
    assert g.exchange(client, other_cluster.name, g.sa_token(other_key)).access_token


def test_unknown_or_deleted_cluster_gets_no_token(server, transport, key, uid):
    admin = server.gke(transport)
    cluster = g.create(admin, uid, key)
    client = server.gke(transport, token=None)
    assert g.exchange(client, cluster.name, g.sa_token(key)).access_token
    admin.delete_attached_cluster(name=cluster.name).result(timeout=30)
    for name in [cluster.name, f"{PARENT}/attachedClusters/{uid}-never"]:
        with pytest.raises((exceptions.NotFound, exceptions.BadRequest, exceptions.Unauthorized)):
            g.exchange(client, name, g.sa_token(key))
            pytest.fail(f"{name}: a token was issued")


def test_issued_token_and_published_keys(server, transport, key, uid):
    cluster = g.create(server.gke(transport), uid, key)
    before = int(time.time())
    resp = g.exchange(server.gke(transport, token=None), cluster.name, g.sa_token(key))
    header = jwt.get_unverified_header(resp.access_token)
    assert header["alg"] == "ES256" and header.get("kid")
    discovery = requests.get(f"{server.url}/.well-known/openid-configuration", timeout=10)
    assert discovery.status_code == 200 and discovery.headers["content-type"].startswith("application/json")
    doc = discovery.json()
    keys = requests.get(doc["jwks_uri"], timeout=10).json()["keys"]
    assert keys
    assert all("d" not in k for k in keys), "public keys only"
    signer = next(k for k in keys if k["kid"] == header["kid"])
    assert signer["kty"] == "EC" and signer["crv"] == "P-256"
    public = jwt.PyJWK(signer).key
    claims = jwt.decode(resp.access_token, public, algorithms=["ES256"], options={"verify_aud": False},
                        issuer=doc["issuer"])
    assert claims["exp"] - before <= 3600 + 5
    assert abs((claims["exp"] - before) - resp.expires_in) <= 5, "expires_in agrees with the token's exp"
    # Not verifiable with anything else: flipping a signature byte breaks it.
    h, b, s = resp.access_token.split(".")
    raw = bytearray(base64.urlsafe_b64decode(s + "=" * (-len(s) % 4)))
    raw[0] ^= 1
    forged = f"{h}.{b}.{base64.urlsafe_b64encode(bytes(raw)).decode().rstrip('=')}"
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(forged, public, algorithms=["ES256"], options={"verify_aud": False})


def test_admin_calls_need_the_token(server, transport, key, uid):
    cluster = g.create(server.gke(transport), uid, key)
    for token in [None, "wrong"]:
        client = server.gke(transport, token=token)
        for call in [lambda: client.get_attached_cluster(name=cluster.name),
                     lambda: list(client.list_attached_clusters(parent=PARENT)),
                     lambda: g.create(client, uid + "-anon", key),
                     lambda: client.delete_attached_cluster(name=cluster.name)]:
            with pytest.raises(exceptions.Unauthorized):
                call()
