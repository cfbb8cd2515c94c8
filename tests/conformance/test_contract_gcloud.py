"""gcloud details beyond test_gcloud.py: delete (`?force=False`), instances list, the offline kubeconfig checked
against the cluster as the API reports it (user id from the certificate, default endpoint and port), the
local-control-plane precondition, and a bad token."""

import base64
import inspect
import json
import subprocess

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from certs import check_client_leaf, common_name
from conftest import LOCATION, PARENT, PROJECT
from test_gcloud import gcloud  # noqa: F401  (the module-scoped gcloud fixture)

pytestmark = pytest.mark.timeout(240)


def test_alloydb_instances_list_and_cluster_delete(server, gcloud, uid):  # noqa: F811
    from google.cloud import alloydb_v1 as t

    client = server.alloydb("grpc")
    cluster = client.create_cluster(parent=PARENT, cluster_id=uid, cluster=t.Cluster()).result(timeout=30)
    for iid in ["primary", "pool"]:
        client.create_instance(parent=cluster.name, instance_id=iid, instance=t.Instance(
            instance_type=t.Instance.InstanceType.PRIMARY)).result(timeout=30)
    listed = json.loads(gcloud("alloydb", "instances", "list", f"--cluster={uid}", f"--region={LOCATION}").stdout)
    assert sorted(i["name"] for i in listed) == [f"{cluster.name}/instances/pool", f"{cluster.name}/instances/primary"]
    assert all(i["ipAddress"].startswith("127.") for i in listed)
    for iid in ["primary", "pool"]:
        client.delete_instance(name=f"{cluster.name}/instances/{iid}").result(timeout=30)
    gcloud("alloydb", "clusters", "delete", uid, f"--region={LOCATION}", "--quiet")
    gone = gcloud("alloydb", "clusters", "describe", uid, f"--region={LOCATION}", check=False)
    assert gone.returncode != 0 and "NOT_FOUND" in gone.stderr


def test_offline_kubeconfig_matches_the_cluster(server, gcloud, uid, tmp_path):  # noqa: F811
    from google.cloud import edgecontainer_v1 as t

    client = server.edge("rest")
    client.create_cluster(parent=PARENT, cluster_id=uid, cluster=t.Cluster(
        control_plane=t.Cluster.ControlPlane(local=t.Cluster.ControlPlane.Local()))).result(timeout=30)
    cluster = client.get_cluster(name=f"{PARENT}/clusters/{uid}")
    kube = tmp_path / "kubeconfig"
    p = gcloud("edge-cloud", "container", "clusters", "get-credentials", uid, f"--location={LOCATION}",
               "--offline-credential", extra_env={"KUBECONFIG": str(kube)})
    assert "This offline credential will expire at" in p.stderr
    config = yaml.safe_load(kube.read_text())
    user_entry = config["users"][0]
    cert_pem = base64.b64decode(user_entry["user"]["client-certificate-data"]).decode()
    user_id = common_name(x509.load_pem_x509_certificate(cert_pem.encode()))
    context = f"edgecontainer_{PROJECT}_{LOCATION}_{uid}_{user_id}_offline"
    assert config["current-context"] == context
    assert [c["name"] for c in config["contexts"]] == [context]
    entry = next(c for c in config["clusters"] if c["name"] == context)["cluster"]
    assert entry["server"] == f"https://{cluster.endpoint}:{cluster.port or 443}"
    ca_pem = base64.b64decode(entry["certificate-authority-data"]).decode()
    assert ca_pem == cluster.cluster_ca_certificate
    key = serialization.load_pem_private_key(base64.b64decode(user_entry["user"]["client-key-data"]), None)
    check_client_leaf(cert_pem, ca_pem, key.public_key())
    # kubectl reads what gcloud wrote.
    view = subprocess.run(["kubectl", "config", "view", "--raw", "-o", "json", f"--kubeconfig={kube}"],
                          capture_output=True, text=True, timeout=60)
    assert view.returncode == 0, view.stderr
    assert json.loads(view.stdout)["current-context"] == context


def test_offline_credentials_need_a_local_control_plane(server, gcloud, uid, tmp_path):  # noqa: F811
    from google.cloud import edgecontainer_v1 as t

    server.edge("grpc").create_cluster(parent=PARENT, cluster_id=uid, cluster=t.Cluster()).result(timeout=30)
    kube = tmp_path / "kubeconfig"
    p = gcloud("edge-cloud", "container", "clusters", "get-credentials", uid, f"--location={LOCATION}",
               "--offline-credential", check=False, extra_env={"KUBECONFIG": str(kube)})
    assert "only in local control plane cluster" in p.stderr, p.stderr
    assert not kube.exists() or uid not in kube.read_text()


def test_bad_token_file_is_refused(server, gcloud, tmp_path):  # noqa: F811
    bad = tmp_path / "bad-token"
    bad.write_text("not-the-token")
    env = inspect.getclosurevars(gcloud).nonlocals["env"]  # the fixture's CLOUDSDK_CONFIG, without its token
    p = subprocess.run(["gcloud", "alloydb", "clusters", "list", f"--region={LOCATION}", f"--access-token-file={bad}",
                        "--format=json"], env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode != 0
    assert "UNAUTHENTICATED" in p.stderr or "401" in p.stderr, p.stderr
