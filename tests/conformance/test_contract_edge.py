"""Edge Container contract details beyond test_edge.py: ids, control plane, per-cluster CAs, paging, the
offline credential's shape, operations."""

import datetime

import pytest
import requests
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from google.api_core import exceptions

from certs import check_client_leaf, common_name, verify_signed_by
from conftest import PARENT

pytestmark = pytest.mark.timeout(120)
EMPTY = "type.googleapis.com/google.protobuf.Empty"


def make_cluster(client, cluster_id, parent=PARENT, local=True, **fields):
    from google.cloud import edgecontainer_v1 as t

    cluster = t.Cluster(**fields)
    if local:
        cluster.control_plane = t.Cluster.ControlPlane(local=t.Cluster.ControlPlane.Local(node_count=1))
    return client.create_cluster(parent=parent, cluster_id=cluster_id, cluster=cluster).result(timeout=30)


def load_ca(pem):
    ca = x509.load_pem_x509_certificate(pem.encode())
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    verify_signed_by(ca, ca)  # a root: self-signed
    return ca


def test_ids_duplicates_and_unknown(server, transport, uid):
    client = server.edge(transport)
    make_cluster(client, uid)
    with pytest.raises(exceptions.Conflict):
        make_cluster(client, uid)
    for bad in ["Upper", "1digit", "a_b", "a-", "a" * 64]:
        with pytest.raises(exceptions.BadRequest):
            make_cluster(client, bad)
            pytest.fail(f"{bad!r} accepted")
    missing = f"{PARENT}/clusters/{uid}-missing"
    for call in [lambda: client.get_cluster(name=missing),
                 lambda: client.generate_offline_credential(cluster=missing),
                 lambda: client.delete_cluster(name=missing)]:
        with pytest.raises(exceptions.NotFound):
            call()


def test_control_plane_local_only_when_asked(server, transport, uid):
    client = server.edge(transport)
    local = client.get_cluster(name=make_cluster(client, uid + "-l").name)
    remote = client.get_cluster(name=make_cluster(client, uid + "-r", local=False).name)
    assert "local" in local.control_plane
    assert "local" not in remote.control_plane
    for c in [local, remote]:
        load_ca(c.cluster_ca_certificate)
        assert c.endpoint and 0 < c.port < 65536


def test_each_cluster_has_its_own_ca_and_credentials_chain_only_to_it(server, transport, uid):
    client = server.edge(transport)
    a, b = make_cluster(client, uid + "-a"), make_cluster(client, uid + "-b")
    ca_a, ca_b = load_ca(a.cluster_ca_certificate), load_ca(b.cluster_ca_certificate)
    assert ca_a.public_key() != ca_b.public_key()
    cred = client.generate_offline_credential(cluster=a.name)
    leaf = x509.load_pem_x509_certificate(cred.client_certificate.encode())
    verify_signed_by(leaf, ca_a)
    with pytest.raises((InvalidSignature, ValueError)):
        verify_signed_by(leaf, ca_b)
    # The CA does not change between reads.
    assert client.get_cluster(name=a.name).cluster_ca_certificate == a.cluster_ca_certificate


def test_offline_credential_shape(server, transport, uid):
    client = server.edge(transport)
    cluster = make_cluster(client, uid)
    before = datetime.datetime.now(datetime.timezone.utc)
    cred = client.generate_offline_credential(cluster=cluster.name)
    assert cred.user_id
    key = serialization.load_pem_private_key(cred.client_key.encode(), password=None)
    assert cred.client_key.lstrip().startswith("-----BEGIN ") and "PRIVATE KEY-----" in cred.client_key
    leaf = check_client_leaf(cred.client_certificate, cluster.cluster_ca_certificate, key.public_key())
    assert common_name(leaf) == cred.user_id
    expire = cred.expire_time
    assert expire.timestamp() == leaf.not_valid_after_utc.timestamp()
    assert expire > before
    # Same caller, same identity on every credential and on every transport.
    other = server.edge("grpc" if transport == "rest" else "rest").generate_offline_credential(cluster=cluster.name)
    assert other.user_id == cred.user_id
    assert other.client_certificate != cred.client_certificate


def test_list_pages_and_scope(server, transport, uid):
    from google.cloud import edgecontainer_v1 as t

    client = server.edge(transport)
    here, there = f"projects/{uid}/locations/l1", f"projects/{uid}/locations/l2"
    for i in range(3):
        make_cluster(client, f"e{i}", parent=here)
    make_cluster(client, "x", parent=there)
    pages = list(client.list_clusters(request=t.ListClustersRequest(parent=here, page_size=1)).pages)
    assert all(len(p.clusters) <= 1 for p in pages)
    assert sorted(c.name for p in pages for c in p.clusters) == [f"{here}/clusters/e{i}" for i in range(3)]
    assert [c.name for c in client.list_clusters(parent=there)] == [f"{there}/clusters/x"]


def test_create_and_delete_operations(server, transport, uid):
    client = server.edge(transport)
    from google.cloud import edgecontainer_v1 as t

    op = client.create_cluster(parent=PARENT, cluster_id=uid, cluster=t.Cluster(
        control_plane=t.Cluster.ControlPlane(local=t.Cluster.ControlPlane.Local())))
    assert op.done()
    assert op.operation.response.type_url == "type.googleapis.com/google.cloud.edgecontainer.v1.Cluster"
    name = op.operation.name
    assert name.startswith(f"{PARENT}/operations/")
    r = requests.get(f"{server.url}/edgecontainer/v1/{name}", headers={"Authorization": f"Bearer {server.token}"},
                     timeout=10)
    assert r.status_code == 200, r.text
    assert r.json()["done"] is True and r.json()["response"]["name"] == f"{PARENT}/clusters/{uid}"
    deleted = client.delete_cluster(name=f"{PARENT}/clusters/{uid}")
    assert deleted.done() and deleted.operation.response.type_url == EMPTY
    with pytest.raises(exceptions.NotFound):
        client.get_cluster(name=f"{PARENT}/clusters/{uid}")


def test_every_call_needs_the_token(server, transport, uid):
    admin = server.edge(transport)
    cluster = make_cluster(admin, uid)
    for token in [None, "wrong"]:
        client = server.edge(transport, token=token)
        for call in [lambda: client.get_cluster(name=cluster.name),
                     lambda: client.generate_offline_credential(cluster=cluster.name),
                     lambda: make_cluster(client, uid + "-anon"),
                     lambda: client.delete_cluster(name=cluster.name)]:
            with pytest.raises(exceptions.Unauthorized):
                call()
    assert admin.get_cluster(name=cluster.name).name == cluster.name
