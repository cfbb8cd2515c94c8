"""AlloyDB Admin (v1 and v1beta, the connector's version) over REST and gRPC."""

import uuid

import pytest
from google.api_core import exceptions
from google.protobuf import duration_pb2

from certs import check_client_leaf, ed25519_key, p256_key, pkcs1_pem, rsa_key, spki_pem
from conftest import PARENT

pytestmark = pytest.mark.timeout(120)


def types(version):
    if version == "v1":
        from google.cloud import alloydb_v1 as t
    else:
        from google.cloud import alloydb_v1beta as t
    return t


def make_cluster(client, t, cluster_id):
    op = client.create_cluster(parent=PARENT, cluster_id=cluster_id, cluster=t.Cluster(network="default"))
    return op.result(timeout=30)


@pytest.mark.parametrize("version", ["v1", "v1beta"])
def test_cluster_lifecycle(server, transport, version, uid):
    t = types(version)
    client = server.alloydb(transport, version)
    cluster = make_cluster(client, t, uid)
    assert cluster.name == f"{PARENT}/clusters/{uid}"
    assert cluster.state == t.Cluster.State.READY
    assert client.get_cluster(name=cluster.name).uid == cluster.uid

    with pytest.raises(exceptions.Conflict):  # AlreadyExists on gRPC, 409 on REST
        make_cluster(client, t, uid)
    for bad in ["Upper", "1digit", "under_score", "a" * 64]:
        with pytest.raises(exceptions.BadRequest):
            make_cluster(client, t, bad)

    client.create_cluster(
        request=t.CreateClusterRequest(parent=PARENT, cluster_id=uid + "-dry", cluster=t.Cluster(), validate_only=True)
    )
    with pytest.raises(exceptions.NotFound):
        client.get_cluster(name=f"{PARENT}/clusters/{uid}-dry")

    client.delete_cluster(name=cluster.name).result(timeout=30)
    with pytest.raises(exceptions.NotFound):
        client.get_cluster(name=cluster.name)
    with pytest.raises(exceptions.NotFound):
        client.delete_cluster(name=cluster.name)


def test_list_pages_walk_every_cluster(server, transport, uid):
    from google.cloud import alloydb_v1 as t

    client = server.alloydb(transport)
    parent = f"projects/{uid}/locations/europe-west1"
    ids = [f"c{i}" for i in range(3)]
    for i in ids:
        client.create_cluster(parent=parent, cluster_id=i, cluster=t.Cluster()).result(timeout=30)
    pager = client.list_clusters(request=t.ListClustersRequest(parent=parent, page_size=1))
    pages = list(pager.pages)
    assert len(pages) >= 3
    assert all(len(p.clusters) <= 1 for p in pages)
    assert sorted(c.name.rsplit("/", 1)[1] for p in pages for c in p.clusters) == ids


@pytest.mark.parametrize("version", ["v1", "v1beta"])
def test_instances_and_connection_info(server, transport, version, uid):
    t = types(version)
    client = server.alloydb(transport, version)
    cluster = make_cluster(client, t, uid)
    addresses = set()
    for iid in ["primary", "pool"]:
        op = client.create_instance(
            parent=cluster.name,
            instance_id=iid,
            instance=t.Instance(instance_type=t.Instance.InstanceType.PRIMARY),
        )
        inst = op.result(timeout=30)
        assert client.get_instance(name=inst.name).ip_address == inst.ip_address
        info = client.get_connection_info(parent=inst.name)
        assert info.ip_address.startswith("127.")
        assert info.instance_uid == inst.uid
        addresses.add(info.ip_address)
    assert len(addresses) == 2
    names = [i.name for i in client.list_instances(parent=cluster.name)]
    assert sorted(names) == [f"{cluster.name}/instances/pool", f"{cluster.name}/instances/primary"]
    client.delete_instance(name=f"{cluster.name}/instances/pool").result(timeout=30)
    with pytest.raises(exceptions.NotFound):
        client.get_connection_info(parent=f"{cluster.name}/instances/pool")


KEYS = {
    "rsa2048-spki": lambda: (lambda k: (k, spki_pem(k)))(rsa_key()),
    "rsa2048-pkcs1": lambda: (lambda k: (k, pkcs1_pem(k)))(rsa_key()),
    "p256": lambda: (lambda k: (k, spki_pem(k)))(p256_key()),
    "ed25519": lambda: (lambda k: (k, spki_pem(k)))(ed25519_key()),
}


@pytest.mark.parametrize("version", ["v1", "v1beta"])
@pytest.mark.parametrize("key_kind", sorted(KEYS))
def test_generate_client_certificate(server, transport, version, key_kind, uid):
    t = types(version)
    client = server.alloydb(transport, version)
    cluster = make_cluster(client, t, uid)
    key, pem = KEYS[key_kind]()
    resp = client.generate_client_certificate(
        request=t.GenerateClientCertificateRequest(
            parent=cluster.name, public_key=pem, cert_duration=duration_pb2.Duration(seconds=3 * 3600)
        )
    )
    chain = list(resp.pem_certificate_chain)
    assert all(p.endswith("\n") for p in chain)
    leaf = check_client_leaf(chain[0], resp.ca_cert, key.public_key())
    lifetime = (leaf.not_valid_after_utc - leaf.not_valid_before_utc).total_seconds()
    assert lifetime == 3 * 3600 + 60  # notBefore is backdated one minute

    default = client.generate_client_certificate(
        request=t.GenerateClientCertificateRequest(parent=cluster.name, public_key=pem)
    )
    leaf = check_client_leaf(default.pem_certificate_chain[0], default.ca_cert, key.public_key())
    assert (leaf.not_valid_after_utc - leaf.not_valid_before_utc).total_seconds() == 3600 + 60
    assert default.ca_cert == resp.ca_cert


def test_bad_certificate_requests_are_invalid_argument(server, transport, uid):
    from google.cloud import alloydb_v1 as t

    client = server.alloydb(transport)
    cluster = make_cluster(client, t, uid)
    good = spki_pem(p256_key())
    cases = [
        (dict(public_key=spki_pem(rsa_key(1024))), "public_key"),
        (dict(public_key="-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"), "public_key"),
        (dict(public_key="not a key"), "public_key"),
        (dict(public_key=""), "public_key"),
        (dict(public_key=good, cert_duration=duration_pb2.Duration(seconds=1800)), "cert_duration"),
        (dict(public_key=good, cert_duration=duration_pb2.Duration(seconds=25 * 3600)), "cert_duration"),
        (dict(public_key=good, request_id="not-a-uuid"), "request_id"),
        (dict(public_key=good, request_id="00000000-0000-0000-0000-000000000000"), "request_id"),
    ]
    for fields, field in cases:
        with pytest.raises(exceptions.BadRequest) as e:
            client.generate_client_certificate(
                request=t.GenerateClientCertificateRequest(parent=cluster.name, **fields)
            )
        assert field in e.value.message, (fields, e.value.message)
    with pytest.raises(exceptions.NotFound):
        client.generate_client_certificate(
            request=t.GenerateClientCertificateRequest(parent=f"{PARENT}/clusters/{uid}-missing", public_key=good)
        )


def test_request_id_idempotency_survives_restart(start_server, tmp_path, transport):
    from google.cloud import alloydb_v1beta as t

    data = str(tmp_path)
    s = start_server(data)
    client = s.alloydb(transport, "v1beta")
    cluster = make_cluster(client, t, "idem")
    pem = spki_pem(p256_key())
    rid = str(uuid.uuid4())
    req = t.GenerateClientCertificateRequest(parent=cluster.name, public_key=pem, request_id=rid)
    first = client.generate_client_certificate(request=req)
    assert client.generate_client_certificate(request=req) == first
    other = t.GenerateClientCertificateRequest(parent=cluster.name, public_key=spki_pem(p256_key()), request_id=rid)
    with pytest.raises(exceptions.BadRequest) as e:
        client.generate_client_certificate(request=other)
    assert "request_id" in e.value.message
    s.stop()

    s = start_server(data)
    client = s.alloydb(transport, "v1beta")
    assert client.generate_client_certificate(request=req) == first


def test_missing_or_wrong_token_is_unauthenticated(server, transport):
    for token in [None, "wrong-token"]:
        client = server.alloydb(transport, token=token)
        with pytest.raises(exceptions.Unauthorized):
            client.get_cluster(name=f"{PARENT}/clusters/anything")


def test_operations_read_back(server, transport, uid):
    from google.cloud import alloydb_v1 as t
    from google.longrunning import operations_pb2

    client = server.alloydb(transport)
    op = client.create_cluster(parent=PARENT, cluster_id=uid, cluster=t.Cluster())
    name = op.operation.name
    assert name.startswith(f"{PARENT}/operations/")
    again = client.get_operation(request=operations_pb2.GetOperationRequest(name=name))
    assert again.done and again.name == name
