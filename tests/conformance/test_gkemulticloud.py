"""GKE Multi-Cloud attached clusters and the agent-token exchange (RFC 8693) over REST and gRPC."""

import base64
import json
import time

import jwt
import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import rsa
from google.api_core import exceptions
from jwt.algorithms import RSAAlgorithm

from conftest import PARENT, PROJECT

pytestmark = pytest.mark.timeout(120)

ISSUER = "https://oidc.cluster.example.test"
AUDIENCE = f"{PROJECT}.svc.id.goog"
JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt"
EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN = "urn:ietf:params:oauth:token-type:access_token"


@pytest.fixture(scope="module")
def signing_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def jwks(key, kid="k1"):
    jwk = json.loads(RSAAlgorithm.to_jwk(key.public_key()))
    jwk.update(kid=kid, alg="RS256", use="sig")
    return json.dumps({"keys": [jwk]}).encode()


def sa_token(key, kid="k1", alg="RS256", **overrides):
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": [AUDIENCE], "sub": "system:serviceaccount:gke-connect:agent",
              "iat": now, "nbf": now, "exp": now + 600}
    claims.update(overrides)
    claims = {k: v for k, v in claims.items() if v is not None}
    return jwt.encode(claims, key, algorithm=alg, headers={"kid": kid})


def create(client, cluster_id, key, **fields):
    from google.cloud import gke_multicloud_v1 as t

    cluster = t.AttachedCluster(
        oidc_config=t.AttachedOidcConfig(issuer_url=ISSUER, jwks=jwks(key)),
        platform_version="1.30.0-gke.1",
        distribution="generic",
        fleet=t.Fleet(project=f"projects/{PROJECT}"),
    )
    for k, v in fields.items():
        setattr(cluster, k, v)
    return client.create_attached_cluster(
        parent=PARENT, attached_cluster_id=cluster_id, attached_cluster=cluster
    ).result(timeout=30)


def exchange(client, name, token, **fields):
    from google.cloud import gke_multicloud_v1 as t

    req = dict(attached_cluster=name, subject_token=token, subject_token_type=JWT_TYPE, version="1.0.0",
               grant_type=EXCHANGE, requested_token_type=ACCESS_TOKEN)
    req.update(fields)
    return client.generate_attached_cluster_agent_token(request=t.GenerateAttachedClusterAgentTokenRequest(**req))


def test_attached_cluster_lifecycle(server, transport, signing_key, uid):
    client = server.gke(transport)
    cluster = create(client, uid, signing_key)
    got = client.get_attached_cluster(name=cluster.name)
    assert got.oidc_config.issuer_url == ISSUER
    assert got.workload_identity_config.workload_pool == AUDIENCE
    assert cluster.name in [c.name for c in client.list_attached_clusters(parent=PARENT)]
    with pytest.raises(exceptions.Conflict):  # AlreadyExists on gRPC, 409 on REST
        create(client, uid, signing_key)
    client.delete_attached_cluster(name=cluster.name).result(timeout=30)
    with pytest.raises(exceptions.NotFound):
        client.get_attached_cluster(name=cluster.name)


def test_create_validates_oidc_and_required_fields(server, transport, signing_key, uid):
    from google.cloud import gke_multicloud_v1 as t

    client = server.gke(transport)
    with pytest.raises(exceptions.BadRequest):
        create(client, uid, signing_key, oidc_config=t.AttachedOidcConfig(issuer_url=ISSUER, jwks=b"garbage"))
    with pytest.raises(exceptions.BadRequest):
        create(client, uid, signing_key, platform_version="")
    with pytest.raises(exceptions.BadRequest):
        create(client, uid, signing_key, oidc_config=t.AttachedOidcConfig(issuer_url=""))
    private = json.loads(RSAAlgorithm.to_jwk(signing_key))  # carries "d": must be refused
    with pytest.raises(exceptions.BadRequest):
        create(client, uid, signing_key,
               oidc_config=t.AttachedOidcConfig(issuer_url=ISSUER, jwks=json.dumps({"keys": [private]}).encode()))


def test_agent_token_exchange(server, transport, signing_key, uid):
    admin = server.gke(transport)
    cluster = create(admin, uid, signing_key)
    anonymous = server.gke(transport, token=None)  # the subject token is the credential
    resp = exchange(anonymous, cluster.name, sa_token(signing_key))
    assert resp.token_type == "Bearer"
    assert 0 < resp.expires_in <= 3600

    discovery = requests.get(f"{server.url}/.well-known/openid-configuration", timeout=10).json()
    keys = requests.get(discovery["jwks_uri"], timeout=10).json()
    kid = jwt.get_unverified_header(resp.access_token)["kid"]
    jwk = next(k for k in keys["keys"] if k["kid"] == kid)
    public = jwt.PyJWK(jwk).key
    claims = jwt.decode(resp.access_token, public, algorithms=["ES256"], audience=AUDIENCE,
                        issuer=discovery["issuer"])
    assert claims["sub"] == "system:serviceaccount:gke-connect:agent"
    assert claims["exp"] - claims["iat"] <= 3600


def test_agent_token_rejections(server, transport, signing_key, uid):
    admin = server.gke(transport)
    cluster = create(admin, uid, signing_key)
    client = server.gke(transport, token=None)
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = int(time.time())
    good = sa_token(signing_key)
    head, body, sig = good.split(".")
    unauthenticated = {
        "wrong issuer": sa_token(signing_key, iss="https://evil.example"),
        "wrong audience": sa_token(signing_key, aud=["someone-else"]),
        "expired": sa_token(signing_key, exp=now - 3600, iat=now - 7200, nbf=now - 7200),
        "not yet valid": sa_token(signing_key, nbf=now + 3600),
        "not a service account": sa_token(signing_key, sub="alice"),
        "unknown kid": sa_token(signing_key, kid="nope"),
        "wrong key": sa_token(other),
        "tampered": ".".join([head, base64.urlsafe_b64encode(
            json.dumps({"iss": ISSUER, "aud": AUDIENCE, "sub": "system:serviceaccount:kube-system:root",
                        "exp": now + 600}).encode()).decode().rstrip("="), sig]),
        "HS256 keyed with the public key": jwt.api_jws.PyJWS().encode(
            json.dumps({"iss": ISSUER, "aud": AUDIENCE, "sub": "system:serviceaccount:a:b", "exp": now + 600}).encode(),
            b"k" * 32, algorithm="HS256", headers={"kid": "k1"}),
        "alg none with a signature": base64.urlsafe_b64encode(b'{"alg":"none","kid":"k1"}').decode().rstrip("=")
        + f".{body}.c2ln",
    }
    for what, token in unauthenticated.items():
        with pytest.raises(exceptions.Unauthorized):
            exchange(client, cluster.name, token)
            pytest.fail(what)
    invalid = {
        "not a JWT": dict(subject_token="abc"),
        "empty token": dict(subject_token=""),
        "wrong token type": dict(subject_token_type="urn:ietf:params:oauth:token-type:id_token"),
        "wrong grant type": dict(grant_type="client_credentials"),
        "wrong requested type": dict(requested_token_type="urn:ietf:params:oauth:token-type:id_token"),
        "missing version": dict(version=""),
        "unaccepted audience": dict(audience="https://elsewhere.example"),
    }
    for what, fields in invalid.items():
        fields.setdefault("subject_token", good)
        token = fields.pop("subject_token")
        with pytest.raises(exceptions.BadRequest):
            exchange(client, cluster.name, token, **fields)
            pytest.fail(what)
