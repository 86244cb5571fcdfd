//! One copy worker: a source session inside the exported snapshot and a target session.
//!
//! Rows travel as COPY data, chunk by chunk, from the source's `COPY ... TO STDOUT` straight
//! into the target's `COPY ... FROM STDIN`: they are never decoded and at most one COPY
//! message per worker (plus the client's send buffer) is in memory, whatever the table size.
//! Binary format is used where it is exact across clusters (see `pg/sql/columns.sql`), text
//! otherwise; both sessions pin the same output settings, so text round-trips exactly.
//!
//! A chunk's rows and its progress row commit in one target transaction. A whole-table chunk
//! also truncates the table in that transaction, which both makes the copy idempotent (a
//! crashed attempt leaves nothing behind; a retry starts clean) and allows `COPY ... FREEZE`.

use std::sync::atomic::Ordering;

use futures_util::{SinkExt, StreamExt};
use tokio_postgres::Client;

use super::plan::WorkItem;
use super::progress;
use crate::pg::catalog::Column;
use crate::pg::conn::{ConnError, ConnInfo};
use crate::pg::{Lsn, SqlContext, SqlError, TableName, quote_ident, quote_literal};
use crate::status::LiveTable;

/// A table as the loader copies it.
#[derive(Clone, Debug)]
pub struct CopyUnit {
    pub name: TableName,
    /// Stored (non-generated) columns, in source order.
    pub columns: Vec<String>,
    pub binary: bool,
    /// The target table is referenced by a foreign key, so it cannot be truncated.
    pub fk_referenced: bool,
    pub bytes: u64,
}

impl CopyUnit {
    pub fn new(name: TableName, columns: &[Column], bytes: u64) -> CopyUnit {
        let stored: Vec<&Column> = columns.iter().filter(|c| !c.generated).collect();
        CopyUnit {
            name,
            binary: stored.iter().all(|c| c.binary_safe),
            columns: stored.iter().map(|c| c.name.clone()).collect(),
            fk_referenced: false,
            bytes,
        }
    }

    fn column_list(&self) -> String {
        if self.columns.is_empty() {
            return String::new();
        }
        let cols: Vec<String> = self.columns.iter().map(|c| quote_ident(c)).collect();
        format!(" ({})", cols.join(", "))
    }

    fn format(&self) -> &'static str {
        if self.binary { "binary" } else { "text" }
    }

    pub fn copy_out_sql(&self, item: &WorkItem) -> String {
        match item.range {
            None => format!(
                "COPY {}{} TO STDOUT (FORMAT {})",
                self.name,
                self.column_list(),
                self.format()
            ),
            Some(range) => {
                let cols = if self.columns.is_empty() {
                    String::new()
                } else {
                    self.column_list()
                        .trim()
                        .trim_matches(['(', ')'])
                        .to_string()
                };
                format!(
                    "COPY (SELECT {cols} FROM ONLY {} WHERE {range}) TO STDOUT (FORMAT {})",
                    self.name,
                    self.format()
                )
            }
        }
    }

    pub fn copy_in_sql(&self, freeze: bool) -> String {
        format!(
            "COPY {}{} FROM STDIN (FORMAT {}{})",
            self.name,
            self.column_list(),
            self.format(),
            if freeze { ", FREEZE" } else { "" }
        )
    }

    /// Empty the target table (inside the caller's transaction).
    pub fn clear_sql(&self) -> String {
        if self.fk_referenced {
            format!("DELETE FROM ONLY {}", self.name)
        } else {
            format!("TRUNCATE ONLY {}", self.name)
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error(transparent)]
    Conn(#[from] ConnError),
    #[error(transparent)]
    Sql(#[from] SqlError),
}

impl CopyError {
    /// New sessions may succeed where these failed (see [`crate::pg::is_transient`]): the
    /// connection broke or the server ended the session.
    pub fn is_transient(&self) -> bool {
        match self {
            CopyError::Conn(
                ConnError::Connect { source, .. } | ConnError::Setup { source, .. },
            ) => crate::pg::is_transient(source),
            CopyError::Conn(ConnError::Tls { .. }) => false,
            CopyError::Conn(ConnError::Timeout { .. }) => true,
            CopyError::Sql(e) => e.is_transient(),
        }
    }
}

pub struct Worker {
    source: Client,
    target: Client,
    snapshot_lsn: Lsn,
    migration_id: String,
}

impl Worker {
    /// Open both sessions and import the snapshot. Must run while the exporting session lives.
    pub async fn open(
        source: &ConnInfo,
        target: &ConnInfo,
        snapshot: &str,
        snapshot_lsn: Lsn,
        migration_id: &str,
    ) -> Result<Worker, CopyError> {
        let src = source.connect("pgcutover load").await?;
        src.batch_execute(&format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT {}",
            quote_literal(snapshot)
        ))
        .await
        .ctx(|| "importing the exported snapshot".into())?;
        let tgt = target.connect("pgcutover load").await?;
        // Durability comes from the commit that records progress being flushed eventually:
        // losing an unflushed commit in a target crash loses the rows and their progress row
        // together, and the chunk is simply copied again.
        tgt.batch_execute("SET synchronous_commit = off")
            .await
            .ctx(|| "setting up the target session".into())?;
        // Skip user triggers while loading (needs superuser or rds_superuser; without it the
        // load still works, triggers just fire).
        if tgt
            .batch_execute("SET session_replication_role = replica")
            .await
            .is_err()
        {
            tracing::debug!("session_replication_role not settable on the target; triggers fire");
        }
        Ok(Worker {
            source: src,
            target: tgt,
            snapshot_lsn,
            migration_id: migration_id.into(),
        })
    }

    /// Copy one unit of work; returns (rows, bytes of COPY data). On an error the bytes it
    /// counted in `live` are taken back out (nothing of the chunk committed).
    pub async fn copy(
        &mut self,
        unit: &CopyUnit,
        item: &WorkItem,
        live: &LiveTable,
    ) -> Result<(i64, u64), CopyError> {
        let mut counted = 0;
        let result = self.copy_counting(unit, item, live, &mut counted).await;
        if result.is_err() {
            let _ = live
                .bytes
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                    Some(b.saturating_sub(counted))
                });
        }
        result
    }

    /// The (rows, bytes) recorded for a chunk that committed, if it did: a chunk whose COMMIT
    /// went through just before its connection broke is done, and copying it again would be
    /// refused (its progress row exists).
    pub async fn committed(
        &self,
        unit: &CopyUnit,
        item: &WorkItem,
    ) -> Result<Option<(i64, u64)>, CopyError> {
        Ok(
            progress::chunk_committed(&self.target, &self.migration_id, &unit.name, item.chunk)
                .await?
                .map(|(rows, bytes)| (rows, bytes.max(0) as u64)),
        )
    }

    async fn copy_counting(
        &mut self,
        unit: &CopyUnit,
        item: &WorkItem,
        live: &LiveTable,
        counted: &mut u64,
    ) -> Result<(i64, u64), CopyError> {
        let what = || format!("copying {}", unit.name.display_plain());
        let tx = self.target.transaction().await.ctx(what)?;
        let whole = item.whole_table();
        if whole {
            tx.batch_execute(&unit.clear_sql()).await.ctx(what)?;
        }
        let sink = tx
            .copy_in::<_, bytes::Bytes>(&unit.copy_in_sql(whole && !unit.fk_referenced))
            .await
            .ctx(what)?;
        let stream = self
            .source
            .copy_out(&unit.copy_out_sql(item))
            .await
            .ctx(what)?;
        futures_util::pin_mut!(sink);
        futures_util::pin_mut!(stream);
        let mut bytes: u64 = 0;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.ctx(what)?;
            let n = chunk.len() as u64;
            sink.feed(chunk).await.ctx(what)?;
            bytes += n;
            *counted += n;
            live.bytes.fetch_add(n, Ordering::Relaxed);
        }
        let rows = sink.as_mut().finish().await.ctx(what)? as i64;
        let record = progress::ChunkRecord {
            migration_id: &self.migration_id,
            table: &unit.name,
            chunk: item.chunk,
            chunks: item.chunks,
            snapshot_lsn: self.snapshot_lsn,
            rows,
            bytes: bytes as i64,
        };
        progress::record_chunk(&tx, &record).await?;
        tx.commit().await.ctx(what)?;
        Ok((rows, bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::plan::BlockRange;

    fn col(name: &str, generated: bool, binary_safe: bool) -> Column {
        Column {
            name: name.into(),
            type_name: "int".into(),
            generated,
            not_null: false,
            binary_safe,
        }
    }

    fn item(range: Option<BlockRange>) -> WorkItem {
        WorkItem {
            table: 0,
            name: TableName::new("s", "t"),
            chunk: 0,
            chunks: 1,
            range,
            est_bytes: 0,
        }
    }

    #[test]
    fn generated_columns_are_left_out_and_names_quoted() {
        let u = CopyUnit::new(
            TableName::new("My Schema", "select"),
            &[
                col("id", false, true),
                col("Total\"x", false, true),
                col("g", true, true),
            ],
            0,
        );
        assert!(u.binary);
        assert_eq!(
            u.copy_out_sql(&item(None)),
            "COPY \"My Schema\".\"select\" (\"id\", \"Total\"\"x\") TO STDOUT (FORMAT binary)"
        );
        assert_eq!(
            u.copy_out_sql(&item(Some(BlockRange {
                start: 0,
                end: Some(10)
            }))),
            "COPY (SELECT \"id\", \"Total\"\"x\" FROM ONLY \"My Schema\".\"select\" WHERE \
             ctid >= '(0,0)'::tid AND ctid < '(10,0)'::tid) TO STDOUT (FORMAT binary)"
        );
        assert_eq!(
            u.copy_in_sql(true),
            "COPY \"My Schema\".\"select\" (\"id\", \"Total\"\"x\") FROM STDIN (FORMAT binary, FREEZE)"
        );
    }

    #[test]
    fn one_unsafe_column_makes_the_table_text() {
        let u = CopyUnit::new(
            TableName::new("s", "t"),
            &[col("a", false, true), col("b", false, false)],
            0,
        );
        assert!(!u.binary);
        assert!(u.copy_in_sql(false).ends_with("(FORMAT text)"));
    }

    #[test]
    fn zero_column_tables_have_no_column_list() {
        let u = CopyUnit::new(TableName::new("s", "t"), &[], 0);
        assert_eq!(
            u.copy_in_sql(false),
            "COPY \"s\".\"t\" FROM STDIN (FORMAT binary)"
        );
    }
}
