"""What a host and its manager share: a bearer secret and the host's self-signed certificate.

The manager makes both when it launches the host, hands them over in the host's user data,
and from then on trusts exactly that certificate (it is pinned: the client's trust store
holds it alone, and it is no CA, so it vouches for nothing but itself). No hostname check:
the host's address is not known when the certificate is made.
"""

from __future__ import annotations

import base64
import datetime
import secrets
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CERT_VALID_DAYS = 3650


@dataclass(frozen=True, slots=True)
class HostCredentials:
    """``secret``: 32 random bytes, urlsafe base64; ``cert_pem``/``key_pem``: the host's TLS
    certificate and its ECDSA P-256 private key (PKCS#8, unencrypted)."""

    secret: str
    cert_pem: bytes
    key_pem: bytes

    def __repr__(self) -> str:  # never print the secret or the key
        return "HostCredentials(secret=<hidden>, cert_pem=<...>, key_pem=<hidden>)"


def new_secret() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode("ascii")


def new_host_credentials(host_key: str) -> HostCredentials:
    """A fresh key, a self-signed certificate (CN = ``host_key``, 10 years) and a secret."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host_key)])
    now = datetime.datetime.now(datetime.UTC)
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))  # the host's clock may lag
        .not_valid_after(now + datetime.timedelta(days=CERT_VALID_DAYS))
        # Not a CA: a certificate it signed would not verify against it.
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(public), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    return HostCredentials(
        secret=new_secret(),
        cert_pem=cert.public_bytes(serialization.Encoding.PEM),
        key_pem=key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
