//! Silence on the change stream: a connection that died, or a walsender busy reading WAL?
//!
//! A connection that a firewall, a NAT gateway or a failover forgot is not closed: no reset
//! ever arrives, and a reader waits on it for as long as the kernel keeps retransmitting
//! (a quarter of an hour by default) while the lag grows. The stream cannot be timed on its
//! own, because a healthy walsender may send nothing for minutes while it reads through WAL
//! with nothing to publish (a bulk load of unpublished tables, a long transaction not yet
//! committed). PostgreSQL's own subscriber pings the walsender then, and gives up when no
//! answer comes; pgcutover asks the source instead, on a connection of its own, which also
//! sees the other direction (whether the source still hears this stream) and whether
//! another session holds the slot.
//!
//! When the stream has received nothing for `replication.receive_timeout` (not even the
//! heartbeat the daemon writes every second), a probe opens a new connection to the source
//! and reads the slot's walsender and the time stamp of the last status update it received
//! from this stream, twice, [`gap`] apart. The stream sends an update at least every
//! [`wakeup`] while it receives nothing, so on a live connection the stamp moves between
//! the two reads. The verdict ([`judge`]) is *dead* when the slot has no walsender any more
//! (the source ended its side, after `wal_sender_timeout`), when another session holds it,
//! when the stamp did not move although the walsender was waiting at the second read, where
//! it reads the stream's updates (the source hears nothing from this stream: its walsender is
//! ended, so that the reconnect can take the slot at once, even with `wal_sender_timeout`
//! off), or when the source cannot be reached on a new connection either. Anything else, a
//! stamp the role may not see and a source that answers but refuses the probe's connection
//! (out of connection slots) included, is *alive*, and the stream is left alone. So is a
//! stamp that stood still while the walsender was busy on the CPU or on I/O: spilling a large
//! transaction to disk or reading it back takes it away from its socket for longer than the
//! probe's gap on a loaded machine (a test's walsender did, and was ended). A probe
//! never ends a stream that the source still hears, so a walsender busy for an hour is never
//! restarted (it would start reading again from the slot's restart point). An event from
//! the stream cancels a probe under way; the session goes on applying meanwhile.

use std::time::Duration;

use crate::pg::conn::ConnInfo;
use crate::pg::slot::{self, SlotSender};

/// How long one read of the probe may take on the new connection.
const READ_LIMIT: Duration = Duration::from_secs(10);

/// How often the stream sends a status update while it receives nothing: a quarter of the
/// receive timeout, between 250 ms and 5 s (the status updates also keep the source's
/// `wal_sender_timeout` from firing).
pub fn wakeup(receive_timeout: Duration) -> Duration {
    (receive_timeout / 4).clamp(Duration::from_millis(250), Duration::from_secs(5))
}

/// Time between the probe's two reads: two status updates at least.
pub fn gap(receive_timeout: Duration) -> Duration {
    wakeup(receive_timeout) * 2 + Duration::from_millis(200)
}

#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    Alive,
    Dead {
        why: String,
        /// The slot's walsender, which hears nothing from the stream: end it.
        stale_pid: Option<i32>,
    },
}

/// The verdict from two reads of the slot's walsender, `gap` apart.
pub fn judge(first: Option<SlotSender>, second: Option<SlotSender>, gap: Duration) -> Verdict {
    let dead = |why: String, stale_pid| Verdict::Dead { why, stale_pid };
    let Some(now) = second else {
        return dead("the slot is no longer on the source".into(), None);
    };
    let Some(pid) = now.pid else {
        return dead(
            "the source has no walsender on the slot any more (it ended the stream's session)"
                .into(),
            None,
        );
    };
    let before = first.and_then(|f| f.pid);
    if before != Some(pid) {
        return dead(
            format!("another session (pid {pid}) streams from the slot now"),
            None,
        );
    }
    match (first.and_then(|f| f.reply_time), now.reply_time) {
        (Some(a), Some(b)) if a == b && now.waiting => dead(
            format!(
                "the source received nothing from the stream in {:.1} s (its walsender, pid \
                 {pid}, is ended so that the slot is free again)",
                gap.as_secs_f64()
            ),
            Some(pid),
        ),
        _ => Verdict::Alive,
    }
}

/// Ask the source, on a connection of its own, whether it still hears the stream from `slot`
/// (see the module's docs); ends the slot's walsender when it does not.
pub async fn probe(source: ConnInfo, slot: String, gap: Duration) -> Verdict {
    let unreachable = |e: String| Verdict::Dead {
        why: format!("the source does not answer a new connection either ({e})"),
        stale_pid: None,
    };
    let client = match tokio::time::timeout(READ_LIMIT, source.connect("pgcutover-probe")).await {
        Ok(Ok(c)) => c,
        // The source answered (too many connections, say): the way to it works, and nothing
        // says the stream does not.
        Ok(Err(e)) if e.server_answered() => {
            tracing::warn!(error = %e, "the change stream received nothing, and the source \
                refused a connection to ask about it; leaving the stream as it is");
            return Verdict::Alive;
        }
        Ok(Err(e)) => return unreachable(e.to_string()),
        Err(_) => return unreachable("no answer within 10 s".into()),
    };
    let read =
        async || match tokio::time::timeout(READ_LIMIT, slot::slot_sender(&client, &slot)).await {
            Ok(Ok(seen)) => Ok(seen),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("no answer within 10 s".into()),
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
    let verdict = judge(first, second, gap);
    if let Verdict::Dead {
        stale_pid: Some(pid),
        ..
    } = &verdict
    {
        let ended = tokio::time::timeout(
            READ_LIMIT,
            client.execute("SELECT pg_terminate_backend($1)", &[pid]),
        )
        .await;
        if !matches!(ended, Ok(Ok(_))) {
            tracing::warn!(%slot, pid, "could not end the walsender that no longer hears the \
                stream; the reconnect waits until the source ends it (wal_sender_timeout)");
        }
    }
    verdict
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(pid: Option<i32>, reply_time: Option<f64>) -> Option<SlotSender> {
        Some(SlotSender {
            pid,
            reply_time,
            waiting: true,
        })
    }

    fn busy(pid: Option<i32>, reply_time: Option<f64>) -> Option<SlotSender> {
        Some(SlotSender {
            pid,
            reply_time,
            waiting: false,
        })
    }

    #[test]
    fn only_a_source_that_hears_the_stream_keeps_it() {
        let gap = Duration::from_secs(2);
        let dead_with = |v: Verdict| match v {
            Verdict::Dead { stale_pid, why } => Some((stale_pid, why)),
            Verdict::Alive => None,
        };
        // The stamp moved: the source hears the stream, whatever the walsender is doing.
        assert_eq!(
            judge(seen(Some(7), Some(10.0)), seen(Some(7), Some(12.5)), gap),
            Verdict::Alive
        );
        // A role that may not see the walsender's statistics cannot tell: left alone.
        assert_eq!(
            judge(seen(Some(7), None), seen(Some(7), None), gap),
            Verdict::Alive
        );
        // The stamp stood still: nothing arrives from the stream; its walsender is ended.
        let (stale, why) = dead_with(judge(
            seen(Some(7), Some(10.0)),
            seen(Some(7), Some(10.0)),
            gap,
        ))
        .unwrap();
        assert_eq!(stale, Some(7));
        assert!(
            why.contains("received nothing") && why.contains("2.0 s"),
            "{why}"
        );
        // The stamp stood still while the walsender was busy (spilling or reading back a
        // large transaction, say): it may not have read its socket yet, so it is left alone;
        // once it waits again, a stamp that still stands still ends it.
        assert_eq!(
            judge(busy(Some(7), Some(10.0)), busy(Some(7), Some(10.0)), gap),
            Verdict::Alive
        );
        assert_eq!(
            judge(seen(Some(7), Some(10.0)), busy(Some(7), Some(10.0)), gap),
            Verdict::Alive
        );
        assert!(
            dead_with(judge(
                busy(Some(7), Some(10.0)),
                seen(Some(7), Some(10.0)),
                gap
            ))
            .is_some()
        );
        // The source ended its side: nothing to end.
        let (stale, why) =
            dead_with(judge(seen(Some(7), Some(10.0)), seen(None, None), gap)).unwrap();
        assert_eq!(stale, None);
        assert!(why.contains("no walsender"), "{why}");
        // Another session took the slot: never ended from here.
        for first in [seen(Some(7), Some(10.0)), seen(None, None), None] {
            let (stale, why) = dead_with(judge(first, seen(Some(9), Some(10.0)), gap)).unwrap();
            assert_eq!(stale, None);
            assert!(why.contains("pid 9"), "{why}");
        }
        // The slot is gone (the reconnect then says so, with what to do).
        assert!(dead_with(judge(seen(Some(7), Some(1.0)), None, gap)).is_some());
    }

    #[test]
    fn the_stream_reports_more_often_than_the_probe_looks() {
        for secs in [1, 3, 60, 600] {
            let timeout = Duration::from_secs(secs);
            assert!(gap(timeout) >= wakeup(timeout) * 2, "{secs}");
            assert!(wakeup(timeout) <= Duration::from_secs(5), "{secs}");
        }
        assert_eq!(wakeup(Duration::from_secs(1)), Duration::from_millis(250));
        assert_eq!(wakeup(Duration::from_secs(60)), Duration::from_secs(5));
    }
}
