-- Conveyor's transactional outbox on PostgreSQL (13+; the trigger needs 14+ for OR REPLACE).
-- {table} is replaced by the outbox table's name (default conveyor_outbox). Safe to run again:
-- every statement is idempotent, and `conveyor outbox migrate` runs it in one transaction
-- under an advisory lock, so concurrent runs (several pods starting) wait for each other.
CREATE TABLE IF NOT EXISTS {table} (
    id            bigserial PRIMARY KEY,
    job_id        text NOT NULL UNIQUE,
    job_type      text NOT NULL,
    queue         text NOT NULL,
    delay_seconds double precision NOT NULL DEFAULT 0,
    ordering_key  text,
    envelope      text NOT NULL,           -- the job's envelope, encoded as the producer encodes it
    created_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    attempts      integer NOT NULL DEFAULT 0,
    last_error    text,
    sent_at       timestamptz,             -- confirmed by the broker
    failed_at     timestamptz              -- refused for good (the broker or the envelope): never retried
);
-- What the relay reads: the unsent rows, oldest first.
CREATE INDEX IF NOT EXISTS {table}_unsent ON {table} (id) WHERE sent_at IS NULL AND failed_at IS NULL;
-- What the clean-up deletes: sent rows past the retention period.
CREATE INDEX IF NOT EXISTS {table}_sent_at ON {table} (sent_at) WHERE sent_at IS NOT NULL;
-- Wake the relays at commit (a NOTIFY of a rolled-back transaction is never delivered).
CREATE OR REPLACE FUNCTION {table}_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('{table}', '');
    RETURN NULL;
END
$$;
CREATE OR REPLACE TRIGGER {table}_notify AFTER INSERT ON {table}
    FOR EACH STATEMENT EXECUTE FUNCTION {table}_notify();
