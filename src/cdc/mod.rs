//! Change data capture (native engine): the slot's pgoutput stream, applied to the target in
//! source commit order, crash-safe.
//!
//! * [`stream`]: the replication connection behind a small interface;
//! * [`decode`]: pgoutput bytes → typed messages (pure, never panics);
//! * [`relation`]: what each relation looks like, checked against the target (DDL stops here);
//! * [`apply`]: batched, pipelined statements on one target session;
//! * [`progress`]: the applied position, committed with the changes;
//! * [`hold`]: holding the apply at a source position, for validation at an exact point.
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
//! ## Failures
//!
//! A broken connection (either side) is retried with backoff from the recorded position. A
//! change the target refuses, or a schema difference, stops the apply with an error in
//! `/status` (stage `stopped`) and waits for `POST /replication/resume` (or a restart); the
//! transaction being applied is rolled back, so nothing is half-applied.
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
pub mod hold;
pub mod progress;
pub mod relation;
pub mod stream;

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::config::Config;
use crate::load::LoadOutcome;
use crate::pg::conn::ConnError;
use crate::pg::{Lsn, SqlContext, SqlError, TableName};
use crate::status::{ErrorReport, StatusBoard, unix_micros};
use apply::{Applier, ApplyError};
use decode::{DecodeError, Message};
use relation::{RelationCache, RelationError};
use stream::{Event, Stream, StreamError};

/// Commit the target transaction at the next source commit once it holds this many changes…
const BATCH_CHANGES: u64 = 5_000;
/// …or is this old…
const BATCH_AGE: Duration = Duration::from_millis(250);
/// …or is at least this old and the stream has nothing more ready. Waiting this long for more
/// source transactions under a steady trickle of writes spreads one BEGIN, progress row,
/// COMMIT and WAL-position read over many of them instead of paying them per transaction
/// (see "Batching" above); it adds at most this much to the lag.
const BATCH_LINGER: Duration = Duration::from_millis(50);
/// Reconnect attempts after a broken connection before giving up (about ten minutes).
const MAX_RETRIES: u32 = 20;
const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);
const NEW_TABLE_CHECK_EVERY: u64 = 10;

#[derive(Debug, thiserror::Error)]
pub enum CdcError {
    #[error(transparent)]
    Stream(#[from] StreamError),
    #[error("the replication stream ended")]
    Ended,
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
    #[error("new table(s) on the source match replication.tables but are not replicated yet: {}", tables.join(", "))]
    NewTables { tables: Vec<String> },
}

impl CdcError {
    /// Worth retrying on its own (the connection broke) rather than waiting for the operator.
    fn transient(&self) -> bool {
        match self {
            CdcError::Stream(e) => e.transient,
            CdcError::Ended => true,
            CdcError::Apply(e) => e.is_transient(),
            CdcError::Sql(e) | CdcError::Relation(RelationError::Sql(e)) => e.is_transient(),
            CdcError::Conn(_) => true,
            CdcError::Decode(_) | CdcError::Relation(_) | CdcError::NewTables { .. } => false,
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
            CdcError::Stream(e) if !e.transient => "the slot, the publication or the \
                replication role is gone or changed on the source; restore it, then POST \
                /replication/resume"
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

    /// Wake a stopped change stream; returns false when it was not waiting.
    pub fn resume(&self, status: &StatusBoard) -> bool {
        if status.stage() == crate::status::Stage::Stopped {
            self.resume.notify_one();
            true
        } else {
            false
        }
    }
}

/// Prefix of our heartbeat messages, per migration so that two migrations from one source
/// never read each other's.
fn heartbeat_prefix(cfg: &Config) -> String {
    format!(
        "pgcutover.heartbeat.{}",
        cfg.replication.migration_id.as_str()
    )
}

/// [`run`] on a thread of its own with a single-threaded runtime: the stream reader, the
/// apply and their connections then hand work to each other without crossing threads,
/// which measurably lowers the CPU the daemon takes from a busy source (the change stream
/// is one ordered sequence anyway). Ends when [`run`] returns or when this future is dropped.
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

/// Stream changes from the end of the full load. Returns only when new tables were found on
/// the source and the operator asked to go on: the caller then runs the load again (which
/// adds and copies them) and calls this again.
pub async fn run(
    cfg: &Config,
    status: Arc<StatusBoard>,
    load: &crate::load::LoadOutcome,
    control: Arc<Control>,
) {
    let (new_tx, new_rx) = tokio::sync::watch::channel(Vec::new());
    let _heartbeat = AbortOnDrop(tokio::spawn(heartbeat_loop(
        cfg.clone(),
        status.clone(),
        load.tables.keys().cloned().collect(),
        new_tx,
    )));
    let mut retries = 0u32;
    loop {
        let mut progressed = false;
        let err = session(
            cfg,
            &status,
            load,
            &control,
            &mut progressed,
            new_rx.clone(),
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
            let wait = Duration::from_millis(500 * (1u64 << retries.min(6)));
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
                _ = control.resume.notified() => {}
            }
            continue;
        }
        tracing::error!(error = %report.error, hint = %report.hint, "change stream stopped");
        status.stop(report);
        control.resume.notified().await;
        tracing::info!("resuming the change stream");
        if matches!(err, CdcError::NewTables { .. }) {
            return;
        }
        retries = 0;
    }
}

/// Ends a background task when its owner ends (the pipeline task is aborted at shutdown).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One replication session, until it fails.
async fn session(
    cfg: &Config,
    status: &StatusBoard,
    load: &LoadOutcome,
    control: &Control,
    progressed: &mut bool,
    new_tables: tokio::sync::watch::Receiver<Vec<TableName>>,
) -> CdcError {
    match session_inner(cfg, status, load, control, progressed, new_tables).await {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

enum Never {}

async fn session_inner(
    cfg: &Config,
    status: &StatusBoard,
    load: &LoadOutcome,
    control: &Control,
    progressed: &mut bool,
    mut new_tables: tokio::sync::watch::Receiver<Vec<TableName>>,
) -> Result<Never, CdcError> {
    let mut holds = control.holds_rx.lock().await;
    let id = cfg.replication.migration_id.as_str();
    let snapshots: BTreeMap<TableName, Lsn> = load
        .tables
        .iter()
        .map(|(t, l)| (t.clone(), l.snapshot_lsn))
        .collect();
    let mut targets = Vec::with_capacity(cfg.replication.apply_sessions);
    for _ in 0..cfg.replication.apply_sessions {
        targets.push(cfg.target.connect("pgcutover-apply").await?);
    }
    let mut applier = Applier::new(targets, id).await?;
    let recorded = progress::applied_lsn(applier.client(), id).await?;
    let start = recorded.unwrap_or(load.slot_lsn);
    let slot = cfg.replication.migration_id.slot_name();
    let publication = cfg.replication.migration_id.publication_name();
    let mut stream = Stream::open(&cfg.source, &slot, &publication, start).await?;
    tracing::info!(%slot, from = %start, "change stream started");
    status.cdc_running(start);

    let hb_prefix = heartbeat_prefix(cfg);
    let mut cache = RelationCache::default();
    // End of the last transaction committed on the target (or applied by an earlier run).
    let mut applied = start;
    // The open source transaction: its commit position, and whether it was applied earlier.
    let mut txn: Option<(Lsn, bool)> = None;
    let mut last_end = applied;
    let mut batch_started: Option<Instant> = None;
    let mut heartbeat_waiting: Option<i64> = None;
    // Heartbeats that arrived before a commit still unanswered: (its source position, stamp).
    let mut heartbeats: VecDeque<(Lsn, i64)> = VecDeque::new();
    // Where the last commit sent will bring the target.
    let mut sent_end = applied;
    // Committed batches whose commit the target may not have flushed yet:
    // (target WAL position after the commit, source position it stands for).
    let mut unflushed: VecDeque<(Lsn, Lsn)> = VecDeque::new();
    // A validation's request to hold, and how far every commit has surely been received
    // (see `hold`). A Begin at or past the hold position waits in `deferred`.
    let mut pending_hold: Option<hold::Hold> = None;
    let mut received = applied;
    let mut deferred: Option<Event> = None;

    let result: Result<Never, CdcError> = async {
        loop {
            let hold_due = pending_hold.as_ref().is_some_and(|h| received >= h.until);
            let mut done = Vec::new();
            if txn.is_none()
                && let Some(started) = batch_started
                && (applier.batch().changes >= BATCH_CHANGES
                    || started.elapsed() >= BATCH_AGE
                    || hold_due
                    || (started.elapsed() >= BATCH_LINGER && !stream.has_ready()))
            {
                done = applier.commit(last_end).await?;
                batch_started = None;
                sent_end = last_end;
                if let Some(sent) = heartbeat_waiting.take() {
                    heartbeats.push_back((last_end, sent));
                }
            }
            // Answers read as they come in (the select below wakes for them), so a sealed
            // batch's COMMIT goes out at once; everything is waited for only before a hold.
            if applier.commit_pending() {
                done.extend(applier.collect().await?);
            }
            if applier.commit_pending() && txn.is_none() && hold_due {
                done.extend(applier.settle().await?);
            }
            for d in done {
                answered(
                    d,
                    &mut applied,
                    &mut unflushed,
                    &mut heartbeats,
                    &stream,
                    status,
                );
                *progressed = true;
            }
            if hold_due
                && txn.is_none()
                && batch_started.is_none()
                && !applier.commit_pending()
                && let Some(h) = pending_hold.take()
            {
                pending_hold = h.wait(applied).await;
                continue;
            }
            let found = new_tables.borrow_and_update().clone();
            if !found.is_empty() {
                return Err(CdcError::NewTables {
                    tables: found.iter().map(|t| t.display_plain()).collect(),
                });
            }
            // A batch open between source transactions commits when its linger is over, even
            // if nothing more arrives.
            let linger_until = match (txn, batch_started) {
                (None, Some(started)) => {
                    Some(tokio::time::Instant::from_std(started + BATCH_LINGER))
                }
                _ => None,
            };
            let ev = match deferred.take() {
                Some(ev) => ev,
                None => {
                    let next = tokio::select! {
                        // All cancel-safe: the stream and `recv` read channels, `changed` a watch.
                        next = stream.next() => next?,
                        // Cancel-safe too: an answer that came in stays for `collect`.
                        _ = applier.answer() => continue,
                        _ = sleep_until_some(linger_until) => continue,
                        _ = new_tables.changed() => continue,
                        h = holds.recv() => {
                            pending_hold = h;
                            continue;
                        }
                    };
                    next.ok_or(CdcError::Ended)?
                }
            };
            match ev {
                Event::Begin { final_lsn, .. }
                    if pending_hold.as_ref().is_some_and(|h| final_lsn >= h.until) =>
                {
                    // Hold before this transaction: everything committed before it is in.
                    received = received.max(final_lsn);
                    deferred = Some(ev);
                }
                Event::Begin { final_lsn, .. } => {
                    received = received.max(final_lsn);
                    let done_before = final_lsn < applied;
                    if !done_before {
                        applier.begin().await?;
                        batch_started.get_or_insert_with(Instant::now);
                    }
                    txn = Some((final_lsn, done_before));
                }
                Event::Commit { end_lsn } => {
                    received = received.max(end_lsn);
                    match txn.take() {
                        Some((_, false)) => {
                            applier.end_source_txn();
                            last_end = end_lsn;
                        }
                        _ if batch_started.is_none()
                            && !applier.commit_pending()
                            && unflushed.is_empty() =>
                        {
                            // Applied by an earlier run: the slot may forget it.
                            stream.confirm(end_lsn.max(applied));
                            status.cdc_processed(end_lsn);
                        }
                        _ => {}
                    }
                }
                Event::Data(bytes) => {
                    let msg = decode::decode(bytes)?;
                    apply_message(&mut applier, &mut cache, &snapshots, msg, txn).await?;
                }
                Event::Message {
                    transactional: false,
                    lsn,
                    prefix,
                    content,
                } if prefix == hb_prefix => {
                    received = received.max(lsn);
                    let sent = std::str::from_utf8(&content)
                        .ok()
                        .and_then(|s| s.parse::<i64>().ok());
                    if let Some(sent) = sent {
                        if batch_started.is_some() {
                            heartbeat_waiting = Some(sent);
                        } else if applier.commit_pending() {
                            heartbeats.push_back((sent_end, sent));
                        } else {
                            status.heartbeat_applied(sent);
                            status.cdc_processed(lsn);
                            // Once a second: confirm what the target has flushed since.
                            if let Some((_, flushed)) = applier.wal_positions().await? {
                                confirm_flushed(&stream, &mut unflushed, flushed);
                            }
                            if unflushed.is_empty() {
                                stream.confirm(lsn.max(applied));
                            }
                        }
                    }
                }
                Event::Message {
                    transactional: false,
                    lsn,
                    ..
                } => received = received.max(lsn),
                Event::Message { .. } => {}
                Event::KeepAlive { wal_end } => {
                    if txn.is_none() {
                        received = received.max(wal_end);
                    }
                    // Nothing open: every commit before `wal_end` has been received and
                    // applied, so the slot may move there (it keeps WAL from piling up while
                    // the published tables are idle).
                    if txn.is_none()
                        && batch_started.is_none()
                        && !applier.commit_pending()
                        && unflushed.is_empty()
                        && wal_end > applied
                    {
                        stream.confirm(wal_end);
                        status.cdc_processed(wal_end);
                    }
                }
            }
        }
    }
    .await;
    let err = match result {
        Ok(never) => match never {},
        Err(e) => e,
    };
    if !err.transient() {
        let _ = applier.rollback().await;
    }
    stream.close().await;
    Err(err)
}

/// Sleep until `at`, or forever when there is no `at`.
async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// A batch's commit was answered: the target is at its source position (durable once the
/// target flushes its WAL that far).
fn answered(
    done: apply::Committed,
    applied: &mut Lsn,
    unflushed: &mut VecDeque<(Lsn, Lsn)>,
    heartbeats: &mut VecDeque<(Lsn, i64)>,
    stream: &Stream,
    status: &StatusBoard,
) {
    *applied = done.source_end;
    unflushed.push_back((done.target_lsn, done.source_end));
    confirm_flushed(stream, unflushed, done.target_flushed);
    status.cdc_committed(&done);
    let mut newest = None;
    while let Some(&(at, sent)) = heartbeats.front() {
        if at > done.source_end {
            break;
        }
        newest = Some(sent);
        heartbeats.pop_front();
    }
    if let Some(sent) = newest {
        status.heartbeat_applied(sent);
    }
}

/// Confirm to the source the newest batch whose target commit is flushed (everything when
/// commits are synchronous: their position is zero).
fn confirm_flushed(stream: &Stream, unflushed: &mut VecDeque<(Lsn, Lsn)>, flushed: Lsn) {
    let mut newest = None;
    while let Some(&(target, source)) = unflushed.front() {
        if target > flushed {
            break;
        }
        newest = Some(source);
        unflushed.pop_front();
    }
    if let Some(source) = newest {
        stream.confirm(source);
    }
}

/// Apply one decoded message of the open transaction `txn` (commit position, applied before).
async fn apply_message(
    applier: &mut Applier,
    cache: &mut RelationCache,
    snapshots: &BTreeMap<TableName, Lsn>,
    msg: Message,
    txn: Option<(Lsn, bool)>,
) -> Result<(), CdcError> {
    // Outside a transaction only Relation and Type messages are expected; a change there
    // would have no commit position to judge it by.
    let wanted = |skip_before: Lsn| matches!(txn, Some((lsn, false)) if lsn >= skip_before);
    match msg {
        Message::Relation(rel) => {
            let info = cache.describe(applier.client(), &rel, snapshots).await?;
            applier.forget_older(&info);
        }
        Message::Type {
            oid,
            namespace,
            name,
        } => cache.note_type(oid, namespace, name),
        Message::Insert { relid, new } => {
            let rel = cache.get(relid)?.clone();
            if wanted(rel.skip_before) {
                applier.insert(&rel, new).await?;
            }
        }
        Message::Update { relid, old, new } => {
            let rel = cache.get(relid)?.clone();
            if wanted(rel.skip_before) {
                applier.update(&rel, old, new).await?;
            }
        }
        Message::Delete { relid, old } => {
            let rel = cache.get(relid)?.clone();
            if wanted(rel.skip_before) {
                applier.delete(&rel, old).await?;
            }
        }
        Message::Truncate {
            cascade,
            restart_identity,
            relids,
        } => {
            let mut rels = Vec::new();
            for relid in relids {
                let rel = cache.get(relid)?.clone();
                if wanted(rel.skip_before) {
                    rels.push(rel);
                }
            }
            applier.truncate(&rels, cascade, restart_identity).await?;
        }
        Message::Begin { .. }
        | Message::Commit { .. }
        | Message::Origin { .. }
        | Message::Message { .. } => {}
    }
    Ok(())
}

/// Once a second: stamp a heartbeat into the source's WAL and read its WAL position and the
/// slot's retained WAL. Failures are logged and retried; lag then shows as growing. Every
/// [`NEW_TABLE_CHECK_EVERY`] heartbeats, look for tables (or partitions) created on the source
/// that the patterns select but the migration does not have, and report them on `new_tables`.
async fn heartbeat_loop(
    cfg: Config,
    status: Arc<StatusBoard>,
    known: Vec<TableName>,
    new_tables: tokio::sync::watch::Sender<Vec<TableName>>,
) {
    let prefix = heartbeat_prefix(&cfg);
    let slot = cfg.replication.migration_id.slot_name();
    let mut client = None;
    let mut warned = false;
    let mut tick = tokio::time::interval(HEARTBEAT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for beat in 0u64.. {
        tick.tick().await;
        if client.is_none() {
            match cfg.source.connect("pgcutover-heartbeat").await {
                Ok(c) => client = Some(c),
                Err(e) => {
                    if !warned {
                        tracing::warn!(error = %e, "heartbeat: cannot connect to the source");
                        warned = true;
                    }
                    continue;
                }
            }
        }
        let Some(c) = client.as_ref() else { continue };
        let sent = unix_micros();
        let result = c
            .query_one(
                "SELECT pg_logical_emit_message(false, $1, $2)::text,
                        pg_current_wal_lsn()::text,
                        (SELECT restart_lsn::text FROM pg_replication_slots WHERE slot_name = $3)",
                &[&prefix, &sent.to_string(), &slot],
            )
            .await
            .ctx(|| "writing a heartbeat on the source".into());
        match result {
            Ok(row) => {
                warned = false;
                status.heartbeat_sent(sent);
                let current: Option<Lsn> = row.get::<_, String>(1).parse().ok();
                let restart: Option<Lsn> =
                    row.get::<_, Option<String>>(2).and_then(|s| s.parse().ok());
                if let Some(current) = current {
                    status.source_wal(current, restart);
                }
                if beat % NEW_TABLE_CHECK_EVERY == 0 {
                    match unknown_tables(c, &cfg, &known).await {
                        Ok(found) if !found.is_empty() => {
                            new_tables.send_if_modified(|v| {
                                let changed = *v != found;
                                *v = found;
                                changed
                            });
                        }
                        Ok(_) => {}
                        Err(e) => tracing::debug!(error = %e, "looking for new tables failed"),
                    }
                }
            }
            Err(e) => {
                if !warned {
                    tracing::warn!(error = %e, "heartbeat failed; lag in seconds is not measured");
                    warned = true;
                }
                if c.is_closed() {
                    client = None;
                }
            }
        }
    }
}

/// Tables holding rows that the configured patterns select on the source now, but that the
/// migration did not load.
async fn unknown_tables(
    source: &tokio_postgres::Client,
    cfg: &Config,
    known: &[TableName],
) -> Result<Vec<TableName>, SqlError> {
    let all = crate::pg::catalog::list_tables(source).await?;
    let Ok(selection) =
        crate::pg::catalog::select(&all, &cfg.replication.tables, &cfg.replication.exclude)
    else {
        return Ok(Vec::new());
    };
    Ok(selection
        .units
        .into_iter()
        .map(|t| t.name)
        .filter(|t| !known.contains(t))
        .collect())
}
