"""AlloyDB contract details beyond test_alloydb.py: id boundaries, per-cluster CAs, chain shape, more key types,
duration bounds, idempotency edge cases, instance errors, delete operations and the Operations service."""

import uuid

import grpc
import pytest
import requests
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import dsa, ec, rsa, x25519
from google.api_core import exceptions
from google.longrunning import operations_pb2, operations_pb2_grpc
from google.protobuf import duration_pb2

from certs import check_client_leaf, p256_key, pkcs1_pem, rsa_key, spki_pem, verify_signed_by
from conftest import PARENT, PROJECT

pytestmark = pytest.mark.timeout(120)
EMPTY = "type.googleapis.com/google.protobuf.Empty"


def types(version):
    if version == "v1":
        from google.cloud import alloydb_v1 as t
    else:
        from google.cloud import alloydb_v1beta as t
    return t


def make_cluster(client, t, cluster_id, parent=PARENT):
    return client.create_cluster(parent=parent, cluster_id=cluster_id, cluster=t.Cluster()).result(timeout=30)


def gcc(client, t, parent, pem, **fields):
    return client.generate_client_certificate(
        request=t.GenerateClientCertificateRequest(parent=parent, public_key=pem, **fields))


def test_cluster_id_boundaries(server, transport, uid):
    t = types("v1")
    client = server.alloydb(transport)
    parent = f"projects/{uid}/locations/us-east1"
    longest = "a" + "b1-" * 20 + "cd"  # 63 characters, the RFC 1035 maximum
    assert len(longest) == 63
    for good in ["a", longest, "a-1"]:
        assert make_cluster(client, t, good, parent).name == f"{parent}/clusters/{good}"
    for bad in ["a-", "-a", "", "a.b", "é", "a" * 64, "A"]:
        with pytest.raises(exceptions.BadRequest):
            make_cluster(client, t, bad, parent)
            pytest.fail(f"cluster id {bad!r} was accepted")
    listed = sorted(c.name.rsplit("/", 1)[1] for c in client.list_clusters(parent=parent))
    assert listed == sorted(["a", longest, "a-1"])


@pytest.mark.parametrize("version", ["v1", "v1beta"])
def test_list_is_scoped_to_its_parent_and_pages_on_every_version(server, transport, version, uid):
    t = types(version)
    client = server.alloydb(transport, version)
    here, elsewhere = f"projects/{uid}/locations/asia-east1", f"projects/{uid}/locations/asia-east2"
    for i in range(3):
        make_cluster(client, t, f"c{i}", here)
    make_cluster(client, t, "other", elsewhere)
    pages = list(client.list_clusters(request=t.ListClustersRequest(parent=here, page_size=1)).pages)
    assert all(len(p.clusters) <= 1 for p in pages)
    assert sorted(c.name for p in pages for c in p.clusters) == [f"{here}/clusters/c{i}" for i in range(3)]
    assert [c.name for c in client.list_clusters(parent=elsewhere)] == [f"{elsewhere}/clusters/other"]
    assert list(client.list_clusters(parent=f"projects/{uid}/locations/nowhere")) == []


def test_delete_returns_a_done_operation_with_empty(server, transport, uid):
    t = types("v1")
    client = server.alloydb(transport)
    cluster = make_cluster(client, t, uid)
    inst = client.create_instance(parent=cluster.name, instance_id="i1",
                                  instance=t.Instance(instance_type=t.Instance.InstanceType.PRIMARY)).result(30)
    for op in [client.delete_instance(name=inst.name), client.delete_cluster(name=cluster.name)]:
        assert op.done()
        assert op.operation.response.type_url == EMPTY
        assert op.operation.name.startswith(f"{PARENT}/operations/")
        op.result(timeout=10)


def test_operations_via_raw_rest_and_the_grpc_operations_service(server, uid):
    t = types("v1")
    created = server.alloydb("rest").create_cluster(parent=PARENT, cluster_id=uid, cluster=t.Cluster())
    name = created.operation.name
    headers = {"Authorization": f"Bearer {server.token}"}
    r = requests.get(f"{server.url}/alloydb/v1/{name}", headers=headers, timeout=10)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["name"] == name and body["done"] is True
    assert body["response"]["@type"] == "type.googleapis.com/google.cloud.alloydb.v1.Cluster"
    assert body["response"]["name"] == f"{PARENT}/clusters/{uid}"

    stub = operations_pb2_grpc.OperationsStub(server.channel())
    op = stub.GetOperation(operations_pb2.GetOperationRequest(name=name), timeout=10)
    assert op.done and op.name == name
    assert op.response.type_url == "type.googleapis.com/google.cloud.alloydb.v1.Cluster"
    cluster = t.Cluster.deserialize(op.response.value)
    assert cluster.name == f"{PARENT}/clusters/{uid}"

    missing = f"{PARENT}/operations/does-not-exist-{uid}"
    r = requests.get(f"{server.url}/alloydb/v1/{missing}", headers=headers, timeout=10)
    assert r.status_code == 404 and r.json()["error"]["status"] == "NOT_FOUND", r.text
    with pytest.raises(grpc.RpcError) as e:
        stub.GetOperation(operations_pb2.GetOperationRequest(name=missing), timeout=10)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    anonymous = operations_pb2_grpc.OperationsStub(server.channel(token=None))
    with pytest.raises(grpc.RpcError) as e:
        anonymous.GetOperation(operations_pb2.GetOperationRequest(name=name), timeout=10)
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_each_cluster_has_its_own_ca(server, transport, uid):
    t = types("v1")
    client = server.alloydb(transport)
    a, b = make_cluster(client, t, uid + "-a"), make_cluster(client, t, uid + "-b")
    key = p256_key()
    ra, rb = gcc(client, t, a.name, spki_pem(key)), gcc(client, t, b.name, spki_pem(key))
    ca_a = x509.load_pem_x509_certificate(ra.ca_cert.encode())
    ca_b = x509.load_pem_x509_certificate(rb.ca_cert.encode())
    assert ca_a.public_key() != ca_b.public_key()
    assert ca_a.fingerprint(ca_a.signature_hash_algorithm) != ca_b.fingerprint(ca_b.signature_hash_algorithm)
    leaf_a = x509.load_pem_x509_certificate(ra.pem_certificate_chain[0].encode())
    with pytest.raises((InvalidSignature, ValueError)):
        verify_signed_by(leaf_a, ca_b)
    # A cluster's CA is stable: a second certificate chains to the same CA.
    assert gcc(client, t, a.name, spki_pem(p256_key())).ca_cert == ra.ca_cert


@pytest.mark.parametrize("version", ["v1", "v1beta"])
def test_chain_is_leaf_first_and_every_link_verifies(server, transport, version, uid):
    t = types(version)
    client = server.alloydb(transport, version)
    cluster = make_cluster(client, t, uid)
    key = rsa_key()
    resp = gcc(client, t, cluster.name, spki_pem(key))
    chain = [x509.load_pem_x509_certificate(p.encode()) for p in resp.pem_certificate_chain]
    assert chain and all(p.endswith("\n") for p in resp.pem_certificate_chain)
    for p in resp.pem_certificate_chain:
        assert p.count("-----BEGIN CERTIFICATE-----") == 1, "one certificate per element"
    for child, parent in zip(chain, chain[1:]):
        verify_signed_by(child, parent)
        assert child.issuer == parent.subject
    ca = x509.load_pem_x509_certificate(resp.ca_cert.encode())
    verify_signed_by(chain[-1], ca)
    assert resp.ca_cert.count("-----BEGIN CERTIFICATE-----") == 1
    check_client_leaf(resp.pem_certificate_chain[0], resp.ca_cert if len(chain) == 1
                      else resp.pem_certificate_chain[1], key.public_key())


@pytest.mark.parametrize("make_key", [
    pytest.param(lambda: rsa_key(3072), id="rsa3072"),
    pytest.param(lambda: rsa_key(4096), id="rsa4096"),
    pytest.param(lambda: ec.generate_private_key(ec.SECP384R1()), id="p384"),
])
def test_other_accepted_key_types(server, transport, make_key, uid):
    t = types("v1beta")
    client = server.alloydb(transport, "v1beta")
    cluster = make_cluster(client, t, uid)
    key = make_key()
    resp = gcc(client, t, cluster.name, spki_pem(key))
    check_client_leaf(resp.pem_certificate_chain[0], resp.ca_cert, key.public_key())
    if isinstance(key, rsa.RSAPrivateKey):
        resp = gcc(client, t, cluster.name, pkcs1_pem(key))
        check_client_leaf(resp.pem_certificate_chain[0], resp.ca_cert, key.public_key())


def test_refused_keys_are_invalid_argument_naming_public_key(server, transport, uid):
    from cryptography.hazmat.primitives import serialization

    t = types("v1")
    client = server.alloydb(transport)
    cluster = make_cluster(client, t, uid)
    p256 = p256_key()
    private_pem = p256.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption()).decode()
    spki_body = "".join(spki_pem(p256).splitlines()[1:-1])
    cases = {
        "P-521": spki_pem(ec.generate_private_key(ec.SECP521R1())),
        "secp256k1": spki_pem(ec.generate_private_key(ec.SECP256K1())),
        "X25519 (not a signing key)": spki_pem(x25519.X25519PrivateKey.generate()),
        "DSA": spki_pem(dsa.generate_private_key(2048)),
        "RSA-1024 PKCS#1": pkcs1_pem(rsa_key(1024)),
        "a private key": private_pem,
        "SPKI labelled as PKCS#1": f"-----BEGIN RSA PUBLIC KEY-----\n{spki_body}\n-----END RSA PUBLIC KEY-----\n",
        "two keys": spki_pem(p256) + spki_pem(p256_key()),
        "truncated": spki_pem(p256)[:-40],
        "base64 garbage": "-----BEGIN PUBLIC KEY-----\n!!!!\n-----END PUBLIC KEY-----\n",
    }
    for what, pem in cases.items():
        with pytest.raises(exceptions.BadRequest) as e:
            gcc(client, t, cluster.name, pem)
            pytest.fail(f"{what} was accepted")
        assert "public_key" in e.value.message, (what, e.value.message)


def test_cert_duration_bounds(server, transport, uid):
    t = types("v1")
    client = server.alloydb(transport)
    cluster = make_cluster(client, t, uid)
    key = p256_key()
    for seconds, nanos in [(3600, 0), (86400, 0), (5400, 0), (7200, 500_000_000)]:
        resp = gcc(client, t, cluster.name, spki_pem(key), cert_duration=duration_pb2.Duration(seconds=seconds,
                                                                                                nanos=nanos))
        leaf = check_client_leaf(resp.pem_certificate_chain[0], resp.ca_cert, key.public_key())
        lifetime = (leaf.not_valid_after_utc - leaf.not_valid_before_utc).total_seconds()
        assert abs(lifetime - (seconds + 60)) <= 1, (seconds, lifetime)
    for seconds in [3599, 86401, 0 - 3600, 10 * 365 * 86400]:
        with pytest.raises(exceptions.BadRequest) as e:
            gcc(client, t, cluster.name, spki_pem(key), cert_duration=duration_pb2.Duration(seconds=seconds))
            pytest.fail(f"{seconds}s accepted")
        assert "cert_duration" in e.value.message


@pytest.mark.parametrize("version", ["v1", "v1beta"])
def test_request_id_semantics(server, transport, version, uid):
    t = types(version)
    client = server.alloydb(transport, version)
    cluster, other_cluster = make_cluster(client, t, uid), make_cluster(client, t, uid + "-2")
    pem = spki_pem(p256_key())
    rid = str(uuid.uuid4())
    first = gcc(client, t, cluster.name, pem, request_id=rid)
    again = gcc(client, t, cluster.name, pem, request_id=rid)
    assert list(again.pem_certificate_chain) == list(first.pem_certificate_chain)
    assert again.ca_cert == first.ca_cert
    fresh = gcc(client, t, cluster.name, pem, request_id=str(uuid.uuid4()))
    assert fresh.pem_certificate_chain[0] != first.pem_certificate_chain[0], "a new id mints a new certificate"
    without = gcc(client, t, cluster.name, pem)
    assert without.pem_certificate_chain[0] != first.pem_certificate_chain[0]

    changed = {
        "another key": dict(parent=cluster.name, pem=spki_pem(p256_key())),
        "another duration": dict(parent=cluster.name, pem=pem, cert_duration=duration_pb2.Duration(seconds=7200)),
        "another cluster": dict(parent=other_cluster.name, pem=pem),
    }
    for what, fields in changed.items():
        parent, key_pem = fields.pop("parent"), fields.pop("pem")
        with pytest.raises((exceptions.BadRequest, exceptions.Conflict)):  # INVALID_ARGUMENT/FAILED_PRECONDITION/ALREADY_EXISTS
            gcc(client, t, parent, key_pem, request_id=rid, **fields)
            pytest.fail(f"same request_id with {what} minted a certificate")
    # The refusals did not disturb the remembered answer.
    assert list(gcc(client, t, cluster.name, pem, request_id=rid).pem_certificate_chain) == list(
        first.pem_certificate_chain)
    for bad in ["00000000-0000-0000-0000-000000000000", "1234", "zzzzzzzz-zzzz-zzzz-zzzz-zzzzzzzzzzzz",
                str(uuid.uuid4()) + "0"]:
        with pytest.raises(exceptions.BadRequest):
            gcc(client, t, cluster.name, pem, request_id=bad)
            pytest.fail(f"request_id {bad!r} accepted")


def test_instance_errors(server, transport, uid):
    t = types("v1")
    client = server.alloydb(transport)
    cluster = make_cluster(client, t, uid)
    primary = t.Instance(instance_type=t.Instance.InstanceType.PRIMARY)
    client.create_instance(parent=cluster.name, instance_id="i1", instance=primary).result(timeout=30)
    with pytest.raises(exceptions.Conflict):
        client.create_instance(parent=cluster.name, instance_id="i1", instance=primary).result(timeout=30)
    with pytest.raises(exceptions.BadRequest):
        client.create_instance(parent=cluster.name, instance_id="Bad_Id", instance=primary).result(timeout=30)
    with pytest.raises(exceptions.NotFound):
        client.create_instance(parent=f"{PARENT}/clusters/{uid}-nope", instance_id="i1",
                               instance=primary).result(timeout=30)
    for call in [lambda: client.get_instance(name=f"{cluster.name}/instances/nope"),
                 lambda: client.get_connection_info(parent=f"{cluster.name}/instances/nope"),
                 lambda: client.delete_instance(name=f"{cluster.name}/instances/nope")]:
        with pytest.raises(exceptions.NotFound):
            call()
    # Listing under an unknown cluster: NOT_FOUND or an empty list (Google lists `clusters/-` too), never an error
    # of another kind and never someone else's instances.
    try:
        assert list(client.list_instances(parent=f"{PARENT}/clusters/{uid}-nope")) == []
    except exceptions.NotFound:
        pass


def test_instance_addresses_are_distinct_across_clusters(server, transport, uid):
    t = types("v1")
    client = server.alloydb(transport)
    addresses = []
    for suffix in ["a", "b"]:
        cluster = make_cluster(client, t, f"{uid}-{suffix}")
        inst = client.create_instance(parent=cluster.name, instance_id="primary", instance=t.Instance(
            instance_type=t.Instance.InstanceType.PRIMARY)).result(timeout=30)
        info = client.get_connection_info(parent=inst.name)
        assert info.ip_address == inst.ip_address
        assert info.instance_uid == inst.uid and inst.uid
        addresses.append(info.ip_address)
    assert len(set(addresses)) == 2
    assert all(a.startswith("127.") for a in addresses)


@pytest.mark.parametrize("version", ["v1", "v1beta"])
def test_every_admin_call_needs_the_token(server, transport, version, uid):
    t = types(version)
    admin = server.alloydb(transport, version)
    cluster = make_cluster(admin, t, uid)
    pem = spki_pem(p256_key())
    for token in [None, "wrong", server.token + "x"]:
        client = server.alloydb(transport, version, token=token)
        for call in [
            lambda: client.list_clusters(parent=PARENT),
            lambda: make_cluster(client, t, uid + "-anon"),
            lambda: gcc(client, t, cluster.name, pem),
            lambda: client.delete_cluster(name=cluster.name),
        ]:
            with pytest.raises(exceptions.Unauthorized):
                call()
    assert admin.get_cluster(name=cluster.name).name == cluster.name
    with pytest.raises(exceptions.NotFound):
        admin.get_cluster(name=f"{PARENT}/clusters/{uid}-anon")
    assert PROJECT in cluster.name
