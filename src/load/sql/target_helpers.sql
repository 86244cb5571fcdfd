-- pgcutover's bookkeeping on the target. It lives on the target so that progress commits in
-- the same transaction as the rows it describes (correctness rules 2 and 3).
CREATE SCHEMA IF NOT EXISTS pgcutover;

CREATE TABLE IF NOT EXISTS pgcutover.migration (
    id              text PRIMARY KEY,
    slot_name       text NOT NULL,
    publication     text NOT NULL,
    -- consistent point of the slot; NULL until the slot exists
    slot_lsn        pg_lsn,
    -- none | pre_data | done
    schema_state    text NOT NULL DEFAULT 'none',
    -- setup | full_load | post_data | loaded
    stage           text NOT NULL DEFAULT 'setup',
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);

-- One row per copied chunk. A table is loaded when all its chunks carry rows with the same
-- snapshot_lsn; CDC applies a change to it only when the change committed at or after that
-- position.
CREATE TABLE IF NOT EXISTS pgcutover.load_progress (
    migration_id    text NOT NULL,
    schema_name     text NOT NULL,
    table_name      text NOT NULL,
    chunk           int  NOT NULL,
    chunks          int  NOT NULL,
    snapshot_lsn    pg_lsn NOT NULL,
    rows            bigint NOT NULL,
    bytes           bigint NOT NULL,
    done_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (migration_id, schema_name, table_name, chunk)
);

-- CDC: the end of the last source transaction applied, written in the same target
-- transaction as its changes; NULL until the first one commits.
ALTER TABLE pgcutover.migration ADD COLUMN IF NOT EXISTS applied_lsn pg_lsn;
