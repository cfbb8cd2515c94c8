"""Identity and least privilege with the official tools: gcloud creates service accounts, keys and policy
bindings through endpoint overrides; google-auth obtains tokens from the key file; the client libraries and
gcloud then get exactly what the role allows."""

import json
import os
import subprocess

import google.auth.exceptions
import google.auth.transport.requests
import pytest
from google.api_core import exceptions
from google.oauth2 import service_account

from certs import check_client_leaf, common_name, p256_key, spki_pem
from conftest import LOCATION, PARENT, PROJECT

pytestmark = pytest.mark.timeout(300)
SCOPES = ["https://www.googleapis.com/auth/cloud-platform"]


def gcloud_env(server, config_dir):
    env = dict(os.environ, CLOUDSDK_CONFIG=str(config_dir), CLOUDSDK_CORE_DISABLE_PROMPTS="1")
    for key, value in [
        ("core/project", PROJECT),
        ("component_manager/disable_update_check", "true"),
        ("core/disable_usage_reporting", "true"),
        ("api_endpoint_overrides/alloydb", f"{server.url}/alloydb/"),
        ("api_endpoint_overrides/iam", f"{server.url}/iam/"),
        ("api_endpoint_overrides/cloudresourcemanager", f"{server.url}/cloudresourcemanager/"),
    ]:
        subprocess.run(["gcloud", "config", "set", key, value], env=env, check=True, capture_output=True, timeout=60)
    return env


def run(env, *args, check=True):
    p = subprocess.run(["gcloud", *args], env=env, capture_output=True, text=True, timeout=120)
    if check and p.returncode != 0:
        raise AssertionError(f"gcloud {' '.join(args)} failed: {p.stderr}")
    return p


@pytest.fixture(scope="module")
def setup(server, tmp_path_factory):
    """As the administrator: a cluster, two service accounts (one bound to roles/alloydb.client), their key
    files, all made with gcloud."""
    from google.cloud import alloydb_v1

    admin_dir = tmp_path_factory.mktemp("gcloud-admin")
    token_file = admin_dir / "token"
    token_file.write_text(server.token)
    env = gcloud_env(server, admin_dir)
    tok = f"--access-token-file={token_file}"
    server.alloydb("grpc").create_cluster(
        parent=PARENT, cluster_id="iam-db", cluster=alloydb_v1.Cluster()).result(timeout=30)

    out = run(env, "iam", "service-accounts", "create", "db-client", "--display-name=DB client", tok)
    assert "Created service account [db-client]" in out.stderr
    run(env, "iam", "service-accounts", "create", "no-roles", tok)
    email = f"db-client@{PROJECT}.iam.clustercred.internal"
    other = f"no-roles@{PROJECT}.iam.clustercred.internal"
    listed = json.loads(run(env, "iam", "service-accounts", "list", "--format=json", tok).stdout)
    assert {email, other} <= {a["email"] for a in listed}
    described = json.loads(run(env, "iam", "service-accounts", "describe", email, "--format=json", tok).stdout)
    assert described["displayName"] == "DB client"
    missing = run(env, "iam", "service-accounts", "describe", f"ghost@{PROJECT}.iam.clustercred.internal", tok,
                  check=False)
    assert missing.returncode != 0 and "NOT_FOUND" in missing.stderr

    keys = {}
    for account in (email, other):
        path = admin_dir / f"{account.split('@')[0]}.json"
        run(env, "iam", "service-accounts", "keys", "create", str(path), f"--iam-account={account}", tok)
        assert oct(path.stat().st_mode & 0o777) == "0o600"
        keys[account] = path
    key_list = json.loads(run(env, "iam", "service-accounts", "keys", "list", f"--iam-account={email}",
                              "--format=json", tok).stdout)
    assert len(key_list) == 1

    run(env, "projects", "add-iam-policy-binding", PROJECT, f"--member=serviceAccount:{email}",
        "--role=roles/alloydb.client", tok)
    policy = json.loads(run(env, "projects", "get-iam-policy", PROJECT, "--format=json", tok).stdout)
    assert {"role": "roles/alloydb.client", "members": [f"serviceAccount:{email}"]} in policy["bindings"]
    # A second binding goes through the same read-modify-write with the new etag.
    run(env, "projects", "add-iam-policy-binding", PROJECT, f"--member=serviceAccount:{email}",
        "--role=roles/alloydb.viewer", tok)
    run(env, "projects", "remove-iam-policy-binding", PROJECT, f"--member=serviceAccount:{email}",
        "--role=roles/alloydb.viewer", tok)
    return {"client": (email, keys[email]), "nobody": (other, keys[other])}


def test_key_file_is_a_standard_google_key_file(server, setup):
    email, path = setup["client"]
    key = json.loads(path.read_text())
    assert key["type"] == "service_account"
    assert key["client_email"] == email
    assert key["private_key"].startswith("-----BEGIN PRIVATE KEY-----")
    assert key["token_uri"] == f"{server.url}/oauth2/token"
    assert len(key["private_key_id"]) == 40


@pytest.mark.parametrize("transport", ["rest", "grpc"])
def test_client_role_may_issue_certificates_but_not_delete(server, setup, transport):
    from google.cloud import alloydb_v1

    email, path = setup["client"]
    creds = service_account.Credentials.from_service_account_file(str(path), scopes=SCOPES)
    creds.refresh(google.auth.transport.requests.Request())  # through the key file's token_uri
    assert creds.token and creds.expiry
    client = server.alloydb(transport, token=creds.token)
    cluster = f"{PARENT}/clusters/iam-db"
    key = p256_key()
    resp = client.generate_client_certificate(
        request=alloydb_v1.GenerateClientCertificateRequest(parent=cluster, public_key=spki_pem(key)))
    leaf = check_client_leaf(resp.pem_certificate_chain[0], resp.ca_cert, key.public_key())
    assert common_name(leaf) == email
    assert client.get_cluster(name=cluster).name == cluster
    with pytest.raises(exceptions.Forbidden):  # PermissionDenied on gRPC, 403 on REST
        client.delete_cluster(name=cluster)
    with pytest.raises(exceptions.Forbidden):
        client.list_clusters(parent=PARENT).pages.__next__()


def test_self_signed_jwt_credentials_work_unchanged(server, setup):
    """GAPIC clients given service-account credentials sign their own JWT (aud = the API's production host)."""
    from google.cloud import alloydb_v1

    _, path = setup["client"]
    creds = service_account.Credentials.from_service_account_file(str(path))
    client = alloydb_v1.AlloyDBAdminClient(
        transport="rest", client_options={"api_endpoint": f"{server.url}/alloydb"}, credentials=creds)
    assert client.get_cluster(name=f"{PARENT}/clusters/iam-db").name.endswith("/iam-db")


@pytest.mark.parametrize("transport", ["rest", "grpc"])
def test_no_binding_means_no_access(server, setup, transport):
    from google.cloud import alloydb_v1

    _, path = setup["nobody"]
    creds = service_account.Credentials.from_service_account_file(str(path), scopes=SCOPES)
    creds.refresh(google.auth.transport.requests.Request())
    client = server.alloydb(transport, token=creds.token)
    for name in ["iam-db", "never-existed"]:
        with pytest.raises(exceptions.Forbidden) as e:
            client.get_cluster(name=f"{PARENT}/clusters/{name}")
        assert "or it may not exist" in e.value.message
    with pytest.raises(exceptions.Forbidden):
        client.generate_client_certificate(request=alloydb_v1.GenerateClientCertificateRequest(
            parent=f"{PARENT}/clusters/iam-db", public_key=spki_pem(p256_key())))


def test_google_auth_refresh_errors_are_oauth_shaped(server, setup, tmp_path):
    _, path = setup["client"]
    key = json.loads(path.read_text())
    key["private_key_id"] = "0" * 40  # a key the server does not know
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(key))
    creds = service_account.Credentials.from_service_account_file(str(bad), scopes=SCOPES)
    with pytest.raises(google.auth.exceptions.RefreshError) as e:
        creds.refresh(google.auth.transport.requests.Request())
    assert "invalid_grant" in str(e.value)
    assert e.value.retryable is False


def test_gcloud_as_the_service_account(server, setup, tmp_path):
    email, path = setup["client"]
    env = gcloud_env(server, tmp_path)
    out = run(env, "auth", "activate-service-account", f"--key-file={path}")
    assert email in out.stderr
    described = json.loads(run(env, "alloydb", "clusters", "describe", "iam-db", f"--region={LOCATION}",
                               "--format=json").stdout)
    assert described["name"] == f"{PARENT}/clusters/iam-db"
    denied = run(env, "alloydb", "clusters", "delete", "iam-db", f"--region={LOCATION}", "--quiet", check=False)
    assert denied.returncode != 0 and "PERMISSION_DENIED" in denied.stderr
