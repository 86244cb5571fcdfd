//! One replication session: the stream opened at the position the target recorded, each
//! event applied in order, until something fails (see [`super`] for the loop's rules and
//! [`super::run`] for what happens then).
//!
//! The positions it keeps, all source LSNs:
//!
//! * `applied`: end of the last source transaction whose target commit was answered (the
//!   recorded position says the same on the target);
//! * `last_end`: end of the last source transaction added to the open batch, which becomes
//!   `sent_end` when that batch's commit is sent;
//! * `received`: how far every commit has surely been received (a hold waits for it);
//! * `unflushed`: committed batches whose target WAL may not be flushed yet. A position is
//!   confirmed to the source only once the target has flushed the commit that holds it, so
//!   that a crash of the target host cannot lose what the slot already forgot.

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, watch};

use super::apply::{Applier, Committed, Left};
use super::decode::{self, Message};
use super::heartbeat::{self, Drift};
use super::hold::Hold;
use super::relation::{RelationCache, RelationError};
use super::silence::{self, Verdict};
use super::stall::{self, Backend};
use super::stream::{Event, READ_AHEAD, Stream};
use super::{BATCH_AGE, BATCH_CHANGES, BATCH_LINGER, CdcError, Control, EAGER_CHANGES};
use crate::config::Config;
use crate::load::LoadOutcome;
use crate::pg::conn::ConnInfo;
use crate::pg::wal_compression;
use crate::pg::{Lsn, TableName};
use crate::status::StatusBoard;

/// Most events [`Session::step`] takes in a row inside a source transaction, without its
/// checks.
const READY_RUN: u32 = 64;

/// Run one session until it fails. `progressed` is set once a batch is committed (the caller
/// then starts its retries afresh).
pub(super) async fn run(
    cfg: &Config,
    status: &StatusBoard,
    load: &LoadOutcome,
    control: &Control,
    progressed: &mut bool,
    mut drift: watch::Receiver<Drift>,
    stale: &mut Vec<Backend>,
) -> CdcError {
    let mut holds = control.holds_rx.lock().await;
    let mut session = match Session::open(cfg, status, load, stale).await {
        Ok(s) => s,
        Err(e) => return e,
    };
    // A target session that stopped answering ends the session (see `stall`); the step
    // under way is dropped with it.
    let backends: Vec<Backend> = (session.applier.watches().iter())
        .map(|w| w.backend.clone())
        .collect();
    let mut stalled = std::pin::pin!(stall::watch(
        cfg.target.clone(),
        session.applier.watches(),
        cfg.replication.receive_timeout,
        status,
    ));
    let err = loop {
        tokio::select! {
            biased;
            step = session.step(&mut holds, &mut drift) => match step {
                Ok(answered) => *progressed |= answered,
                Err(e) => break e,
            },
            why = &mut stalled => {
                stale.extend(backends);
                status.cdc_target_stalled();
                break CdcError::TargetSilent { why };
            }
        }
    };
    if !err.transient() {
        let _ = session.applier.rollback().await;
    }
    match err {
        CdcError::Silent { .. } => session.stream.abandon(),
        _ => session.stream.close().await,
    }
    err
}

struct Session<'a> {
    status: &'a StatusBoard,
    stream: Stream,
    applier: Applier,
    cache: RelationCache,
    /// Each table's copy snapshot: its changes committed before it are in the copy.
    snapshots: BTreeMap<TableName, Lsn>,
    heartbeat_prefix: String,
    /// The source, asked what a relation it no longer has under its streamed name is now
    /// (and then the patterns, whether that name is still migrated).
    cfg: &'a Config,
    applied: Lsn,
    /// The open source transaction: its commit position, and whether it was applied earlier.
    txn: Option<(Lsn, bool)>,
    last_end: Lsn,
    sent_end: Lsn,
    received: Lsn,
    /// When the open batch began (none open: `None`).
    batch_started: Option<Instant>,
    /// The last batch committed ended full (it held [`BATCH_CHANGES`]): a backlog was being
    /// drained.
    after_full: bool,
    /// The walsender said it is at the end of the source's WAL and the open batch need not
    /// linger (see [`drained_commits`]).
    source_drained: bool,
    /// A heartbeat that arrived while the open batch was gathered: timed when it commits.
    heartbeat_waiting: Option<i64>,
    /// Heartbeats that arrived before a commit still unanswered: (its source position, stamp).
    heartbeats: VecDeque<(Lsn, i64)>,
    /// (target WAL position after the commit, source position it stands for).
    unflushed: VecDeque<(Lsn, Lsn)>,
    /// A validation's request to hold (see [`super::hold`]); a Begin at or past its position
    /// waits in `deferred`.
    pending_hold: Option<Hold>,
    deferred: Option<Event>,
    slot: String,
    /// Silence on the stream for this long starts a probe (see [`silence`]).
    receive_timeout: Duration,
    /// When the stream last delivered an event, as of the last wait for one.
    heard_at: tokio::time::Instant,
    /// Events were taken without waiting since `heard_at` was set.
    took_ready: bool,
    probe: Option<Pin<Box<dyn Future<Output = Verdict> + Send>>>,
}

impl<'a> Session<'a> {
    async fn open(
        cfg: &'a Config,
        status: &'a StatusBoard,
        load: &LoadOutcome,
        stale: &mut Vec<Backend>,
    ) -> Result<Session<'a>, CdcError> {
        let id = cfg.replication.migration_id.as_str();
        let snapshots = load
            .tables
            .iter()
            .map(|(t, l)| (t.clone(), l.snapshot_lsn))
            .collect();
        let mut targets = Vec::with_capacity(cfg.replication.apply_sessions);
        let mut wal_compression = String::new();
        for _ in 0..cfg.replication.apply_sessions {
            let client = cfg.target.connect("pgcutover-apply").await?;
            wal_compression =
                wal_compression::set_up(&client, &cfg.replication.target_wal_compression).await?;
            targets.push(client);
        }
        status.cdc_wal_compression(&wal_compression);
        let applier = Applier::new(targets, id, Some(cfg.target.clone())).await?;
        if !stale.is_empty() {
            stall::end_stale(applier.client(), stale).await;
        }
        let recorded = super::progress::applied_lsn(applier.client(), id).await?;
        let start = recorded.unwrap_or(load.slot_lsn);
        let slot = cfg.replication.migration_id.slot_name();
        let publication = cfg.replication.migration_id.publication_name();
        let receive_timeout = cfg.replication.receive_timeout;
        let wakeup = silence::wakeup(receive_timeout);
        let stream =
            Stream::open(&cfg.source, &slot, &publication, start, wakeup, READ_AHEAD).await?;
        tracing::info!(%slot, from = %start, target_wal_compression = %wal_compression,
            "change stream started");
        status.cdc_running(start);
        Ok(Session {
            status,
            stream,
            applier,
            cache: RelationCache::default(),
            snapshots,
            heartbeat_prefix: heartbeat::prefix(cfg),
            cfg,
            applied: start,
            txn: None,
            last_end: start,
            sent_end: start,
            received: start,
            batch_started: None,
            after_full: false,
            source_drained: false,
            heartbeat_waiting: None,
            heartbeats: VecDeque::new(),
            unflushed: VecDeque::new(),
            pending_hold: None,
            deferred: None,
            slot,
            receive_timeout,
            heard_at: tokio::time::Instant::now(),
            took_ready: false,
            probe: None,
        })
    }

    /// Commit what is due, read the answers that came in, hold if asked, then take one event
    /// (or wake for an answer, a linger's end, a drift of the source's tables or a hold
    /// request). Returns whether a batch's commit was answered.
    async fn step(
        &mut self,
        holds: &mut mpsc::UnboundedReceiver<Hold>,
        drift: &mut watch::Receiver<Drift>,
    ) -> Result<bool, CdcError> {
        // Inside a source transaction nothing below is due (a batch commits, and a hold
        // takes effect, only between transactions; answers, hold requests and drifts wait
        // a few events): events the stream has ready are taken in a run, sparing each the
        // checks (a catch-up is hundreds of thousands of them a second).
        if self.deferred.is_none() && self.txn.is_some() {
            let mut taken = 0;
            while taken < READY_RUN && self.txn.is_some() {
                let Some(next) = self.stream.try_next() else {
                    break;
                };
                self.took_ready = true;
                match next?.ok_or(CdcError::Ended)? {
                    // Nearly every event of a catch-up: no future unless the buffer is to
                    // be sent.
                    Event::Data(bytes) => match self.data_now(bytes)? {
                        Later::Nothing => {}
                        later => self.data_later(later).await?,
                    },
                    ev => self.on_event(ev).await?,
                }
                taken += 1;
            }
            if taken > 0 {
                return Ok(false);
            }
        }
        let hold_due = self
            .pending_hold
            .as_ref()
            .is_some_and(|h| self.received >= h.until);
        let answered = self.commit_and_collect(hold_due).await?;
        if hold_due
            && self.txn.is_none()
            && self.batch_started.is_none()
            && !self.applier.commit_pending()
            && let Some(h) = self.pending_hold.take()
        {
            self.pending_hold = h.wait(self.applied).await;
            return Ok(answered);
        }
        let found = drift.borrow_and_update().clone();
        if !found.unpublished.is_empty() {
            return Err(CdcError::Unpublished {
                tables: found.unpublished,
            });
        }
        if !found.new.is_empty() {
            return Err(CdcError::NewTables {
                tables: found.new.iter().map(|t| t.display_plain()).collect(),
                vanished: found.vanished.iter().map(|t| t.display_plain()).collect(),
            });
        }
        // A batch open between source transactions commits when its linger is over, even if
        // nothing more arrives.
        let linger_until = match (self.txn, self.batch_started) {
            (None, Some(started)) => Some(tokio::time::Instant::from_std(started + BATCH_LINGER)),
            _ => None,
        };
        if let Ok(h) = holds.try_recv() {
            self.pending_hold = Some(h);
            return Ok(answered);
        }
        let ev = match self.deferred.take() {
            Some(ev) => ev,
            // An event ready at once (always, during a catch-up) needs no waiting on anything
            // else: answers are read above, and hold requests and new tables were just looked
            // at. This spares a select over five futures per event.
            None if let Some(next) = self.stream.try_next() => {
                self.took_ready = true;
                next?.ok_or(CdcError::Ended)?
            }
            None => {
                if std::mem::take(&mut self.took_ready) {
                    self.heard();
                }
                let silent_until = self.heard_at + self.receive_timeout;
                let next = tokio::select! {
                    // All cancel-safe: the stream and `recv` read channels, `changed` a watch.
                    next = self.stream.next() => {
                        self.heard();
                        next?
                    }
                    // Cancel-safe too: an answer that came in stays for `collect`.
                    _ = self.applier.answer() => return Ok(answered),
                    _ = sleep_until_some(linger_until) => return Ok(answered),
                    _ = drift.changed() => return Ok(answered),
                    h = holds.recv() => {
                        self.pending_hold = h;
                        return Ok(answered);
                    }
                    _ = tokio::time::sleep_until(silent_until), if self.probe.is_none() => {
                        self.start_probe();
                        return Ok(answered);
                    }
                    verdict = probed(&mut self.probe) => {
                        self.probe = None;
                        self.on_verdict(verdict)?;
                        return Ok(answered);
                    }
                };
                next.ok_or(CdcError::Ended)?
            }
        };
        self.on_event(ev).await?;
        Ok(answered)
    }

    /// Commit the open batch at a source commit boundary when it is large, old, lingered
    /// with the stream dry, or a hold is due; read the answers that came in (all of them
    /// before a hold). Returns whether a commit was answered.
    async fn commit_and_collect(&mut self, hold_due: bool) -> Result<bool, CdcError> {
        let mut done = Vec::new();
        if self.txn.is_none()
            && let Some(started) = self.batch_started
            && (self.applier.batch().changes >= BATCH_CHANGES
                || started.elapsed() >= BATCH_AGE
                || hold_due
                || self.source_drained
                || (started.elapsed() >= BATCH_LINGER && !self.stream.has_ready()))
        {
            self.after_full = self.applier.batch().changes >= BATCH_CHANGES;
            done = self.applier.commit(self.last_end).await?;
            self.batch_started = None;
            self.source_drained = false;
            self.sent_end = self.last_end;
            if let Some(sent) = self.heartbeat_waiting.take() {
                self.heartbeats.push_back((self.last_end, sent));
            }
        }
        // Answers read as they come in (`step` wakes for them), so a sealed batch's COMMIT
        // goes out at once; everything is waited for only before a hold.
        if self.applier.commit_pending() {
            done.extend(self.applier.collect().await?);
        }
        if self.applier.commit_pending() && self.txn.is_none() && hold_due {
            done.extend(self.applier.settle().await?);
        }
        let answered = !done.is_empty();
        for d in done {
            self.answered(d);
        }
        Ok(answered)
    }

    async fn on_event(&mut self, ev: Event) -> Result<(), CdcError> {
        match ev {
            Event::Begin { final_lsn, .. } => {
                self.received = self.received.max(final_lsn);
                if self
                    .pending_hold
                    .as_ref()
                    .is_some_and(|h| final_lsn >= h.until)
                {
                    // Hold before this transaction: everything committed before it is in.
                    self.deferred = Some(ev);
                    return Ok(());
                }
                let done_before = final_lsn < self.applied;
                if !done_before {
                    self.applier.begin().await?;
                    self.batch_started.get_or_insert_with(Instant::now);
                }
                self.txn = Some((final_lsn, done_before));
            }
            Event::Commit { end_lsn } => {
                self.received = self.received.max(end_lsn);
                match self.txn.take() {
                    Some((_, false)) => {
                        self.applier.end_source_txn();
                        self.last_end = end_lsn;
                    }
                    _ if self.idle() => {
                        // Applied by an earlier run: the slot may forget it.
                        self.stream.confirm(end_lsn.max(self.applied));
                        self.status.cdc_processed(end_lsn);
                    }
                    _ => {}
                }
            }
            Event::Data(bytes) => {
                let later = self.data_now(bytes)?;
                self.data_later(later).await?;
            }
            Event::Message {
                transactional: false,
                lsn,
                prefix,
                content,
            } if prefix == self.heartbeat_prefix => {
                self.received = self.received.max(lsn);
                let sent = std::str::from_utf8(&content)
                    .ok()
                    .and_then(|s| s.parse::<i64>().ok());
                if let Some(sent) = sent {
                    self.on_heartbeat(lsn, sent).await?;
                }
            }
            Event::Message {
                transactional: false,
                lsn,
                ..
            } => self.received = self.received.max(lsn),
            Event::Message { .. } => {}
            Event::KeepAlive { wal_end } => {
                if self.txn.is_none() {
                    self.received = self.received.max(wal_end);
                    self.source_drained |= self.batch_started.is_some()
                        && drained_commits(self.applier.batch().changes, self.after_full);
                }
                // Nothing open: every commit before `wal_end` has been received and applied,
                // so the slot may move there (it keeps WAL from piling up while the published
                // tables are idle).
                if self.txn.is_none() && self.idle() && wal_end > self.applied {
                    self.stream.confirm(wal_end);
                    self.status.cdc_processed(wal_end);
                }
            }
        }
        Ok(())
    }

    /// A pgoutput message: a row change joins the batch buffer here, without waiting on
    /// anything; what is left (sending the buffer, any other message) is for
    /// [`Session::data_later`].
    fn data_now(&mut self, bytes: Bytes) -> Result<Later, CdcError> {
        let msg = decode::decode(bytes)?;
        row_now(&mut self.applier, &self.cache, msg, self.txn)
    }

    async fn data_later(&mut self, later: Later) -> Result<(), CdcError> {
        match later {
            Later::Nothing => Ok(()),
            Later::Finish(left) => Ok(self.applier.finish(left).await?),
            Later::Message(msg) => {
                apply_message(
                    &mut self.applier,
                    &mut self.cache,
                    &self.snapshots,
                    self.cfg,
                    msg,
                    self.txn,
                )
                .await
            }
        }
    }

    /// Our heartbeat came back through the stream at `lsn`, stamped `sent`: it is timed when
    /// every transaction before it is committed on the target.
    async fn on_heartbeat(&mut self, lsn: Lsn, sent: i64) -> Result<(), CdcError> {
        if self.batch_started.is_some() {
            self.heartbeat_waiting = Some(sent);
        } else if self.applier.commit_pending() {
            self.heartbeats.push_back((self.sent_end, sent));
        } else {
            self.status.heartbeat_applied(sent);
            self.status.cdc_processed(lsn);
            // Once a second: confirm what the target has flushed since.
            if let Some((_, flushed)) = self.applier.wal_positions().await? {
                self.confirm_flushed(flushed);
            }
            if self.unflushed.is_empty() {
                self.stream.confirm(lsn.max(self.applied));
            }
        }
        Ok(())
    }

    /// The stream delivered an event: a probe under way is not needed any more.
    fn heard(&mut self) {
        self.heard_at = tokio::time::Instant::now();
        self.probe = None;
    }

    /// Nothing came in for `receive_timeout`: ask the source whether it still hears the
    /// stream, while the session goes on.
    fn start_probe(&mut self) {
        tracing::debug!(slot = %self.slot, silent_secs = self.heard_at.elapsed().as_secs_f64(),
            "the change stream received nothing; asking the source whether it hears the stream");
        self.status.cdc_silent();
        let gap = silence::gap(self.receive_timeout);
        self.probe = Some(Box::pin(silence::probe(
            self.cfg.source.clone(),
            self.slot.clone(),
            gap,
        )));
    }

    fn on_verdict(&mut self, verdict: Verdict) -> Result<(), CdcError> {
        let silent_secs = self.heard_at.elapsed().as_secs_f64();
        match verdict {
            Verdict::Alive => {
                tracing::info!(slot = %self.slot, silent_secs,
                    "the change stream received nothing, but the source hears it: its \
                     walsender is reading WAL with nothing to send yet");
                self.heard_at = tokio::time::Instant::now();
                Ok(())
            }
            Verdict::Dead { why, .. } => Err(CdcError::Silent {
                slot: self.slot.clone(),
                silent_secs,
                why,
            }),
        }
    }

    /// No batch open or committing, and every commit flushed on the target.
    fn idle(&self) -> bool {
        self.batch_started.is_none() && !self.applier.commit_pending() && self.unflushed.is_empty()
    }

    /// A batch's commit was answered: the target is at its source position (durable once the
    /// target flushes its WAL that far).
    fn answered(&mut self, done: Committed) {
        self.applied = done.source_end;
        self.unflushed.push_back((done.target_lsn, done.source_end));
        self.confirm_flushed(done.target_flushed);
        self.status.cdc_committed(&done);
        let mut newest = None;
        while let Some(&(at, sent)) = self.heartbeats.front() {
            if at > done.source_end {
                break;
            }
            newest = Some(sent);
            self.heartbeats.pop_front();
        }
        if let Some(sent) = newest {
            self.status.heartbeat_applied(sent);
        }
    }

    /// Confirm to the source the newest batch whose target commit is flushed (everything when
    /// commits are synchronous: their position is zero).
    fn confirm_flushed(&mut self, flushed: Lsn) {
        let mut newest = None;
        while let Some(&(target, source)) = self.unflushed.front() {
            if target > flushed {
                break;
            }
            newest = Some(source);
            self.unflushed.pop_front();
        }
        if let Some(source) = newest {
            self.stream.confirm(source);
        }
    }
}

/// The probe's verdict, or never when no probe runs.
async fn probed(probe: &mut Option<Pin<Box<dyn Future<Output = Verdict> + Send>>>) -> Verdict {
    match probe {
        Some(p) => p.as_mut().await,
        None => std::future::pending().await,
    }
}

/// Sleep until `at`, or forever when there is no `at`.
async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The migrated tables the source no longer has under their name (renamed, moved or
/// dropped), as far as it can be asked.
async fn gone_from_source(source: &ConnInfo, snapshots: &BTreeMap<TableName, Lsn>) -> Vec<String> {
    let names: Vec<String> = snapshots.keys().map(|t| t.to_string()).collect();
    let Ok(client) = source.connect("pgcutover-cdc").await else {
        return Vec::new();
    };
    let rows = client
        .query(
            "SELECT t FROM unnest($1::text[]) t WHERE pg_catalog.to_regclass(t) IS NULL",
            &[&names],
        )
        .await
        .unwrap_or_default();
    snapshots
        .keys()
        .filter(|t| rows.iter().any(|r| r.get::<_, String>(0) == t.to_string()))
        .map(|t| t.display_plain())
        .collect()
}

/// The source table's name now, by its oid (`None` when it is gone or the source cannot be
/// asked: the caller then reports what it found).
async fn name_now(source: &ConnInfo, relid: u32) -> Option<TableName> {
    let client = source.connect("pgcutover-cdc").await.ok()?;
    let row = client
        .query_opt(
            "SELECT n.nspname::text, c.relname::text FROM pg_catalog.pg_class c
               JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
              WHERE c.oid = $1::int8::oid",
            &[&i64::from(relid)],
        )
        .await
        .ok()??;
    Some(TableName::new(
        row.get::<_, String>(0),
        row.get::<_, String>(1),
    ))
}

/// Apply one decoded message of the open transaction `txn` (commit position, applied before).
async fn apply_message(
    applier: &mut Applier,
    cache: &mut RelationCache,
    snapshots: &BTreeMap<TableName, Lsn>,
    cfg: &Config,
    msg: Message,
    txn: Option<(Lsn, bool)>,
) -> Result<(), CdcError> {
    // Outside a transaction only Relation and Type messages are expected; a change there
    // would have no commit position to judge it by.
    let wanted = |skip_before: Lsn| matches!(txn, Some((lsn, false)) if lsn >= skip_before);
    match msg {
        Message::Relation(rel) => {
            let waiting = applier.waiting_on_client();
            let described = cache.describe(applier.client(), &rel, snapshots).await;
            drop(waiting);
            let info = match described {
                Ok(info) => info,
                Err(
                    e @ (RelationError::NotMigrated { .. } | RelationError::MissingOnTarget { .. }),
                ) => {
                    let streamed = TableName::new(rel.namespace.clone(), rel.name.clone());
                    let current = name_now(&cfg.source, rel.relid)
                        .await
                        .unwrap_or_else(|| streamed.clone());
                    if let Some(&copied) = snapshots.get(&current) {
                        // Renamed on the source since, and copied again under its new name
                        // after the rename: what it sends under the old name is in that copy.
                        if current != streamed && txn.is_some_and(|(commit, _)| commit < copied) {
                            tracing::info!(table = %current.display_plain(), was = %streamed.display_plain(),
                                "changes made before the table was renamed are in its new copy: skipped");
                            cache.renamed(&rel, current, copied);
                            return Ok(());
                        }
                        return Err(e.into());
                    }
                    if cfg.replication.excludes(&current) {
                        // The operator left it out (of a name it was renamed to, or since).
                        tracing::info!(table = %current.display_plain(),
                            "replication.exclude leaves this table out: its changes are skipped");
                        cache.renamed(&rel, current, Lsn::MAX);
                        return Ok(());
                    }
                    if !cfg.replication.selects(&current) {
                        // Renamed out of the patterns: the operator must say what it is.
                        let was = if current != streamed {
                            vec![streamed.display_plain()]
                        } else {
                            gone_from_source(&cfg.source, snapshots).await
                        };
                        return Err(RelationError::MovedOut {
                            to: current.display_plain(),
                            was,
                        }
                        .into());
                    }
                    // A new table for the migration: the check for new tables names it.
                    return Err(e.into());
                }
                Err(e) => return Err(e.into()),
            };
            applier.forget_older(&info);
        }
        Message::Type {
            oid,
            namespace,
            name,
        } => cache.note_type(oid, namespace, name),
        Message::Insert { .. } | Message::Update { .. } | Message::Delete { .. } => {
            if let Later::Finish(left) = row_now(applier, cache, msg, txn)? {
                applier.finish(left).await?;
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

/// What a decoded message left to wait on.
enum Later {
    Nothing,
    /// A row change went into the batch buffer, which now has to be sent (see [`Left`]).
    Finish(Left),
    /// Not a row change: [`apply_message`] handles it.
    Message(Message),
}

/// A row change (insert, update, delete) into the batch buffer, without waiting on anything
/// (see [`Applier::insert_now`]); other messages are handed back.
fn row_now(
    applier: &mut Applier,
    cache: &RelationCache,
    msg: Message,
    txn: Option<(Lsn, bool)>,
) -> Result<Later, CdcError> {
    // A change outside a transaction would have no commit position to judge it by; one
    // committed before its table's copy was taken is in that copy.
    let wanted = |skip_before: Lsn| matches!(txn, Some((lsn, false)) if lsn >= skip_before);
    let left = match msg {
        Message::Insert { relid, new } => {
            let rel = cache.get(relid)?;
            if !wanted(rel.skip_before) {
                return Ok(Later::Nothing);
            }
            applier.insert_now(rel, new)?
        }
        Message::Update { relid, old, new } => {
            let rel = cache.get(relid)?;
            if !wanted(rel.skip_before) {
                return Ok(Later::Nothing);
            }
            applier.update_now(rel, old, new)?
        }
        Message::Delete { relid, old } => {
            let rel = cache.get(relid)?;
            if !wanted(rel.skip_before) {
                return Ok(Later::Nothing);
            }
            applier.delete_now(rel, old)?
        }
        other => return Ok(Later::Message(other)),
    };
    Ok(match left {
        Left::Nothing => Later::Nothing,
        left => Later::Finish(left),
    })
}

/// Whether a batch open when the walsender says it is at the end of the source's WAL commits
/// at once rather than lingering: when the batch before it ended full (the end of a backlog),
/// or when it holds [`EAGER_CHANGES`] itself (see "Batching" in the module docs).
fn drained_commits(changes: u64, after_full: bool) -> bool {
    after_full || changes >= EAGER_CHANGES
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_end_of_a_backlog_does_not_linger() {
        // The one transaction written after a backlog, behind a full batch.
        assert!(drained_commits(1, true));
        // A batch that is large by itself.
        assert!(drained_commits(EAGER_CHANGES, false));
        assert!(drained_commits(BATCH_CHANGES - 1, false));
    }

    #[test]
    fn a_trickle_keeps_lingering() {
        // Between the transactions of a steady trickle the walsender is at the end of the
        // WAL all the time; its batches, small and after lingered ones, keep gathering.
        assert!(!drained_commits(0, false));
        assert!(!drained_commits(4, false));
        assert!(!drained_commits(EAGER_CHANGES - 1, false));
    }
}
