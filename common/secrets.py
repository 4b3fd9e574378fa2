"""Secrets come from the environment or from files, and are masked wherever text leaves us.

* **Files** (read by ``common.settings``' ``SecretFilesSource``, kept there so that importing this
  module never loads pydantic-settings): every secret setting (a ``SecretStr`` field of ``common.settings.Settings``:
  ``broker_url``, ``idempotency_url``, ``s3_secret_key``) also reads
  ``CONVEYOR_<NAME>_FILE=/path`` — how Kubernetes and Docker mount secrets. The file's content
  is the value (one trailing newline dropped); setting both the variable and its ``_FILE`` is
  a ``ConfigurationError`` rather than a silent pick. Read once, at start-up, before the event
  loop runs.
* **Masking**: a ``Redactor`` knows the secret values this process was given (settings and
  command-line values) and replaces them, and any ``scheme://user:password@`` password, with
  ``***``. It is built once at start-up and handed explicitly to whatever writes text out —
  the log formatter, the worker's processor (error messages) and settlement (dead-letter
  tracebacks) — so a handler that puts a credential into an exception message leaks it
  nowhere. No global registry: two workers in one process may know different secrets.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, unquote, urlencode

from pydantic import SecretStr
from pydantic.fields import FieldInfo

from conveyor.common.errors import ConfigurationError

if TYPE_CHECKING:
    from pydantic_settings import BaseSettings

__all__ = [
    "MIN_SECRET_LENGTH",
    "mask_secrets",
    "mask_url",
    "scrub_error",
    "url_credentials",
    "url_password",
    "Redactor",
    "read_secret_file",
    "secret_fields",
    "secret_from_file",
]

MASK = "***"
# Shorter values are not masked: replacing every "ab" in a log line would hide more than it
# protects. Such a secret is weak anyway.
MIN_SECRET_LENGTH = 4
_MAX_SECRET_FILE_BYTES = 64 * 1024
_SECRET_QUERY_PARAMS = ("password", "passwd", "secret", "token", "key")


def secret_fields(settings_cls: type[BaseSettings]) -> list[str]:
    """Names of the settings typed as secrets (``SecretStr`` or ``SecretStr | None``)."""
    return [name for name, field in settings_cls.model_fields.items() if _is_secret(field)]


def _is_secret(field: FieldInfo) -> bool:
    annotation = field.annotation
    return annotation is SecretStr or SecretStr in getattr(annotation, "__args__", ())


def read_secret_file(path: Path, variable: str) -> str:
    """The secret in ``path``: UTF-8, at most 64 KiB, one trailing newline dropped."""
    try:
        with path.open("rb") as handle:
            raw = handle.read(_MAX_SECRET_FILE_BYTES + 1)
    except OSError as exc:
        # The path is not secret; the error never includes the content.
        reason = exc.strerror or type(exc).__name__
        raise ConfigurationError(f"{variable}: cannot read {str(path)!r}: {reason}") from None
    if len(raw) > _MAX_SECRET_FILE_BYTES:
        raise ConfigurationError(f"{variable}: {str(path)!r} is larger than {_MAX_SECRET_FILE_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigurationError(f"{variable}: {str(path)!r} is not UTF-8 text") from None
    text = text.removesuffix("\n").removesuffix("\r")
    if not text:
        raise ConfigurationError(f"{variable}: {str(path)!r} is empty")
    return text


def secret_from_file(variable: str) -> str | None:
    """The content of ``$<variable>_FILE`` if that is set (and ``variable`` is not), else None."""
    environ = {key.upper(): value for key, value in os.environ.items()}
    path = environ.get(f"{variable}_FILE")
    if not path:
        return None
    if environ.get(variable):
        raise ConfigurationError(f"set {variable} or {variable}_FILE, not both")
    return read_secret_file(Path(path), f"{variable}_FILE")


class Redactor:
    """Replaces known secret values and URL passwords with ``***``; immutable, cheap to call."""

    __slots__ = ("_pattern",)

    def __init__(self, secrets: Iterable[str | SecretStr | None] = ()) -> None:
        values: set[str] = set()
        for secret in secrets:
            if isinstance(secret, SecretStr):
                secret = secret.get_secret_value()
            if secret:
                values.update(_forms(secret))
        known = sorted((v for v in values if len(v) >= MIN_SECRET_LENGTH), key=len, reverse=True)
        self._pattern = re.compile("|".join(map(re.escape, known))) if known else None

    @classmethod
    def from_settings(cls, settings: BaseSettings, *more: str | SecretStr | None) -> Redactor:
        """Every secret setting's value, plus ``more`` (secrets given as command-line flags)."""
        return cls([*(getattr(settings, name) for name in secret_fields(type(settings))), *more])

    def __call__(self, text: str) -> str:
        if self._pattern is not None:
            text = self._pattern.sub(MASK, text)
        return mask_secrets(text)

    def __repr__(self) -> str:  # never the values
        return f"Redactor({0 if self._pattern is None else self._pattern.pattern.count('|') + 1} secrets)"


def url_credentials(url: str) -> set[str]:
    """A URL's password and credential query values (raw and decoded), without the URL itself:
    what a page that shows the URL masked (``mask_url``) must still never show."""
    return _forms(url) - {url} if "://" in url else {url}


def _forms(secret: str) -> set[str]:
    """The value, and for a URL its password and credential query values, raw and decoded."""
    forms = {secret}
    _, sep, rest = secret.partition("://")
    if not sep:
        return forms
    netloc = re.split(r"[/?#]", rest, maxsplit=1)[0]
    userinfo = netloc.rpartition("@")[0]
    if ":" in userinfo:
        password = userinfo.partition(":")[2]
        forms.update({password, unquote(password)})
    query = rest.partition("?")[2].partition("#")[0]
    for pair in query.split("&"):
        key, _, value = pair.partition("=")
        if value and any(word in unquote(key).lower() for word in _SECRET_QUERY_PARAMS):
            forms.update({value, unquote(value.replace("+", " "))})
    if forms == {secret}:
        # A URL without a password or credential option (memory://, amqp://host/) is no secret:
        # masking it would blank "memory://" in every error that names the supported schemes.
        return set()
    return forms


# A match is tried only where a run of scheme characters starts (the lookbehind), the scheme
# being that run from its first letter on (``lead`` holds what comes before it): the same URLs
# as a scheme tried at every letter, but without trying a long run of letters from each of its
# characters, which was quadratic (1.4 s on the event loop for 16,000 characters of a hostile
# error message holding an "@").
_URL_PASSWORD = re.compile(
    r"(?<![a-z0-9+.-])(?P<lead>[0-9+.-]*)(?P<scheme>[a-z][a-z0-9+.-]*://)"
    r"(?P<user>[^:/@\s]*):(?P<password>[^@/\s]+)@",
    re.I,
)


def mask_secrets(text: str) -> str:
    if "@" not in text or "://" not in text:  # no URL credentials without both; far cheaper than the regex
        return text
    return _URL_PASSWORD.sub(lambda m: f"{m['lead']}{m['scheme']}{m['user']}:***@", text)


def mask_url(url: str) -> str:
    """``url`` with any password (and credential-like query values) replaced by ``***``.

    Works on URLs ``urllib`` cannot parse as well, e.g. Pulsar's multi-host
    ``pulsar://h1:6650,h2:6650``: only the ``user:password@`` part is touched.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    netloc, slash, tail = _split_netloc(rest)
    if "@" not in netloc and ":" in netloc and "@" in tail:
        # A password holding an unencoded '/', '?' or '#' ends the netloc early and would be
        # shown whole: mask up to the '@' (an '@' in a path or query over-masks, harmlessly).
        userinfo, _, after = rest.partition("@")
        netloc, slash, tail = _split_netloc(after)
        netloc = f"{userinfo.partition(':')[0]}:{MASK}@{netloc}"
    elif "@" in netloc:
        userinfo, _, hosts = netloc.rpartition("@")
        if ":" in userinfo:
            userinfo = f"{userinfo.partition(':')[0]}:{MASK}"
        netloc = f"{userinfo}@{hosts}"
    tail = _mask_query(tail)
    return f"{scheme}{sep}{netloc}{slash}{tail}"


def _split_netloc(rest: str) -> tuple[str, str, str]:
    """Split ``host…/path?query`` into netloc, the separator found, and the remainder."""
    cut = len(rest)
    for marker in "/?#":
        index = rest.find(marker)
        if index != -1:
            cut = min(cut, index)
    return rest[:cut], rest[cut : cut + 1], rest[cut + 1 :]


def _mask_query(tail: str) -> str:
    path, qmark, query = tail.partition("?")
    if not qmark:
        return tail
    query, hash_, fragment = query.partition("#")
    pairs = parse_qsl(query, keep_blank_values=True)
    if not any(_is_secret_param(name) for name, _ in pairs):
        return tail
    masked = [(name, MASK if _is_secret_param(name) else value) for name, value in pairs]
    return f"{path}?{urlencode(masked, safe='*')}{hash_}{fragment}"


def _is_secret_param(name: str) -> bool:
    lowered = name.lower()
    return any(word in lowered for word in _SECRET_QUERY_PARAMS)


def scrub_error(exc: BaseException, url: str, *secrets: str | None) -> str:
    """An exception's text for a message or log: free of ``url``'s password and of ``secrets``.

    Client libraries put the URL they were given, or the credential alone, into their errors;
    each transport passes its own URL and credentials here before the text goes anywhere.
    """
    text = str(exc) or type(exc).__name__
    password = url_password(url)
    for secret in (password, *secrets):
        # As the Redactor: a password of "p" turned "unexpectedly" into "unex***ectedly" in
        # every connection error (the URL itself is still masked whole, below).
        if secret and len(secret) >= MIN_SECRET_LENGTH:
            text = text.replace(secret, MASK)
    return text.replace(url, mask_url(url))


def url_password(url: str) -> str | None:
    """The (unquoted) password of a ``scheme://user:password@host`` URL, if it has one."""
    netloc = url.partition("://")[2].split("/", 1)[0]
    userinfo = netloc.rpartition("@")[0]
    if ":" not in userinfo:
        return None
    return unquote(userinfo.partition(":")[2]) or None
