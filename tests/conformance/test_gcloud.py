"""gcloud against the server through api_endpoint_overrides and --access-token-file."""

import base64
import json
import os
import subprocess

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from certs import check_client_leaf
from conftest import LOCATION, PARENT, PROJECT

pytestmark = pytest.mark.timeout(240)


def named(entries, name):
    return next(e for e in entries if e["name"] == name)


@pytest.fixture(scope="module")
def gcloud(server, tmp_path_factory):
    config = tmp_path_factory.mktemp("gcloud-config")
    token_file = config / "token"
    token_file.write_text(server.token)
    env = dict(os.environ, CLOUDSDK_CONFIG=str(config), CLOUDSDK_CORE_DISABLE_PROMPTS="1")

    def run(*args, check=True, extra_env=None):
        cmd = ["gcloud", *args, f"--access-token-file={token_file}", "--format=json"]
        p = subprocess.run(cmd, env=dict(env, **(extra_env or {})), capture_output=True, text=True, timeout=120)
        if check and p.returncode != 0:
            raise AssertionError(f"{' '.join(args)} failed: {p.stderr}")
        return p

    for key, value in [
        ("core/project", PROJECT),
        ("component_manager/disable_update_check", "true"),
        ("core/disable_usage_reporting", "true"),
        ("api_endpoint_overrides/alloydb", f"{server.url}/alloydb/"),
        ("api_endpoint_overrides/edgecontainer", f"{server.url}/edgecontainer/"),
        ("api_endpoint_overrides/gkemulticloud", f"{server.url}/gkemulticloud/"),
    ]:
        subprocess.run(["gcloud", "config", "set", key, value], env=env, check=True, capture_output=True, timeout=60)
    return run


def test_alloydb_describe_and_list(server, gcloud, uid):
    from google.cloud import alloydb_v1 as t

    client = server.alloydb("rest")
    client.create_cluster(parent=PARENT, cluster_id=uid, cluster=t.Cluster()).result(timeout=30)
    client.create_instance(parent=f"{PARENT}/clusters/{uid}", instance_id="primary",
                           instance=t.Instance(instance_type=t.Instance.InstanceType.PRIMARY)).result(timeout=30)
    described = json.loads(gcloud("alloydb", "clusters", "describe", uid, f"--region={LOCATION}").stdout)
    assert described["name"] == f"{PARENT}/clusters/{uid}"
    assert described["state"] == "READY"
    listed = json.loads(gcloud("alloydb", "clusters", "list", f"--region={LOCATION}").stdout)
    assert f"{PARENT}/clusters/{uid}" in [c["name"] for c in listed]
    inst = json.loads(gcloud("alloydb", "instances", "describe", "primary", f"--cluster={uid}",
                             f"--region={LOCATION}").stdout)
    assert inst["ipAddress"].startswith("127.")
    missing = gcloud("alloydb", "clusters", "describe", uid + "-missing", f"--region={LOCATION}", check=False)
    assert missing.returncode != 0 and "NOT_FOUND" in missing.stderr


def test_attached_clusters_describe_and_list(server, gcloud, uid):
    import test_gkemulticloud as g
    from cryptography.hazmat.primitives.asymmetric import rsa

    g.create(server.gke("grpc"), uid, rsa.generate_private_key(public_exponent=65537, key_size=2048))
    described = json.loads(gcloud("container", "attached", "clusters", "describe", uid,
                                  f"--location={LOCATION}").stdout)
    assert described["name"] == f"{PARENT}/attachedClusters/{uid}"
    listed = json.loads(gcloud("container", "attached", "clusters", "list", f"--location={LOCATION}").stdout)
    assert described["name"] in [c["name"] for c in listed]


def test_edge_offline_get_credentials_writes_a_working_kubeconfig(server, gcloud, uid, tmp_path):
    from google.cloud import edgecontainer_v1 as t

    cluster = t.Cluster(control_plane=t.Cluster.ControlPlane(local=t.Cluster.ControlPlane.Local()),
                        endpoint="10.20.30.40", port=6443)
    server.edge("rest").create_cluster(parent=PARENT, cluster_id=uid, cluster=cluster).result(timeout=30)
    described = json.loads(gcloud("edge-cloud", "container", "clusters", "describe", uid,
                                  f"--location={LOCATION}").stdout)
    assert described["name"] == f"{PARENT}/clusters/{uid}"
    assert uid in [c["name"].rsplit("/", 1)[1] for c in json.loads(
        gcloud("edge-cloud", "container", "clusters", "list", f"--location={LOCATION}").stdout)]

    kube = tmp_path / "kubeconfig"
    gcloud("edge-cloud", "container", "clusters", "get-credentials", uid, f"--location={LOCATION}",
           "--offline-credential", extra_env={"KUBECONFIG": str(kube)})
    config = yaml.safe_load(kube.read_text())
    context = f"edgecontainer_{PROJECT}_{LOCATION}_{uid}_admin_offline"
    assert config["current-context"] == context
    cluster_entry = named(config["clusters"], context)["cluster"]
    assert cluster_entry["server"] == "https://10.20.30.40:6443"
    user = named(config["users"], context)["user"]
    ca_pem = base64.b64decode(cluster_entry["certificate-authority-data"]).decode()
    cert_pem = base64.b64decode(user["client-certificate-data"]).decode()
    key = serialization.load_pem_private_key(base64.b64decode(user["client-key-data"]), password=None)
    check_client_leaf(cert_pem, ca_pem, key.public_key())
    assert x509.load_pem_x509_certificate(ca_pem.encode()).subject.rfc4514_string()
