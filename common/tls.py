"""TLS for broker connections: one typed configuration, one verifying ``ssl.SSLContext``.

    TlsConfig(ca_file=…, cert_file=…, key_file=…)     CONVEYOR_TLS_CA_FILE / _CERT_FILE / _KEY_FILE

* **Verification is always on.** Every context checks the certificate chain *and* the host
  name (``CERT_REQUIRED``, ``check_hostname``) and speaks TLS 1.2 or later. Nothing in this
  configuration, a broker URL or an API argument turns that off: aio-pika's ``no_verify_ssl``
  and certificate URL parameters are refused, and the Pulsar client always gets
  ``tls_validate_hostname=True`` and ``tls_allow_insecure_connection=False``.
* **The URL decides, never this configuration.** ``amqps://``, ``pulsar+ssl://`` and an
  ``https://`` admin URL always use TLS; ``amqp://`` and ``pulsar://`` never do: no upgrade and
  no fallback. CA or client-certificate files together with a plaintext broker URL are a
  ``ConfigurationError``: a forgotten "s" would otherwise send the password in clear.
* **No CA file** means the system trust store (for the Pulsar client, which opens the file
  itself, the system bundle's path; see :meth:`TlsConfig.trust_file`).
* **Client certificates** (``cert_file``, ``key_file``) are optional, for brokers that ask for one.
* **Failures are named**: :func:`tls_error` turns a failed handshake anywhere in an exception's
  cause chain into a :class:`~common.errors.TlsError` that says whether the certificate was not
  trusted or not valid for the host name. Such a failure is raised by ``connect()`` at once,
  never retried: it will not heal by itself.

Loading certificates reads files: transports build the context once, in a thread, when they
connect, and reuse it for every connection and reconnection.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conveyor.common.errors import ConfigurationError, TlsError

__all__ = ["TlsConfig", "check_scheme", "probe_handshake", "tls_error"]

# OpenSSL's verify results for a certificate that does not name the host we asked for.
_X509_V_ERR_HOSTNAME_MISMATCH = 62
_X509_V_ERR_IP_ADDRESS_MISMATCH = 64


@dataclass(frozen=True)
class TlsConfig:
    """Which CA to trust and, optionally, which client certificate to present.

    There is deliberately no field to skip verification.
    """

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None

    def __post_init__(self) -> None:
        for name in ("ca_file", "cert_file", "key_file"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                object.__setattr__(self, name, Path(value))
        if self.key_file is not None and self.cert_file is None:
            raise ConfigurationError("CONVEYOR_TLS_KEY_FILE is set without CONVEYOR_TLS_CERT_FILE")

    @property
    def configured(self) -> bool:
        """True when any file is set, i.e. the operator asked for TLS explicitly."""
        return any(path is not None for path in (self.ca_file, self.cert_file, self.key_file))

    def ssl_context(self) -> ssl.SSLContext:
        """A new client context that verifies chain and host name. Blocking: reads files."""
        try:
            context = ssl.create_default_context(
                ssl.Purpose.SERVER_AUTH, cafile=None if self.ca_file is None else str(self.ca_file)
            )
        except (OSError, ssl.SSLError) as exc:
            raise ConfigurationError(
                f"CONVEYOR_TLS_CA_FILE {self.ca_file}: cannot load CA certificates: {_why(exc)}"
            ) from exc
        # create_default_context already sets both; stated again so no default change can loosen it.
        context.verify_mode = ssl.CERT_REQUIRED
        context.check_hostname = True
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.cert_file is not None:
            try:
                context.load_cert_chain(str(self.cert_file), None if self.key_file is None else str(self.key_file))
            except (OSError, ssl.SSLError) as exc:
                raise ConfigurationError(
                    f"CONVEYOR_TLS_CERT_FILE {self.cert_file} / CONVEYOR_TLS_KEY_FILE {self.key_file}: "
                    f"cannot load the client certificate and key: {_why(exc)}"
                ) from exc
        return context

    def trust_file(self) -> str:
        """The CA bundle a client that takes a file path must trust. Blocking: checks files.

        ``ca_file`` if set, else the system bundle (``SSL_CERT_FILE`` or OpenSSL's default, as
        Python finds it). A client given no path at all may trust nothing or its own build's
        defaults: an explicit path makes "no CA file = system trust store" hold for it too.
        """
        if self.ca_file is not None:
            if not self.ca_file.is_file():
                raise ConfigurationError(f"CONVEYOR_TLS_CA_FILE {self.ca_file}: no such file")
            return str(self.ca_file)
        system = ssl.get_default_verify_paths().cafile
        if system is None:
            raise ConfigurationError(
                "no system CA bundle found (SSL_CERT_FILE, OpenSSL's cert.pem): set CONVEYOR_TLS_CA_FILE"
            )
        return system

    def pulsar_client_options(self) -> dict[str, Any]:
        """``pulsar.Client`` keyword arguments for a ``pulsar+ssl://`` URL. Blocking: checks files."""
        options: dict[str, Any] = {
            "tls_trust_certs_file_path": self.trust_file(),
            "tls_validate_hostname": True,
            "tls_allow_insecure_connection": False,
        }
        if self.cert_file is not None:
            options["tls_certificate_file_path"] = str(self.cert_file)
            options["tls_private_key_file_path"] = str(self.key_file or self.cert_file)
        return options


def check_scheme(tls: TlsConfig | None, *, secure: bool, shown_url: str) -> None:
    """Refuse TLS files with a plaintext URL: the scheme, not the settings, decides (see above)."""
    if tls is not None and tls.configured and not secure:
        raise ConfigurationError(
            f"CONVEYOR_TLS_* files are set but the broker URL {shown_url} is not TLS: "
            "use amqps:// or pulsar+ssl:// (or unset them); a plaintext URL is never upgraded"
        )


def tls_error(exc: BaseException, *, host: str) -> TlsError | None:
    """A ``TlsError`` if ``exc`` or anything in its cause chain is a TLS failure, else None.

    The text names the host only (never a URL, which may carry a password).
    """
    found = _find_ssl_error(exc)
    if found is None:
        return None
    if isinstance(found, ssl.SSLCertVerificationError):
        if getattr(found, "verify_code", None) in (_X509_V_ERR_HOSTNAME_MISMATCH, _X509_V_ERR_IP_ADDRESS_MISMATCH):
            return TlsError(
                f"TLS hostname check failed: the broker's certificate is not valid for {host!r} "
                "(connect with a host name the certificate lists)"
            )
        reason = getattr(found, "verify_message", None) or _why(found)
        return TlsError(
            f"TLS certificate verification failed for {host}: {reason} "
            "(does CONVEYOR_TLS_CA_FILE hold the CA that signed the broker's certificate?)"
        )
    return TlsError(f"TLS handshake with {host} failed: {_why(found)}")


async def probe_handshake(host: str, port: int, context: ssl.SSLContext, *, timeout: float) -> TlsError | None:
    """Complete one TLS handshake with ``host:port`` and send nothing; the failure, if TLS failed.

    For clients that report a failed handshake only as "cannot connect" (the Pulsar client):
    this names the cause. TCP first, then the handshake, so that a refused or unreachable
    host (None: not a TLS failure) is told apart from a server that drops the handshake
    (a plaintext port, say).
    """
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (TimeoutError, OSError):
        return None
    try:
        await asyncio.wait_for(writer.start_tls(context, server_hostname=host), timeout)
    except (TimeoutError, OSError, EOFError) as exc:  # ssl.SSLError is an OSError
        writer.transport.abort()
        return tls_error(exc, host=host) or TlsError(
            f"TLS handshake with {host}:{port} failed: {type(exc).__name__} (is it a TLS port?)"
        )
    writer.close()
    with contextlib.suppress(OSError, asyncio.TimeoutError):
        await asyncio.wait_for(writer.wait_closed(), timeout)
    return None


def _find_ssl_error(exc: BaseException) -> ssl.SSLError | None:
    """The innermost ``ssl.SSLError`` of the chain: wrappers such as aiohttp's
    ``ClientConnectorCertificateError`` subclass it too, but only the original has the details."""
    found: ssl.SSLError | None = None
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, ssl.SSLError):
            found = current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return found


def _why(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason).replace("_", " ").lower()
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
