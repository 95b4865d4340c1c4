"""The final status is written without new index entries: the end of a delivery is a HOT update.

A delivery's end (`queue_store._FINISH`; cancel, supersede, expiry) updates `status`,
`attempt_count`, `last_error`, `updated_at` and `finished_at` of `deliveries`. `status` and
`finished_at` were indexed (`deliveries_status_created_idx`, `deliveries_finished_idx`, the
predicate of `deliveries_collapse_idx`), so that update could never be HOT: it wrote a new entry in
every index of the widest table, the GIN tags index among them.
Now no index of `deliveries` names a column that changes after acceptance, and `fillfactor = 50`
leaves room on the page for the new version (pages written before this keep their fill until
rewritten — harmless). 50, not 70: each row is updated exactly once, and one finish statement often
ends every delivery of a page (they were accepted together and are claimed in that order); at 70
only 3/7 of a full page's rows find room for their new version in one statement (84 % of 400
finishes HOT in `tests/integration/test_hot_finish.py` at 70, 94 % at 60, ~100 % at 50). The price:
the heap of `deliveries` is about twice its packed size (indexes and TOAST unchanged).
What the dropped indexes found is found thus:

- queued and sending (not terminal) are the rows of `delivery_queue`: it gets the delivery's
  `created_at` (copied at acceptance, never changed) and `delivery_queue_queued_idx` on it for the
  unclaimed ones, so the `queued` list is an index scan of the queue in the list's order; `sending`
  (claimed) is the few in-flight rows of `delivery_queue_claims_idx`. A claim adds no entry to the
  partial index; acceptance and a retry add one (the old status index took one at acceptance and
  one at the end).
- `sent` is the common end: the list scans `deliveries_created_idx` and checks the status.
- the rare ends (dead_lettered, suppressed, cancelled, superseded) get a row in the narrow side
  table `delivery_ends (status, created_at, delivery_id)`, written by a trigger on `deliveries` in
  the statement that ends the delivery, whichever path it is (acceptance as suppressed, cancel,
  supersede, a finished attempt, stale-claim recovery): like an index, it cannot be forgotten by
  a new path. Its `WHEN` clause keeps the common end (`sent`) free of any trigger call.
- the collapse lookup moves to the queue too (a queued delivery has a queue row by construction):
  `delivery_queue.collapse_source` / `collapse_key`, set at acceptance only when a collapse key is
  given, indexed where it is. No status predicate is needed: the queue holds only the live ones.
- retention finds old terminal rows on `deliveries_created_idx`: `finished_at >= created_at`, so
  every row finished before the cutoff was created before it.

`superseded_by` stays indexed (the SET NULL that follows a superseding delivery's deletion needs
it), so a supersede — rare — still writes index entries; every other end is HOT when the page has
room.

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

_RARE_ENDS = "('dead_lettered', 'suppressed', 'cancelled', 'superseded')"

# one statement (its body holds semicolons): run on its own, before the triggers that call it
RECORD_END = """
CREATE FUNCTION delivery_ends_record() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO delivery_ends (delivery_id, status, created_at) VALUES (NEW.delivery_id, NEW.status, NEW.created_at)
    ON CONFLICT (delivery_id) DO UPDATE SET status = EXCLUDED.status, created_at = EXCLUDED.created_at;
    RETURN NULL;
END
$$
"""

TABLES = f"""
ALTER TABLE deliveries SET (fillfactor = 50);

CREATE TABLE delivery_ends (
    delivery_id  uuid PRIMARY KEY REFERENCES deliveries (delivery_id) ON DELETE CASCADE,
    status       text NOT NULL CHECK (status IN {_RARE_ENDS}),
    -- the delivery's, copied: the list's order
    created_at   timestamptz NOT NULL
);
-- operator lists filtered by a rare end, newest first with keyset pagination
CREATE INDEX delivery_ends_status_created_idx ON delivery_ends (status, created_at DESC, delivery_id DESC)
"""

UPGRADE = f"""
CREATE TRIGGER deliveries_rare_end_inserted AFTER INSERT ON deliveries FOR EACH ROW
    WHEN (NEW.status IN {_RARE_ENDS}) EXECUTE FUNCTION delivery_ends_record();
CREATE TRIGGER deliveries_rare_end_updated AFTER UPDATE OF status ON deliveries FOR EACH ROW
    WHEN (NEW.status IS DISTINCT FROM OLD.status AND NEW.status IN {_RARE_ENDS})
    EXECUTE FUNCTION delivery_ends_record();
INSERT INTO delivery_ends (delivery_id, status, created_at)
SELECT delivery_id, status, created_at FROM deliveries WHERE status IN {_RARE_ENDS};

ALTER TABLE delivery_queue ADD COLUMN created_at timestamptz;
ALTER TABLE delivery_queue ADD COLUMN collapse_source text;
ALTER TABLE delivery_queue ADD COLUMN collapse_key text;
UPDATE delivery_queue q
SET created_at = d.created_at,
    collapse_source = CASE WHEN d.collapse_key IS NOT NULL THEN d.source END, collapse_key = d.collapse_key
FROM deliveries d WHERE d.delivery_id = q.delivery_id;
ALTER TABLE delivery_queue ALTER COLUMN created_at SET NOT NULL;
ALTER TABLE delivery_queue ADD CONSTRAINT delivery_queue_collapse_scope
    CHECK ((collapse_source IS NULL) = (collapse_key IS NULL));
-- operator lists filtered by `queued`: the unclaimed rows, newest first (a claim adds no entry)
CREATE INDEX delivery_queue_queued_idx ON delivery_queue (created_at DESC, delivery_id DESC)
    WHERE claim_token IS NULL;
-- acceptance with a collapse key: the live deliveries of the same (source, key)
CREATE INDEX delivery_queue_collapse_idx ON delivery_queue (collapse_source, collapse_key)
    WHERE collapse_key IS NOT NULL;

DROP INDEX deliveries_status_created_idx;
DROP INDEX deliveries_finished_idx;
DROP INDEX deliveries_collapse_idx
"""

DOWNGRADE = """
CREATE INDEX deliveries_collapse_idx ON deliveries (source, collapse_key)
    WHERE status = 'queued' AND collapse_key IS NOT NULL;
CREATE INDEX deliveries_finished_idx ON deliveries (finished_at) WHERE finished_at IS NOT NULL;
CREATE INDEX deliveries_status_created_idx ON deliveries (status, created_at DESC, delivery_id DESC);
DROP INDEX delivery_queue_collapse_idx;
DROP INDEX delivery_queue_queued_idx;
ALTER TABLE delivery_queue DROP CONSTRAINT delivery_queue_collapse_scope;
ALTER TABLE delivery_queue DROP COLUMN collapse_key;
ALTER TABLE delivery_queue DROP COLUMN collapse_source;
ALTER TABLE delivery_queue DROP COLUMN created_at;
DROP TRIGGER deliveries_rare_end_updated ON deliveries;
DROP TRIGGER deliveries_rare_end_inserted ON deliveries;
DROP FUNCTION delivery_ends_record();
DROP TABLE delivery_ends;
ALTER TABLE deliveries RESET (fillfactor)
"""


def _run(script: str) -> None:
    # one statement per call: asyncpg prepares each statement and refuses several at once
    for statement in script.split(";\n"):
        if statement.strip():
            op.execute(statement)


def upgrade() -> None:
    _run(TABLES)
    op.execute(RECORD_END)
    _run(UPGRADE)


def downgrade() -> None:
    _run(DOWNGRADE)
