"""``basic.publish`` properties that encode themselves in one pass.

pamqp encodes a content header generically: for every one of the fourteen properties it looks
up the AMQP type by name and dispatches an encoder, and a header table goes through the same
machinery per key and value. For the properties every Conveyor publish carries (a few string
headers, the message id, persistent delivery, sometimes an expiration) that cost more than
the rest of the producer's own work (issue 18; docs/benchmarks.md). ``JobProperties`` writes
the same bytes directly; anything outside that shape (a non-string header value, a key pamqp
would truncate, another property set) goes through pamqp's own encoder, so the wire format
never depends on which path ran. A unit test holds the two paths to the same bytes.
"""

from __future__ import annotations

import operator
import struct

from aiormq import spec

from conveyor.common import headers as h

__all__ = ["JobProperties"]

_HEADERS, _DELIVERY_MODE, _EXPIRATION, _MESSAGE_ID = 0x2000, 0x1000, 0x0100, 0x0080
_OTHERS = (
    "content_type", "content_encoding", "priority", "correlation_id", "reply_to",
    "timestamp", "message_type", "user_id", "app_id", "cluster_id",
)
_others = operator.attrgetter(*_OTHERS)  # one C call, not ten getattr in a loop
_NOT_SET = _others(spec.Basic.Properties())  # pamqp's defaults (cluster_id is "", the rest None)
_U32 = struct.Struct(">I")
_MAX_KEY = 128  # pamqp truncates longer field names (with a warning): leave those to it


def _key_prefix(key: str) -> bytes:
    """A table entry up to its value: the key's length and bytes, then the long-string type."""
    raw = key.encode("utf-8")
    return bytes((len(raw),)) + raw + b"S"


# The headers every job and retry copy carries, their entries' first part worked out once.
_KNOWN_KEYS = {key: _key_prefix(key) for key in (h.JOB_TYPE, h.ATTEMPT, h.DUE_AT, h.REASON, "traceparent")}


class JobProperties(spec.Basic.Properties):
    """``Basic.Properties`` whose ``marshal`` is a direct encoder for the common shape."""

    def marshal(self) -> bytes:
        encoded = self._fast()
        return super().marshal() if encoded is None else encoded

    def _fast(self) -> bytes | None:
        others = _others(self)
        if others != _NOT_SET and any(value not in (None, "") for value in others):
            return None
        flags = 0
        parts: list[bytes] = []
        headers = self.headers
        if headers is not None:  # pamqp writes an empty table too (4 zero bytes)
            table: list[bytes] = []
            for key, value in sorted(headers.items()):
                if type(key) is not str or type(value) is not str:
                    return None
                prefix = _KNOWN_KEYS.get(key)
                if prefix is None:
                    if len(key.encode("utf-8")) > _MAX_KEY:
                        return None
                    prefix = _key_prefix(key)
                raw_value = value.encode("utf-8")
                table += (prefix, _U32.pack(len(raw_value)), raw_value)
            content = b"".join(table)
            flags |= _HEADERS
            parts += (_U32.pack(len(content)), content)
        if self.delivery_mode is not None:
            flags |= _DELIVERY_MODE
            parts.append(bytes((self.delivery_mode,)))
        for flag, value in ((_EXPIRATION, self.expiration), (_MESSAGE_ID, self.message_id)):
            if value is None or value == "":
                continue
            raw = value.encode("utf-8")
            if len(raw) > 255:
                return None  # pamqp's encoder raises the error for it
            flags |= flag
            parts += (bytes((len(raw),)), raw)
        return struct.pack(">H", flags) + b"".join(parts)
