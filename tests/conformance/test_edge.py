"""Edge Container v1 clusters and offline credentials over REST and gRPC."""

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from google.api_core import exceptions

from certs import check_client_leaf, common_name
from conftest import PARENT

pytestmark = pytest.mark.timeout(120)


def make_cluster(client, cluster_id, local=True):
    from google.cloud import edgecontainer_v1 as t

    cluster = t.Cluster()
    if local:
        cluster.control_plane = t.Cluster.ControlPlane(local=t.Cluster.ControlPlane.Local())
    return client.create_cluster(parent=PARENT, cluster_id=cluster_id, cluster=cluster).result(timeout=30)


def test_cluster_lifecycle_and_offline_credential(server, transport, uid):
    client = server.edge(transport)
    cluster = make_cluster(client, uid)
    got = client.get_cluster(name=cluster.name)
    assert "local" in got.control_plane
    ca = x509.load_pem_x509_certificate(got.cluster_ca_certificate.encode())
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert got.endpoint and got.port > 0
    assert cluster.name in [c.name for c in client.list_clusters(parent=PARENT)]

    cred = client.generate_offline_credential(cluster=cluster.name)
    key = serialization.load_pem_private_key(cred.client_key.encode(), password=None)
    leaf = check_client_leaf(cred.client_certificate, got.cluster_ca_certificate, key.public_key())
    assert common_name(leaf) == cred.user_id
    assert cred.expire_time.timestamp() == leaf.not_valid_after_utc.timestamp()

    second = client.generate_offline_credential(cluster=cluster.name)
    assert second.client_key != cred.client_key, "a fresh key pair every time"

    client.delete_cluster(name=cluster.name).result(timeout=30)
    with pytest.raises(exceptions.NotFound):
        client.generate_offline_credential(cluster=cluster.name)


def test_bad_names_and_missing_token(server, transport):
    client = server.edge(transport)
    with pytest.raises(exceptions.BadRequest):
        client.get_cluster(name=f"{PARENT}/clusters/Not_Valid")
    anonymous = server.edge(transport, token=None)
    with pytest.raises(exceptions.Unauthorized):
        anonymous.list_clusters(parent=PARENT)
