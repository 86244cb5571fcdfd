//! Applying decoded changes to the target, in source commit order.
//!
//! Target sessions with `session_replication_role = replica` (no user triggers, no foreign-key
//! re-checks: the source already checked them). Many source transactions go into one target
//! transaction (a *batch*), which commits only at a source commit boundary, together with the
//! row that records the applied position ([`super::progress`]): a source transaction is
//! applied entirely or not at all, and the recorded position is exact.
//!
//! ## Batches side by side
//!
//! Each batch runs on one session (a `Lane`; `replication.apply_sessions`, default 2). A
//! batch that writes none of the rows of the batch still committing goes to another session
//! and runs beside it; one that does (or that touches a table rows cannot be told apart in:
//! see [`Writeset`]) goes to the same session, behind it, and so never waits for a lock the
//! other holds. Commits stay in source order: a batch's COMMIT is sent only after the one
//! before it was answered. A source transaction is never split: it belongs to one batch.
//! On a catch-up of independent transactions the target's work then spreads over two
//! backends instead of one (the single-backend apply was the bottleneck: one core busy,
//! the other half idle).
//!
//! Until the one before is answered, a batch is *sealed*: its statements are on their way
//! and the daemon gathers the next batch, which goes to a session without an open
//! transaction (behind the committing batch, beside the sealed one), so every session
//! always has work queued. No statement is ever sent that could meet a row of the sealed
//! batch: a batch touching its rows first has the sealed batch's COMMIT sent. Otherwise an
//! update of a row the sealed batch inserted would find nothing (that insert is not visible
//! yet, and the change would be lost), and an update of a row it updated would wait for a
//! lock only the daemon's next COMMIT releases, while the daemon waits for the statement
//! (a test has both).
//!
//! ## Speed, with the source's result
//!
//! * **The batch buffer.** Changes are first gathered in a [`Buffer`]: per table, in order,
//!   with repeated updates of one row merged (see [`super::coalesce`] for why the result is
//!   the same). It is sent when the batch commits, when it is full, before a TRUNCATE, and
//!   around tables whose triggers fire during the apply.
//! * **Commits that do not wait.** [`Applier::commit`] sends the progress row and COMMIT (or
//!   seals the batch) and returns; the target applies that batch while the next one is
//!   gathered. The caller reads answers as they come in ([`Applier::answer`] wakes it,
//!   [`Applier::collect`] reads them and sends a sealed batch's COMMIT): an earlier version
//!   waited for every answer whenever the stream had nothing ready, and on a catch-up that
//!   emptied both sessions many times a second (measured: the sessions idle in `ClientRead`
//!   for 40 % of samples, the walsender blocked on its socket for 45 %; with answers read as
//!   they come, 1M-row catch-ups took 5.6–6.3 s instead of 6.1–7.5 s). An error in a batch
//!   is reported and every later one rolled back, and a position is confirmed to the source
//!   only after its commit was answered.
//! * **Scripts of prepared statements for single-row changes.** Each table shape gets a
//!   server-side prepared statement (`PREPARE pgc_N (text, ...) AS ...`) once per session,
//!   and single-row changes go out as `EXECUTE pgc_N('...', ...)` lines, up to
//!   [`SCRIPT_STATEMENTS`] of them in one simple-query message. The extended protocol ends
//!   every statement with a Sync, and the target then answers and flushes its socket once per
//!   statement: profiling showed the target's apply backend spending about a quarter of its
//!   time there. A script is answered once; the per-statement row counts come back in its
//!   `CommandComplete`s, and an error names the statement it stopped at. Values are quoted as
//!   SQL literals ([`crate::pg::quote_literal`]).
//! * **Multi-row runs in the extended protocol.** A run of several rows (below) is one
//!   statement whose parameters are binary arrays (`text[]`, or `int4[]` and the like): its
//!   Sync is paid once for up to [`MAX_RUN`] rows, and binary arrays spare the target parsing
//!   array literals (a script with array literals was measured 10–25 % slower on the bulk
//!   backlog).
//! * **Pipelining.** Scripts, runs and the few other statements (BEGIN, the progress row,
//!   COMMIT, TRUNCATE) are sent without waiting for the previous one's answer; answers are read
//!   later, in order (a batch's statements are still on their way when the next one opens).
//!   Order is guaranteed because a tokio-postgres request is written to the connection the
//!   first time its future is polled, and [`Applier`] polls each one right after creating it.
//! * **Runs.** Consecutive changes of one kind to one table (a *run*) go out as one statement
//!   over `unnest()`ed arrays. A run never holds two changes to the same key
//!   (an UPDATE joined against the table would apply only one of them), and tables with unique
//!   or exclusion constraints besides the identity are updated row by row, because PostgreSQL
//!   checks those row by row inside a statement and could fail on an order the source never
//!   had. Inserts and deletes never have that problem.
//! * **Dense runs read the table once.** A run's statement normally finds each row through
//!   the index by its key, a descent of the index per row (a fifth of the target's time on
//!   the bulk backlog). When the keys are one integer column and lie close together (their
//!   range under twice the run's rows, as in batch jobs that update or delete by id range),
//!   the statement instead reads the index once over that range and joins it to the run by
//!   hashing: `WHERE (t.id + 0) = (v.k + 0) AND t.id BETWEEN lo AND hi`, where `+ 0` keeps
//!   the planner from choosing a lookup per row. Rows are then changed in the table's order,
//!   not the run's, so only tables whose result cannot depend on that order take this form
//!   (see `range_key` in `sql.rs`). Measured statement by statement: 12–32 % less target CPU for
//!   1000-row update runs, the same as the lookups at a range four times the rows.
//! * **Bounded memory.** The buffer is sent when full ([`super::coalesce::MAX_CHANGES`],
//!   [`super::coalesce::MAX_BYTES`]), a run is at most [`MAX_RUN`] rows and at most
//!   [`MAX_INFLIGHT`] statements are unanswered, so a source transaction of any size streams
//!   through.
//!
//! Values travel in text form and are cast to the target column's type; NULL stays NULL (a
//! separate flag, never a string), so NULL and '' stay apart. Unchanged TOAST values are left
//! out of the SET list, so the target keeps its copy. REPLICA IDENTITY FULL tables are changed
//! one row per change, through `ctid` of the first row that matches the old values, like
//! PostgreSQL's own apply.
//!
//! This module holds the batch logic ([`Applier`]: batches, sessions, commits); `change.rs`
//! turns a decoded row change into a buffered change, `send.rs` sends a batch's changes and
//! reads the answers, `sql.rs` builds the statements and their parameters, and `lane.rs` is
//! one target session with its requests in flight.

use std::sync::Arc;
use std::task::Context;

use tokio_postgres::Client;

use super::coalesce::{Buffer, Change, Writeset};
use super::decode::{OldKind, Tuple};
use super::relation::RelInfo;
use super::stall::{LaneWatch, WaitGuard};
use crate::pg::conn::ConnInfo;
use crate::pg::{Lsn, SqlError};
use lane::{EndsCommit, Lane, Pending, Subject};
use send::Run;
use sql::StmtKey;

mod change;
mod lane;
mod send;
mod sql;

/// Most rows in one multi-row statement.
pub const MAX_RUN: usize = 1000;
/// Most requests (scripts or statements) sent and not yet answered.
pub const MAX_INFLIGHT: usize = 64;
/// Most statements in one script…
pub const SCRIPT_STATEMENTS: usize = 128;
/// …and most bytes.
const SCRIPT_BYTES: usize = 1 << 20;
/// Statements `PREPARE`d by name on one session before they are all freed.
const MAX_NAMED: usize = 500;

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("applying a change to {table}: {message}")]
    Statement {
        table: String,
        message: String,
        #[source]
        source: Option<tokio_postgres::Error>,
    },
    #[error(transparent)]
    Sql(#[from] SqlError),
}

impl ApplyError {
    /// The target connection broke or the server gave up for a passing reason (as opposed
    /// to a statement the target refused).
    pub fn is_transient(&self) -> bool {
        let e = match self {
            ApplyError::Statement { source, .. } => source.as_ref(),
            ApplyError::Sql(e) => Some(&e.source),
        };
        e.is_some_and(crate::pg::is_transient)
    }

    pub fn hint(&self) -> String {
        if self.is_transient() {
            "the target connection broke or the target gave up for a passing reason; pgcutover reconnects and resumes from the last \
             committed position"
                .into()
        } else {
            "the target refused a change: fix the cause (see the message), then POST \
             /replication/resume; the failed transaction was not applied"
                .into()
        }
    }
}

fn bad_value(rel: &RelInfo, what: &str) -> ApplyError {
    ApplyError::Statement {
        table: rel.table.display_plain(),
        message: what.into(),
        source: None,
    }
}

/// What [`Applier::insert_now`], [`Applier::update_now`] or [`Applier::delete_now`] left for
/// [`Applier::finish`].
#[must_use]
pub enum Left {
    Nothing,
    /// The buffer is full: send it.
    Flush,
    /// The buffer must be sent before this change joins it (a table whose changes keep
    /// their place among other tables').
    Buffer(Arc<RelInfo>, Change),
}

/// Totals of one committed batch.
#[derive(Clone, Copy, Debug, Default)]
pub struct Committed {
    /// The source position the batch brought the target to (a source commit's end).
    pub source_end: Lsn,
    pub changes: u64,
    pub transactions: u64,
    /// Updates and deletes that found no row on the target.
    pub missing_rows: u64,
    /// Applied on a session of its own while the batch before it was still being applied.
    pub beside: bool,
    /// The target's WAL position just after the commit: the batch is durable once the
    /// target has flushed this far.
    pub target_lsn: Lsn,
    /// How far the target's WAL was flushed when the commit returned.
    pub target_flushed: Lsn,
}

pub struct Applier {
    lanes: Vec<Lane>,
    migration_id: String,
    /// A batch is open (a source transaction of it has begun)…
    in_txn: bool,
    /// …on this session, once its BEGIN is sent.
    lane: Option<usize>,
    /// The session of the last batch whose commit was sent.
    last_lane: usize,
    /// Changes of the open batch not sent yet (grouped per table, merged).
    buffer: Buffer,
    run: Option<Run>,
    /// Rows the open batch wrote so far, and those of the last batch whose commit was sent
    /// (which matter while that commit is unanswered).
    writes: Writeset,
    last_writes: Writeset,
    /// A batch whose statements are all sent, its COMMIT held back until the commit in
    /// flight is answered (at most one; see [`Applier::commit`]).
    sealed: Option<Sealed>,
    /// Batches whose commit was answered since the caller last heard of them.
    done: Vec<Committed>,
    batch: Committed,
    /// The probe of the target's flush position ([`lane::flush_moves`]), until its answer is
    /// taken.
    probe: Option<tokio::task::JoinHandle<bool>>,
}

impl Drop for Applier {
    fn drop(&mut self) {
        if let Some(probe) = &self.probe {
            probe.abort();
        }
    }
}

/// A batch whose statements are sent and whose COMMIT waits for the one in flight.
struct Sealed {
    lane: usize,
    totals: Committed,
    writes: Writeset,
}

impl Applier {
    /// Prepare the sessions (one or more), and, given the target's address, ask it in the
    /// background, on a session of its own, whether commits can be asynchronous (see
    /// `Applier::asynchronous_commits`); without it they stay synchronous. The clients must
    /// come from [`crate::pg::conn::ConnInfo::connect`].
    pub async fn new(
        clients: Vec<Client>,
        migration_id: &str,
        probe: Option<ConnInfo>,
    ) -> Result<Applier, SqlError> {
        let mut lanes = Vec::with_capacity(clients.len());
        for c in clients {
            lanes.push(Lane::open(c).await?);
        }
        assert!(!lanes.is_empty(), "the apply needs a target session");
        let probe = probe
            .filter(|_| lanes.iter().all(|l| l.positions.is_some()))
            .map(|target| {
                tokio::spawn(async move {
                    match target.connect("pgcutover-probe").await {
                        Ok(client) => lane::flush_moves(client).await,
                        Err(e) => {
                            tracing::info!(error = %e, "could not ask the target whether it \
                                flushes asynchronous commits; commits stay synchronous");
                            false
                        }
                    }
                })
            });
        Ok(Applier {
            lanes,
            migration_id: migration_id.to_string(),
            in_txn: false,
            lane: None,
            last_lane: 0,
            buffer: Buffer::default(),
            run: None,
            writes: Writeset::default(),
            last_writes: Writeset::default(),
            sealed: None,
            done: Vec::new(),
            batch: Committed::default(),
            probe,
        })
    }

    /// The target session, for catalog reads between changes (they queue behind the
    /// statements in flight, which is what their order requires).
    pub fn client(&self) -> &Client {
        &self.lanes[0].client
    }

    /// The caller waits for an answer on [`Applier::client`] until the guard is dropped.
    pub fn waiting_on_client(&mut self) -> WaitGuard {
        self.lanes[0].wait_front()
    }

    /// Each session's backend and wait, for [`crate::cdc::stall::watch`].
    pub fn watches(&self) -> Vec<Arc<LaneWatch>> {
        self.lanes.iter().map(|l| l.watch.clone()).collect()
    }

    /// A table was described anew (its shape changed on the source, see
    /// [`super::relation::RelationCache::describe`]): the statements prepared for its older
    /// shapes are freed on every session. The extended-protocol ones are closed when the last
    /// request using them is answered; the scripts' `PREPARE`d ones are deallocated by the
    /// session's next script, after the statements already queued there.
    pub fn forget_older(&mut self, rel: &RelInfo) {
        let stale = |k: &StmtKey| k.relid == rel.relid && k.generation != rel.generation;
        for lane in &mut self.lanes {
            lane.extended.retain(|k, _| !stale(k));
            let mut freed = Vec::new();
            lane.named.retain(|k, name| {
                if stale(k) {
                    freed.push(std::mem::take(name));
                }
                !stale(k)
            });
            for name in freed {
                lane.script.push_str(&format!("DEALLOCATE {name};\n"));
                lane.script_expect.push(None);
            }
        }
    }

    pub fn batch(&self) -> Committed {
        self.batch
    }

    pub fn in_batch(&self) -> bool {
        self.in_txn
    }

    /// A source transaction starts: open a batch if none is open (its target transaction
    /// begins when its first statements are sent, on the session they go to).
    pub async fn begin(&mut self) -> Result<(), ApplyError> {
        if !self.in_txn {
            self.in_txn = true;
            self.batch = Committed::default();
        }
        Ok(())
    }

    pub async fn insert(&mut self, rel: &Arc<RelInfo>, new: Tuple) -> Result<(), ApplyError> {
        let left = self.insert_now(rel, new)?;
        self.finish(left).await
    }

    pub async fn update(
        &mut self,
        rel: &Arc<RelInfo>,
        old: Option<(OldKind, Tuple)>,
        new: Tuple,
    ) -> Result<(), ApplyError> {
        let left = self.update_now(rel, old, new)?;
        self.finish(left).await
    }

    pub async fn delete(
        &mut self,
        rel: &Arc<RelInfo>,
        old: (OldKind, Tuple),
    ) -> Result<(), ApplyError> {
        let left = self.delete_now(rel, old)?;
        self.finish(left).await
    }

    /// The synchronous half of [`Applier::insert`]: the change is taken into the batch
    /// buffer unless the buffer must be sent first; what is [`Left`] to do goes to
    /// [`Applier::finish`]. The apply loop calls these halves so that a change which only
    /// joins the buffer (nearly all of them) costs no future of its own.
    pub fn insert_now(&mut self, rel: &Arc<RelInfo>, new: Tuple) -> Result<Left, ApplyError> {
        let change = change::insert(rel, new)?;
        Ok(self.take_now(rel, change))
    }

    /// The synchronous half of [`Applier::update`] (see [`Applier::insert_now`]).
    pub fn update_now(
        &mut self,
        rel: &Arc<RelInfo>,
        old: Option<(OldKind, Tuple)>,
        new: Tuple,
    ) -> Result<Left, ApplyError> {
        Ok(match change::update(rel, old, new)? {
            Some(change) => self.take_now(rel, change),
            None => Left::Nothing,
        })
    }

    /// The synchronous half of [`Applier::delete`] (see [`Applier::insert_now`]).
    pub fn delete_now(
        &mut self,
        rel: &Arc<RelInfo>,
        old: (OldKind, Tuple),
    ) -> Result<Left, ApplyError> {
        let change = change::delete(rel, old.1)?;
        Ok(self.take_now(rel, change))
    }

    /// Take a change into the batch buffer when nothing has to be sent first (what
    /// [`Applier::buffer_change`] does, but for the sending).
    fn take_now(&mut self, rel: &Arc<RelInfo>, change: Change) -> Left {
        if self.buffer.must_flush_before(rel) {
            return Left::Buffer(rel.clone(), change);
        }
        self.batch.changes += 1;
        self.buffer.push(rel, change);
        if self.buffer.full() {
            Left::Flush
        } else {
            Left::Nothing
        }
    }

    /// What a synchronous half left to do: send the full buffer, or send it and then take
    /// the change in.
    pub async fn finish(&mut self, left: Left) -> Result<(), ApplyError> {
        match left {
            Left::Nothing => Ok(()),
            Left::Flush => self.flush_buffer().await,
            Left::Buffer(rel, change) => self.buffer_change(&rel, change).await,
        }
    }

    /// TRUNCATE the given tables, with the options the source used.
    pub async fn truncate(
        &mut self,
        rels: &[Arc<RelInfo>],
        cascade: bool,
        restart_identity: bool,
    ) -> Result<(), ApplyError> {
        if rels.is_empty() {
            return Ok(());
        }
        self.flush_buffer().await?;
        // A TRUNCATE locks whole tables: never beside another batch.
        self.enter_lane(&Writeset::everything()).await?;
        self.writes.extend(Writeset::everything());
        let list: Vec<String> = rels.iter().map(|r| r.table.to_string()).collect();
        let sql = format!(
            "TRUNCATE ONLY {}{}{}",
            list.join(", "),
            if restart_identity {
                " RESTART IDENTITY"
            } else {
                ""
            },
            if cascade { " CASCADE" } else { "" }
        );
        let names: Vec<String> = rels.iter().map(|r| r.table.display_plain()).collect();
        self.send(
            move |c| async move { c.batch_execute(&sql).await.map(|_| 0) },
            Some((0, Subject::Tables(names.join(", ").into()))),
        )
        .await?;
        self.batch.changes += 1;
        Ok(())
    }

    /// A source transaction's changes are all sent.
    pub fn end_source_txn(&mut self) {
        self.batch.transactions += 1;
    }

    /// Commit the target transaction with `applied` (a source commit's end) as the new
    /// position. Does not wait for the answer: the target works on this batch while the
    /// caller gathers the next one. Returns the batches whose commit was answered meanwhile
    /// (see [`Applier::collect`]).
    ///
    /// A COMMIT is sent only once the commit before it was answered: that batch's statements
    /// may have failed, and then its COMMIT only ended a failed transaction, while this
    /// batch's statements went on in a new one. With several sessions this batch is then
    /// *sealed*: its statements are on their way, its COMMIT is sent as soon as that answer
    /// is read (by [`Applier::collect`], or by the next call here), and the caller goes on
    /// gathering the next batch meanwhile. With one session, or a batch sealed already, the
    /// answer is waited for here. An error in it leaves this batch uncommitted for the caller
    /// to roll back.
    pub async fn commit(&mut self, applied: Lsn) -> Result<Vec<Committed>, ApplyError> {
        if !self.in_txn {
            return Ok(std::mem::take(&mut self.done));
        }
        self.flush_buffer().await?;
        // A batch without statements still records its position.
        self.enter_lane(&Writeset::default()).await?;
        let lane = self.current();
        self.flush_script(lane).await?;
        self.collect_ready().await?;
        if self.sealed.is_some() {
            self.settle_last_commit().await?;
        }
        let mut totals = std::mem::take(&mut self.batch);
        totals.source_end = applied;
        let batch = Sealed {
            lane,
            totals,
            writes: std::mem::take(&mut self.writes),
        };
        self.in_txn = false;
        self.lane = None;
        if self.lanes[self.last_lane].commits > 0 {
            if self.lanes.len() > 1 {
                self.sealed = Some(batch);
                return Ok(std::mem::take(&mut self.done));
            }
            self.settle_last_commit().await?;
        }
        self.send_commit(batch).await?;
        Ok(std::mem::take(&mut self.done))
    }

    /// Send a batch's progress row and COMMIT (and the WAL-position read after it).
    async fn send_commit(&mut self, batch: Sealed) -> Result<(), ApplyError> {
        let Sealed {
            lane,
            totals,
            writes,
        } = batch;
        let (progress, commit) = (
            self.lanes[lane].progress.clone(),
            self.lanes[lane].commit.clone(),
        );
        let (lsn, id) = (totals.source_end.to_string(), self.migration_id.clone());
        self.send_on(
            lane,
            move |c| async move { c.execute(&progress, &[&lsn, &id]).await },
            None,
            None,
        )
        .await?;
        let positions = self.lanes[lane].wal_positions.clone();
        let ends = EndsCommit {
            totals,
            answers_positions: positions.is_some(),
        };
        let commit_sql = move |c: Arc<Client>| async move { c.execute(&commit, &[]).await };
        self.lanes[lane].commits += 1;
        self.last_lane = lane;
        self.last_writes = writes;
        match positions {
            None => self.send_on(lane, commit_sql, None, Some(ends)).await,
            Some(positions) => {
                self.send_on(lane, commit_sql, None, None).await?;
                // Read right after the COMMIT on the same session: at or past its record.
                let c = self.lanes[lane].client.clone();
                let fut: Pending = Box::pin(async move {
                    let row = c.query_one(&positions, &[]).await.map_err(|e| (0, e))?;
                    let lsn = |i: usize| {
                        row.get::<_, String>(i)
                            .parse::<Lsn>()
                            .unwrap_or(Lsn::ZERO)
                            .0
                    };
                    Ok(vec![lsn(0), lsn(1)])
                });
                self.push(lane, fut, vec![None, None], Some(ends)).await
            }
        }
    }

    /// Wait for every request sent (committing a sealed batch on the way), and return the
    /// batches whose commit was answered since the caller last heard of them.
    pub async fn settle(&mut self) -> Result<Vec<Committed>, ApplyError> {
        if self.sealed.is_some() {
            self.settle_last_commit().await?;
        }
        self.drain().await?;
        Ok(std::mem::take(&mut self.done))
    }

    /// A commit was sent and its answer not read yet, or a batch is sealed.
    pub fn commit_pending(&self) -> bool {
        self.sealed.is_some() || self.lanes.iter().any(|l| l.commits > 0)
    }

    /// Wait until an answer to the commit in flight (or to a request before it) has come in;
    /// [`Applier::collect`] then reads it. Cancel-safe: an answer that came in is kept for
    /// `collect`. Waits forever when no commit is in flight.
    pub async fn answer(&mut self) {
        let lane = self.last_lane;
        if self.lanes[lane].commits == 0 {
            return std::future::pending().await;
        }
        let _waiting = self.lanes[lane].wait_front();
        std::future::poll_fn(|cx| self.lanes[lane].poll_front(cx)).await
    }

    /// Read the answers that came in for the commit in flight, without waiting, and send the
    /// sealed batch's COMMIT once that commit is in. Returns the batches whose commit was
    /// answered since the caller last heard of them.
    pub async fn collect(&mut self) -> Result<Vec<Committed>, ApplyError> {
        self.collect_ready().await?;
        Ok(std::mem::take(&mut self.done))
    }

    async fn collect_ready(&mut self) -> Result<(), ApplyError> {
        let lane = self.last_lane;
        let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());
        while self.lanes[lane].commits > 0 && self.lanes[lane].poll_front(&mut cx).is_ready() {
            self.settle_one(lane).await?;
        }
        if self.lanes[lane].commits == 0
            && let Some(batch) = self.sealed.take()
        {
            self.send_commit(batch).await?;
        }
        Ok(())
    }

    /// The session of the open batch (its BEGIN is sent).
    fn current(&self) -> usize {
        self.lane
            .expect("statements are sent only once their batch has a session")
    }

    /// Make sure the open batch has a session, and that `part` (its changes about to be sent)
    /// cannot wait there for a row of a batch not committed yet: a batch that writes none of
    /// the rows of the batch still committing (or sealed) goes to another session and runs
    /// beside it; one that does goes to the same session, behind it, once that batch's COMMIT
    /// is sent. A later part of a batch already beside the committing one that touches its
    /// rows waits for that commit first. So no statement ever meets a row of a batch whose
    /// COMMIT is not sent: it would miss that batch's inserts, or wait for a lock that only
    /// this daemon's COMMIT could release.
    async fn enter_lane(&mut self, part: &Writeset) -> Result<(), ApplyError> {
        let behind_sealed = self.sealed.as_ref().is_some_and(|b| {
            part.conflicts(&b.writes) || (self.lane.is_none() && part.conflicts(&self.last_writes))
        });
        if behind_sealed {
            // Commit the sealed batch first (once the one in flight is answered).
            self.settle_last_commit().await?;
        }
        let committing = self.lanes[self.last_lane].commits > 0;
        let conflict = committing && part.conflicts(&self.last_writes);
        match self.lane {
            None => {
                let lane = if let Some(sealed) = &self.sealed {
                    // Beside the sealed batch, and beside or behind the committing one: the
                    // next session has no open transaction (only the sealed batch has one).
                    self.batch.beside = true;
                    (sealed.lane + 1) % self.lanes.len()
                } else if committing && !conflict && self.lanes.len() > 1 {
                    self.batch.beside = true;
                    (self.last_lane + 1) % self.lanes.len()
                } else {
                    self.last_lane
                };
                self.lane = Some(lane);
                self.lanes[lane].open = true;
                self.asynchronous_commits(lane).await?;
                let stmt = self.lanes[lane].begin.clone();
                self.send(move |c| async move { c.execute(&stmt, &[]).await }, None)
                    .await
            }
            Some(lane) if conflict && lane != self.last_lane => self.settle_last_commit().await,
            Some(_) => Ok(()),
        }
    }

    /// Commits start synchronous on every session: durable once answered, so the position of
    /// a batch is confirmed to the source as soon as its commit is answered. Once the probe
    /// started by [`Applier::new`] has seen the target's flush position follow a commit, each
    /// session's commits become asynchronous from its next batch on (`lane`, about to begin
    /// one): a `SET` sent before its BEGIN, outside any transaction, so no rollback undoes
    /// it, and from then on each of its commits is followed by a read of the target's WAL
    /// positions, and confirmed to the source only once the target has flushed it. (A
    /// synchronous commit answered after asynchronous ones is confirmed after them, in order.)
    async fn asynchronous_commits(&mut self, lane: usize) -> Result<(), ApplyError> {
        if self.probe.as_ref().is_some_and(|p| p.is_finished()) {
            use futures_util::FutureExt;
            let moves = self
                .probe
                .take()
                .and_then(|p| p.now_or_never())
                .is_some_and(|answer| answer.unwrap_or(false));
            if moves {
                for l in &mut self.lanes {
                    l.go_async = true;
                }
            } else {
                tracing::warn!(
                    "the target's WAL flush position was not seen to reach a commit (within \
                     {} s); commits stay synchronous",
                    lane::FLUSH_PROBE.as_secs()
                );
            }
        }
        if std::mem::take(&mut self.lanes[lane].go_async) {
            self.lanes[lane].wal_positions = self.lanes[lane].positions.clone();
            self.send(
                |c| async move {
                    c.batch_execute("SET synchronous_commit = off")
                        .await
                        .map(|()| 0)
                },
                None,
            )
            .await?;
        }
        Ok(())
    }

    /// Wait for the answer to the last commit sent (an error in its batch comes out here),
    /// then send the sealed batch's COMMIT, if there is one.
    async fn settle_last_commit(&mut self) -> Result<(), ApplyError> {
        let lane = self.last_lane;
        self.flush_script(lane).await?;
        while self.lanes[lane].commits > 0 {
            self.settle_one(lane).await?;
        }
        if let Some(batch) = self.sealed.take() {
            self.send_commit(batch).await?;
        }
        Ok(())
    }

    /// The target's current WAL insert and flush positions (`None` when commits are
    /// synchronous, so everything committed is already durable).
    pub async fn wal_positions(&mut self) -> Result<Option<(Lsn, Lsn)>, SqlError> {
        let lane = &mut self.lanes[self.last_lane];
        if lane.wal_positions.is_none() {
            return Ok(None);
        }
        let _waiting = lane.wait_front();
        let Some(stmt) = &lane.wal_positions else {
            return Ok(None);
        };
        let row = lane
            .client
            .query_one(stmt, &[])
            .await
            .map_err(|source| SqlError {
                context: "reading the target's WAL positions".into(),
                source,
            })?;
        let lsn = |i: usize| row.get::<_, String>(i).parse::<Lsn>().unwrap_or(Lsn::ZERO);
        Ok(Some((lsn(0), lsn(1))))
    }

    /// Give up the open target transaction (nothing of it is applied), and the one whose
    /// commit is unanswered (if it did commit, the recorded position says so).
    pub async fn rollback(&mut self) -> Result<(), SqlError> {
        self.done.clear();
        self.buffer.clear();
        self.run = None;
        self.writes = Writeset::default();
        self.last_writes = Writeset::default();
        self.sealed = None;
        self.in_txn = false;
        self.lane = None;
        for lane in &mut self.lanes {
            lane.inflight.clear();
            lane.commits = 0;
            lane.missing = 0;
            lane.script.clear();
            lane.script_expect.clear();
            // A PREPARE may have been skipped by the failed script: prepare afresh under new
            // names (tokio-postgres's own statements must survive, so no DEALLOCATE ALL; the
            // few left behind go with the session).
            lane.named.clear();
            if std::mem::take(&mut lane.open) {
                let _waiting = lane.wait_front();
                lane.client
                    .batch_execute("ROLLBACK")
                    .await
                    .map_err(|source| SqlError {
                        context: "rolling back the target transaction".into(),
                        source,
                    })?;
            }
        }
        Ok(())
    }
}
