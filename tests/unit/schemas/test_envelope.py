"""Envelope helpers."""

from __future__ import annotations


def test_job_ids_are_distinct_canonical_uuid4_strings() -> None:
    import uuid

    from schemas.envelope import new_job_id

    ids = [new_job_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    for job_id in ids[:200]:
        parsed = uuid.UUID(job_id)
        assert (parsed.version, parsed.variant, str(parsed)) == (4, uuid.RFC_4122, job_id)
