"""What a run carries about the code that ran it: the code version and a configuration hash.

``code_version()``: ``CONVEYOR_CODE_VERSION`` if set (a deploy pins it: image tag, commit),
else the installed package version plus ``+g<revision>`` when the code sits in a git checkout.
``config_hash(settings)``: 12 hex digits of the sha256 of the effective settings as JSON
(secrets are masked by pydantic before hashing, so the hash never depends on a password and
cannot reveal one). Both are computed once at start-up, never on the loop's hot path.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import subprocess
from pathlib import Path

import orjson

from conveyor.common.settings import Settings

__all__ = ["code_version", "config_hash"]

_MAX = 64


def _package_version() -> str:
    try:
        return importlib.metadata.version("conveyor")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


def _git_revision() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        done = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "--short=10", "HEAD"],
            capture_output=True, text=True, timeout=2.0, check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    revision = done.stdout.strip()
    return revision if done.returncode == 0 and revision.isalnum() else None


def code_version(configured: str | None = None) -> str:
    """``configured`` (the setting), else ``CONVEYOR_CODE_VERSION``, else package + git revision."""
    chosen = configured or os.environ.get("CONVEYOR_CODE_VERSION", "").strip()
    if chosen:
        return chosen[:_MAX]
    revision = _git_revision()
    return (_package_version() + (f"+g{revision}" if revision else ""))[:_MAX]


def config_hash(settings: Settings) -> str:
    data = orjson.dumps(settings.model_dump(mode="json"), option=orjson.OPT_SORT_KEYS, default=str)
    return hashlib.sha256(data).hexdigest()[:12]
