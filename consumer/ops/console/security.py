"""The console's guards, as aiohttp middlewares, outermost first.

* ``headers``: a CSP that allows no inline script or style and no framing, ``nosniff``, no
  referrer, no caching of pages that show dead letters.
* ``reasons``: every refusal names its reason code (text and ``X-Conveyor-Reason``), aiohttp's
  own too (no such route or method, a body over the limit).
* ``redact``: every text the console answers with passes the process's ``Redactor``, so a
  secret in a dead letter, an error or the broker URL never reaches a page.
* ``host``: without credentials (loopback only) the Host header must be a loopback name too —
  a DNS-rebinding page cannot reach the console through a name it controls.
* ``session``: a random session id in an HttpOnly, SameSite=Strict cookie; the CSRF token is
  an HMAC of it (the synchroniser token pattern without a server-side table).
* ``auth``: basic credentials on every request, or a bearer token (``Authorization: Bearer``,
  or once through ``/login``, which marks the session as signed in).
* ``read_only``: in read-only mode every state-changing request is refused (reason
  ``read_only``); the pages hide the controls too.
* ``csrf``: every state-changing request must come from this origin (``Origin``, else
  ``Referer``) and carry the session's token (form field ``csrf_token`` or ``X-CSRF-Token``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware
from aiohttp.web_request import FileField
from multidict import MultiDictProxy
from yarl import URL

from conveyor.consumer.ops.console.config import ConsoleAuth, is_loopback
from conveyor.consumer.ops.console.state import STATE

__all__ = ["CSRF_FIELD", "CSRF_HEADER", "NEW_SESSION", "REASON_HEADER", "SESSION", "SESSION_COOKIE", "csrf_token",
           "form_of", "middlewares", "session_of"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
SESSION_COOKIE = "conveyor_console"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
REASON_HEADER = "X-Conveyor-Reason"
SESSION = web.RequestKey("conveyor_console_session", str)
NEW_SESSION = web.RequestKey("conveyor_console_new_session", str)  # set by sign-in: the rotated id
_SAFE = frozenset({"GET", "HEAD", "OPTIONS"})
_OPEN = ("/login", "/static/")  # reachable before signing in with a token
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "form-action 'self'; base-uri 'none'; frame-ancestors 'none'")


def csrf_token(key: bytes, session: str) -> str:
    return hmac.new(key, f"csrf:{session}".encode(), hashlib.sha256).hexdigest()


def session_of(request: web.Request) -> str:
    return request[SESSION]


def refuse(status: type[web.HTTPException], reason: str, text: str) -> web.HTTPException:
    return status(text=f"{text} (reason: {reason})", headers={REASON_HEADER: reason})


async def form_of(request: web.Request) -> MultiDictProxy[str | bytes | bytearray | FileField]:
    """The request's form. A body that is no form (not UTF-8, multipart without its boundary)
    made aiohttp's parser raise, a 500: here it is a 400 with its reason."""
    try:
        return await request.post()
    except ValueError as exc:  # UnicodeDecodeError is one
        raise refuse(web.HTTPBadRequest, "bad_form", f"the request body is not a form: {type(exc).__name__}") from None


# aiohttp's own refusals (no route, no such method, a body over the limit) carry no reason.
_STATUS_REASONS = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 413: "too_large"}
_REASON_IN_TEXT = re.compile(r"\(reason: ([a-z_]+)\)")


@web.middleware
async def reasons(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status >= 400 and REASON_HEADER not in exc.headers:
            named = _REASON_IN_TEXT.search(exc.text or "")
            reason = named.group(1) if named else _STATUS_REASONS.get(exc.status, "http_error")
            if not named:
                exc.text = f"{(exc.text or exc.reason).strip()} (reason: {reason})"
            exc.headers[REASON_HEADER] = reason
        raise


@web.middleware
async def headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        response = exc
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers["Cross-Origin-Opener-Policy"] = "same-origin"
    if not request.path.startswith("/static/"):
        response.headers["Cache-Control"] = "no-store"
    if isinstance(response, web.HTTPException):
        raise response
    return response


@web.middleware
async def redact(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        _redact_body(request, exc)
        raise
    if isinstance(response, web.Response):
        _redact_body(request, response)
    return response


def _redact_body(request: web.Request, response: web.Response) -> None:
    body = response.body
    if isinstance(body, bytes) and body and not request.path.startswith("/static/"):
        text = body.decode("utf-8", "replace")
        masked = request.app[STATE].redact(text)
        if masked != text:
            response.body = masked.encode()


@web.middleware
async def host(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.app[STATE].config.auth is None:
        name = URL(f"http://{request.host}").host or ""
        if not is_loopback(name):
            raise refuse(web.HTTPMisdirectedRequest, "bad_host", f"this console answers to loopback names only, "
                         f"not {name!r}")
    return await handler(request)


@web.middleware
async def session(request: web.Request, handler: Handler) -> web.StreamResponse:
    current = request.cookies.get(SESSION_COOKIE, "")
    fresh = len(current) != 43  # token_urlsafe(32)
    request[SESSION] = secrets.token_urlsafe(32) if fresh else current
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        if fresh or NEW_SESSION in request:
            _set_cookie(request, exc)
        raise
    if fresh or NEW_SESSION in request:
        _set_cookie(request, response)
    return response


def _set_cookie(request: web.Request, response: web.StreamResponse) -> None:
    response.set_cookie(SESSION_COOKIE, request.get(NEW_SESSION, request[SESSION]), httponly=True,
                        samesite="Strict", secure=request.secure, path="/")


@web.middleware
async def auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    state = request.app[STATE]
    credentials = state.config.auth
    if credentials is None or _authorised(request, credentials, state.signed_in):
        return await handler(request)
    if credentials.kind == "basic":
        raise web.HTTPUnauthorized(text="sign in (reason: unauthenticated)",
                                   headers={"WWW-Authenticate": 'Basic realm="conveyor console", charset="UTF-8"'})
    if request.path.startswith(_OPEN):
        return await handler(request)
    if request.method in _SAFE:
        raise web.HTTPSeeOther(f"/login?next={request.path_qs}")
    raise refuse(web.HTTPUnauthorized, "unauthenticated", "sign in first")


def _authorised(request: web.Request, credentials: ConsoleAuth, signed_in: dict[str, None]) -> bool:
    given = request.headers.get("Authorization", "")
    scheme, _, value = given.partition(" ")
    if credentials.token is not None:
        if scheme.lower() == "bearer" and hmac.compare_digest(value.encode(), credentials.token.encode()):
            return True
        return session_of(request) in signed_in
    if scheme.lower() != "basic":
        return False
    try:
        user, _, password = base64.b64decode(value, validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return False
    return (hmac.compare_digest(user.encode(), (credentials.user or "").encode())
            & hmac.compare_digest(password.encode(), (credentials.password or "").encode()))


@web.middleware
async def read_only(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.method not in _SAFE and request.path != "/login" and request.app[STATE].config.read_only:
        raise refuse(web.HTTPForbidden, "read_only", "this console is read-only: nothing was changed")
    return await handler(request)


@web.middleware
async def csrf(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.method in _SAFE:
        return await handler(request)
    own = f"{request.scheme}://{request.host}"
    origin = request.headers.get("Origin")
    if origin is not None:
        if origin != own:
            raise refuse(web.HTTPForbidden, "csrf_origin", "cross-site request refused: nothing was changed")
    else:
        referer = request.headers.get("Referer")
        if referer is not None and not (referer == own or referer.startswith(own + "/")):
            raise refuse(web.HTTPForbidden, "csrf_origin", "cross-site request refused: nothing was changed")
    given = request.headers.get(CSRF_HEADER)
    if given is None and request.content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
        form = await form_of(request)
        field = form.get(CSRF_FIELD)
        given = field if isinstance(field, str) else None
    expected = csrf_token(request.app[STATE].secret_key, session_of(request))
    if not given or not hmac.compare_digest(given.encode(), expected.encode()):
        raise refuse(web.HTTPForbidden, "csrf_token", "missing or wrong CSRF token: nothing was changed "
                     "(reload the page and try again)")
    return await handler(request)


def middlewares() -> list[Middleware]:
    return [headers, reasons, redact, host, session, auth, read_only, csrf]
