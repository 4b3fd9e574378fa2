"""docs/deploy.md "Pulsar in production" (and its summary in the README) recommends broker/bookie
settings for latency: the test broker (``scripts/services/pulsar.sh``) runs with exactly those,
and none of them skips the journal."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _script_settings() -> dict[str, str]:
    """The ``key=value`` entries of configure()'s settings array in pulsar.sh."""
    text = (ROOT / "scripts/services/pulsar.sh").read_text()
    block = text[text.index("local settings=(") : text.index("for kv in")]
    return dict(re.findall(r'^\s*"([A-Za-z_]\w*)=([^"]*)"', block, flags=re.M))


def _settings_in(paragraph: str) -> dict[str, str]:
    return dict(re.findall(r"`([A-Za-z_]\w*)=([^`]*)`", paragraph))


def _recommended() -> dict[str, str]:
    doc = (ROOT / "docs/deploy.md").read_text()
    section = doc[doc.index("## Pulsar in production") :]
    return _settings_in(section[section.index("**Recommended for latency**") :].split("\n\n")[0])


def test_the_readme_summary_recommends_the_same_settings() -> None:
    readme = (ROOT / "README.md").read_text()
    summary = readme[readme.index("**Pulsar in production**") :].split("\n\n")[0]
    assert _settings_in(summary) == _recommended()


def test_the_test_broker_runs_with_every_recommended_setting() -> None:
    recommended, script = _recommended(), _script_settings()
    assert set(recommended) >= {"managedLedgerNewEntriesCheckDelayInMillis", "journalFlushWhenQueueEmpty"}
    assert {key: script.get(key) for key in recommended} == recommended


def test_no_setting_turns_the_journal_or_its_sync_off() -> None:
    script = _script_settings()
    assert len(script) > 20  # the parse found the array
    for key in ("journalWriteData", "journalSyncData", "journalFlushWhenQueueEmpty"):
        assert script.get(key, "true") == "true", key
