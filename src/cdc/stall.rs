//! A target session that stopped answering: a connection that died, or a statement that is
//! only slow?
//!
//! The mirror of [`super::silence`] on the apply's side. A connection to the target that
//! something in between forgot (a firewall or security group change, a load balancer or
//! proxy restarted, a NAT entry dropped) is not closed either: the session waits for an answer
//! for as long as the kernel retransmits, a quarter of an hour by default. TCP keepalives do
//! not help while a request is unanswered, and `tcp_user_timeout` would also cut a session
//! waiting on a lock (see [`crate::pg::conn`]). Nor can the wait be timed on its own: an
//! update may wait on an application's lock for minutes, or a large batch take that long.
//!
//! So each apply session records how long pgcutover has been waiting for the answer to one
//! request ([`LaneWatch`]: a wait cancelled by another event and taken up again adds to it,
//! the time in between does not count, since the answer may have come in unread then). It
//! is measured where pgcutover waits, not on the socket: beneath TLS the bytes say nothing,
//! and an answer to an earlier request says nothing of the one waited for. Once the wait is
//! longer than `replication.receive_timeout`, [`watch`] asks the target, on a new connection,
//! about that session's backend, twice, [`super::silence::gap`] apart. The verdict
//! ([`judge`]) is *dead* when the backend is gone (the target ended it), when it is idle in
//! both reads with the same `state_change` (it waits for pgcutover's next request while
//! pgcutover waits for its answer: the request or the answer was lost on the way; it is ended,
//! so that the locks of its open transaction go at once), or when the target does not answer
//! a new connection either. Anything else, a backend that is running, one that changed
//! state between the reads, a role that may not see it, a target that answers but refuses the
//! connection, is *alive*, and the wait goes on (asked about again after another timeout). A
//! dead verdict ends the session (transient: the apply reconnects and goes on from the
//! target's recorded position), and the next session first ends every backend of the one
//! given up ([`end_stale`]): the others were behind the same silent path, and an open
//! transaction of theirs would hold locks the new sessions need.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::pg::conn::ConnInfo;
use crate::status::StatusBoard;

/// How long one read of the probe may take on the new connection.
const READ_LIMIT: Duration = Duration::from_secs(10);

/// One apply session's backend, and how long pgcutover has been waiting for its answer.
#[derive(Debug)]
pub struct LaneWatch {
    pub backend: Backend,
    waiting: Mutex<Waiting>,
}

/// A target backend, told apart from a later one that reuses its pid.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backend {
    pub pid: i32,
    pub started: String,
}

#[derive(Debug)]
struct Waiting {
    /// The request waited for (by its number on the session), since when (moved on by the
    /// time no wait on it was under way: only time spent waiting counts), when the last wait
    /// on it ended, and how many waits on it are under way.
    request: u64,
    since: Instant,
    paused_at: Option<Instant>,
    waiters: usize,
}

impl LaneWatch {
    pub fn new(backend: Backend) -> Arc<LaneWatch> {
        Arc::new(LaneWatch {
            backend,
            waiting: Mutex::new(Waiting {
                request: u64::MAX,
                since: Instant::now(),
                paused_at: None,
                waiters: 0,
            }),
        })
    }

    /// pgcutover waits for the answer to `request` until the guard is dropped. Waiting for
    /// the same request again later (a wait cancelled by another event and taken up again)
    /// adds to the time already waited for it; the time in between does not count (the
    /// answer may have come in then, unread).
    pub fn wait_for(self: &Arc<Self>, request: u64) -> WaitGuard {
        let mut w = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if w.request != request {
            w.request = request;
            w.since = now;
            w.paused_at = None;
        } else if let Some(paused) = w.paused_at.take() {
            w.since += now - paused;
        }
        w.waiters += 1;
        WaitGuard(self.clone())
    }

    /// How long pgcutover has been waiting for this session's answer, if it is waiting now.
    pub fn waited(&self) -> Option<Duration> {
        let w = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        (w.waiters > 0).then(|| w.since.elapsed())
    }
}

/// A wait for an answer under way (see [`LaneWatch::wait_for`]).
pub struct WaitGuard(Arc<LaneWatch>);

impl Drop for WaitGuard {
    fn drop(&mut self) {
        let mut w = self.0.waiting.lock().unwrap_or_else(|e| e.into_inner());
        w.waiters = w.waiters.saturating_sub(1);
        if w.waiters == 0 {
            w.paused_at = Some(Instant::now());
        }
    }
}

/// What the target showed of a backend: its `state` (`None` when the role may not see it)
/// and `state_change`.
#[derive(Clone, Debug, PartialEq)]
pub struct Seen {
    pub state: Option<String>,
    pub state_change: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    Alive,
    Dead { why: String },
}

/// The verdict from two reads of a session's backend, `gap` apart (`None`: no such backend).
pub fn judge(pid: i32, first: Option<Seen>, second: Option<Seen>, gap: Duration) -> Verdict {
    let (Some(a), Some(b)) = (first, second) else {
        return Verdict::Dead {
            why: format!("the target ended its session (pid {pid})"),
        };
    };
    let idle = |s: &Seen| s.state.as_deref().is_some_and(|s| s.starts_with("idle"));
    if idle(&a) && idle(&b) && a.state_change.is_some() && a.state_change == b.state_change {
        return Verdict::Dead {
            why: format!(
                "its session (pid {pid}) stayed idle for {:.1} s, waiting for a request that \
                 pgcutover had sent, or having sent an answer that never came: the connection \
                 is broken (the session is ended, which rolls back its transaction)",
                gap.as_secs_f64()
            ),
        };
    }
    Verdict::Alive
}

/// Wait until one of the sessions has waited longer than `timeout` for an answer and the
/// target says it is dead (see the module's docs); returns why. Never returns while every
/// session answers.
pub async fn watch(
    target: ConnInfo,
    lanes: Vec<Arc<LaneWatch>>,
    timeout: Duration,
    status: &StatusBoard,
) -> String {
    let every = super::silence::wakeup(timeout);
    let gap = super::silence::gap(timeout);
    let mut next = every;
    loop {
        tokio::time::sleep(next).await;
        next = every;
        let Some((lane, waited)) = lanes
            .iter()
            .filter_map(|l| l.waited().map(|w| (l, w)))
            .find(|(_, w)| *w >= timeout)
        else {
            continue;
        };
        tracing::info!(
            pid = lane.backend.pid,
            waited_secs = waited.as_secs_f64(),
            "an apply session has not answered for a while; asking the target about it"
        );
        status.cdc_target_probed();
        // Still waiting for the same answer? (It may have come in during the probe.)
        let still_waiting = || lane.waited().filter(|w| *w >= waited);
        let verdict = probe(&target, &lane.backend, gap, || still_waiting().is_some()).await;
        // A session found alive (waiting on a lock, say) is asked about again only after
        // another `timeout`, however long it waits.
        next = timeout;
        if let Verdict::Dead { why } = verdict
            && let Some(now) = still_waiting()
        {
            return format!(
                "the target sent nothing for {:.0} s to a request, and {why}",
                now.as_secs_f64()
            );
        }
    }
}

/// Ask the target about a backend twice, `gap` apart, and end it when it is dead and
/// pgcutover still waits for its answer.
async fn probe(
    target: &ConnInfo,
    backend: &Backend,
    gap: Duration,
    still_waiting: impl Fn() -> bool,
) -> Verdict {
    let unreachable = |e: String| Verdict::Dead {
        why: format!("the target does not answer a new connection either ({e})"),
    };
    let client = match tokio::time::timeout(READ_LIMIT, target.connect("pgcutover-probe")).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) if e.server_answered() => {
            tracing::warn!(error = %e, "an apply session has not answered for a while, and \
                the target refused a connection to ask about it; waiting on");
            return Verdict::Alive;
        }
        Ok(Err(e)) => return unreachable(e.to_string()),
        Err(_) => return unreachable("no answer within 10 s".into()),
    };
    let read = async || {
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] =
            [&backend.pid, &backend.started];
        let q = client.query_opt(
            "SELECT state, state_change::text FROM pg_catalog.pg_stat_activity \
              WHERE pid = $1 AND backend_start::text = $2",
            &params,
        );
        match tokio::time::timeout(READ_LIMIT, q).await {
            Ok(Ok(row)) => Ok(row.map(|r| Seen {
                state: r.get(0),
                state_change: r.get(1),
            })),
            Ok(Err(e)) => Err(crate::pg::error_text(&e)),
            Err(_) => Err("no answer within 10 s".into()),
        }
    };
    let first = match read().await {
        Ok(seen) => seen,
        Err(e) => return unreachable(e),
    };
    tokio::time::sleep(gap).await;
    let second = match read().await {
        Ok(seen) => seen,
        Err(e) => return unreachable(e),
    };
    let verdict = judge(backend.pid, first, second, gap);
    if matches!(verdict, Verdict::Dead { .. }) && still_waiting() {
        // Its locks go now; the next session ends it otherwise (see `end_stale`).
        end(&client, backend).await;
    }
    verdict
}

/// End a backend if it is still there: whether it was ended (`Some(false)`: it was gone
/// already; `None`: the target could not be asked).
async fn end(client: &tokio_postgres::Client, backend: &Backend) -> Option<bool> {
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&backend.pid, &backend.started];
    let q = client.execute(
        "SELECT pg_catalog.pg_terminate_backend(pid) FROM pg_catalog.pg_stat_activity \
          WHERE pid = $1 AND backend_start::text = $2",
        &params,
    );
    match tokio::time::timeout(READ_LIMIT, q).await {
        Ok(Ok(n)) => Some(n > 0),
        _ => None,
    }
}

/// End the backends of a session that was given up because one of them stopped answering
/// (the others are behind the same silent path, and their open transactions would hold locks
/// the new sessions need until the target's own keepalives noticed, two hours by default).
/// Those ended, or gone, leave the list; the others are tried again by the next session.
pub async fn end_stale(client: &tokio_postgres::Client, stale: &mut Vec<Backend>) {
    let mut left = Vec::new();
    for b in stale.drain(..) {
        match end(client, &b).await {
            Some(true) => {
                tracing::info!(pid = b.pid, "ended a session of the apply given up earlier")
            }
            Some(false) => {}
            None => left.push(b),
        }
    }
    *stale = left;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(state: &str, change: &str) -> Option<Seen> {
        Some(Seen {
            state: Some(state.into()),
            state_change: Some(change.into()),
        })
    }

    #[test]
    fn only_a_session_idle_through_the_gap_or_gone_is_dead() {
        let gap = Duration::from_secs(2);
        let dead = |v: Verdict| matches!(v, Verdict::Dead { .. });
        // Idle, unchanged: the request or the answer was lost.
        for state in [
            "idle",
            "idle in transaction",
            "idle in transaction (aborted)",
        ] {
            let v = judge(7, seen(state, "t1"), seen(state, "t1"), gap);
            let Verdict::Dead { why } = v else {
                panic!("{state}: {v:?}")
            };
            assert!(why.contains("pid 7") && why.contains("2.0 s"), "{why}");
        }
        // Gone.
        assert!(dead(judge(7, seen("idle", "t1"), None, gap)));
        assert!(dead(judge(7, None, None, gap)));
        // Running (a lock wait, a long statement), or it moved between the reads.
        assert!(!dead(judge(
            7,
            seen("active", "t1"),
            seen("active", "t1"),
            gap
        )));
        assert!(!dead(judge(
            7,
            seen("idle", "t1"),
            seen("active", "t2"),
            gap
        )));
        assert!(!dead(judge(7, seen("idle", "t1"), seen("idle", "t2"), gap)));
        // A role that may not see it cannot tell: left alone.
        let hidden = Some(Seen {
            state: None,
            state_change: None,
        });
        assert!(!dead(judge(7, hidden.clone(), hidden, gap)));
    }

    #[test]
    fn only_time_spent_waiting_for_the_same_answer_counts() {
        let ms = Duration::from_millis;
        let lane = LaneWatch::new(Backend {
            pid: 1,
            started: "x".into(),
        });
        assert_eq!(lane.waited(), None);
        let g = lane.wait_for(1);
        std::thread::sleep(ms(5));
        drop(g);
        assert_eq!(lane.waited(), None, "no wait under way");
        // A pause of 300 ms, then the same answer waited for again (a wait cancelled by
        // another event): the 5 ms count, the pause does not.
        std::thread::sleep(ms(300));
        let g = lane.wait_for(1);
        let waited = lane.waited().unwrap();
        assert!(waited >= ms(5) && waited < ms(300), "{waited:?}");
        // Two waits at once: under way until both end.
        let g2 = lane.wait_for(1);
        drop(g);
        assert!(lane.waited().is_some(), "one wait still under way");
        drop(g2);
        assert_eq!(lane.waited(), None);
        // Another request: timed afresh.
        std::thread::sleep(ms(300));
        let _g = lane.wait_for(2);
        assert!(lane.waited().unwrap() < ms(300));
    }
}
