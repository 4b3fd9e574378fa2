"""Is a new JSON Schema of a *published* (job type, version) compatible with the old one?

During a rolling deploy, producers and workers of the same schema version but different
code run side by side, and messages written by either must stay valid for both. So once a
version is published its schema may only change in ways both sides accept:

- compatible: adding an *optional* field (unless the old schema forbids unknown fields:
  workers running it would reject messages carrying it); changing titles, descriptions,
  examples or defaults;
- breaking: removing or renaming a field; changing a field's type or constraints; adding a
  required field; making an optional field required or a required one optional (producers
  could then omit what workers of that version still require); forbidding unknown fields.

A breaking change needs a new version (and an upcaster from the old one), not an edit.
"""

from __future__ import annotations

from typing import Any

__all__ = ["breaking_changes"]

_ANNOTATIONS = frozenset(
    {"title", "description", "examples", "default", "$comment", "deprecated", "readOnly", "writeOnly"}
)
_TOP_LEVEL = frozenset({"$schema", "$id", "$defs", "x-conveyor-job-type", "x-conveyor-schema-version"})


def breaking_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Human-readable reasons why ``new`` cannot replace ``old``; empty when compatible."""
    return _Comparison(old.get("$defs", {}), new.get("$defs", {})).compare(_strip_top(old), _strip_top(new), "")


def _strip_top(schema: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in schema.items() if k not in _TOP_LEVEL}


class _Comparison:
    def __init__(self, old_defs: dict[str, Any], new_defs: dict[str, Any]) -> None:
        self._old_defs = old_defs
        self._new_defs = new_defs
        self._visiting: set[tuple[str, str]] = set()

    def compare(self, old: Any, new: Any, path: str) -> list[str]:
        old_ref, new_ref = _ref_name(old), _ref_name(new)
        if old_ref is not None or new_ref is not None:
            key = (old_ref or "", new_ref or "")
            if key in self._visiting:  # recursive model: already being compared
                return []
            self._visiting.add(key)
            try:
                return self.compare(self._resolve(old, self._old_defs), self._resolve(new, self._new_defs), path)
            finally:
                self._visiting.discard(key)
        if _is_object(old) and _is_object(new):
            return self._compare_objects(old, new, path)
        for combinator in ("anyOf", "oneOf", "allOf"):
            if combinator in old and combinator in new and len(old[combinator]) == len(new[combinator]):
                rest_old = {k: v for k, v in old.items() if k != combinator}
                rest_new = {k: v for k, v in new.items() if k != combinator}
                problems = self._compare_plain(rest_old, rest_new, path)
                for a, b in zip(old[combinator], new[combinator], strict=True):
                    problems += self.compare(a, b, path)
                return problems
        return self._compare_plain(old, new, path)

    def _compare_objects(self, old: dict[str, Any], new: dict[str, Any], path: str) -> list[str]:
        problems = []
        old_props, new_props = old.get("properties", {}), new.get("properties", {})
        old_req, new_req = set(old.get("required", [])), set(new.get("required", []))
        for name, schema in old_props.items():
            where = f"{path}.{name}" if path else name
            if name not in new_props:
                problems.append(f"field {where!r} was removed or renamed")
                continue
            if name in old_req and name not in new_req:
                problems.append(f"field {where!r} is no longer required (workers of this version still require it)")
            if name not in old_req and name in new_req:
                problems.append(f"field {where!r} became required")
            problems += self.compare(schema, new_props[name], where)
        closed = old.get("additionalProperties") is False
        for name in new_props.keys() - old_props.keys():
            where = f"{path}.{name}" if path else name
            if name in new_req:
                problems.append(f"new required field {where!r}")
            elif closed:
                problems.append(f"new field {where!r}, but the published schema forbids unknown fields")
        if not closed and new.get("additionalProperties") is False:
            problems.append(f"{path or 'the payload'} now forbids unknown fields")
        rest = {"properties", "required", "additionalProperties"}
        problems += self._compare_plain(
            {k: v for k, v in old.items() if k not in rest}, {k: v for k, v in new.items() if k not in rest}, path
        )
        return problems

    def _compare_plain(self, old: Any, new: Any, path: str) -> list[str]:
        before = _normalise(self._inline(old, self._old_defs, frozenset()))
        after = _normalise(self._inline(new, self._new_defs, frozenset()))
        if before == after:
            return []
        return [f"type or constraints of {path or 'the payload'!r} changed: {_summary(before)} → {_summary(after)}"]

    def _resolve(self, schema: Any, defs: dict[str, Any]) -> Any:
        name = _ref_name(schema)
        if name is None:
            return schema
        target = defs.get(name, {})
        siblings = {k: v for k, v in schema.items() if k != "$ref"}
        return {**target, **siblings}

    def _inline(self, schema: Any, defs: dict[str, Any], seen: frozenset[str]) -> Any:
        if isinstance(schema, list):
            return [self._inline(item, defs, seen) for item in schema]
        if not isinstance(schema, dict):
            return schema
        name = _ref_name(schema)
        if name is not None:
            if name in seen:
                return {"$recursive": name}
            return self._inline(self._resolve(schema, defs), defs, seen | {name})
        return {k: self._inline(v, defs, seen) for k, v in schema.items()}


def _ref_name(schema: Any) -> str | None:
    if isinstance(schema, dict) and isinstance(schema.get("$ref"), str) and schema["$ref"].startswith("#/$defs/"):
        return str(schema["$ref"][len("#/$defs/") :])
    return None


def _is_object(schema: Any) -> bool:
    return isinstance(schema, dict) and (schema.get("type") == "object" or "properties" in schema)


_SCHEMA_MAPS = frozenset({"properties", "patternProperties", "$defs", "dependentSchemas"})


def _normalise(schema: Any) -> Any:
    """Drop annotations; keep keys of name → schema maps (a field may be called "title")."""
    if isinstance(schema, list):
        return [_normalise(item) for item in schema]
    if isinstance(schema, dict):
        result = {}
        for key, value in sorted(schema.items()):
            if key in _SCHEMA_MAPS and isinstance(value, dict):
                result[key] = {name: _normalise(sub) for name, sub in sorted(value.items())}
            elif key not in _ANNOTATIONS:
                result[key] = _normalise(value)
        return result
    return schema


def _summary(schema: Any) -> str:
    text = repr(schema)
    return text if len(text) <= 120 else text[:117] + "..."
