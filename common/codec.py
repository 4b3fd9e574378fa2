"""Bytes ⇄ envelope, strictly.

Decoding checks the size on the raw bytes *before* parsing. orjson alone is not strict
enough: it silently keeps the last of duplicate keys (a field-smuggling vector) and accepts
integers beyond the interoperable range. So orjson parses, and the result is accepted only
if a walk over it finds every number in range and exactly as many object keys as the raw
bytes have key-ending quotes (``"`` then ``:``): that count can only be too high (a string
value containing ``":``), never too low, so equal counts prove there was no duplicate.
Anything else (a mismatch, or bytes orjson refuses) goes through the standard library's
JSON scanner with strict hooks, which gives the precise error. Encoding: pydantic-core
writes models straight to JSON bytes, orjson everything else; both always emit valid JSON.

What is accepted can always be written back: retry, deferral and dead-letter copies re-encode
a decoded message, so a text the encoders cannot reproduce must be refused here, as
``malformed``, not discovered while settling (where it would loop). That is I-JSON (RFC 7493):
valid UTF-8 without lone surrogates (orjson refuses them; the standard library's scanner would
take ``"\udc80"``, so it only ever explains a refusal, never overrules one), no duplicate keys,
no NaN or infinity, integers within ±(2**53-1); and nesting at most ``MAX_DEPTH`` levels (the
encoders stop near 255 levels, and other languages' readers earlier: .NET's default is 64).
"""

from __future__ import annotations

import json
import math
from typing import Any

import orjson
from pydantic import BaseModel, ValidationError
from pydantic_core import CoreConfig, SchemaValidator, to_json

from conveyor.common.errors import MalformedMessage, MessageTooLarge, RejectedMessage
from conveyor.schemas.dead_letter import DeadLetterRecord
from conveyor.schemas.envelope import (
    MAX_DEPTH,
    MAX_HISTORY,
    RFC3339_PATTERN,
    Envelope,
    InlinePayload,
    _rfc3339,
    _whole_number,
)
from conveyor.schemas.registry import describe_validation_error

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "MAX_DEPTH",
    "check_json_data",
    "decode_dead_letter",
    "decode_envelope",
    "dumps",
    "encode_data",
    "encode_envelope",
    "encode_model",
    "json_safe_text",
    "strict_json_loads",
]

DEFAULT_MAX_MESSAGE_BYTES = 1024 * 1024
# Interoperable integer range (RFC 8259 §6): beyond it JavaScript and others lose precision.
_MAX_SAFE_INT = 2**53 - 1


def _reject_constant(name: str) -> Any:
    raise MalformedMessage(f"JSON constant {name} is not allowed")


def _bounded_int(text: str) -> int:
    if len(text) > 17:  # cheap guard before int() on a hostile 10k-digit number
        raise MalformedMessage("integer out of range")
    value = int(text)
    if abs(value) > _MAX_SAFE_INT:
        raise MalformedMessage("integer out of range")
    return value


def _bounded_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise MalformedMessage("number out of range")
    return value


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise MalformedMessage("duplicate JSON object key")
    return result


_decoder = json.JSONDecoder(
    object_pairs_hook=_unique_keys,
    parse_constant=_reject_constant,
    parse_int=_bounded_int,
    parse_float=_bounded_float,
)


_JSON_SPACE = b" \t\n\r"
_FLOAT_EXACT = float(2**53)


def _key_ends(body: bytes) -> int:
    """How often a ``"`` is followed by a ``:`` with only JSON whitespace between them.

    Every object key ends that way, so this is at least the number of keys; removing the
    whitespace first can only add matches inside strings, never lose a key's.
    """
    return body.translate(None, _JSON_SPACE).count(b'":')


def _keys_and_exactness(value: Any, depth: int = 0) -> tuple[int, bool]:
    """Object keys in ``value`` (all levels), and whether every number is judged exactly.

    Not exact: an integer out of range, or any float of magnitude 2**53 or more (orjson turns
    integers too big for 64 bits into floats without a word, and inf/NaN fail the comparison
    too); such floats are rare, and the strict scanner tells a real one from a huge integer.
    Nesting deeper than ``MAX_DEPTH`` is refused here, whichever parser then decides.
    ``depth``: the levels above ``value`` in its message, less one (0: ``value`` is the message).
    """
    keys = 0
    exact = True
    level: list[Any] = [[value]]  # the top level goes through the same checks as any nested value
    while level:  # level by level, not recursive: orjson nests deeper than Python recurses
        if depth > MAX_DEPTH:
            raise MalformedMessage(f"JSON nested deeper than {MAX_DEPTH} levels")
        below: list[Any] = []
        for container in level:
            if type(container) is dict:
                keys += len(container)
                items = container.values()
            else:
                items = container
            for item in items:  # strings, the common case, cost one type check
                kind = type(item)
                if kind is str:
                    continue
                if kind is dict or kind is list:
                    below.append(item)
                elif kind is int:
                    if not -_MAX_SAFE_INT <= item <= _MAX_SAFE_INT:
                        exact = False
                elif kind is float and not -_FLOAT_EXACT < item < _FLOAT_EXACT:
                    exact = False
        level = below
        depth += 1
    return keys, exact


def strict_json_loads(body: bytes, *, max_bytes: int | None = DEFAULT_MAX_MESSAGE_BYTES) -> Any:
    """Parse I-JSON; anything else is ``MalformedMessage`` (``MessageTooLarge`` over ``max_bytes``).

    Refused: oversize input (checked before parsing), bad UTF-8, lone surrogates, duplicate
    keys, NaN and infinity, integers beyond ±(2**53-1), nesting past ``MAX_DEPTH``. The error
    says what and where (line, column), never the text itself: it may hold secrets.
    """
    if max_bytes is not None and len(body) > max_bytes:
        raise MessageTooLarge(f"message is {len(body)} bytes, limit is {max_bytes}")
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise _refusal(body, exc) from None
    keys, exact = _keys_and_exactness(value)
    if exact and keys == _key_ends(body):
        return value
    return _strict_scan(body)


def _refusal(body: bytes, exc: orjson.JSONDecodeError) -> MalformedMessage:
    """Why orjson refused ``body``: the strict scanner's words, or orjson's where it has none.

    The scanner accepts lone surrogates (``"\udc80"``), which orjson rightly refuses: such a
    string is not Unicode, and no encoder can write it back.
    """
    try:
        _strict_scan(body)
    except MalformedMessage as precise:
        return precise
    return _not_json(exc)


def _not_json(exc: json.JSONDecodeError) -> MalformedMessage:
    # The parsers' own words and a position; their messages never quote the text.
    return MalformedMessage(f"message is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}")


def _strict_scan(body: bytes) -> Any:
    try:
        text = body.decode("utf-8")
        return _decoder.decode(text)
    except MalformedMessage:
        raise
    except UnicodeDecodeError:
        raise MalformedMessage("message is not valid UTF-8") from None
    except json.JSONDecodeError as exc:
        raise _not_json(exc) from None
    except RecursionError:
        raise MalformedMessage(f"JSON nested deeper than {MAX_DEPTH} levels") from None
    except ValueError as exc:  # e.g. int() refusing a number of too many digits
        raise MalformedMessage(f"message is not valid JSON ({type(exc).__name__})") from None


def _validate(model: type[BaseModel], data: Any) -> Any:
    if not isinstance(data, dict):
        raise MalformedMessage(f"a {model.__name__} must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise MalformedMessage(
            f"not a valid {model.__name__}: {describe_validation_error(exc)}"
        ) from None


# An attempt record's JSON is at most this long: its strings are bounded (worker id 128, error
# type 200, error message 1,000 characters, each at most 6 bytes written), the rest is fixed.
MAX_RECORD_BYTES = 8 * 1024
HISTORY_ALLOWANCE = MAX_HISTORY * MAX_RECORD_BYTES


def decode_envelope(body: bytes, *, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> Envelope:
    """The envelope in ``body``, strictly (module docs); ``MalformedMessage`` or ``MessageTooLarge``.

    ``max_bytes`` bounds the job as its producer sent it: the attempt history that workers add to
    their retry and deferral copies is not counted (at most ``HISTORY_ALLOWANCE`` bytes more).
    Counted, a job sent near the limit came back from its first retry ``oversize``, dead-lettered
    with its retries unspent, and no replay could run it again."""
    if len(body) > max_bytes:
        return _over_the_limit(body, max_bytes)
    envelope = _envelope_at_once(body)
    if envelope is not None:
        return envelope
    result: Envelope = _validate(Envelope, strict_json_loads(body, max_bytes=max_bytes))
    return result


def _over_the_limit(body: bytes, max_bytes: int) -> Envelope:
    """``body`` is over ``max_bytes``: an envelope whose size without its history is within it."""
    too_large = MessageTooLarge(f"message is {len(body)} bytes, limit is {max_bytes}")
    if len(body) > max_bytes + HISTORY_ALLOWANCE:
        raise too_large  # checked before parsing
    try:
        envelope = decode_envelope(body, max_bytes=max_bytes + HISTORY_ALLOWANCE)
    except RejectedMessage:
        raise too_large from None  # not a job within the limit, whatever else is wrong with it
    history = orjson.dumps([record.__dict__ for record in envelope.history], option=_UTC_Z)
    # What the copies added: the records (a new job has "[]"), and the attempt counter's digits.
    grown = len(history) - len(b"[]") + len(str(envelope.attempt)) - len("1")
    if len(body) - grown > max_bytes:
        raise too_large
    return envelope


# The data of an inline payload sits below the envelope and the payload (see _keys_and_exactness).
_DATA_DEPTH = 2


def _without_python_validators(schema: Any) -> Any:
    """A copy of a core schema whose Python ``before`` validators are done by pydantic-core,
    accepting only what they accept (a narrower check is fine: the two-step way decides the rest).

    * ``_whole_number`` (``2.0`` is 2, ``true`` no number): a strict integer alone, so ``2.0``
      stands aside; ``Literal[1]`` becomes a strict integer from 1 to 1 (the literal alone
      would take ``true`` and ``1.0``).
    * ``_rfc3339``: a strict string matching ``RFC3339_PATTERN`` in pydantic-core's regex
      engine (same ASCII classes; ``$`` only at the very end, as ``fullmatch``), then the
      same date-time schema.

    Each was a call from pydantic-core into Python per field per job.
    """
    if isinstance(schema, list):
        return [_without_python_validators(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    function = schema.get("function", {}).get("function") if schema.get("type") == "function-before" else None
    if function is _whole_number:
        inner = schema["schema"]
        if inner.get("type") == "literal" and inner.get("expected") == [1]:
            return {"type": "int", "strict": True, "ge": 1, "le": 1}
        if inner.get("type") == "int" and inner.get("strict"):
            return _without_python_validators(inner)
    if function is _rfc3339:
        return {"type": "chain", "steps": [{"type": "str", "strict": True, "pattern": RFC3339_PATTERN},
                                           _without_python_validators(schema["schema"])]}
    return {key: _without_python_validators(value) for key, value in schema.items()}


def _one_pass_validator() -> SchemaValidator:
    """``_without_python_validators`` of the envelope's schema, built as its own validator.

    pydantic-core reuses a model class's own validator for any schema naming that class once
    the class is complete ("prebuilt"), which would bring the Python validators back. So the
    classes the envelope schema names are marked incomplete while this one is built, and only
    then; a unit test checks that it calls no Python function.

    Strings are cached by key only (``cache_strings="keys"``): pydantic-core's default caches
    every string value under 64 characters in a process-wide cache of 16,384 entries, and a
    job's values are mostly unique (ids, timestamps), so a drain filled it with strings no
    later job reuses (issue 18, the worker's peak RSS; figures in docs/benchmarks.md), and
    validation is no slower."""
    models: list[type[BaseModel]] = [Envelope]
    models += [cls for cls in _model_classes(Envelope.__pydantic_core_schema__) if cls not in models]
    try:
        for cls in models:
            cls.__pydantic_complete__ = False
        schema = _without_python_validators(Envelope.__pydantic_core_schema__)
        return SchemaValidator(schema, CoreConfig(cache_strings="keys"))
    finally:
        for cls in models:
            cls.__pydantic_complete__ = True


def _model_classes(schema: Any) -> list[type[BaseModel]]:
    if isinstance(schema, list):
        return [cls for item in schema for cls in _model_classes(item)]
    if not isinstance(schema, dict):
        return []
    found = [schema["cls"]] if schema.get("type") == "model" else []
    return found + [cls for value in schema.values() for cls in _model_classes(value)]


_ONE_PASS = _one_pass_validator()


def _envelope_at_once(body: bytes) -> Envelope | None:
    """The envelope, parsed and validated in one pass by pydantic-core, if the two-step way
    (``strict_json_loads``, then ``model_validate``) would accept ``body`` and give this same
    envelope; None when it might not, and the two-step way decides, with its own words.

    One pass costs less than orjson's dict handed to pydantic. pydantic-core's parser
    alone is no stricter than orjson, so the same proofs are made on what it built: as many
    object keys as the bytes have key-ending quotes (fields given, header names, the data's keys,
    counted as ``_keys_and_exactness`` counts them: no duplicate was folded away), every number
    in the data exact and in range, the data nested no deeper than ``MAX_DEPTH``. The envelope's
    own numbers are bounded by its schema. A ``\\u`` escape of a surrogate goes the two-step way
    (orjson refuses a lone one), as does anything pydantic-core refuses. A differential unit test
    holds the two ways to the same verdicts and the same envelopes.
    """
    if b"\\ud" in body or b"\\uD" in body:
        return None
    try:
        envelope: Envelope = _ONE_PASS.validate_json(body)
        payload = envelope.payload
        keys = len(envelope.model_fields_set) + len(payload.model_fields_set) + len(envelope.headers)
        for record in envelope.history:
            keys += len(record.model_fields_set)
        if type(payload) is InlinePayload:
            data_keys, exact = _keys_and_exactness(payload.data, _DATA_DEPTH)
            if not exact:
                return None
            keys += data_keys
    except (ValidationError, MalformedMessage):
        return None
    return envelope if keys == _key_ends(body) else None


def decode_dead_letter(body: bytes, *, max_bytes: int | None = None) -> DeadLetterRecord:
    """A dead-letter record, by default of any size.

    A record embeds its original message, base64 (4/3 of its size), and the original may be any
    size: an ``oversize`` one is dead-lettered because it is over the job limit. No multiple
    of the job limit is an upper bound (a 50 MiB original makes a 66.7 MiB record); the broker
    already delivered the bytes, so parsing them costs no more than holding them.
    """
    record: DeadLetterRecord = _validate(DeadLetterRecord, strict_json_loads(body, max_bytes=max_bytes))
    return record


def encode_model(model: BaseModel) -> bytes:
    # pydantic-core writes the JSON itself: the same bytes as orjson over model_dump(mode="json"),
    # without the intermediate dict.
    return model.__pydantic_serializer__.to_json(model)


_UTC_Z = orjson.OPT_UTC_Z  # date-times as pydantic writes them: "…Z", not "…+00:00"


def encode_envelope(envelope: Envelope) -> bytes:
    """``encode_model(envelope)``'s bytes for a job with an inline payload (a new job, or a retry
    copy with its attempt history), written by orjson from the model's fields: about half the
    CPU. Anything orjson would write differently or refuses (another payload kind, a value
    orjson has no encoding for, an integer past 64 bits) goes through ``encode_model`` as
    before; a unit test holds the two to the same bytes."""
    payload = envelope.payload
    if payload.kind != "inline":
        return encode_model(envelope)
    fields = dict(envelope.__dict__)
    fields["payload"] = payload.__dict__
    if envelope.history:  # records of ints, strings, None and aware date-times only
        fields["history"] = [record.__dict__ for record in envelope.history]
    try:
        return orjson.dumps(fields, option=_UTC_Z)
    except TypeError:  # orjson.JSONEncodeError: left to pydantic-core, which may still write it
        return encode_model(envelope)


def check_json_data(value: Any, *, levels: int = MAX_DEPTH) -> None:
    """Refuse, before anything is sent, what no worker would accept: the producer's side of
    ``strict_json_loads``. ``value`` is Python data about to be encoded; ``levels`` the nesting
    it may use (an envelope's data has ``MAX_DEPTH - 2``: the envelope and its payload are two).

    Refused with ``MalformedMessage`` naming where (the path of keys, never a value): NaN and
    infinity (encoders would write ``null`` without a word), integers beyond ±(2**53-1), strings
    or keys with lone surrogates (no encoder writes them), keys that are not strings (written
    as ``str(key)``, ``{1: "a", "1": "b"}`` would lose a value), deeper nesting. Other Python types
    are left to the encoder (a ``datetime`` becomes its ISO string).
    """
    if _written_clean(value, levels) or _json_ok(value, levels):  # the path is only looked for on failure
        return
    problem = _json_problem(value, levels, ())
    if problem is not None:
        what, path = problem
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path)
        raise MalformedMessage(f"payload{where}: {what}")


_STRICT_INTEGER = orjson.OPT_STRICT_INTEGER


def _written_clean(value: Any, levels: int) -> bool:
    """True only where ``_json_ok`` is true too, at a fraction of its cost (orjson, in C).

    orjson looks at every value ``_json_ok`` looks at (it descends into dicts, lists and tuples
    and their subclasses, or refuses them) and refuses lone surrogates, integers beyond
    ±(2**53-1) (``OPT_STRICT_INTEGER``), non-string keys and float subclasses; NaN and infinity
    it writes as ``null``. So text without ``null`` leaves only the nesting to check: no deeper
    than the text has brackets, else counted over the containers alone. False (a ``null``, a
    refusal, too deep) proves nothing: ``_json_ok`` then walks the data and decides. A
    differential test holds the two to the same verdicts on hostile data.
    """
    try:
        text = orjson.dumps(value, option=_STRICT_INTEGER)
    except TypeError:  # orjson.JSONEncodeError
        return False
    if text.find(b"null") >= 0:  # find: cheaper than ``in`` on bytes
        return False
    return (len(text) <= levels or text.count(b"[") + text.count(b"{") <= levels
            or _nested_within(value, levels))


_CONTAINERS = (dict, list, tuple)


def _nested_within(value: Any, levels: int) -> bool:
    """No dict, list or tuple deeper than ``levels`` (``value`` itself is level 1), as
    ``_json_ok`` counts them."""
    if not isinstance(value, _CONTAINERS):
        return True
    level: list[Any] = [value]
    depth = 1
    while level:
        if depth > levels:
            return False
        level = [
            item
            for container in level
            for item in (container.values() if isinstance(container, dict) else container)
            if isinstance(item, _CONTAINERS)
        ]
        depth += 1
    return True


def _json_ok(value: Any, levels: int) -> bool:
    if type(value) is dict and levels >= 1:  # a payload: start at its own level, one pass fewer
        level: list[Any] = [value]
        depth = 1
    else:
        level = [[value]]
        depth = 0
    while level:  # level by level, as _keys_and_exactness
        if depth > levels:
            return False
        below: list[Any] = []
        for container in level:
            if isinstance(container, dict):
                for key in container:
                    if not isinstance(key, str) or (not key.isascii() and not _encodable(key)):
                        return False
                items = container.values()
            else:
                items = container
            for item in items:
                kind = type(item)
                if kind is str:
                    if not item.isascii() and not _encodable(item):
                        return False
                elif kind is int:
                    if not -_MAX_SAFE_INT <= item <= _MAX_SAFE_INT:
                        return False
                elif kind is float:
                    if not -math.inf < item < math.inf:  # NaN fails the comparison too
                        return False
                elif kind is dict or kind is list or isinstance(item, dict | list | tuple):
                    below.append(item)
                elif isinstance(item, str | int | float) and _json_problem(item, 0, ()) is not None:
                    return False  # a subclass (numpy's float64, an IntEnum): judged like its base
        level = below
        depth += 1
    return True


def _json_problem(value: Any, levels: int, path: tuple[Any, ...]) -> tuple[str, tuple[Any, ...]] | None:
    if isinstance(value, str):
        return None if value.isascii() or _encodable(value) else ("a string with a lone surrogate", path)
    if isinstance(value, float):
        return None if -math.inf < value < math.inf else ("NaN or infinity (JSON has neither)", path)
    if isinstance(value, int):
        return None if -_MAX_SAFE_INT <= value <= _MAX_SAFE_INT else ("an integer beyond ±(2**53-1)", path)
    if isinstance(value, dict | list | tuple):
        if levels < 1:
            return f"nested deeper than {MAX_DEPTH} levels (the envelope's included)", path
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, item in items:
            if isinstance(value, dict) and not isinstance(key, str):
                # pydantic would write str(key): 1 and "1" (or None and "None") become one key
                return f"a key that is not a string ({type(key).__name__})", path
            if isinstance(key, str) and not (key.isascii() or _encodable(key)):
                return "a key with a lone surrogate", path
            problem = _json_problem(item, levels - 1, (*path, key))
            if problem is not None:
                return problem
    return None


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def json_safe_text(text: str) -> str:
    """``text`` with lone surrogates written as ``\\udc80``, so that it can be encoded.

    Error messages and tracebacks go into retry copies and dead letters; a handler's exception
    may quote a file name decoded with ``surrogateescape``, which no encoder writes. Returns
    ``text`` itself when there is nothing to escape (nearly always).
    """
    if text.isascii():  # a flag CPython keeps on every str: no encoding to try (nearly every text)
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def dumps(value: Any) -> bytes:
    return orjson.dumps(value)


def encode_data(data: Any) -> bytes:
    """A payload's data as JSON, written as ``encode_envelope`` writes it inside an envelope:
    orjson, else pydantic-core for what orjson has no encoding for (``bytes``, a ``set``, a
    ``Decimal``), so a payload that travels inline also travels as a claim check.
    ``MalformedMessage`` for data neither can write (an arbitrary object, bytes not UTF-8)."""
    try:
        return orjson.dumps(data)
    except TypeError:  # orjson.JSONEncodeError
        pass
    try:
        return to_json(data)
    except ValueError as exc:  # PydanticSerializationError
        raise MalformedMessage(f"the job cannot be encoded as JSON ({type(exc).__name__})") from None
