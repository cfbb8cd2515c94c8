"""AlloyDB and Edge Container clusters share the resource-name shape `projects/P/locations/L/clusters/C`, but
they are different resources of different APIs: the same id in both must give two independent clusters, each
with its own CA, whatever the order of creation and deletion."""

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from google.api_core import exceptions

from certs import check_client_leaf, p256_key, spki_pem
from conftest import PARENT

pytestmark = pytest.mark.timeout(120)


def alloydb_cert(client, name):
    from google.cloud import alloydb_v1 as a

    key = p256_key()
    resp = client.generate_client_certificate(
        request=a.GenerateClientCertificateRequest(parent=name, public_key=spki_pem(key)))
    check_client_leaf(resp.pem_certificate_chain[0], resp.ca_cert, key.public_key())
    return resp.ca_cert


def edge_chains_to_its_ca(client, name):
    ca = client.get_cluster(name=name).cluster_ca_certificate
    cred = client.generate_offline_credential(cluster=name)
    key = serialization.load_pem_private_key(cred.client_key.encode(), None)
    check_client_leaf(cred.client_certificate, ca, key.public_key())
    return ca


@pytest.mark.parametrize("alloydb_first", [True, False], ids=["alloydb-first", "edge-first"])
def test_same_cluster_id_in_alloydb_and_edge_is_two_clusters(server, transport, alloydb_first, uid):
    from google.cloud import alloydb_v1 as a
    from google.cloud import edgecontainer_v1 as e

    adb, edge = server.alloydb(transport), server.edge(transport)
    name = f"{PARENT}/clusters/{uid}"
    make_alloydb = lambda: adb.create_cluster(parent=PARENT, cluster_id=uid, cluster=a.Cluster()).result(30)
    make_edge = lambda: edge.create_cluster(parent=PARENT, cluster_id=uid, cluster=e.Cluster(
        control_plane=e.Cluster.ControlPlane(local=e.Cluster.ControlPlane.Local()))).result(30)
    if alloydb_first:
        make_alloydb()
        alloydb_ca = alloydb_cert(adb, name)
        make_edge()
    else:
        make_edge()
        make_alloydb()
        alloydb_ca = alloydb_cert(adb, name)

    edge_ca = edge_chains_to_its_ca(edge, name)
    assert alloydb_cert(adb, name) == alloydb_ca, "creating the Edge cluster changed the AlloyDB cluster's CA"
    assert x509.load_pem_x509_certificate(alloydb_ca.encode()).public_key() != \
        x509.load_pem_x509_certificate(edge_ca.encode()).public_key(), "one CA shared by two clusters"

    # Deleting one leaves the other whole.
    edge.delete_cluster(name=name).result(timeout=30)
    assert alloydb_cert(adb, name) == alloydb_ca
    make_edge()
    adb.delete_cluster(name=name).result(timeout=30)
    edge_chains_to_its_ca(edge, name)
    with pytest.raises(exceptions.NotFound):
        adb.get_cluster(name=name)
