"""What a console is started with, and the start-up check of where it may listen.

The console can replay and purge dead letters, so who may reach it matters more than for
``/metrics``: it listens on 127.0.0.1 unless told otherwise, and any other address needs
credentials — a bearer token or basic-auth credentials, each read from a secret file (a
mounted secret; never a flag, which ``ps`` shows). Without them it refuses to start, with a
one-line error and the reason code ``unauthenticated_bind``.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from conveyor.common.errors import ConfigurationError
from conveyor.common.secrets import MIN_SECRET_LENGTH, read_secret_file

__all__ = ["ConsoleAuth", "ConsoleConfig", "ConsoleRefused", "check_bind", "is_loopback", "load_auth"]

# A guessable token is no protection; 16 characters of a generated token is the least we take.
MIN_TOKEN_LENGTH = 16


class ConsoleRefused(ConfigurationError):
    """The console will not start as configured; ``reason`` is a stable code for scripts."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{message} (reason: {reason})")
        self.reason = reason


@dataclass(frozen=True)
class ConsoleAuth:
    """Exactly one of a bearer token or basic-auth credentials (``user:password``)."""

    token: str | None = None
    user: str | None = None
    password: str | None = None

    @property
    def secrets(self) -> tuple[str, ...]:
        return tuple(value for value in (self.token, self.password) if value)

    @property
    def kind(self) -> str:
        return "token" if self.token else "basic"


@dataclass(frozen=True)
class ConsoleConfig:
    host: str = "127.0.0.1"
    port: int = 8765
    queues: tuple[str, ...] = ("conveyor.default",)
    workers: tuple[str, ...] = ()  # metrics endpoints scraped for rates and breakers
    read_only: bool = False
    auth: ConsoleAuth | None = None
    refresh: float = 2.0  # seconds between samples of the overview
    history: float = 900.0  # seconds of samples the rate chart keeps
    dlq_scan_limit: int = 1000  # entries browsed per page of dead letters
    broker_label: str = ""  # the broker URL, masked, for the header
    extra_secrets: tuple[str, ...] = field(default=(), repr=False)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def check_bind(host: str, auth: ConsoleAuth | None) -> None:
    """Refuse a non-loopback address without credentials (``ConsoleRefused``)."""
    if auth is None and not is_loopback(host):
        raise ConsoleRefused(
            "unauthenticated_bind",
            f"refusing to listen on {host} without authentication: anyone who reaches it could replay "
            "and purge dead letters; give --token-file or --basic-auth-file, or listen on 127.0.0.1",
        )


def load_auth(token_file: Path | None, basic_auth_file: Path | None) -> ConsoleAuth | None:
    """Credentials from secret files (one trailing newline dropped); a weak or malformed one is refused."""
    if token_file and basic_auth_file:
        raise ConsoleRefused("conflicting_auth", "give --token-file or --basic-auth-file, not both")
    if token_file:
        token = read_secret_file(token_file, "--token-file")
        if len(token) < MIN_TOKEN_LENGTH or any(c.isspace() for c in token):
            raise ConsoleRefused("weak_token", f"the token in {token_file} must be {MIN_TOKEN_LENGTH}+ characters, "
                                 "no spaces (e.g. python -c 'import secrets; print(secrets.token_urlsafe())')")
        return ConsoleAuth(token=token)
    if basic_auth_file:
        user, sep, password = read_secret_file(basic_auth_file, "--basic-auth-file").partition(":")
        if not sep or not user or len(password) < max(MIN_SECRET_LENGTH, 8):
            raise ConsoleRefused("bad_basic_auth", f"{basic_auth_file} must hold user:password (a password of 8+ "
                                 "characters)")
        return ConsoleAuth(user=user, password=password)
    return None
