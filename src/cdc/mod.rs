//! Change data capture (native engine): the slot's pgoutput stream, applied to the target in
//! source commit order, crash-safe.
//!
//! * [`stream`]: the replication connection behind a small interface;
//! * [`decode`]: pgoutput bytes → typed messages (pure, never panics);
//! * [`relation`]: what each relation looks like, checked against the target (DDL stops here);
//! * [`apply`]: batched, pipelined statements on the target sessions;
//! * [`coalesce`]: the batch buffer, with repeated updates of a row merged;
//! * [`progress`]: the applied position, committed with the changes;
//! * [`hold`]: holding the apply at a source position, for validation at an exact point;
//! * `session`: one replication session, the loop below; `heartbeat`: the lag measurement
//!   and the watch for new tables, on a source connection of their own;
//! * [`silence`]: whether a stream that receives nothing is dead or its walsender busy;
//! * [`stall`]: the same question for an apply session that the target does not answer.
//!
//! ## The loop
//!
//! Source transactions arrive whole, in commit order (protocol version 1 streams nothing
//! before the commit). A transaction whose commit is before the recorded position was applied
//! by an earlier run and is skipped; a change to a table whose copy was taken at a later
//! snapshot than the transaction's commit is already in the copy and is skipped too (see
//! [`crate::load`]). Everything else is applied; the target transaction is committed at a
//! source commit boundary when the batch is large, or old, or has lingered a little
//! (`BATCH_LINGER`) and the stream has nothing more ready. The commit is not waited for:
//! the next batch is gathered meanwhile, and its answer is read when it comes in; once it
//! is answered, and the target has flushed it, the position is confirmed to the source.
//!
//! ## Batching
//!
//! Committing as soon as the stream runs dry (what PostgreSQL's own apply worker does, one
//! target commit per source commit) costs the target a BEGIN, a progress-row update, a COMMIT
//! and a WAL-position read per source transaction: under a steady OLTP load that doubled the
//! statements the target ran for pgbench's four-change transactions, and on a host shared with
//! the source it came out of the source's throughput. Lingering a few tens of milliseconds
//! gathers the transactions of that window into one target commit; during a catch-up the
//! stream always has more ready and batches end on size or age as before.
//!
//! The end of a backlog is told apart from a pause in a trickle by the walsender itself: it
//! sends a keepalive when it has reached the end of the source's WAL, and not while it is
//! still behind, however often the reader empties the socket. A batch open at such a
//! keepalive commits at once instead of lingering if the batch before it ended full (a
//! backlog was being drained: nothing more is coming that a linger would gather) or if it
//! holds `EAGER_CHANGES` itself. Before, a bulk catch-up's last batch (often the one
//! transaction written after the backlog) lingered its 50 ms with both cores idle, as a 10 ms
//! timeline of the catch-up's processes showed (session 29). Under a steady trickle batches
//! end on their linger and keep lingering; under a heavy one at most every other batch
//! commits early.
//!
//! ## Failures
//!
//! A broken connection (either side) is retried with backoff from the recorded position, and
//! so is a stream connection found dead without having been closed (see [`silence`]), or an
//! apply session (see [`stall`]). A
//! change the target refuses, or a schema difference, stops the apply with an error in
//! `/status` (stage `stopped`) and waits for `POST /replication/resume` (or a restart); the
//! transaction being applied is rolled back, so nothing is half-applied. So do what no retry
//! can mend: a slot whose WAL the source removed, a slot or publication that is gone (the
//! changes since cannot be had any more: the hint says to start again), and a table found
//! removed from the publication or new on the source (a resume has the load copy it, again).
//!
//! ## Scheduling
//!
//! The stream and the apply run on one thread of their own (see [`run_dedicated`]), which
//! asks the kernel for the batch policy (`SCHED_BATCH`; Linux only, needs no privilege, and
//! leaves the nice value alone). Under the default policy a thread woken by its socket
//! preempts whatever runs on that core if it has waited longer; during a catch-up on a host
//! it shares with the source, the daemon and the walsender then woke and preempted each other
//! for a few hundred bytes of stream at a time: tens of thousands of switches on each side
//! per million changes, and the walsender sent its data in more, smaller pieces, which cost
//! it CPU too. A batch thread is still woken at once but waits for the running task's slice
//! to end, a millisecond or two; the stream then arrives in fuller reads. Measured in session
//! 22 (bulk catch-up, one machine, default versus batch): the daemon's switches fell 3–40-fold,
//! its CPU by a quarter, the walsender's by a little, and the catch-up took 15–20 % less
//! time; see `BENCHMARKS.md`. A few milliseconds of wake-up delay is nothing next to the
//! linger of a batch or the lag the heartbeat reports.
//!
//! ## Lag
//!
//! Once a second the daemon writes a non-transactional logical message stamped with its own
//! clock into the source's WAL and reads the source's WAL position and the slot's retained
//! WAL. The message comes back through the stream after every transaction that committed
//! before it; when the target has committed all of those, the daemon's clock minus the stamp
//! is the end-to-end lag, with no clock skew between hosts involved.

pub mod apply;
pub mod coalesce;
pub mod decode;
mod heartbeat;
pub mod hold;
pub mod progress;
pub mod relation;
mod session;
pub mod silence;
pub mod stall;
pub mod stream;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use crate::config::Config;
use crate::load::LoadOutcome;
use crate::pg::conn::ConnError;
use crate::pg::{Lsn, SqlError, TableName};
use crate::status::{ErrorReport, StatusBoard};
use apply::ApplyError;
use decode::DecodeError;
use relation::RelationError;
use stream::StreamError;

/// Commit the target transaction at the next source commit once it holds this many changes…
const BATCH_CHANGES: u64 = 5_000;
/// …or is this old…
const BATCH_AGE: Duration = Duration::from_millis(250);
/// …or is at least this old and the stream has nothing more ready. Waiting this long for more
/// source transactions under a steady trickle of writes spreads one BEGIN, progress row,
/// COMMIT and WAL-position read over many of them instead of paying them per transaction
/// (see "Batching" above); it adds at most this much to the lag.
const BATCH_LINGER: Duration = Duration::from_millis(50);
/// A batch holding this many changes does not linger once the walsender says it is at the
/// end of the source's WAL: a linger could not gather enough more to matter next to what it
/// holds (see "Batching" above).
const EAGER_CHANGES: u64 = BATCH_CHANGES / 10;
/// Reconnect attempts after a broken connection before giving up (about ten minutes).
pub(crate) const MAX_RETRIES: u32 = 20;

/// How long to wait before attempt `retry` (1, 2, …) after a passing failure: 1 s, doubling
/// up to 32 s.
pub(crate) fn retry_wait(retry: u32) -> Duration {
    Duration::from_millis(500 * (1u64 << retry.clamp(1, 6)))
}

#[derive(Debug, thiserror::Error)]
pub enum CdcError {
    #[error(transparent)]
    Stream(#[from] StreamError),
    #[error("the replication stream ended")]
    Ended,
    #[error(
        "the replication stream from slot {slot} received nothing for {silent_secs:.0} s, and \
         {why}"
    )]
    Silent {
        slot: String,
        silent_secs: f64,
        why: String,
    },
    #[error("an apply session on the target stopped answering: {why}")]
    TargetSilent { why: String },
    #[error("undecodable message in the replication stream: {0}")]
    Decode(#[from] DecodeError),
    #[error(transparent)]
    Relation(#[from] RelationError),
    #[error(transparent)]
    Apply(#[from] ApplyError),
    #[error(transparent)]
    Sql(#[from] SqlError),
    #[error(transparent)]
    Conn(#[from] ConnError),
    #[error(
        "new table(s) on the source match replication.tables but are not replicated yet: {}{}",
        tables.join(", "),
        if vanished.is_empty() {
            String::new()
        } else {
            format!(
                "; and migrated table(s) are no longer on the source under their name \
                 (renamed, moved to another schema, or dropped): {}",
                vanished.join(", ")
            )
        }
    )]
    NewTables {
        tables: Vec<String>,
        vanished: Vec<String>,
    },
    #[error(
        "table(s) removed from the migration's publication on the source, so their changes are \
         not streamed: {}",
        tables.iter().map(|t| t.display_plain()).collect::<Vec<_>>().join(", ")
    )]
    Unpublished { tables: Vec<TableName> },
}

impl CdcError {
    /// Worth retrying on its own (the connection broke) rather than waiting for the operator.
    fn transient(&self) -> bool {
        match self {
            CdcError::Stream(e) => e.transient,
            CdcError::Ended | CdcError::Silent { .. } | CdcError::TargetSilent { .. } => true,
            CdcError::Apply(e) => e.is_transient(),
            CdcError::Sql(e) | CdcError::Relation(RelationError::Sql(e)) => e.is_transient(),
            CdcError::Conn(_) => true,
            CdcError::Decode(_)
            | CdcError::Relation(_)
            | CdcError::NewTables { .. }
            | CdcError::Unpublished { .. } => false,
        }
    }

    pub fn hint(&self) -> String {
        match self {
            CdcError::Stream(e) if e.slot_in_use() => format!(
                "another session is streaming from slot {} (a second pgcutover running for \
                 this migration, or the walsender of this daemon's previous connection still \
                 ending): pgcutover retries with backoff; stop the other daemon if there is one",
                e.slot
            ),
            CdcError::Stream(e) if e.slot_lost() => format!(
                "the source removed WAL that slot {} still needed (it fell more than \
                 max_slot_wal_keep_size behind, for example while pgcutover was stopped), so \
                 the changes in it are gone and the target can no longer be brought up to date \
                 from this slot: run `pgcutover cleanup` and start the migration again (a new \
                 full load); raise max_slot_wal_keep_size on the source, or keep the daemon \
                 running, so that it does not happen again",
                e.slot
            ),
            CdcError::Stream(e) if e.gone() => format!(
                "slot {} or its publication is gone from the source (dropped, or the source \
                 failed over to a server without them): the changes since the target's \
                 position can no longer be streamed, and a new slot would miss them; run \
                 `pgcutover cleanup` and start the migration again (a new full load)",
                e.slot
            ),
            CdcError::Stream(e) if !e.transient => "the replication role's password, \
                privileges or TLS settings no longer work on the source; restore them, then \
                POST /replication/resume"
                .into(),
            CdcError::Silent { .. } => "something between pgcutover and the source (a \
                firewall, a NAT gateway or load balancer timing out idle connections, a \
                failover) dropped the connection without closing it: pgcutover reconnects from \
                the target's recorded position, nothing is lost; if it happens again, look at \
                what sits between them, or raise replication.receive_timeout if the source is \
                only slow"
                .into(),
            CdcError::TargetSilent { .. } => "something between pgcutover and the target (a \
                firewall or security group change, a proxy or load balancer restarted, a NAT \
                gateway) lost the connection without closing it: pgcutover reconnects and goes \
                on from the target's recorded position, nothing is lost or applied twice; if it \
                happens again, look at what sits between them, or raise \
                replication.receive_timeout if the target is only slow"
                .into(),
            CdcError::Stream(_) | CdcError::Ended | CdcError::Conn(_) => {
                "check that the source and the target are reachable; POST /replication/resume \
                 retries at once"
                    .into()
            }
            CdcError::Decode(_) => "this is a bug in pgcutover or an unsupported server: \
                report it with the log; nothing of the transaction was applied"
                .into(),
            CdcError::Relation(e) => e.hint(),
            CdcError::Apply(e) => e.hint(),
            CdcError::Sql(_) => "check the target's log for the reason".into(),
            CdcError::Unpublished { .. } => "someone ran ALTER PUBLICATION … DROP TABLE (or \
                SET TABLE) on the source, and their copies on the target miss the changes \
                since: POST /replication/resume (or restart pgcutover) adds them back to the \
                publication and copies them again from a new snapshot, and the stream goes on; \
                to leave them out of the migration instead, list them in replication.exclude \
                and restart"
                .into(),
            CdcError::NewTables { vanished, .. } if !vanished.is_empty() => "DDL is not \
                replicated. A table renamed or moved on the source: do the same on the target \
                (ALTER TABLE … RENAME TO / SET SCHEMA), then POST /replication/resume or \
                restart pgcutover: it is copied again under its new name from a new snapshot \
                and the stream goes on. Other new tables: create them on the target with the \
                same columns (or exclude them in replication.exclude) before resuming"
                .into(),
            CdcError::NewTables { .. } => "create them on the target with the same columns \
                (or exclude them in replication.exclude), then POST /replication/resume or \
                restart pgcutover: they are added to the publication and copied, and the \
                stream goes on"
                .into(),
        }
    }
}

/// How the HTTP API and the validation talk to the running change stream.
pub struct Control {
    resume: Notify,
    holds_tx: tokio::sync::mpsc::UnboundedSender<hold::Hold>,
    /// Taken by the running session (one at a time).
    holds_rx: tokio::sync::Mutex<tokio::sync::mpsc::UnboundedReceiver<hold::Hold>>,
}

impl Default for Control {
    fn default() -> Self {
        let (holds_tx, holds_rx) = tokio::sync::mpsc::unbounded_channel();
        Control {
            resume: Notify::default(),
            holds_tx,
            holds_rx: tokio::sync::Mutex::new(holds_rx),
        }
    }
}

impl Control {
    /// Ask the apply to hold before the first transaction committed at or after `until`
    /// (see [`hold`]).
    pub fn hold(&self, until: Lsn) -> hold::HoldHandle {
        let (hold, handle) = hold::request(until);
        let _ = self.holds_tx.send(hold);
        handle
    }

    /// Go on now: a change stream stopped on an error, a load that failed, or either one
    /// waiting to try again after a passing failure. Returns false when nothing waits.
    pub fn resume(&self, status: &StatusBoard) -> bool {
        if status.waits_for_resume() {
            self.resume.notify_one();
            true
        } else {
            false
        }
    }

    /// Resolves at the operator's next [`Control::resume`].
    pub(crate) async fn resumed(&self) {
        self.resume.notified().await
    }
}

/// [`run`] on a thread of its own with a single-threaded runtime: the stream reader, the
/// apply and their connections then hand work to each other without crossing threads,
/// which measurably lowers the CPU the daemon takes from a busy source (the change stream
/// is one ordered sequence anyway), and the thread alone takes the batch scheduling policy
/// (see the module docs). Ends when [`run`] returns or when this future is dropped.
pub async fn run_dedicated(
    cfg: &Config,
    status: Arc<StatusBoard>,
    load: &LoadOutcome,
    control: Arc<Control>,
) {
    let (cfg, load) = (cfg.clone(), load.clone());
    // Dropping `_stop` (this future dropped) ends the thread's runtime and its connections.
    let (_stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    let spawned = std::thread::Builder::new()
        .name("pgcutover-cdc".into())
        .spawn(move || {
            batch_scheduling();
            match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt.block_on(async {
                    tokio::select! {
                        _ = run(&cfg, status, &load, control) => {}
                        _ = stop_rx => {}
                    }
                }),
                Err(e) => tracing::error!(error = %e, "cannot start the change stream's runtime"),
            }
            let _ = done_tx.send(());
        });
    match spawned {
        Ok(_) => {
            let _ = done_rx.await;
        }
        Err(e) => tracing::error!(error = %e, "cannot start the change stream's thread"),
    }
}

/// Puts the calling thread under the kernel's batch policy (`SCHED_BATCH`, see the module
/// docs), where there is one; says so, or why not, at debug level. Nothing else changes: the
/// thread keeps its nice value and any core.
fn batch_scheduling() {
    #[cfg(target_os = "linux")]
    {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: pid 0 is the calling thread; `param` is a valid sched_param for a
        // non-real-time policy (priority 0), read during the call only.
        let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) };
        if rc == 0 {
            tracing::debug!("change stream thread under SCHED_BATCH");
        } else {
            let e = std::io::Error::last_os_error();
            tracing::debug!(error = %e, "change stream thread keeps the default scheduling");
        }
    }
}

/// Stream changes from the end of the full load. Returns only when new tables were found on
/// the source, or migrated ones were removed from the publication, and the operator asked to
/// go on: the caller then runs the load again (which adds them to the publication and copies
/// them; removed ones are forgotten here first, so that they are copied again) and calls this
/// again.
pub async fn run(
    cfg: &Config,
    status: Arc<StatusBoard>,
    load: &crate::load::LoadOutcome,
    control: Arc<Control>,
) {
    let (drift_tx, drift_rx) = tokio::sync::watch::channel(heartbeat::Drift::default());
    let _heartbeat = AbortOnDrop(tokio::spawn(heartbeat::run(
        cfg.clone(),
        status.clone(),
        load.tables.keys().cloned().collect(),
        drift_tx,
    )));
    let mut retries = 0u32;
    // Backends of apply sessions given up while the target was out of reach: the next
    // session ends them (see `stall`).
    let mut stale = Vec::new();
    loop {
        let mut progressed = false;
        let err = session::run(
            cfg,
            &status,
            load,
            &control,
            &mut progressed,
            drift_rx.clone(),
            &mut stale,
        )
        .await;
        if progressed {
            retries = 0;
        }
        let report = ErrorReport {
            error: err.to_string(),
            hint: err.hint(),
        };
        if err.transient() && retries < MAX_RETRIES {
            retries += 1;
            let wait = retry_wait(retries);
            tracing::warn!(error = %report.error, retry = retries, wait_secs = wait.as_secs_f64(),
                "change stream interrupted; reconnecting");
            status.cdc_interrupted(crate::status::Interruption {
                error: report.error.clone(),
                hint: report.hint.clone(),
                retry: retries,
                max_retries: MAX_RETRIES,
                next_retry_in_seconds: wait.as_secs_f64(),
            });
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = control.resumed() => {}
            }
            continue;
        }
        tracing::error!(error = %report.error, hint = %report.hint, "change stream stopped");
        status.stop(report);
        control.resumed().await;
        tracing::info!("resuming the change stream");
        match err {
            CdcError::NewTables { .. } => return,
            CdcError::Unpublished { tables } => {
                // Their load progress goes, so the load copies them again; until that is
                // recorded the stream must not go on (it would skip their changes for good).
                let mut forgotten = forget_tables(cfg, &tables).await;
                while let Err(e) = forgotten {
                    let report = ErrorReport {
                        error: e.to_string(),
                        hint: "check that the target is reachable, then POST \
                               /replication/resume"
                            .into(),
                    };
                    tracing::error!(error = %report.error, "cannot mark tables for copying again");
                    status.stop(report);
                    control.resumed().await;
                    forgotten = forget_tables(cfg, &tables).await;
                }
                return;
            }
            _ => {}
        }
        retries = 0;
    }
}

/// Forget the load progress of `tables`, so that the next load copies them again.
async fn forget_tables(cfg: &Config, tables: &[TableName]) -> Result<(), CdcError> {
    let target = cfg.target.connect("pgcutover-cdc").await?;
    let id = cfg.replication.migration_id.as_str();
    for t in tables {
        crate::load::progress::forget_table(&target, id, t).await?;
        tracing::info!(table = %t.display_plain(), "table will be copied again");
    }
    Ok(())
}

/// Ends a background task when its owner ends (the pipeline task is aborted at shutdown).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_os = "linux")]
    #[test]
    fn the_change_stream_thread_takes_the_batch_policy_and_no_other_thread_does() {
        let policy = || unsafe { libc::sched_getscheduler(0) };
        let before = policy();
        let inside = std::thread::spawn(move || {
            super::batch_scheduling();
            policy()
        })
        .join()
        .unwrap();
        assert_eq!(inside, libc::SCHED_BATCH);
        // The calling thread (the daemon's runtime, the HTTP server) is untouched.
        assert_eq!(policy(), before);
        assert_ne!(before, libc::SCHED_BATCH);
    }
}
