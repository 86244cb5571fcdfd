//! One target session of the apply ([`Lane`]): its prepared statements, the script it is
//! building, and the requests sent on it and not answered yet, read back in order.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio_postgres::{Client, Statement};

use super::Committed;
use super::sql::StmtKey;
use crate::cdc::relation::RelInfo;
use crate::cdc::stall::{Backend, LaneWatch, WaitGuard};
use crate::pg::{Lsn, SqlError};

/// How long [`flush_moves`] waits for the target to flush a commit.
pub(super) const FLUSH_PROBE: std::time::Duration = std::time::Duration::from_secs(5);

/// The target's WAL insert and flush positions.
const POSITIONS_SQL: &str = "SELECT pg_catalog.pg_current_wal_insert_lsn()::text, \
                                    pg_catalog.pg_current_wal_flush_lsn()::text";

/// Whether the target's WAL flush position reaches an asynchronous commit made now, within
/// [`FLUSH_PROBE`], asked on a session of its own (`client`, from
/// [`crate::pg::conn::ConnInfo::connect`], closed after). PostgreSQL flushes an asynchronous
/// commit within three `wal_writer_delay`s; a server that reports a flush position that never
/// moves (a PostgreSQL-compatible service can) would hold every confirmation to the source
/// back, and the source would keep its WAL without end. The apply does not wait for the
/// answer (up to `wal_writer_delay`, 200 ms by default, on every start and reconnect): its
/// sessions commit synchronously until the answer is yes.
pub(super) async fn flush_moves(client: Client) -> bool {
    let probe = async {
        client
            .batch_execute("SET synchronous_commit = off")
            .await
            .ok()?;
        let positions = client.prepare(POSITIONS_SQL).await.ok()?;
        let read = |i: usize| {
            let (client, positions) = (&client, &positions);
            async move {
                let row = client.query_one(positions, &[]).await.ok()?;
                row.get::<_, String>(i).parse::<Lsn>().ok()
            }
        };
        // Everything written so far, then an asynchronous commit of nothing (an xid makes the
        // transaction write a commit record), which the server flushes, with all before it,
        // even if nothing else happens. (The position after it could include other sessions'
        // WAL that an idle server leaves unflushed.)
        let written = read(0).await?;
        client
            .batch_execute("SELECT pg_catalog.txid_current()")
            .await
            .ok()?;
        let deadline = tokio::time::Instant::now() + FLUSH_PROBE;
        while tokio::time::Instant::now() < deadline {
            match read(1).await? {
                flushed if flushed >= written && flushed > Lsn::ZERO => return Some(true),
                _ => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
            }
        }
        Some(false)
    };
    // A server that stops answering is not waited for beyond the probe's own time.
    tokio::time::timeout(FLUSH_PROBE * 2, probe)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

/// What a statement is about: the rows it must touch (updates and deletes; 0 for the rest)
/// and the tables it changes, named in errors and warnings.
pub(super) type Expect = Option<(u64, Subject)>;

#[derive(Clone)]
pub(super) enum Subject {
    Table(Arc<RelInfo>),
    /// Several tables at once (a TRUNCATE), already named.
    Tables(Arc<str>),
}

impl Subject {
    pub(super) fn name(&self) -> String {
        match self {
            Subject::Table(rel) => rel.table.display_plain(),
            Subject::Tables(names) => names.to_string(),
        }
    }
}

/// A request's answer: each statement's row count, or where it failed and why.
pub(super) type Pending =
    Pin<Box<dyn Future<Output = Result<Vec<u64>, (usize, tokio_postgres::Error)>> + Send>>;

pub(super) struct InFlight {
    pub(super) fut: Pending,
    /// Its number on the session (see [`crate::cdc::stall::LaneWatch`]).
    pub(super) seq: u64,
    /// One per statement of the request.
    pub(super) expect: Vec<Expect>,
    /// The request that ends a batch's commit (the COMMIT, or the WAL-position read after
    /// it, whose two answers are the positions): once it is answered, the batch is in.
    pub(super) ends_commit: Option<EndsCommit>,
}

pub(super) struct EndsCommit {
    pub(super) totals: Committed,
    pub(super) answers_positions: bool,
}

/// One target session: its prepared statements and the requests in flight on it.
pub(super) struct Lane {
    pub(super) client: Arc<Client>,
    pub(super) begin: Statement,
    pub(super) commit: Statement,
    pub(super) progress: Statement,
    /// The target's WAL insert and flush positions ([`POSITIONS_SQL`]), read after each
    /// commit once this session commits asynchronously; `None` while its commits are
    /// synchronous (durable once answered).
    pub(super) wal_positions: Option<Statement>,
    /// The same statement, prepared when the session opened; `None` when the target does not
    /// offer those functions, and then commits stay synchronous.
    pub(super) positions: Option<Statement>,
    /// Commits become asynchronous at this session's next batch (see
    /// [`super::Applier::asynchronous_commits`]).
    pub(super) go_async: bool,
    pub(super) inflight: VecDeque<InFlight>,
    /// A transaction is open on this session (BEGIN sent, its COMMIT not answered).
    pub(super) open: bool,
    /// Commits sent on this session and not answered yet.
    pub(super) commits: usize,
    /// Rows not found by statements answered since this session's last answered commit.
    pub(super) missing: u64,
    /// Server-side prepared statements for single-row changes (run by name in scripts)…
    pub(super) named: HashMap<StmtKey, String>,
    /// …and extended-protocol statements for multi-row runs, per table shape.
    pub(super) extended: HashMap<StmtKey, Statement>,
    /// Statements prepared in this session so far (names are never reused).
    pub(super) prepared: u64,
    /// The script being built, and one expectation per statement in it.
    pub(super) script: String,
    pub(super) script_expect: Vec<Expect>,
    /// The session's backend, and how long pgcutover has been waiting for its answer.
    pub(super) watch: Arc<LaneWatch>,
    /// Requests numbered so far.
    pub(super) requests: u64,
}

impl Lane {
    /// A number for the next request (or wait) on this session.
    pub(super) fn next_seq(&mut self) -> u64 {
        self.requests += 1;
        self.requests
    }

    /// pgcutover waits for the answer to the oldest request in flight (or, with nothing in
    /// flight, for some other answer) until the guard is dropped.
    pub(super) fn wait_front(&mut self) -> WaitGuard {
        let seq = match self.inflight.front() {
            Some(f) => f.seq,
            None => self.next_seq(),
        };
        self.watch.wait_for(seq)
    }

    /// Poll the oldest request in flight; once it is answered, its answer is kept for
    /// [`Applier::settle_one`] to read. Ready when nothing is in flight.
    pub(super) fn poll_front(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let Some(front) = self.inflight.front_mut() else {
            return Poll::Ready(());
        };
        match front.fut.as_mut().poll(cx) {
            Poll::Ready(answer) => {
                front.fut = Box::pin(std::future::ready(answer));
                Poll::Ready(())
            }
            Poll::Pending => Poll::Pending,
        }
    }

    /// Prepare a session. The client must come from [`crate::pg::conn::ConnInfo::connect`].
    pub(super) async fn open(client: Client) -> Result<Lane, SqlError> {
        let ctx = |what: &'static str| {
            move |source| SqlError {
                context: what.into(),
                source,
            }
        };
        client
            // pg_catalog only: type names come out schema-qualified, and no object of the
            // application's schemas can capture an unqualified name of ours.
            // Index lookups like PostgreSQL's own apply: a batch that updates a small hot
            // table many times leaves many row versions, which a sequential scan would
            // revisit on every statement.
            // No JIT: a scan that cannot use an index (a REPLICA IDENTITY FULL table without
            // one) is costed above 10^10 once seqscans are "disabled", far past every JIT
            // threshold, and each of its single-row statements then spent about 100 ms
            // compiling and inlining code it used once.
            .batch_execute(
                "SET search_path = pg_catalog; SET session_replication_role = replica; \
                 SET enable_seqscan = off; SET jit = off",
            )
            .await
            .map_err(ctx(
                "setting session_replication_role = replica on the target (the target role \
                 must be a superuser, rds_superuser on RDS/Aurora, or granted SET ON \
                 PARAMETER session_replication_role)",
            ))?;
        let begin = client
            .prepare("BEGIN")
            .await
            .map_err(ctx("preparing BEGIN"))?;
        let commit = client
            .prepare("COMMIT")
            .await
            .map_err(ctx("preparing COMMIT"))?;
        let progress = client
            .prepare(crate::cdc::progress::RECORD_SQL)
            .await
            .map_err(ctx("preparing the progress update"))?;
        // Commits need not wait for the target's disk: the position confirmed to the source
        // can wait instead, until the target reports the commit flushed (like PostgreSQL's own
        // apply worker). The session starts synchronous (whatever the database's default) and
        // switches once [`flush_moves`] has seen the flush position follow a commit; where the
        // target hides its WAL positions, commits stay synchronous.
        let positions = match client.prepare(POSITIONS_SQL).await {
            Ok(stmt) if client.query_one(&stmt, &[]).await.is_ok() => Some(stmt),
            _ => {
                tracing::info!(
                    "the target does not report its WAL positions; commits are synchronous"
                );
                None
            }
        };
        let backend = client
            .query_one(
                "SELECT pg_backend_pid(), backend_start::text FROM pg_stat_activity \
                  WHERE pid = pg_backend_pid()",
                &[],
            )
            .await
            .map_err(ctx("reading the target session's backend"))?;
        let watch = LaneWatch::new(Backend {
            pid: backend.get(0),
            started: backend.get(1),
        });
        client
            .batch_execute("SET synchronous_commit = on")
            .await
            .map_err(ctx("setting synchronous_commit on the target"))?;
        Ok(Lane {
            client: Arc::new(client),
            begin,
            commit,
            progress,
            wal_positions: None,
            positions,
            go_async: false,
            inflight: VecDeque::new(),
            open: false,
            commits: 0,
            missing: 0,
            named: HashMap::new(),
            extended: HashMap::new(),
            prepared: 0,
            script: String::new(),
            script_expect: Vec::new(),
            watch,
            requests: 0,
        })
    }
}
