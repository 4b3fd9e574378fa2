"""``check_json_data``'s shortcut (``_written_clean``: orjson writes the data, then its text is
read) never passes data that the plain walk (``_json_ok``, then ``_json_problem`` for where)
refuses: the same verdicts, and the same error words, on hostile data of every kind."""

from __future__ import annotations

import dataclasses
import decimal
import enum
import math
import random
from collections import OrderedDict, namedtuple
from datetime import UTC, datetime
from typing import Any

import pytest

from conveyor.common.codec import MAX_DEPTH, _json_ok, _json_problem, _written_clean, check_json_data
from conveyor.common.errors import MalformedMessage

LEVELS = MAX_DEPTH - 2  # as the producer checks a payload


class Text(str):
    pass


class Number(int):
    pass


class Real(float):
    pass


class Mapping(dict):  # type: ignore[type-arg]
    pass


class Items(list):  # type: ignore[type-arg]
    pass


class Big(enum.IntEnum):
    HUGE = 2**60
    SMALL = 3


class Weird(float, enum.Enum):
    NAN = math.nan
    ONE = 1.0


Pair = namedtuple("Pair", "a b")


@dataclasses.dataclass
class Holder:
    value: Any


def nested(levels: int, leaf: Any = 1, kind: type = list) -> Any:
    value = leaf
    for _ in range(levels):
        value = [value] if kind is list else {"k": value} if kind is dict else (value,)
    return value


LEAVES: list[Any] = [
    0, 1, -1, 2**53 - 1, -(2**53 - 1), 2**53, -(2**53), 2**63, 2**64, 2**70, -(2**70), True, False, None,
    0.5, -0.0, 1e308, math.nan, math.inf, -math.inf, "", "ascii", "é\u2028", "caf\udc80", "\ud800x", "null",
    "[[[[", "{{{{", Text("ok"), Text("\udc80"), Number(5), Number(2**60), Real(1.5), Real(math.nan),
    Big.HUGE, Big.SMALL, Weird.NAN, Weird.ONE, decimal.Decimal("1.5"), datetime(2026, 1, 1, tzinfo=UTC),
    {1, 2}, b"bytes", Pair(1, 2), Pair(math.nan, 1), Holder(math.nan), Holder("\udc80"), Holder(2**60),
    Holder(nested(300)), (), [], {},
]

HOSTILE: list[Any] = [
    *({"v": leaf} for leaf in LEAVES),
    *({"v": [leaf, "x"]} for leaf in LEAVES),
    *({"v": (1, leaf)} for leaf in LEAVES),
    *(Mapping(v=leaf) for leaf in LEAVES),
    *({"v": Items([leaf])} for leaf in LEAVES),
    {"caf\udc80": 1}, {Text("caf\udc80"): 1}, {Text("k"): 1}, {1: "int key"}, {None: 1}, {(1,): 1},
    OrderedDict(a=1), {"null": 1}, {"a": "null"},
    *({"x": nested(n, leaf, kind)} for n in (LEVELS - 2, LEVELS - 1, LEVELS, LEVELS + 1)
      for leaf in (1, math.nan, "\udc80") for kind in (list, dict, tuple)),
    {"records": [{"i": i, "tags": ["a", "b"]} for i in range(100)]},  # more brackets than levels
    {"records": [{"i": i, "deep": nested(LEVELS - 3)} for i in range(3)]},
    {"records": [{"i": i, "deep": nested(LEVELS)} for i in range(3)]},
    {"wide": {f"k{i}": "v" * 10 for i in range(200)}},
]


def _plain(value: Any, levels: int) -> str | None:
    """check_json_data as it was before the shortcut: the error it raises, or None."""
    if _json_ok(value, levels):
        return None
    problem = _json_problem(value, levels, ())
    if problem is None:
        return None
    what, path = problem
    where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path)
    return f"payload{where}: {what}"


def _checked(value: Any, levels: int) -> str | None:
    try:
        check_json_data(value, levels=levels)
    except MalformedMessage as exc:
        return str(exc)
    return None


@pytest.mark.parametrize("value", HOSTILE, ids=range(len(HOSTILE)))
def test_the_shortcut_passes_only_what_the_walk_passes_and_errors_are_unchanged(value: Any) -> None:
    if _written_clean(value, LEVELS):
        assert _json_ok(value, LEVELS)
    assert _checked(value, LEVELS) == _plain(value, LEVELS)


def _random_key(rng: random.Random, i: int) -> Any:
    roll = rng.random()
    if roll < 0.8:
        return rng.choice(("a", "b", "null", "caf\udc80", "[{")) + str(i)
    if roll < 0.9:
        return Text(rng.choice(("t", "\udc80")) + str(i))
    return rng.choice((i, None, (i,)))


def _random_value(rng: random.Random, depth: int) -> Any:
    roll = rng.random()
    if depth > 0 and roll < 0.3:
        kind = rng.choice((dict, list, tuple, Mapping, Items))
        children = [_random_value(rng, depth - 1) for _ in range(rng.randint(0, 4))]
        if kind in (dict, Mapping):
            keys = [_random_key(rng, i) for i in range(len(children))]
            return kind(zip(keys, children, strict=True))
        return kind(children)
    return rng.choice(LEAVES)


def test_random_hostile_data_gets_the_same_verdict_both_ways() -> None:
    rng = random.Random(18)
    disagreements = []
    for _ in range(3000):
        value = {"data": _random_value(rng, rng.randint(1, 6))}
        levels = rng.choice((2, 3, 4, LEVELS))
        if _written_clean(value, levels) and not _json_ok(value, levels):
            disagreements.append(repr(value)[:200])
        assert _checked(value, levels) == _plain(value, levels)
    assert disagreements == []


def test_the_shortcut_takes_the_common_payloads() -> None:
    """Not a proof of anything but speed: ordinary payloads do not fall back to the walk."""
    assert _written_clean({"i": 1, "sent_at": 1.5, "to": "a@example.com", "tags": ["a"]}, LEVELS)
    assert _written_clean({"records": [{"i": i, "tags": ["a", "b"]} for i in range(100)]}, LEVELS)
    assert not _written_clean({"value": math.nan}, LEVELS)
    assert not _written_clean({"x": nested(LEVELS)}, LEVELS)
