"""Envelope helpers."""

from __future__ import annotations


def test_job_ids_are_distinct_canonical_uuid4_strings() -> None:
    import uuid

    from conveyor.schemas.envelope import new_job_id

    ids = [new_job_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    for job_id in ids[:200]:
        parsed = uuid.UUID(job_id)
        assert (parsed.version, parsed.variant, str(parsed)) == (4, uuid.RFC_4122, job_id)


def test_job_ids_from_many_threads_never_repeat() -> None:
    # Ids come from a pool refilled 256 at a time: threads racing on refills must still each
    # get ids nobody else got.
    from concurrent.futures import ThreadPoolExecutor

    from conveyor.schemas.envelope import new_job_id

    def many(_: int) -> list[str]:
        return [new_job_id() for _ in range(3000)]

    with ThreadPoolExecutor(8) as pool:
        ids = [job_id for batch in pool.map(many, range(8)) for job_id in batch]
    assert len(set(ids)) == len(ids) == 24_000


def test_a_forked_child_does_not_reuse_the_parents_pending_ids() -> None:
    import os

    from conveyor.schemas.envelope import new_job_id

    new_job_id()  # the pool now holds ids the parent has not handed out yet
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: report a few ids and leave without running pytest's exit handlers
        os.write(write, "\n".join(new_job_id() for _ in range(10)).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        child = set(pipe.read().split("\n"))
    os.waitpid(pid, 0)
    parent = {new_job_id() for _ in range(300)}
    assert len(child) == 10
    assert not child & parent
