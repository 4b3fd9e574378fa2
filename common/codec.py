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
"""

from __future__ import annotations

import json
from typing import Any

import orjson
from pydantic import BaseModel, ValidationError

from conveyor.common.errors import MalformedMessage, MessageTooLarge
from conveyor.schemas.dead_letter import DeadLetterRecord
from conveyor.schemas.envelope import Envelope
from conveyor.schemas.registry import describe_validation_error

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "decode_dead_letter",
    "decode_envelope",
    "dumps",
    "encode_model",
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


def _keys_if_in_range(value: Any) -> int | None:
    """Object keys in ``value`` (all levels); None if a number needs the strict scanner.

    That is an integer out of range, and any float of magnitude 2**53 or more: orjson
    turns integers too big for 64 bits into floats without a word, and inf/NaN fail the
    comparison too. Such floats are rare; the scanner tells a real one from a huge integer.
    """
    keys = 0
    stack: list[Any] = [[value]]  # lists and dicts; the top level goes through the same checks as any nested value
    while stack:  # not recursive: orjson allows deeper nesting than Python's recursion limit
        container = stack.pop()
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
                stack.append(item)
            elif kind is int:
                if not -_MAX_SAFE_INT <= item <= _MAX_SAFE_INT:
                    return None
            elif kind is float and not -_FLOAT_EXACT < item < _FLOAT_EXACT:
                return None
    return keys


def strict_json_loads(body: bytes, *, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> Any:
    """Parse JSON, rejecting oversize input, bad UTF-8, duplicates, NaN and huge numbers."""
    if len(body) > max_bytes:
        raise MessageTooLarge(f"message is {len(body)} bytes, limit is {max_bytes}")
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        pass  # the strict scanner below says precisely what is wrong
    else:
        keys = _keys_if_in_range(value)
        if keys is not None and keys == _key_ends(body):
            return value
    try:
        text = body.decode("utf-8")
        return _decoder.decode(text)
    except MalformedMessage:
        raise
    except UnicodeDecodeError:
        raise MalformedMessage("message is not valid UTF-8") from None
    except (ValueError, RecursionError) as exc:
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


def decode_envelope(body: bytes, *, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> Envelope:
    result: Envelope = _validate(Envelope, strict_json_loads(body, max_bytes=max_bytes))
    return result


def decode_dead_letter(body: bytes) -> DeadLetterRecord:
    # Dead letters embed an original message, so they may be larger than the job limit.
    record: DeadLetterRecord = _validate(
        DeadLetterRecord, strict_json_loads(body, max_bytes=64 * DEFAULT_MAX_MESSAGE_BYTES)
    )
    return record


def encode_model(model: BaseModel) -> bytes:
    # pydantic-core writes the JSON itself: the same bytes as orjson over model_dump(mode="json"),
    # without the intermediate dict.
    return model.__pydantic_serializer__.to_json(model)


def dumps(value: Any) -> bytes:
    return orjson.dumps(value)
