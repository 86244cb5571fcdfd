//! What the daemon is doing, for `/status` and for the logs.
//!
//! One [`StatusBoard`] per daemon, shared by the pipeline (which writes) and the HTTP layer
//! (which reads a consistent [`StatusView`] copy). Writers hold the lock only to update a few
//! numbers; byte counters of running copies are atomics so the copy loop never takes a lock.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;

use crate::pg::{Lsn, TableName};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    Starting,
    Preflight,
    Setup,
    Schema,
    FullLoad,
    PostData,
    /// Full load finished; the change stream starts here.
    Loaded,
    Cdc,
    Stopped,
    Failed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TableState {
    Pending,
    Copying,
    Done,
}

#[derive(Debug, Default)]
pub struct LiveTable {
    pub bytes: AtomicU64,
}

#[derive(Clone, Debug, Serialize)]
pub struct TableView {
    pub table: String,
    pub state: TableState,
    pub rows: i64,
    pub bytes: u64,
    pub chunks_done: i32,
    pub chunks: i32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot_lsn: Option<Lsn>,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct ErrorReport {
    pub error: String,
    pub hint: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct StatusView {
    pub engine: String,
    pub migration_id: String,
    pub stage: Stage,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slot_lsn: Option<Lsn>,
    pub tables_total: usize,
    pub tables_done: usize,
    pub rows_copied: i64,
    pub bytes_copied: u64,
    pub tables: Vec<TableView>,
    /// Lag of the change stream; absent until CDC runs.
    pub lag_bytes: Option<u64>,
    pub lag_seconds: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorReport>,
}

struct TableEntry {
    state: TableState,
    rows: i64,
    done_bytes: u64,
    chunks_done: i32,
    chunks: i32,
    snapshot_lsn: Option<Lsn>,
    live: Arc<LiveTable>,
}

struct Inner {
    stage: Stage,
    slot_lsn: Option<Lsn>,
    tables: BTreeMap<TableName, TableEntry>,
    error: Option<ErrorReport>,
}

pub struct StatusBoard {
    engine: String,
    migration_id: String,
    inner: Mutex<Inner>,
}

impl StatusBoard {
    pub fn new(engine: &str, migration_id: &str) -> Arc<StatusBoard> {
        Arc::new(StatusBoard {
            engine: engine.into(),
            migration_id: migration_id.into(),
            inner: Mutex::new(Inner {
                stage: Stage::Starting,
                slot_lsn: None,
                tables: BTreeMap::new(),
                error: None,
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding this lock leaves plain numbers behind; keep serving them.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn set_stage(&self, stage: Stage) {
        self.lock().stage = stage;
    }

    pub fn stage(&self) -> Stage {
        self.lock().stage
    }

    pub fn set_slot_lsn(&self, lsn: Lsn) {
        self.lock().slot_lsn = Some(lsn);
    }

    pub fn fail(&self, report: ErrorReport) {
        let mut g = self.lock();
        g.stage = Stage::Failed;
        g.error = Some(report);
    }

    /// Register a table to load (`chunks` units), or one already loaded earlier.
    pub fn add_table(&self, name: &TableName, chunks: i32, done: Option<(i64, u64, Lsn)>) {
        let mut g = self.lock();
        let (state, rows, bytes, lsn, chunks_done) = match done {
            Some((rows, bytes, lsn)) => (TableState::Done, rows, bytes, Some(lsn), chunks),
            None => (TableState::Pending, 0, 0, None, 0),
        };
        g.tables.insert(
            name.clone(),
            TableEntry {
                state,
                rows,
                done_bytes: bytes,
                chunks_done,
                chunks,
                snapshot_lsn: lsn,
                live: Arc::new(LiveTable::default()),
            },
        );
    }

    /// A chunk of `name` starts; returns the counter its copy loop adds bytes to.
    pub fn chunk_started(&self, name: &TableName) -> Arc<LiveTable> {
        let mut g = self.lock();
        match g.tables.get_mut(name) {
            Some(t) => {
                t.state = TableState::Copying;
                t.live.clone()
            }
            None => Arc::new(LiveTable::default()),
        }
    }

    /// A chunk committed. Returns true when the table is complete.
    pub fn chunk_done(&self, name: &TableName, rows: i64, bytes: u64, lsn: Lsn) -> bool {
        let mut g = self.lock();
        let Some(t) = g.tables.get_mut(name) else {
            return false;
        };
        t.rows += rows;
        t.done_bytes += bytes;
        t.live.bytes.fetch_sub(
            bytes.min(t.live.bytes.load(Ordering::Relaxed)),
            Ordering::Relaxed,
        );
        t.chunks_done += 1;
        t.snapshot_lsn = Some(lsn);
        if t.chunks_done >= t.chunks {
            t.state = TableState::Done;
            true
        } else {
            false
        }
    }

    /// A chunk failed and will not be retried in this run: its bytes are not copied.
    pub fn chunk_abandoned(&self, name: &TableName) {
        if let Some(t) = self.lock().tables.get_mut(name) {
            t.live.bytes.store(0, Ordering::Relaxed);
        }
    }

    pub fn view(&self) -> StatusView {
        let g = self.lock();
        let tables: Vec<TableView> = g
            .tables
            .iter()
            .map(|(name, t)| TableView {
                table: name.display_plain(),
                state: t.state,
                rows: t.rows,
                bytes: t.done_bytes + t.live.bytes.load(Ordering::Relaxed),
                chunks_done: t.chunks_done,
                chunks: t.chunks,
                snapshot_lsn: t.snapshot_lsn,
            })
            .collect();
        StatusView {
            engine: self.engine.clone(),
            migration_id: self.migration_id.clone(),
            stage: g.stage,
            slot_lsn: g.slot_lsn,
            tables_total: tables.len(),
            tables_done: tables
                .iter()
                .filter(|t| t.state == TableState::Done)
                .count(),
            rows_copied: tables.iter().map(|t| t.rows).sum(),
            bytes_copied: tables.iter().map(|t| t.bytes).sum(),
            tables,
            lag_bytes: None,
            lag_seconds: None,
            error: g.error.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_chunks_rows_and_live_bytes() {
        let board = StatusBoard::new("native", "m1");
        let t = TableName::new("public", "big");
        board.add_table(&t, 2, None);
        board.add_table(&TableName::new("public", "old"), 1, Some((5, 50, Lsn(7))));
        let live = board.chunk_started(&t);
        live.bytes.fetch_add(100, Ordering::Relaxed);
        let v = board.view();
        assert_eq!((v.tables_total, v.tables_done, v.bytes_copied), (2, 1, 150));
        assert!(!board.chunk_done(&t, 10, 100, Lsn(9)));
        live.bytes.fetch_add(30, Ordering::Relaxed);
        assert!(board.chunk_done(&t, 3, 30, Lsn(9)));
        let v = board.view();
        assert_eq!((v.tables_done, v.rows_copied, v.bytes_copied), (2, 18, 180));
        let json = serde_json::to_value(&v).unwrap();
        assert_eq!(json["tables"][0]["state"], "done");
        assert_eq!(json["tables"][0]["snapshot_lsn"], "0/9");
    }
}
