"""X.509 checks shared by the tests (cryptography)."""

import datetime

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def spki(public_key):
    return public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def verify_signed_by(cert, ca):
    """Raises unless `cert` carries a valid signature by `ca`'s key."""
    key = ca.public_key()
    if isinstance(key, ec.EllipticCurvePublicKey):
        key.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm))
    elif isinstance(key, rsa.RSAPublicKey):
        key.verify(cert.signature, cert.tbs_certificate_bytes, padding.PKCS1v15(), cert.signature_hash_algorithm)
    else:
        key.verify(cert.signature, cert.tbs_certificate_bytes)


def check_client_leaf(leaf_pem, ca_pem, public_key):
    """The leaf chains to the CA, holds exactly `public_key`, is a clientAuth end-entity certificate."""
    leaf = x509.load_pem_x509_certificate(leaf_pem.encode())
    ca = x509.load_pem_x509_certificate(ca_pem.encode())
    verify_signed_by(leaf, ca)
    assert leaf.issuer == ca.subject
    assert spki(leaf.public_key()) == spki(public_key)
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.CLIENT_AUTH in eku
    assert leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    assert leaf.serial_number.bit_length() > 100
    now = datetime.datetime.now(datetime.timezone.utc)
    assert leaf.not_valid_before_utc <= now < leaf.not_valid_after_utc
    return leaf


def common_name(cert):
    return cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value


def rsa_key(bits=2048):
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def p256_key():
    return ec.generate_private_key(ec.SECP256R1())


def ed25519_key():
    return ed25519.Ed25519PrivateKey.generate()


def spki_pem(private_key):
    return private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def pkcs1_pem(private_key):
    return private_key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.PKCS1).decode()
