"""State survives a restart on the same data directory: the admin token, resources, operations, every cluster's
CA; a fresh data directory is a different authority."""

import os
import stat

import jwt
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from google.api_core import exceptions
from google.longrunning import operations_pb2

import test_gkemulticloud as g
from certs import check_client_leaf, p256_key, spki_pem
from conftest import PARENT

pytestmark = pytest.mark.timeout(120)


def test_state_survives_restart(start_server, tmp_path, transport):
    from cryptography.hazmat.primitives.asymmetric import rsa
    from google.cloud import alloydb_v1 as a
    from google.cloud import edgecontainer_v1 as e

    # Distinct ids per API: test_contract_cross_api.py covers AlloyDB and Edge clusters sharing an id.
    data = str(tmp_path / "data")
    os.mkdir(data)
    s = start_server(data)
    mode = stat.S_IMODE(os.stat(os.path.join(data, "admin.token")).st_mode)
    assert mode == 0o600, oct(mode)
    token = s.token
    assert len(token) >= 20

    adb = s.alloydb(transport)
    created = adb.create_cluster(parent=PARENT, cluster_id="keep", cluster=a.Cluster())
    cluster = created.result(timeout=30)
    inst = adb.create_instance(parent=cluster.name, instance_id="primary", instance=a.Instance(
        instance_type=a.Instance.InstanceType.PRIMARY)).result(timeout=30)
    ca_before = adb.generate_client_certificate(request=a.GenerateClientCertificateRequest(
        parent=cluster.name, public_key=spki_pem(p256_key()))).ca_cert
    edge = s.edge(transport)
    edge_cluster = edge.create_cluster(parent=PARENT, cluster_id="keep-edge", cluster=e.Cluster(
        control_plane=e.Cluster.ControlPlane(local=e.Cluster.ControlPlane.Local()))).result(timeout=30)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    attached = g.create(s.gke(transport), "keep-attached", key)
    s.stop()

    s = start_server(data)
    assert s.token == token, "the admin token is written once"
    adb = s.alloydb(transport)
    assert adb.get_cluster(name=cluster.name).uid == cluster.uid
    again = adb.get_instance(name=inst.name)
    assert again.ip_address == inst.ip_address and again.uid == inst.uid
    assert adb.get_connection_info(parent=inst.name).ip_address == inst.ip_address
    op = adb.get_operation(request=operations_pb2.GetOperationRequest(name=created.operation.name))
    assert op.done and op.name == created.operation.name
    pub = p256_key()
    resp = adb.generate_client_certificate(request=a.GenerateClientCertificateRequest(
        parent=cluster.name, public_key=spki_pem(pub)))
    assert resp.ca_cert == ca_before, "the cluster CA survives a restart"
    check_client_leaf(resp.pem_certificate_chain[0], ca_before, pub.public_key())
    with pytest.raises(exceptions.Conflict):
        adb.create_cluster(parent=PARENT, cluster_id="keep", cluster=a.Cluster()).result(timeout=30)

    edge = s.edge(transport)
    assert edge.get_cluster(name=edge_cluster.name).cluster_ca_certificate == edge_cluster.cluster_ca_certificate
    cred = edge.generate_offline_credential(cluster=edge_cluster.name)
    check_client_leaf(cred.client_certificate, edge_cluster.cluster_ca_certificate,
                      serialization.load_pem_private_key(cred.client_key.encode(), None).public_key())

    resp = g.exchange(s.gke(transport, token=None), attached.name, g.sa_token(key))
    assert resp.access_token
    doc = requests.get(f"{s.url}/.well-known/openid-configuration", timeout=10).json()
    jwks = requests.get(doc["jwks_uri"], timeout=10).json()
    kid = jwt.get_unverified_header(resp.access_token)["kid"]
    public = jwt.PyJWK(next(k for k in jwks["keys"] if k["kid"] == kid)).key
    jwt.decode(resp.access_token, public, algorithms=["ES256"], options={"verify_aud": False})


def test_a_fresh_data_dir_is_another_authority(start_server, tmp_path):
    first, second = tmp_path / "one", tmp_path / "two"
    first.mkdir()
    second.mkdir()
    s1, s2 = start_server(str(first)), start_server(str(second))
    assert s1.token != s2.token
    assert s1.addr != s2.addr
    from google.cloud import alloydb_v1 as a

    s1.alloydb("grpc").create_cluster(parent=PARENT, cluster_id="only-here", cluster=a.Cluster()).result(timeout=30)
    with pytest.raises(exceptions.NotFound):
        s2.alloydb("grpc").get_cluster(name=f"{PARENT}/clusters/only-here")
    with pytest.raises(exceptions.Unauthorized):
        s2.alloydb("grpc", token=s1.token).list_clusters(parent=PARENT)
