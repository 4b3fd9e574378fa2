"""Bytes ⇄ envelope, strictly.

Decoding checks the size on the raw bytes *before* parsing, then parses with the standard
library's JSON scanner plus hooks, because orjson silently keeps the last of duplicate
keys (a field-smuggling vector) and turns huge integers into lossy floats. Encoding uses
orjson: it is fast and always emits valid, canonical JSON.
"""

from __future__ import annotations

import json
from typing import Any

import orjson
from pydantic import BaseModel, ValidationError

from common.errors import MalformedMessage, MessageTooLarge
from schemas.dead_letter import DeadLetterRecord
from schemas.envelope import Envelope
from schemas.registry import describe_validation_error

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


def strict_json_loads(body: bytes, *, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> Any:
    """Parse JSON, rejecting oversize input, bad UTF-8, duplicates, NaN and huge numbers."""
    if len(body) > max_bytes:
        raise MessageTooLarge(f"message is {len(body)} bytes, limit is {max_bytes}")
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
    return orjson.dumps(model.model_dump(mode="json", exclude_defaults=False))


def dumps(value: Any) -> bytes:
    return orjson.dumps(value)
