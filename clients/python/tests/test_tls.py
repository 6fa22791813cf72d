"""The client over mutual TLS with a token, against a gantry that requires
both; certificates are made here (cryptography), none are committed."""

import datetime
import hashlib
import ipaddress

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gantry import Client, Tls
from gantry.aio import AsyncClient
from gantry.v1 import cache_pb2, ratelimit_pb2

from conftest import start_gantry

TOKEN = "python-suite-token-0c4f"


def issue(path, name, *, ca=None, ca_key=None, is_ca=False, dns=(), ips=(), uri=None):
    """Writes name.crt and name.key under path; returns (certificate, key)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca.subject if ca else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
    )
    names = [x509.DNSName(d) for d in dns] + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    if uri:
        names.append(x509.UniformResourceIdentifier(uri))
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    cert = builder.sign(ca_key or key, hashes.SHA256())
    (path / f"{name}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (path / f"{name}.key").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                          serialization.NoEncryption()))
    return cert, key


@pytest.fixture
def mtls(tmp_path):
    ca, ca_key = issue(tmp_path, "ca", is_ca=True)
    issue(tmp_path, "server", ca=ca, ca_key=ca_key, dns=["localhost"], ips=["127.0.0.1"])
    issue(tmp_path, "client", ca=ca, ca_key=ca_key, uri="spiffe://test/python-suite")
    digest = hashlib.sha256(TOKEN.encode()).hexdigest()
    (tmp_path / "tokens.toml").write_text(
        f'[[token]]\nidentity = "python-suite"\nsha256 = "{digest}"\n')
    (tmp_path / "policy.toml").write_text(
        '[[grant]]\nidentities = ["python-suite"]\nratelimit = ["tight"]\ncache = ["py"]\n')
    env = {
        "GANTRY_SERVER_TLS_CERT_FILE": str(tmp_path / "server.crt"),
        "GANTRY_SERVER_TLS_KEY_FILE": str(tmp_path / "server.key"),
        "GANTRY_SERVER_TLS_CLIENT_CA_FILE": str(tmp_path / "ca.crt"),
        "GANTRY_AUTH_TOKENS_FILE": str(tmp_path / "tokens.toml"),
        "GANTRY_AUTH_POLICY_FILE": str(tmp_path / "policy.toml"),
    }
    for addr in start_gantry(env):
        tls = Tls(ca_file=str(tmp_path / "ca.crt"), cert_file=str(tmp_path / "client.crt"),
                  key_file=str(tmp_path / "client.key"), server_name="localhost")
        yield addr, tls


def test_mutual_tls_with_a_token(mtls):
    addr, tls = mtls
    with Client(addr, tls=tls, token=TOKEN) as client:
        with client.limiter("tight", key="k"):
            pass
        client.namespace("py").put("k", b"v")
        assert client.namespace("py").get("k")[0] == b"v"
        with pytest.raises(grpc.RpcError) as denied:
            client.cache.Get(cache_pb2.GetRequest(namespace="other", key="k"), timeout=5)
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert '"other"' in denied.value.details()
    # Without the token, the certificate's identity has no grant.
    with Client(addr, tls=tls) as client:
        with pytest.raises(grpc.RpcError) as refused:
            client.rate_limiter.Acquire(ratelimit_pb2.AcquireRequest(limit="tight", key="k", tokens=1), timeout=5)
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    # Without a client certificate the handshake fails.
    with Client(addr, tls=Tls(ca_file=tls.ca_file, server_name="localhost"), token=TOKEN) as client:
        with pytest.raises(grpc.RpcError) as failed:
            client.cache.Get(cache_pb2.GetRequest(namespace="py", key="k"), timeout=5)
        assert failed.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_the_asyncio_client_over_mutual_tls(mtls):
    addr, tls = mtls
    async with AsyncClient(addr, tls=tls, token=TOKEN) as client:
        got = await client.rate_limiter.Acquire(
            ratelimit_pb2.AcquireRequest(limit="tight", key="aio", tokens=1), timeout=5)
        assert got.allowed


def test_a_token_is_never_sent_in_plaintext():
    with pytest.raises(ValueError, match="never sent in plaintext"):
        Client("127.0.0.1:1", token=TOKEN)
