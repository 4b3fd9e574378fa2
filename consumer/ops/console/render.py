"""Server-side rendering: Jinja2 templates (autoescaped) and Pygments highlighting.

Highlighting happens here, into CSS classes, so a dead letter's payload and traceback need no
script in the browser; the stylesheet for those classes is served at ``/static/highlight.css``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson
from aiohttp import web
from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import JsonLexer, PythonTracebackLexer

from conveyor.consumer.ops.console.security import CSRF_FIELD, csrf_token, session_of
from conveyor.consumer.ops.console.state import STATE

__all__ = ["ENVIRONMENT", "STATIC", "highlight_css", "highlight_json", "highlight_traceback", "page", "pretty_json"]

HERE = Path(__file__).parent
STATIC = HERE / "static"
ENVIRONMENT = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(default=True),
                          trim_blocks=True, lstrip_blocks=True)
# A path segment quoted whole: Jinja's ``urlencode`` keeps "/", and a job id may hold one
# (orders/42), which made its link and its cancel form another route (a 404).
ENVIRONMENT.filters["segment"] = lambda value: quote(str(value), safe="")
_FORMATTER = HtmlFormatter(nowrap=True, classprefix="hl-")


def pretty_json(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode()


def highlight_json(value: Any) -> Markup:
    return Markup(highlight(pretty_json(value), JsonLexer(), _FORMATTER))


def highlight_traceback(text: str) -> Markup:
    return Markup(highlight(text, PythonTracebackLexer(), _FORMATTER))


def highlight_css() -> str:
    """Light colours by default, dark ones when the browser prefers a dark scheme."""
    light = HtmlFormatter(style="friendly", classprefix="hl-").get_style_defs(".code")
    dark = HtmlFormatter(style="monokai", classprefix="hl-").get_style_defs(".code")
    return f"{light}\n@media (prefers-color-scheme: dark) {{\n{dark}\n}}\n"


def context(request: web.Request, **values: Any) -> dict[str, Any]:
    state = request.app[STATE]
    return {
        "config": state.config,
        "read_only": state.config.read_only,
        "csrf_field": CSRF_FIELD,
        "csrf": csrf_token(state.secret_key, session_of(request)),
        "path": request.path,
        **values,
    }


def page(request: web.Request, template: str, status: int = 200, **values: Any) -> web.Response:
    html = ENVIRONMENT.get_template(template).render(context(request, **values))
    return web.Response(text=html, status=status, content_type="text/html", charset="utf-8")
