"""TLS configuration: the verifying context, the scheme rules, and how failures are named.

Certificates are made with the openssl CLI into a temporary directory (no broker needed); the
real brokers over TLS are in tests/integration/test_tls.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ssl
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from conveyor.common.errors import ConfigurationError, TlsError
from conveyor.common.settings import Settings
from conveyor.common.tls import TlsConfig, check_scheme, probe_handshake, tls_error
from conveyor.common.transport.factory import transport_from_url

X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY = 20
X509_V_ERR_HOSTNAME_MISMATCH = 62


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def _ca(directory: Path, name: str) -> None:
    _openssl("req", "-x509", "-new", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name}",
             "-keyout", str(directory / f"{name}.key"), "-out", str(directory / f"{name}.pem"),
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign")


def _leaf(directory: Path, name: str, ca: str, extensions: str) -> None:
    (directory / f"{name}.ext").write_text(extensions)
    _openssl("req", "-new", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
             "-keyout", str(directory / f"{name}.key"), "-out", str(directory / f"{name}.csr"))
    _openssl("x509", "-req", "-days", "2", "-in", str(directory / f"{name}.csr"), "-CA", str(directory / f"{ca}.pem"),
             "-CAkey", str(directory / f"{ca}.key"), "-set_serial", "1", "-extfile", str(directory / f"{name}.ext"),
             "-out", str(directory / f"{name}.pem"))


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ca.pem signs server.pem (DNS:localhost only) and client.pem; other-ca.pem signs nothing."""
    directory = tmp_path_factory.mktemp("pki")
    _ca(directory, "ca")
    _ca(directory, "other-ca")
    _leaf(directory, "server", "ca", "subjectAltName=DNS:localhost\nextendedKeyUsage=serverAuth\n")
    _leaf(directory, "client", "ca", "extendedKeyUsage=clientAuth\n")
    (directory / "garbage.pem").write_text("not a certificate\n")
    return directory


# -- the context ---------------------------------------------------------------------------------


def test_context_verifies_chain_and_host_name_with_tls_1_2_or_later(pki: Path) -> None:
    context = TlsConfig(ca_file=pki / "ca.pem").ssl_context()
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname is True
    assert context.minimum_version >= ssl.TLSVersion.TLSv1_2
    assert [dict(item[0] for item in ca["subject"])["commonName"] for ca in context.get_ca_certs()] == ["ca"]


def test_no_ca_file_means_the_system_trust_store() -> None:
    context = TlsConfig().ssl_context()
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname is True
    assert context.cert_store_stats() == ssl.create_default_context().cert_store_stats()


@pytest.mark.parametrize("name", ["missing.pem", "garbage.pem"])
def test_an_unusable_ca_file_is_a_configuration_error_naming_the_variable(pki: Path, name: str) -> None:
    with pytest.raises(ConfigurationError, match="CONVEYOR_TLS_CA_FILE"):
        TlsConfig(ca_file=pki / name).ssl_context()


def test_a_client_certificate_is_loaded_and_a_key_that_does_not_match_is_refused(pki: Path) -> None:
    TlsConfig(ca_file=pki / "ca.pem", cert_file=pki / "client.pem", key_file=pki / "client.key").ssl_context()
    with pytest.raises(ConfigurationError, match="CONVEYOR_TLS_CERT_FILE"):
        TlsConfig(ca_file=pki / "ca.pem", cert_file=pki / "client.pem", key_file=pki / "server.key").ssl_context()


def test_a_key_without_a_certificate_is_refused(pki: Path) -> None:
    with pytest.raises(ConfigurationError, match="CONVEYOR_TLS_KEY_FILE"):
        TlsConfig(key_file=pki / "client.key")


def test_nothing_can_turn_verification_off() -> None:
    fields = {field.name for field in dataclasses.fields(TlsConfig)}
    assert fields == {"ca_file", "cert_file", "key_file"}
    assert {name for name in Settings.model_fields if name.startswith("tls")} == {f"tls_{f}" for f in fields}


def test_settings_read_the_tls_environment_variables(monkeypatch: pytest.MonkeyPatch, pki: Path) -> None:
    monkeypatch.setenv("CONVEYOR_TLS_CA_FILE", str(pki / "ca.pem"))
    monkeypatch.setenv("CONVEYOR_TLS_CERT_FILE", str(pki / "client.pem"))
    monkeypatch.setenv("CONVEYOR_TLS_KEY_FILE", str(pki / "client.key"))
    assert Settings().tls() == TlsConfig(pki / "ca.pem", pki / "client.pem", pki / "client.key")


@pytest.mark.parametrize(
    ("broker", "expected"),
    [("amqps://u:hunter2@localhost:1/", "cannot load CA certificates"), ("amqp://u:hunter2@localhost:1/", "not TLS")],
)
def test_the_cli_hands_the_tls_settings_to_the_transport(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, broker: str, expected: str
) -> None:
    from click.testing import CliRunner

    from conveyor.consumer.cli import main

    monkeypatch.setenv("CONVEYOR_TLS_CA_FILE", str(tmp_path / "missing-ca.pem"))
    result = CliRunner().invoke(main, ["dlq", "list", "--broker", broker])
    assert result.exit_code != 0
    assert "ConfigurationError" in result.output and expected in result.output
    assert "hunter2" not in result.output


# -- the Pulsar client's options ---------------------------------------------------------------


def test_pulsar_client_options_always_validate_the_host_name(pki: Path) -> None:
    options = TlsConfig(ca_file=pki / "ca.pem", cert_file=pki / "client.pem", key_file=pki / "client.key") \
        .pulsar_client_options()
    assert options == {
        "tls_trust_certs_file_path": str(pki / "ca.pem"),
        "tls_validate_hostname": True,
        "tls_allow_insecure_connection": False,
        "tls_certificate_file_path": str(pki / "client.pem"),
        "tls_private_key_file_path": str(pki / "client.key"),
    }


def test_pulsar_without_a_ca_file_gets_the_system_bundle_or_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    system = ssl.get_default_verify_paths().cafile
    if system is not None:
        assert TlsConfig().pulsar_client_options()["tls_trust_certs_file_path"] == system
    nothing = ssl.DefaultVerifyPaths(None, None, "SSL_CERT_FILE", "/nonexistent", "SSL_CERT_DIR", "/nonexistent")
    monkeypatch.setattr(ssl, "get_default_verify_paths", lambda: nothing)
    with pytest.raises(ConfigurationError, match="CONVEYOR_TLS_CA_FILE"):
        TlsConfig().pulsar_client_options()


# -- the URL decides -----------------------------------------------------------------------------


@pytest.mark.parametrize("url", ["amqp://u:hunter2@host/", "pulsar://host:6650/?token=hunter2"])
def test_tls_files_with_a_plaintext_url_are_refused_not_upgraded(pki: Path, url: str) -> None:
    with pytest.raises(ConfigurationError, match="not TLS") as caught:
        transport_from_url(url, tls=TlsConfig(ca_file=pki / "ca.pem"))
    assert "hunter2" not in str(caught.value)


def test_plaintext_urls_without_tls_files_stay_plaintext_and_memory_ignores_tls(pki: Path) -> None:
    transport_from_url("amqp://u:p@host/", tls=TlsConfig())
    transport_from_url("pulsar://host:6650", tls=None)
    transport_from_url("memory://", tls=TlsConfig(ca_file=pki / "ca.pem"))
    check_scheme(TlsConfig(ca_file=pki / "ca.pem"), secure=True, shown_url="amqps://host/")


@pytest.mark.parametrize("option", ["no_verify_ssl=1", "cafile=/tmp/ca.pem", "certfile=/c.pem&keyfile=/k.pem"])
def test_amqp_url_options_that_would_pick_or_skip_certificates_are_refused(option: str) -> None:
    with pytest.raises(ConfigurationError, match="CONVEYOR_TLS_CA_FILE"):
        transport_from_url(f"amqps://u:p@host/?{option}")


def test_pulsar_ssl_with_a_plaintext_admin_url_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="https"):
        transport_from_url("pulsar+ssl://host:6651/?admin_url=http://host:8080&token=t")
    with pytest.raises(ConfigurationError, match="https"):
        transport_from_url("pulsar+ssl://host:6651/?token=t", admin_url="http://host:8080")
    assert transport_from_url("pulsar+ssl://host:6651").admin_url == "https://host:8443"  # type: ignore[attr-defined]


# -- naming failures -----------------------------------------------------------------------------


def _verify_error(code: int, message: str) -> ssl.SSLCertVerificationError:
    error = ssl.SSLCertVerificationError(1, f"[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: {message}")
    error.verify_code, error.verify_message = code, message
    return error


class _Wrapper(ssl.SSLCertVerificationError):
    """Like aiohttp's ClientConnectorCertificateError: an SSL error type without the details."""


def test_a_host_name_mismatch_is_named_as_such() -> None:
    error = tls_error(_verify_error(X509_V_ERR_HOSTNAME_MISMATCH, "Hostname mismatch"), host="10.0.0.5")
    assert isinstance(error, TlsError)
    assert "hostname" in str(error) and "10.0.0.5" in str(error)


def test_an_untrusted_certificate_is_named_through_wrappers_with_the_innermost_details() -> None:
    inner = _verify_error(X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY, "unable to get local issuer certificate")
    try:
        try:
            raise inner
        except ssl.SSLError as exc:
            raise _Wrapper("wrapped") from exc
    except _Wrapper as wrapped:
        try:
            raise ConnectionError("amqps://user:hunter2@broker/ failed") from wrapped
        except ConnectionError as outer:
            error = tls_error(outer, host="broker")
    assert isinstance(error, TlsError)
    assert str(error).startswith("TLS certificate verification failed for broker: unable to get local issuer")
    assert "hunter2" not in str(error)


def test_errors_that_are_not_tls_are_left_alone() -> None:
    assert tls_error(ConnectionRefusedError(111, "refused"), host="broker") is None


# -- the handshake probe (local servers) -------------------------------------------------------


@pytest.fixture
async def tls_server(pki: Path) -> AsyncIterator[int]:
    """A TLS server on 127.0.0.1 with the DNS:localhost certificate; yields its port."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    await asyncio.to_thread(context.load_cert_chain, str(pki / "server.pem"), str(pki / "server.key"))

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=context)
    yield server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()


@pytest.fixture
async def plaintext_server() -> AsyncIterator[int]:
    """Answers a TLS ClientHello the way a plaintext broker port does: with bytes that are not TLS."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1)
        writer.write(b"AMQP\x00\x00\x09\x01")
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()


async def test_probe_passes_with_the_right_ca_and_name(pki: Path, tls_server: int) -> None:
    context = TlsConfig(ca_file=pki / "ca.pem").ssl_context()
    assert await probe_handshake("localhost", tls_server, context, timeout=5) is None


@pytest.mark.parametrize(
    ("ca", "host", "expected"),
    [("other-ca.pem", "localhost", "certificate verification failed"), ("ca.pem", "127.0.0.1", "hostname")],
)
async def test_probe_names_an_untrusted_certificate_or_a_wrong_name(
    pki: Path, tls_server: int, ca: str, host: str, expected: str
) -> None:
    context = TlsConfig(ca_file=pki / ca).ssl_context()
    error = await probe_handshake(host, tls_server, context, timeout=5)
    assert isinstance(error, TlsError) and expected in str(error)


async def test_probe_tells_a_plaintext_port_from_an_unreachable_one(pki: Path, plaintext_server: int) -> None:
    context = TlsConfig(ca_file=pki / "ca.pem").ssl_context()
    error = await probe_handshake("localhost", plaintext_server, context, timeout=5)
    assert isinstance(error, TlsError) and "TLS handshake" in str(error)
    # Nothing listens on a just-closed port: not a TLS failure, so no TlsError.
    with_nothing = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = with_nothing.sockets[0].getsockname()[1]
    with_nothing.close()
    await with_nothing.wait_closed()
    assert await probe_handshake("localhost", port, context, timeout=5) is None
