//! Durable load progress, kept on the target.
//!
//! The migration row says how far setup went (slot created, schema copied, load finished);
//! `load_progress` has one row per copied chunk, inserted in the same transaction as the
//! chunk's rows, so a chunk is either entirely there and recorded, or absent and unrecorded.

use std::collections::BTreeMap;

use tokio_postgres::Client;

use crate::pg::{Lsn, SqlContext, SqlError, TableName};

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SchemaState {
    None,
    PreData,
    Done,
}

impl SchemaState {
    fn parse(s: &str) -> SchemaState {
        match s {
            "pre_data" => SchemaState::PreData,
            "done" => SchemaState::Done,
            _ => SchemaState::None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            SchemaState::None => "none",
            SchemaState::PreData => "pre_data",
            SchemaState::Done => "done",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MigrationRow {
    pub id: String,
    pub slot_name: String,
    pub publication: String,
    pub slot_lsn: Option<Lsn>,
    pub schema_state: SchemaState,
    pub stage: String,
}

/// Does the target already hold pgcutover's bookkeeping (read-only check)?
pub async fn read_migration(client: &Client, id: &str) -> Result<Option<MigrationRow>, SqlError> {
    let exists: bool = client
        .query_one("SELECT to_regclass('pgcutover.migration') IS NOT NULL", &[])
        .await
        .ctx(|| "looking for pgcutover's state on the target".into())?
        .get(0);
    if !exists {
        return Ok(None);
    }
    let row = client
        .query_opt(
            "SELECT id, slot_name, publication, slot_lsn::text, schema_state, stage
               FROM pgcutover.migration WHERE id = $1",
            &[&id],
        )
        .await
        .ctx(|| "reading the migration row".into())?;
    Ok(row.as_ref().map(row_to_migration))
}

/// Create the helper schema and the migration row if missing; return the row.
pub async fn ensure_migration(
    client: &Client,
    id: &str,
    slot: &str,
    publication: &str,
) -> Result<MigrationRow, SqlError> {
    client
        .batch_execute(include_str!("sql/target_helpers.sql"))
        .await
        .ctx(|| "creating pgcutover's helper tables on the target".into())?;
    // DO UPDATE (a no-op) rather than DO NOTHING, so that RETURNING always yields the row.
    let r = client
        .query_one(
            "INSERT INTO pgcutover.migration (id, slot_name, publication) VALUES ($1, $2, $3)
             ON CONFLICT (id) DO UPDATE SET id = EXCLUDED.id
             RETURNING id, slot_name, publication, slot_lsn::text, schema_state, stage",
            &[&id, &slot, &publication],
        )
        .await
        .ctx(|| "recording the migration".into())?;
    Ok(row_to_migration(&r))
}

fn row_to_migration(r: &tokio_postgres::Row) -> MigrationRow {
    MigrationRow {
        id: r.get(0),
        slot_name: r.get(1),
        publication: r.get(2),
        slot_lsn: r.get::<_, Option<String>>(3).and_then(|s| s.parse().ok()),
        schema_state: SchemaState::parse(r.get(4)),
        stage: r.get(5),
    }
}

pub async fn set_slot_lsn(client: &Client, id: &str, lsn: Lsn) -> Result<(), SqlError> {
    client
        .execute(
            "UPDATE pgcutover.migration SET slot_lsn = $2::text::pg_lsn, stage = 'full_load',
                    updated_at = now() WHERE id = $1",
            &[&id, &lsn.to_string()],
        )
        .await
        .ctx(|| "recording the slot position".into())?;
    Ok(())
}

/// SQL that marks the schema state; run inside the transaction that did the work.
pub fn schema_state_sql(id: &str, state: SchemaState) -> String {
    format!(
        "UPDATE pgcutover.migration SET schema_state = {}, updated_at = now() WHERE id = {};",
        crate::pg::quote_literal(state.as_str()),
        crate::pg::quote_literal(id)
    )
}

pub async fn set_schema_state(
    client: &Client,
    id: &str,
    state: SchemaState,
) -> Result<(), SqlError> {
    client
        .batch_execute(&schema_state_sql(id, state))
        .await
        .ctx(|| "recording the schema state".into())
}

pub async fn set_stage(client: &Client, id: &str, stage: &str) -> Result<(), SqlError> {
    client
        .execute(
            "UPDATE pgcutover.migration SET stage = $2, updated_at = now()
              WHERE id = $1 AND stage <> 'cdc'",
            &[&id, &stage],
        )
        .await
        .ctx(|| "recording the stage".into())?;
    Ok(())
}

/// A table whose every chunk committed from one snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadedTable {
    pub snapshot_lsn: Lsn,
    pub rows: i64,
    pub bytes: i64,
}

/// Tables fully loaded, with the snapshot position they were copied at.
pub async fn loaded_tables(
    client: &Client,
    id: &str,
) -> Result<BTreeMap<TableName, LoadedTable>, SqlError> {
    let rows = client
        .query(
            "SELECT schema_name, table_name, min(snapshot_lsn)::text, sum(rows)::int8,
                    sum(bytes)::int8
               FROM pgcutover.load_progress
              WHERE migration_id = $1
              GROUP BY schema_name, table_name
             HAVING count(*) = max(chunks) AND min(snapshot_lsn) = max(snapshot_lsn)",
            &[&id],
        )
        .await
        .ctx(|| "reading load progress".into())?;
    let mut out = BTreeMap::new();
    for r in rows {
        let Ok(lsn) = r.get::<_, String>(2).parse() else {
            continue;
        };
        out.insert(
            TableName::new(r.get::<_, String>(0), r.get::<_, String>(1)),
            LoadedTable {
                snapshot_lsn: lsn,
                rows: r.get(3),
                bytes: r.get(4),
            },
        );
    }
    Ok(out)
}

/// Forget the chunks of a table that is about to be copied again.
pub async fn forget_table(client: &Client, id: &str, table: &TableName) -> Result<(), SqlError> {
    client
        .execute(
            "DELETE FROM pgcutover.load_progress
              WHERE migration_id = $1 AND schema_name = $2 AND table_name = $3",
            &[&id, &table.schema, &table.name],
        )
        .await
        .ctx(|| format!("clearing progress of {}", table.display_plain()))?;
    Ok(())
}

/// A copied chunk, as recorded.
#[derive(Clone, Debug)]
pub struct ChunkRecord<'a> {
    pub migration_id: &'a str,
    pub table: &'a TableName,
    pub chunk: i32,
    pub chunks: i32,
    pub snapshot_lsn: Lsn,
    pub rows: i64,
    pub bytes: i64,
}

/// The rows and bytes recorded for a chunk, if it committed.
pub async fn chunk_committed(
    client: &tokio_postgres::Client,
    migration_id: &str,
    table: &TableName,
    chunk: i32,
) -> Result<Option<(i64, i64)>, SqlError> {
    let row = client
        .query_opt(
            "SELECT rows, bytes FROM pgcutover.load_progress
              WHERE migration_id = $1 AND schema_name = $2 AND table_name = $3 AND chunk = $4",
            &[&migration_id, &table.schema, &table.name, &chunk],
        )
        .await
        .ctx(|| format!("reading the progress of {}", table.display_plain()))?;
    Ok(row.map(|r| (r.get(0), r.get(1))))
}

/// Record a copied chunk; call inside the chunk's transaction.
pub async fn record_chunk(
    tx: &tokio_postgres::Transaction<'_>,
    c: &ChunkRecord<'_>,
) -> Result<(), SqlError> {
    tx.execute(
        "INSERT INTO pgcutover.load_progress
             (migration_id, schema_name, table_name, chunk, chunks, snapshot_lsn, rows, bytes)
         VALUES ($1, $2, $3, $4, $5, $6::text::pg_lsn, $7, $8)",
        &[
            &c.migration_id,
            &c.table.schema,
            &c.table.name,
            &c.chunk,
            &c.chunks,
            &c.snapshot_lsn.to_string(),
            &c.rows,
            &c.bytes,
        ],
    )
    .await
    .ctx(|| format!("recording progress of {}", c.table.display_plain()))?;
    Ok(())
}
