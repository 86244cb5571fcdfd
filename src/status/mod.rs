//! What the daemon is doing, for `/status` and for the logs.
//!
//! One [`StatusBoard`] per daemon, shared by the pipeline (which writes) and the HTTP layer
//! (which reads a consistent [`StatusView`] copy). Writers hold the lock only to update a few
//! numbers; byte counters of running copies are atomics so the copy loop never takes a lock.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;

use crate::pg::slot::SlotState;
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
    /// Chunks copied again after their sessions broke (see `load::copy_all`).
    #[serde(skip_serializing_if = "is_zero")]
    pub retries: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
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
    pub slot: Option<SlotView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cdc: Option<CdcView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorReport>,
    /// Risks found before the load that do not stop it (e.g. a limit on the WAL the slot may
    /// hold).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// What the daemon waits on that only someone else can end (absent when nothing).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waiting: Option<Waiting>,
    /// The load failed for a passing reason (a server out of reach) and is run again
    /// (absent otherwise; the change stream's own retries are under `cdc`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interrupted: Option<Interruption>,
}

/// A wait on the source that only others can end, with who holds it up.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Waiting {
    pub reason: String,
    pub hint: String,
    pub seconds: f64,
    /// The source's transactions in the way, oldest first (at most 20).
    pub blockers: Vec<Blocker>,
}

/// A source transaction that holds up the daemon. Its query text is left out: it may hold
/// application data or secrets.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Blocker {
    /// Backend pid (none for a prepared transaction).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub application: Option<String>,
    /// `pg_stat_activity.state` (`idle in transaction`, `active`, ...), or `prepared`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// Age of the transaction.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transaction_seconds: Option<f64>,
    /// The global id of a prepared transaction.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prepared_gid: Option<String>,
}

/// The change stream, once it runs.
#[derive(Clone, Debug, Default, Serialize)]
pub struct CdcView {
    /// End of the last source transaction committed on the target.
    pub applied_lsn: Lsn,
    /// Position the stream has fully processed (applied, or known to hold nothing for us).
    pub processed_lsn: Lsn,
    /// The source's current WAL position, at the last heartbeat.
    pub source_lsn: Option<Lsn>,
    /// WAL the source keeps for the slot (`pg_current_wal_lsn() - restart_lsn`).
    pub retained_wal_bytes: Option<u64>,
    pub changes_applied: u64,
    pub transactions_applied: u64,
    /// Batches applied on a target session of their own while the batch before them was
    /// still being applied (they wrote none of its rows).
    pub batches_beside: u64,
    /// Updates and deletes whose row was not on the target (a sign of writes to the target).
    pub missing_rows: u64,
    /// Whether the last batch committed asynchronously on the target (confirmed to the source
    /// once the target had flushed it), or waited for the target's disk: sessions start
    /// synchronous and switch once the target is seen to flush (see
    /// [`crate::cdc::apply::Applier::new`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub asynchronous_commits: Option<bool>,
    /// The `wal_compression` the apply sessions write the target's WAL with (see
    /// [`crate::pg::wal_compression`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_wal_compression: Option<String>,
    /// Heartbeat latency over the last heartbeats (up to 10 minutes).
    pub lag_p50_seconds: Option<f64>,
    pub lag_p99_seconds: Option<f64>,
    pub heartbeats_applied: u64,
    pub reconnects: u64,
    /// Times the stream received nothing for `replication.receive_timeout` and the source
    /// was asked whether it still heard it (see [`crate::cdc::silence`]).
    pub silences: u64,
    /// Times an apply session waited for an answer longer than `replication.receive_timeout`
    /// and the target was asked about it (see [`crate::cdc::stall`])…
    pub target_probes: u64,
    /// …and times it was then given up as dead.
    pub target_stalls: u64,
    /// Why the stream is down and being retried (absent while it runs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interrupted: Option<Interruption>,
}

/// The migration's slot on the source, read every few seconds from the moment it exists
/// (during the full load too, when it holds the most WAL).
#[derive(Clone, Debug, Default, Serialize)]
pub struct SlotView {
    /// WAL the source keeps for the slot (`pg_current_wal_lsn() - restart_lsn`).
    pub retained_wal_bytes: Option<u64>,
    /// `pg_replication_slots.wal_status` (PostgreSQL 13+): `reserved` or `extended` are fine;
    /// `unreserved` means the source's next checkpoint may remove WAL the slot needs; `lost`
    /// means it did and the slot can no longer stream.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wal_status: Option<String>,
    /// How much more WAL the source may write before the slot is in danger (absent when
    /// `max_slot_wal_keep_size` is unlimited).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub safe_wal_bytes: Option<i64>,
}

/// A passing failure of the change stream, retried with backoff.
#[derive(Clone, Debug, Serialize)]
pub struct Interruption {
    pub error: String,
    pub hint: String,
    /// Attempts so far, and the most before the stream stops for the operator.
    pub retry: u32,
    pub max_retries: u32,
    pub next_retry_in_seconds: f64,
}

/// Heartbeats: when each was sent (unix µs), and measured latencies.
#[derive(Default)]
struct Heartbeats {
    pending: std::collections::VecDeque<i64>,
    last_latency: Option<f64>,
    recent: std::collections::VecDeque<f64>,
}

const RECENT_HEARTBEATS: usize = 600;

pub fn unix_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

struct TableEntry {
    state: TableState,
    rows: i64,
    done_bytes: u64,
    chunks_done: i32,
    chunks: i32,
    snapshot_lsn: Option<Lsn>,
    retries: u32,
    live: Arc<LiveTable>,
}

struct Inner {
    stage: Stage,
    slot_lsn: Option<Lsn>,
    tables: BTreeMap<TableName, TableEntry>,
    error: Option<ErrorReport>,
    warnings: Vec<String>,
    waiting: Option<Waiting>,
    interrupted: Option<Interruption>,
    slot: Option<SlotView>,
    cdc: Option<CdcView>,
    heartbeats: Heartbeats,
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
                warnings: Vec::new(),
                waiting: None,
                interrupted: None,
                slot: None,
                cdc: None,
                heartbeats: Heartbeats::default(),
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

    /// Whether the pipeline waits for `POST /replication/resume`: stopped or failed on an
    /// error, or waiting to try again after a passing failure.
    pub fn waits_for_resume(&self) -> bool {
        let g = self.lock();
        matches!(g.stage, Stage::Stopped | Stage::Failed)
            || g.interrupted.is_some()
            || g.cdc.as_ref().is_some_and(|c| c.interrupted.is_some())
    }

    /// Prometheus text lines of the pipeline's figures.
    pub fn metrics(&self) -> String {
        let v = self.view();
        let mut out = String::new();
        let mut gauge = |name: &str, help: &str, value: Option<f64>| {
            out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} gauge\n"));
            if let Some(value) = value {
                out.push_str(&format!("{name} {value}\n"));
            }
        };
        gauge(
            "pgcutover_tables_total",
            "Tables to load.",
            Some(v.tables_total as f64),
        );
        gauge(
            "pgcutover_tables_loaded",
            "Tables loaded.",
            Some(v.tables_done as f64),
        );
        gauge(
            "pgcutover_rows_copied",
            "Rows copied by the full load.",
            Some(v.rows_copied as f64),
        );
        gauge(
            "pgcutover_bytes_copied",
            "Bytes copied by the full load.",
            Some(v.bytes_copied as f64),
        );
        gauge(
            "pgcutover_lag_bytes",
            "Source WAL position minus the applied position.",
            v.lag_bytes.map(|b| b as f64),
        );
        gauge(
            "pgcutover_lag_seconds",
            "End-to-end lag measured by the heartbeat.",
            v.lag_seconds,
        );
        let cdc = v.cdc.clone().unwrap_or_default();
        let slot = v.slot.clone().unwrap_or_default();
        gauge(
            "pgcutover_slot_retained_wal_bytes",
            "WAL the source keeps for the slot.",
            slot.retained_wal_bytes.map(|b| b as f64),
        );
        gauge(
            "pgcutover_slot_safe_wal_bytes",
            "WAL the source may still write before the slot is in danger (max_slot_wal_keep_size).",
            slot.safe_wal_bytes.map(|b| b as f64),
        );
        gauge(
            "pgcutover_changes_applied",
            "Row changes applied by the change stream.",
            Some(cdc.changes_applied as f64),
        );
        gauge(
            "pgcutover_transactions_applied",
            "Source transactions applied.",
            Some(cdc.transactions_applied as f64),
        );
        gauge(
            "pgcutover_batches_beside",
            "Batches applied on a target session of their own beside the one before them.",
            Some(cdc.batches_beside as f64),
        );
        gauge(
            "pgcutover_stream_reconnects",
            "Reconnections of the change stream.",
            Some(cdc.reconnects as f64),
        );
        gauge(
            "pgcutover_stream_silences",
            "Times the change stream received nothing for replication.receive_timeout and \
             the source was asked whether it still heard it.",
            Some(cdc.silences as f64),
        );
        gauge(
            "pgcutover_apply_stalls",
            "Times an apply session was given up because the target stopped answering it \
             and said the session was dead or could not be reached.",
            Some(cdc.target_stalls as f64),
        );
        gauge(
            "pgcutover_waiting_seconds",
            "How long the daemon has waited on source transactions only others can end \
             (0 when not waiting; /status names them).",
            Some(v.waiting.as_ref().map_or(0.0, |w| w.seconds)),
        );
        gauge(
            "pgcutover_warnings",
            "Risks found that do not stop the migration (listed under warnings in /status).",
            Some(v.warnings.len() as f64),
        );
        let stage = serde_json::to_value(v.stage)
            .ok()
            .and_then(|s| s.as_str().map(String::from))
            .unwrap_or_default();
        out.push_str(&format!(
            "# HELP pgcutover_stage The pipeline's stage (1 for the current one).\n\
             # TYPE pgcutover_stage gauge\npgcutover_stage{{stage=\"{stage}\"}} 1\n"
        ));
        out.push_str(
            "# HELP pgcutover_slot_wal_status The slot's wal_status on the source (1 for the \
             current one; lost means it can no longer stream).\n\
             # TYPE pgcutover_slot_wal_status gauge\n",
        );
        if let Some(status) = slot.wal_status.as_deref() {
            // The server's own word, one of a few known values; anything else is not echoed.
            let status = match status {
                "reserved" | "extended" | "unreserved" | "lost" => status,
                _ => "other",
            };
            out.push_str(&format!(
                "pgcutover_slot_wal_status{{status=\"{status}\"}} 1\n"
            ));
        }
        out
    }

    /// A risk the operator should know of (kept once, however often it is reported).
    pub fn warn(&self, warning: String) {
        let mut g = self.lock();
        if !g.warnings.contains(&warning) {
            g.warnings.push(warning);
        }
    }

    /// Waiting on others (`None`: no longer).
    pub fn set_waiting(&self, waiting: Option<Waiting>) {
        self.lock().waiting = waiting;
    }

    pub fn set_slot_lsn(&self, lsn: Lsn) {
        self.lock().slot_lsn = Some(lsn);
    }

    pub fn fail(&self, report: ErrorReport) {
        let mut g = self.lock();
        g.stage = Stage::Failed;
        g.error = Some(report);
        g.interrupted = None;
    }

    /// The load failed for a passing reason and runs again (`Some`), or runs again on the
    /// operator's word, or got through (`None`); either way no error stands.
    pub fn load_retrying(&self, why: Option<Interruption>) {
        let mut g = self.lock();
        g.error = None;
        g.interrupted = why;
    }

    /// The change stream stopped on an error the operator must fix (it waits for resume).
    pub fn stop(&self, report: ErrorReport) {
        let mut g = self.lock();
        g.stage = Stage::Stopped;
        g.error = Some(report);
    }

    /// The change stream runs (again) from `applied`.
    pub fn cdc_running(&self, applied: Lsn) {
        let mut g = self.lock();
        g.stage = Stage::Cdc;
        g.error = None;
        let c = g.cdc.get_or_insert_with(CdcView::default);
        c.applied_lsn = c.applied_lsn.max(applied);
        c.processed_lsn = c.processed_lsn.max(applied);
        c.interrupted = None;
    }

    /// The apply sessions write the target's WAL with this `wal_compression`.
    pub fn cdc_wal_compression(&self, setting: &str) {
        let mut g = self.lock();
        g.cdc
            .get_or_insert_with(CdcView::default)
            .target_wal_compression = Some(setting.to_string());
    }

    /// The stream broke for a passing reason and is retried.
    pub fn cdc_interrupted(&self, why: Interruption) {
        let mut g = self.lock();
        let c = g.cdc.get_or_insert_with(CdcView::default);
        c.reconnects += 1;
        c.interrupted = Some(why);
    }

    /// The stream received nothing for a while; the source is being asked about it.
    pub fn cdc_silent(&self) {
        let mut g = self.lock();
        g.cdc.get_or_insert_with(CdcView::default).silences += 1;
    }

    /// An apply session has not answered for a while; the target is being asked about it.
    pub fn cdc_target_probed(&self) {
        let mut g = self.lock();
        g.cdc.get_or_insert_with(CdcView::default).target_probes += 1;
    }

    /// An apply session was given up: the target stopped answering it.
    pub fn cdc_target_stalled(&self) {
        let mut g = self.lock();
        g.cdc.get_or_insert_with(CdcView::default).target_stalls += 1;
    }

    /// A target transaction committed.
    pub fn cdc_committed(&self, batch: &crate::cdc::apply::Committed) {
        let mut g = self.lock();
        let c = g.cdc.get_or_insert_with(CdcView::default);
        c.applied_lsn = c.applied_lsn.max(batch.source_end);
        c.processed_lsn = c.processed_lsn.max(batch.source_end);
        c.changes_applied += batch.changes;
        c.transactions_applied += batch.transactions;
        c.batches_beside += u64::from(batch.beside);
        c.missing_rows += batch.missing_rows;
        c.asynchronous_commits = Some(batch.target_lsn > Lsn::ZERO);
    }

    /// Everything up to `lsn` is processed (nothing of ours was there to apply).
    pub fn cdc_processed(&self, lsn: Lsn) {
        let mut g = self.lock();
        let c = g.cdc.get_or_insert_with(CdcView::default);
        c.processed_lsn = c.processed_lsn.max(lsn);
    }

    pub fn cdc_processed_lsn(&self) -> Option<Lsn> {
        self.lock().cdc.as_ref().map(|c| c.processed_lsn)
    }

    /// The source's WAL position, read at a heartbeat.
    pub fn source_wal(&self, current: Lsn) {
        let mut g = self.lock();
        g.cdc.get_or_insert_with(CdcView::default).source_lsn = Some(current);
    }

    /// The slot's state as just read; returns its `wal_status` before (to log a change).
    pub fn slot_state(&self, state: SlotState) -> Option<String> {
        let mut g = self.lock();
        let retained = state.retained_bytes();
        if let Some(c) = g.cdc.as_mut() {
            c.retained_wal_bytes = retained;
        }
        let before = g.slot.take().and_then(|s| s.wal_status);
        g.slot = Some(SlotView {
            retained_wal_bytes: retained,
            wal_status: state.wal_status,
            safe_wal_bytes: state.safe_wal_bytes,
        });
        before
    }

    /// A heartbeat stamped `sent` (unix µs) was written to the source.
    pub fn heartbeat_sent(&self, sent: i64) {
        let mut g = self.lock();
        let h = &mut g.heartbeats;
        h.pending.push_back(sent);
        if h.pending.len() > RECENT_HEARTBEATS {
            h.pending.pop_front();
        }
    }

    /// The heartbeat stamped `sent` came through the stream with everything before it
    /// committed on the target.
    pub fn heartbeat_applied(&self, sent: i64) {
        let latency = (unix_micros() - sent).max(0) as f64 / 1e6;
        let mut g = self.lock();
        let h = &mut g.heartbeats;
        while h.pending.front().is_some_and(|&p| p <= sent) {
            h.pending.pop_front();
        }
        h.last_latency = Some(latency);
        h.recent.push_back(latency);
        if h.recent.len() > RECENT_HEARTBEATS {
            h.recent.pop_front();
        }
        let mut sorted: Vec<f64> = h.recent.iter().copied().collect();
        sorted.sort_by(f64::total_cmp);
        let pick = |q: f64| sorted[((sorted.len() - 1) as f64 * q).round() as usize];
        let (p50, p99) = (pick(0.5), pick(0.99));
        let c = g.cdc.get_or_insert_with(CdcView::default);
        c.lag_p50_seconds = Some(p50);
        c.lag_p99_seconds = Some(p99);
        c.heartbeats_applied += 1;
    }

    /// Seconds behind: the last heartbeat's latency, or the age of the oldest heartbeat not yet
    /// through if that is larger (a stalled stream shows a growing lag).
    fn lag_seconds(g: &Inner) -> Option<f64> {
        let h = &g.heartbeats;
        let waiting = h
            .pending
            .front()
            .map(|&sent| (unix_micros() - sent).max(0) as f64 / 1e6);
        match (h.last_latency, waiting) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
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
                retries: 0,
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
    /// A chunk's copy broke off and is being copied again.
    pub fn chunk_retried(&self, name: &TableName) {
        if let Some(t) = self.lock().tables.get_mut(name) {
            t.retries += 1;
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
                retries: t.retries,
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
            lag_bytes: g
                .cdc
                .as_ref()
                .and_then(|c| Some(c.source_lsn?.bytes_since(c.processed_lsn))),
            lag_seconds: g.cdc.as_ref().and_then(|_| Self::lag_seconds(&g)),
            slot: g.slot.clone(),
            cdc: g.cdc.clone(),
            error: g.error.clone(),
            warnings: g.warnings.clone(),
            waiting: g.waiting.clone(),
            interrupted: g.interrupted.clone(),
        }
    }
}

#[cfg(test)]
mod tests;
