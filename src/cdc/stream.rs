//! The replication stream, behind our own small interface.
//!
//! `pgwire-replication` carries the protocol (authentication, TLS, CopyBoth framing,
//! keepalive replies, standby status updates); this module hides it so the apply loop only
//! sees [`Event`]s and says which position is durable with [`Stream::confirm`]. The position
//! confirmed to the server never passes what the target has committed: the slot is opened with
//! that position as its acknowledged one, and only [`Stream::confirm`] raises it.

use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt;
use pgwire_replication::{ReplicationClient, ReplicationEvent};

use crate::pg::Lsn;
use crate::pg::conn::ConnInfo;
use crate::pg::slot::replication_config;

/// One item of the stream, in source WAL order.
#[derive(Debug)]
pub enum Event {
    Begin {
        final_lsn: Lsn,
        commit_ts: i64,
    },
    /// A pgoutput message other than Begin, Commit and logical messages (for [`super::decode`]).
    Data(Bytes),
    Commit {
        end_lsn: Lsn,
    },
    /// A `pg_logical_emit_message()`; transactional ones arrive between Begin and Commit.
    Message {
        transactional: bool,
        lsn: Lsn,
        prefix: String,
        content: Bytes,
    },
    /// The server has sent everything up to `wal_end`.
    KeepAlive {
        wal_end: Lsn,
    },
}

#[derive(Debug, thiserror::Error)]
#[error("replication stream from slot {slot}: {message}")]
pub struct StreamError {
    pub slot: String,
    pub message: String,
    /// A network failure or a server restart: opening the stream again may work.
    pub transient: bool,
}

impl StreamError {
    /// The slot is held by another session (SQLSTATE 55006, "replication slot … is active for
    /// PID …").
    pub fn slot_in_use(&self) -> bool {
        self.message.contains("55006") || self.message.contains("is active for PID")
    }

    /// The source removed WAL the slot still needs: the slot was invalidated because it held
    /// more than `max_slot_wal_keep_size` ("cannot read from logical replication slot" up to
    /// PostgreSQL 15, "can no longer get changes from replication slot" from 16), or a
    /// segment it needs is gone ("requested WAL segment … has already been removed", SQLSTATE
    /// 58P01). No retry can bring those changes back.
    pub fn slot_lost(&self) -> bool {
        slot_lost(&self.message)
    }

    /// The slot or the publication is gone from the source (dropped, or the source failed
    /// over to a server without them). SQLSTATE 42704 (undefined object) says it whatever
    /// the language of the server's messages.
    pub fn gone(&self) -> bool {
        let m = &self.message;
        m.contains("SQLSTATE 42704")
            || (m.contains("does not exist")
                && (m.contains("replication slot") || m.contains("publication")))
    }
}

fn slot_lost(message: &str) -> bool {
    message.contains("cannot read from logical replication slot")
        || message.contains("can no longer get changes from replication slot")
        || message.contains("has already been removed")
        || message.contains("SQLSTATE 58P01")
}

fn stream_error(slot: &str, e: pgwire_replication::PgWireError) -> StreamError {
    let message = e.to_string();
    // A slot or publication that is gone, a slot that lost its WAL, or credentials that no
    // longer work, will not come back by retrying; anything else (a dropped connection, a
    // restarting server, a slot still held by our previous session) may.
    let permanent = e.is_auth()
        || e.is_tls()
        || slot_lost(&message)
        || message.contains("does not exist")
        || message.contains("SQLSTATE 42704")
        || message.contains("permission denied")
        || message.contains("must be superuser or replication role");
    StreamError {
        slot: slot.to_string(),
        message,
        transient: !permanent,
    }
}

pub struct Stream {
    client: ReplicationClient,
    slot: String,
    /// An item taken by [`Stream::has_ready`], handed out by the next [`Stream::next`].
    peeked: Option<Result<Option<Event>, StreamError>>,
}

impl Stream {
    /// START_REPLICATION on `slot` from `start` (the last position the target committed),
    /// waiting until the server has accepted it. While it receives nothing, the stream sends
    /// the server a status update every `wakeup` (see [`super::silence`]).
    pub async fn open(
        conn: &ConnInfo,
        slot: &str,
        publication: &str,
        start: Lsn,
        wakeup: Duration,
    ) -> Result<Stream, StreamError> {
        let cfg = replication_config(conn, slot)
            .with_start_lsn(pgwire_replication::Lsn(start.0))
            .with_ack_lsn(pgwire_replication::Lsn(start.0))
            .with_status_interval(Duration::from_millis(100))
            .with_wakeup_interval(wakeup)
            .with_buffer_size(4096);
        let mut cfg = cfg;
        cfg.publication = publication.into();
        let err = |e: pgwire_replication::PgWireError| stream_error(slot, e);
        let mut client = ReplicationClient::connect(cfg).await.map_err(err)?;
        tokio::time::timeout(Duration::from_secs(60), client.wait_started())
            .await
            .map_err(|_| StreamError {
                slot: slot.to_string(),
                message: "the server did not start streaming within 60 s".into(),
                transient: true,
            })?
            .map_err(err)?;
        Ok(Stream {
            client,
            slot: slot.to_string(),
            peeked: None,
        })
    }

    fn convert(&self, ev: ReplicationEvent) -> Option<Event> {
        Some(match ev {
            ReplicationEvent::Begin {
                final_lsn,
                commit_time_micros,
                ..
            } => Event::Begin {
                final_lsn: Lsn(final_lsn.0),
                commit_ts: commit_time_micros,
            },
            ReplicationEvent::Commit { end_lsn, .. } => Event::Commit {
                end_lsn: Lsn(end_lsn.0),
            },
            ReplicationEvent::XLogData { data, .. } => Event::Data(data),
            ReplicationEvent::Message {
                transactional,
                lsn,
                prefix,
                content,
            } => Event::Message {
                transactional,
                lsn: Lsn(lsn.0),
                prefix,
                content,
            },
            ReplicationEvent::KeepAlive { wal_end, .. } => Event::KeepAlive {
                wal_end: Lsn(wal_end.0),
            },
            ReplicationEvent::StoppedAt { .. } => return None,
        })
    }

    fn convert_result(
        &self,
        r: pgwire_replication::Result<Option<ReplicationEvent>>,
    ) -> Option<Result<Option<Event>, StreamError>> {
        match r {
            Ok(Some(ev)) => self.convert(ev).map(|ev| Ok(Some(ev))),
            Ok(None) => Some(Ok(None)),
            Err(e) => Some(Err(stream_error(&self.slot, e))),
        }
    }

    /// The next event; `None` when the server ended the stream.
    pub async fn next(&mut self) -> Result<Option<Event>, StreamError> {
        if let Some(item) = self.peeked.take() {
            return item;
        }
        loop {
            let r = self.client.recv().await;
            if let Some(item) = self.convert_result(r) {
                return item;
            }
        }
    }

    /// The next event if one is ready now (`None`: [`Stream::next`] would wait).
    pub fn try_next(&mut self) -> Option<Result<Option<Event>, StreamError>> {
        if self.has_ready() {
            self.peeked.take()
        } else {
            None
        }
    }

    /// Whether [`Stream::next`] would answer without waiting (an event, the end, or an error).
    pub fn has_ready(&mut self) -> bool {
        if self.peeked.is_some() {
            return true;
        }
        // The receiver is a channel: polling it once and dropping the future loses nothing,
        // and whatever it yielded is kept for `next`.
        if let Some(r) = self.client.recv().now_or_never() {
            self.peeked = self.convert_result(r);
        }
        self.peeked.is_some()
    }

    /// Everything up to `lsn` is committed on the target: the server may forget it.
    pub fn confirm(&self, lsn: Lsn) {
        self.client
            .update_applied_lsn(pgwire_replication::Lsn(lsn.0));
    }

    /// End the stream (CopyDone) and wait briefly for the server to let go of the slot.
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(5), self.client.shutdown()).await;
        self.client.abort();
    }

    /// Drop a stream whose connection is dead, without waiting for an answer.
    pub fn abandon(mut self) {
        self.client.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgwire_replication::PgWireError;

    #[test]
    fn a_slot_that_lost_its_wal_is_not_retried() {
        let lost = [
            "cannot read from logical replication slot \"m\" (SQLSTATE 55000)",
            "can no longer get changes from replication slot \"m\" (SQLSTATE 55000)",
            "requested WAL segment 000000010000000000000003 has already been removed \
             (SQLSTATE 58P01)",
        ];
        for message in lost {
            let e = stream_error("m", PgWireError::Server(message.into()));
            assert!(e.slot_lost() && !e.transient, "{message}");
        }
        let busy = stream_error(
            "m",
            PgWireError::Server(
                "replication slot \"m\" is active for PID 7 (SQLSTATE 55006)".into(),
            ),
        );
        assert!(busy.slot_in_use() && busy.transient && !busy.slot_lost());
        let gone = stream_error(
            "m",
            PgWireError::Server("replication slot \"m\" does not exist (SQLSTATE 42704)".into()),
        );
        assert!(!gone.transient && !gone.slot_lost() && gone.gone());
        let role = stream_error(
            "m",
            PgWireError::Server("role \"app\" does not exist (SQLSTATE 28000)".into()),
        );
        assert!(!role.transient && !role.gone());
        // A server speaking another language is still understood by its SQLSTATE.
        let localized = stream_error(
            "m",
            PgWireError::Server(
                "le slot de réplication « m » n'existe pas (SQLSTATE 42704)".into(),
            ),
        );
        assert!(!localized.transient && localized.gone());
        let io = stream_error(
            "m",
            PgWireError::Io(std::io::Error::from(std::io::ErrorKind::ConnectionReset).into()),
        );
        assert!(io.transient && !io.slot_lost());
    }
}
