//! The replication stream, behind our own small interface.
//!
//! The apply loop only sees [`Event`]s and says which position is durable with
//! [`Stream::confirm`]. The position confirmed to the server never passes what the target
//! has committed: status updates carry only what [`Stream::confirm`] was told.
//!
//! Two halves:
//! * a **reader task** owns the connection ([`crate::pg::wire`]). It reads the socket in
//!   chunks of up to 256 kB, cuts them after their last whole message, and hands each chunk
//!   on whole (one channel hop per chunk, not per message). It answers the server's
//!   keepalives, and sends a status update when a confirmed position is 100 ms old and at
//!   least every `wakeup` otherwise (so the source's `wal_sender_timeout` never fires, and
//!   [`super::silence`] sees the stream alive), even while the apply is busy elsewhere;
//! * the **[`Stream`]** the session reads: it cuts the chunks into messages without copying
//!   them ([`Event::Data`] is a slice of the chunk).
//!
//! **Reading ahead, by the byte.** The reader hands chunks on until the session holds
//! [`READ_AHEAD`] bytes (32 MB) it has not taken; the budget is a semaphore of one permit a
//! byte, taken by the reader for each chunk and given back when the session takes it. It
//! was 64 chunks (16 MB at most, a few MB with the short window below). A timeline of bulk
//! catch-ups after a pgbench run showed the walsender waiting on its socket and the daemon
//! idle while an apply session waited (on a lock, on a WAL write) and a core idled: the
//! daemon takes no chunks while its apply sessions have all they can queue, and 64 chunks
//! were soon full. With room for a second or so of stream the walsender works through such
//! stalls: in alternating catch-ups the idle core-seconds fell from 0.62–1.86 (mean 1.02,
//! eleven catch-ups) to 0.55–0.92 (mean 0.70, five; BENCHMARKS.md, session 30).
//! Counting bytes rather than chunks also bounds the memory whatever the chunks' size.
//!
//! **No low-water mark.** When the walsender is the slowest stage, a reader that empties
//! the socket is woken by nearly every message it sends (tens of thousands of wake-ups per
//! million changes). Asking the kernel to wake the reader only once 16 or 64 kB wait
//! (`SO_RCVLOWAT`, raised while the transactions arriving were old, with a 10 ms patience)
//! cut the wake-ups 2–12-fold, but the walsender then took 40–80 % more CPU for the same
//! backlog and the catch-ups were no shorter (BENCHMARKS.md, session 21). Its profile says
//! why: with data left waiting *in an open window*, each of its sends puts a segment of its
//! own on the wire, and over loopback the delivery runs inside that send too, on the
//! process that sets the pace.
//!
//! **A short window and a nap, on a short round trip.** What does make the walsender
//! cheaper is a *closed* window: then the kernel only appends each message to the socket's
//! queue, and the queue goes out later in large segments as the reader's reads reopen the
//! window (that work runs in the reader's system calls). The native worker, feeding an
//! apply slower than its walsender, keeps the window closed; against it pgcutover's
//! walsender took 1.08–1.54× the CPU for the same backlog (session 25). So on a connection
//! whose round trip is under a millisecond (the same machine or a local network) the stream
//! bounds the socket's receive buffer to [`RECEIVE_WINDOW`] ([`Conn::bound_receive_window`]),
//! and after a read of 8 kB or more (a stream in full flow, not a live trickle) the reader
//! naps before it reads again, while the walsender fills the window. A live transaction
//! waits for no nap (its reads are small); over a longer round trip the window is left to
//! the kernel and the reader never naps.
//!
//! **The nap, steered by the segments.** How long to nap depends on how fast the walsender
//! runs, which depends on the CPU it gets. Too short, and the reader reopens the window
//! before the walsender has queued anything: its messages then cross in segments of their
//! own. A fixed millisecond did that for most of the stream when the walsender was the slow
//! side (98 000–311 000 segments of 485–1 581 bytes for 151 MB, against the native worker's
//! 2 700–3 000 of 50 kB; the walsender's CPU rose with their number, 5.7 to 7.2 s). Too
//! long, and the reader caps the stream below what the apply takes (3 ms: the cores idle
//! 2–5.6 core-seconds a catch-up). So the nap (`Pacer`) follows what TCP reports for the
//! connection ([`Conn::received_so_far`]): when the bytes that came since the last read
//! averaged under 4 kB a segment, the walsender was sending into an open window and the nap
//! grows by a quarter; otherwise they came out of its queue and the nap shrinks by a tenth,
//! so the reader stays at the pace where the walsender just keeps ahead, between 0.25 and
//! 4 ms (tokio's timer ends a sleep at its next millisecond tick, so a nap under a
//! millisecond lasts until that tick). In catch-up-only runs the walsender then sent
//! 4 500–27 000 segments (5.7–34 kB each) and took 0.86–0.89× the native worker's
//! walsender's CPU, against 1.06–1.36× with the fixed nap (BENCHMARKS.md, session 27).
//!
//! The window also caps the stream: the reader takes at most one window a nap, and a nap
//! lasts 2–4 ms on a busy machine, some 20–40 MB/s, about what a fast machine's apply takes.
//! A 256 kB window lifted the cap and the cores idled less, but the walsender then fell back
//! into small segments the nap could no longer prevent (up to 412 000 of 366 bytes for a
//! million changes) and the catch-ups were no faster; not kept (BENCHMARKS.md, session 29).
//! Reading on at once after a read that found half a window or more (the walsender's queue
//! behind it), up to 15 reads before the nap, lifted the cap where the apply is fast (on a
//! table with room for HOT updates the idle core-seconds of single catch-ups fell from a
//! median of 0.73 to 0.23), but it empties the walsender's queue, and what it sends next
//! crosses in segments of its own: in standard runs 74 000–152 000 segments of 1–2 kB
//! instead of 5 000–21 000 of 7–29 kB, the walsender's CPU up to 1.35× the native worker's,
//! and bulk ratios of 1.23× and 1.09×, also when it read on only while the session had taken
//! nearly all it was handed; not kept (BENCHMARKS.md, session 32).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Buf, Bytes};
use tokio::sync::{Notify, Semaphore, TryAcquireError, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::pg::Lsn;
use crate::pg::conn::ConnInfo;
use crate::pg::quote_ident;
use crate::pg::wire::{Conn, ErrorKind, WireError, frame_len, server_error};

/// A status update goes out once a newly confirmed position is this old.
const STATUS_INTERVAL: Duration = Duration::from_millis(100);
/// The receive buffer asked for on a short round trip (see the module's documentation;
/// the kernel doubles it for its bookkeeping).
pub const RECEIVE_WINDOW: usize = 64 * 1024;
/// A read at least this large shows a stream in full flow: the reader then naps (see the
/// module's documentation)…
const NAP_AFTER: usize = 8 * 1024;
/// …for this long at first, then as [`Pacer`] steers it…
const NAP_START: Duration = Duration::from_millis(1);
/// …within these bounds.
const NAP_MIN: Duration = Duration::from_micros(250);
const NAP_MAX: Duration = Duration::from_millis(4);
/// Segments that averaged fewer bytes than this since the last read were sent into an open
/// window, one message or a few each (the walsender's queue had nothing for the reopened
/// window); larger ones came out of its queue.
const SMALL_SEGMENT: u64 = 4096;
/// Bytes the reader may hold read and not yet taken by the session, by default (see the
/// module's documentation, "Reading ahead").
pub const READ_AHEAD: usize = 32 * 1024 * 1024;
/// Chunks read and not yet taken by the session: a bound for a trickle of small chunks
/// ([`READ_AHEAD`] bounds the bytes).
const CHUNKS_AHEAD: usize = 4096;

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

fn stream_error(slot: &str, e: WireError) -> StreamError {
    let message = e.message;
    // A slot or publication that is gone, a slot that lost its WAL, or credentials that no
    // longer work, will not come back by retrying; anything else (a dropped connection, a
    // restarting server, a slot still held by our previous session) may.
    let permanent = matches!(e.kind, ErrorKind::Auth | ErrorKind::Tls)
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

/// What the session and the reader share: the confirmed position, a bell for it, and the
/// bytes the reader may still read ahead (one permit a byte, `read_ahead` in all).
struct Shared {
    confirmed: AtomicU64,
    raised: Notify,
    ahead: Semaphore,
    read_ahead: usize,
}

impl Shared {
    /// The read-ahead permits a chunk of `len` bytes holds until the session takes it (all
    /// of them for a chunk larger than the budget, so that it still goes through).
    fn permits_for(&self, len: usize) -> u32 {
        len.min(self.read_ahead).min(u32::MAX as usize) as u32
    }
}

pub struct Stream {
    chunks: mpsc::Receiver<Result<Bytes, WireError>>,
    /// What is left of the chunk being read: whole messages only.
    chunk: Bytes,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    reader: JoinHandle<()>,
    slot: String,
    /// An item taken by [`Stream::has_ready`], handed out by the next [`Stream::next`].
    peeked: Option<Result<Option<Event>, StreamError>>,
}

impl Stream {
    /// START_REPLICATION on `slot` from `start` (the last position the target committed),
    /// waiting until the server has accepted it. While it receives nothing, the stream sends
    /// the server a status update every `wakeup` (see [`super::silence`]). The reader reads
    /// up to `read_ahead` bytes ahead of what the session has taken ([`READ_AHEAD`] in the
    /// daemon).
    pub async fn open(
        conn: &ConnInfo,
        slot: &str,
        publication: &str,
        start: Lsn,
        wakeup: Duration,
        read_ahead: usize,
    ) -> Result<Stream, StreamError> {
        let err = |e: WireError| stream_error(slot, e);
        let mut wire = Conn::connect(conn, "pgcutover").await.map_err(err)?;
        let sql = format!(
            "START_REPLICATION SLOT {} LOGICAL {start} (proto_version '1', \
             publication_names '{}', messages 'true')",
            quote_ident(slot),
            quote_ident(publication).replace('\'', "''")
        );
        tokio::time::timeout(Duration::from_secs(60), wire.start_copy_both(&sql))
            .await
            .map_err(|_| StreamError {
                slot: slot.to_string(),
                message: "the server did not start streaming within 60 s".into(),
                transient: true,
            })?
            .map_err(err)?;
        let bounded = wire.bound_receive_window(RECEIVE_WINDOW);
        tracing::debug!(
            bounded,
            receive_buffer = wire.receive_buffer(),
            "replication stream started"
        );
        let shared = Arc::new(Shared {
            confirmed: AtomicU64::new(start.0),
            raised: Notify::new(),
            ahead: Semaphore::new(read_ahead.clamp(1, Semaphore::MAX_PERMITS)),
            read_ahead: read_ahead.clamp(1, Semaphore::MAX_PERMITS),
        });
        let (tx, chunks) = mpsc::channel(CHUNKS_AHEAD);
        let (stop, stopped) = oneshot::channel();
        let reader = Reader {
            wire,
            tx,
            shared: shared.clone(),
            wakeup,
            sent: None,
            sent_at: Instant::now(),
            scanned: 0,
            reply_due: false,
            pacer: bounded.then(Pacer::new),
        };
        let reader = tokio::spawn(reader.run(stopped));
        Ok(Stream {
            chunks,
            chunk: Bytes::new(),
            shared,
            stop: Some(stop),
            reader,
            slot: slot.to_string(),
            peeked: None,
        })
    }

    /// The next event; `None` when the server ended the stream.
    pub async fn next(&mut self) -> Result<Option<Event>, StreamError> {
        if let Some(item) = self.peeked.take() {
            return item;
        }
        loop {
            if let Some(item) = self.cut() {
                return item;
            }
            // Cancel-safe: a chunk is either received whole or left in the channel.
            let chunk = self.chunks.recv().await;
            self.take_chunk(chunk);
        }
    }

    /// The next event if one is ready now (`None`: [`Stream::next`] would wait).
    pub fn try_next(&mut self) -> Option<Result<Option<Event>, StreamError>> {
        if let Some(item) = self.peeked.take() {
            return Some(item);
        }
        loop {
            if let Some(item) = self.cut() {
                return Some(item);
            }
            match self.chunks.try_recv() {
                Ok(chunk) => self.take_chunk(Some(chunk)),
                Err(mpsc::error::TryRecvError::Empty) => return None,
                Err(mpsc::error::TryRecvError::Disconnected) => self.take_chunk(None),
            }
        }
    }

    /// Whether [`Stream::next`] would answer without waiting (an event, the end, or an error).
    pub fn has_ready(&mut self) -> bool {
        if self.peeked.is_none() {
            self.peeked = self.try_next();
        }
        self.peeked.is_some()
    }

    /// Bytes the reader has read that the session has not taken yet (at most the
    /// `read_ahead` given to [`Stream::open`]).
    pub fn read_ahead_held(&self) -> usize {
        self.shared.read_ahead - self.shared.ahead.available_permits()
    }

    fn take_chunk(&mut self, chunk: Option<Result<Bytes, WireError>>) {
        match chunk {
            Some(Ok(bytes)) => {
                let permits = self.shared.permits_for(bytes.len());
                self.shared.ahead.add_permits(permits as usize);
                self.chunk = bytes;
            }
            Some(Err(e)) => self.peeked = Some(Err(stream_error(&self.slot, e))),
            None => {
                self.peeked = Some(Err(StreamError {
                    slot: self.slot.clone(),
                    message: "the stream's reader stopped".into(),
                    transient: true,
                }))
            }
        }
    }

    /// The next event of the current chunk, the stream's end, or an error; `None` when the
    /// chunk is used up (or the reader's error is waiting in `peeked`).
    fn cut(&mut self) -> Option<Result<Option<Event>, StreamError>> {
        if let Some(item) = self.peeked.take() {
            return Some(item);
        }
        while !self.chunk.is_empty() {
            let len = match frame_len(&self.chunk) {
                Ok(Some(len)) => len,
                // The reader only hands on whole messages.
                Ok(None) => {
                    return Some(Err(self.broken("a message cut short")));
                }
                Err(e) => return Some(Err(stream_error(&self.slot, e))),
            };
            let mut frame = self.chunk.split_to(len);
            let tag = frame[0];
            frame.advance(5);
            match tag {
                b'd' => match parse_copy_data(frame) {
                    Ok(Some(ev)) => return Some(Ok(Some(ev))),
                    Ok(None) => {}
                    Err(what) => return Some(Err(self.broken(what))),
                },
                b'E' => return Some(Err(stream_error(&self.slot, server_error(&frame)))),
                // CopyDone: the server ended the stream.
                b'c' => {
                    self.chunk.clear();
                    return Some(Ok(None));
                }
                // Notices and parameter changes.
                _ => {}
            }
        }
        None
    }

    fn broken(&self, what: &str) -> StreamError {
        stream_error(
            &self.slot,
            WireError::protocol(format!("malformed replication message: {what}")),
        )
    }

    /// Everything up to `lsn` is committed on the target: the server may forget it.
    pub fn confirm(&self, lsn: Lsn) {
        let before = self.shared.confirmed.fetch_max(lsn.0, Ordering::AcqRel);
        if lsn.0 > before {
            self.shared.raised.notify_one();
        }
    }

    /// End the stream (CopyDone) and wait briefly for the server to let go of the slot.
    pub async fn close(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if tokio::time::timeout(Duration::from_secs(5), &mut self.reader)
            .await
            .is_err()
        {
            self.reader.abort();
        }
    }

    /// Drop a stream whose connection is dead, without waiting for an answer.
    pub fn abandon(self) {
        self.reader.abort();
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

fn be_u64(b: &[u8]) -> u64 {
    u64::from_be_bytes(b[..8].try_into().expect("eight bytes"))
}

/// A CopyData's content: XLogData ('w') as an event, a keepalive ('k') as one too.
fn parse_copy_data(mut d: Bytes) -> Result<Option<Event>, &'static str> {
    match d.first() {
        Some(b'w') => {
            if d.len() < 25 {
                return Err("short XLogData header");
            }
            d.advance(25);
            parse_pgoutput(d).map(Some)
        }
        Some(b'k') => {
            if d.len() < 18 {
                return Err("short keepalive");
            }
            Ok(Some(Event::KeepAlive {
                wal_end: Lsn(be_u64(&d[1..])),
            }))
        }
        _ => Ok(None),
    }
}

/// Begin, Commit and logical messages become events of their own; anything else is
/// [`Event::Data`] for the decoder.
fn parse_pgoutput(d: Bytes) -> Result<Event, &'static str> {
    match d.first() {
        Some(b'B') => {
            if d.len() < 21 {
                return Err("short Begin");
            }
            Ok(Event::Begin {
                final_lsn: Lsn(be_u64(&d[1..])),
                commit_ts: be_u64(&d[9..]) as i64,
            })
        }
        Some(b'C') => {
            if d.len() < 26 {
                return Err("short Commit");
            }
            Ok(Event::Commit {
                end_lsn: Lsn(be_u64(&d[10..])),
            })
        }
        Some(b'M') => {
            if d.len() < 10 {
                return Err("short logical message");
            }
            let transactional = d[1] & 1 == 1;
            let lsn = Lsn(be_u64(&d[2..]));
            let rest = &d[10..];
            let end = rest
                .iter()
                .position(|&b| b == 0)
                .ok_or("logical message prefix not terminated")?;
            let prefix = String::from_utf8_lossy(&rest[..end]).into_owned();
            let at = 10 + end + 1;
            let len_bytes = d.get(at..at + 4).ok_or("short logical message")?;
            let len = u32::from_be_bytes(len_bytes.try_into().expect("four bytes")) as usize;
            if d.len() - (at + 4) != len {
                return Err("logical message length does not match");
            }
            Ok(Event::Message {
                transactional,
                lsn,
                prefix,
                content: d.slice(at + 4..),
            })
        }
        Some(_) => Ok(Event::Data(d)),
        None => Err("empty XLogData"),
    }
}

/// Microseconds since 2000-01-01 UTC, PostgreSQL's epoch.
fn pg_now() -> i64 {
    const PG_EPOCH_UNIX_SECS: u64 = 946_684_800;
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    unix.as_micros() as i64 - (PG_EPOCH_UNIX_SECS * 1_000_000) as i64
}

/// A standby status update: written, flushed and applied all at `lsn`; no reply asked.
fn status_update(lsn: Lsn, now: i64) -> [u8; 39] {
    let mut m = [0u8; 39];
    m[0] = b'd';
    m[1..5].copy_from_slice(&38u32.to_be_bytes());
    m[5] = b'r';
    for i in 0..3 {
        m[6 + 8 * i..14 + 8 * i].copy_from_slice(&lsn.0.to_be_bytes());
    }
    m[30..38].copy_from_slice(&now.to_be_bytes());
    m
}

struct Reader {
    wire: Conn,
    tx: mpsc::Sender<Result<Bytes, WireError>>,
    shared: Arc<Shared>,
    wakeup: Duration,
    /// The position of the last status update, and when it went out.
    sent: Option<Lsn>,
    sent_at: Instant,
    /// How far `wire.buf` has been looked through (whole messages only).
    scanned: usize,
    reply_due: bool,
    /// The receive window is bounded: nap after large reads (see the module's
    /// documentation).
    pacer: Option<Pacer>,
}

/// The reader's nap after a read in full flow, steered by the size of the segments that
/// brought the stream (see the module's documentation).
#[derive(Debug)]
struct Pacer {
    nap: Duration,
    /// TCP's count of bytes and data segments received, at the last read.
    seen: Option<(u64, u32)>,
}

impl Pacer {
    fn new() -> Self {
        Pacer {
            nap: NAP_START,
            seen: None,
        }
    }

    /// The nap after a read, given TCP's counts now (`None` when the kernel does not say:
    /// the nap then stays as it is).
    fn after_read(&mut self, received: Option<(u64, u32)>) -> Duration {
        if let (Some((bytes, segments)), Some((bytes0, segments0))) = (received, self.seen) {
            self.nap = steer(
                self.nap,
                bytes.saturating_sub(bytes0),
                segments.wrapping_sub(segments0),
            );
        }
        if received.is_some() {
            self.seen = received;
        }
        self.nap
    }
}

/// The next nap, from the current one and the bytes and segments received since the last
/// read: longer when they came in small segments (the window was open), shorter when they
/// came in large ones (out of the walsender's queue).
fn steer(nap: Duration, bytes: u64, segments: u32) -> Duration {
    if segments == 0 {
        return nap;
    }
    if bytes / u64::from(segments) < SMALL_SEGMENT {
        (nap * 5 / 4).min(NAP_MAX)
    } else {
        (nap * 9 / 10).max(NAP_MIN)
    }
}

/// What a look through the received bytes found.
#[derive(Debug, Default, PartialEq, Eq)]
struct Scan {
    /// Bytes of whole messages from the start.
    whole: usize,
    /// The server asked for a status update now.
    reply: bool,
    /// The server ended the stream or reported an error: nothing more will come.
    last: bool,
}

/// Look through the whole messages of `buf` from `from`.
fn scan(buf: &[u8], from: usize) -> Result<Scan, WireError> {
    let mut s = Scan {
        whole: from,
        ..Scan::default()
    };
    while let Some(len) = frame_len(&buf[s.whole..])? {
        let m = &buf[s.whole..s.whole + len];
        match (m[0], m.get(5)) {
            (b'd', Some(b'k')) => s.reply |= m.get(5 + 17) == Some(&1),
            (b'E' | b'c', _) => s.last = true,
            _ => {}
        }
        s.whole += len;
        if s.last {
            break;
        }
    }
    Ok(s)
}

impl Reader {
    async fn run(mut self, mut stopped: oneshot::Receiver<()>) {
        match self.work(&mut stopped).await {
            Ok(Some(true)) => {
                // Asked to stop: CopyDone, then let the server finish the command (it
                // releases the slot), and say goodbye.
                let _ = tokio::time::timeout(Duration::from_secs(5), self.finish()).await;
                self.wire.terminate().await;
            }
            Ok(_) => {}
            Err(e) => {
                let _ = self.tx.send(Err(e)).await;
            }
        }
    }

    /// `Ok(Some(true))`: asked to stop; `Ok(Some(false))`: the session is gone;
    /// `Ok(None)`: the server ended the stream (what it sent last was handed on).
    async fn work(
        &mut self,
        stopped: &mut oneshot::Receiver<()>,
    ) -> Result<Option<bool>, WireError> {
        loop {
            let s = scan(&self.wire.buf, self.scanned)?;
            self.scanned = s.whole;
            self.reply_due |= s.reply;
            if self.reply_due {
                self.send_status(self.shared.confirmed.load(Ordering::Acquire))
                    .await?;
            }
            if s.whole > 0 {
                let chunk = self.wire.buf.split_to(s.whole).freeze();
                self.scanned = 0;
                if let Some(stop) = self.hand_on(chunk, stopped).await? {
                    return Ok(Some(stop));
                }
            }
            if s.last {
                return Ok(None);
            }
            let confirmed = self.shared.confirmed.load(Ordering::Acquire);
            let pending = self.sent.is_none_or(|sent| confirmed > sent.0);
            let status_at = self.sent_at
                + if pending {
                    STATUS_INTERVAL
                } else {
                    self.wakeup
                };
            tokio::select! {
                biased;
                _ = &mut *stopped => return Ok(Some(true)),
                _ = tokio::time::sleep_until(status_at) => self.send_status(confirmed).await?,
                _ = self.shared.raised.notified(), if !pending => {}
                r = self.wire.fill() => {
                    let n = r?;
                    if let Some(pacer) = self.pacer.as_mut().filter(|_| n >= NAP_AFTER) {
                        let nap = pacer.after_read(self.wire.received_so_far());
                        tokio::time::sleep(nap).await;
                    }
                }
            }
        }
    }

    /// Hand a chunk to the session once the read-ahead budget and the channel have room for
    /// it, sending status updates while the session is busy. `Some` when the reader must stop.
    async fn hand_on(
        &mut self,
        chunk: Bytes,
        stopped: &mut oneshot::Receiver<()>,
    ) -> Result<Option<bool>, WireError> {
        let need = self.shared.permits_for(chunk.len());
        // The budget's permits for this chunk are taken (and forgotten: the session gives
        // them back when it takes the chunk).
        let mut budgeted = false;
        loop {
            if !budgeted {
                match self.shared.ahead.try_acquire_many(need) {
                    Ok(permits) => {
                        permits.forget();
                        budgeted = true;
                    }
                    Err(TryAcquireError::Closed) => return Ok(Some(false)),
                    Err(TryAcquireError::NoPermits) => {}
                }
            }
            if budgeted {
                match self.tx.try_reserve() {
                    Ok(permit) => {
                        permit.send(Ok(chunk));
                        return Ok(None);
                    }
                    Err(mpsc::error::TrySendError::Closed(())) => return Ok(Some(false)),
                    Err(mpsc::error::TrySendError::Full(())) => {}
                }
            }
            let confirmed = self.shared.confirmed.load(Ordering::Acquire);
            let pending = self.sent.is_none_or(|sent| confirmed > sent.0);
            let status_at = self.sent_at
                + if pending {
                    STATUS_INTERVAL
                } else {
                    self.wakeup
                };
            tokio::select! {
                biased;
                _ = &mut *stopped => return Ok(Some(true)),
                // Both cancel-safe: a wait given up loses no permit and no capacity, and
                // what was waited for is taken above.
                room = async { self.shared.ahead.acquire_many(need).await.map(|_| ()) }, if !budgeted => {
                    if room.is_err() {
                        return Ok(Some(false));
                    }
                }
                open = async { self.tx.reserve().await.is_ok() }, if budgeted => {
                    if !open {
                        return Ok(Some(false));
                    }
                }
                _ = tokio::time::sleep_until(status_at) => self.send_status(confirmed).await?,
                _ = self.shared.raised.notified(), if !pending => {}
            }
        }
    }

    async fn send_status(&mut self, confirmed: u64) -> Result<(), WireError> {
        let lsn = Lsn(confirmed);
        self.wire.send(&status_update(lsn, pg_now())).await?;
        self.sent = Some(lsn);
        self.sent_at = Instant::now();
        self.reply_due = false;
        Ok(())
    }

    /// The last confirmed position, CopyDone, then read until the server has finished the
    /// command (the slot keeps that position).
    async fn finish(&mut self) -> Result<(), WireError> {
        self.send_status(self.shared.confirmed.load(Ordering::Acquire))
            .await?;
        self.wire.send(b"c\0\0\0\x04").await?;
        loop {
            while let Some(len) = frame_len(&self.wire.buf)? {
                let tag = self.wire.buf[0];
                self.wire.buf.advance(len);
                if tag == b'Z' {
                    return Ok(());
                }
            }
            self.wire.fill().await?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::{BufMut, BytesMut};

    #[test]
    fn the_nap_grows_while_the_stream_comes_in_small_segments_and_shrinks_in_large_ones() {
        // 64 kB in 135 segments: the walsender sent into an open window.
        let mut nap = NAP_START;
        let mut naps = vec![];
        for _ in 0..20 {
            nap = steer(nap, 64 * 1024, 135);
            naps.push(nap);
        }
        assert_eq!(naps[0], NAP_START * 5 / 4);
        assert!(naps.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(*naps.last().unwrap(), NAP_MAX);
        // 128 kB in two segments: out of its queue.
        for _ in 0..40 {
            nap = steer(nap, 128 * 1024, 2);
        }
        assert_eq!(nap, NAP_MIN);
        assert_eq!(steer(NAP_START, 128 * 1024, 2), NAP_START * 9 / 10);
        // Nothing counted: no change.
        assert_eq!(steer(NAP_START, 0, 0), NAP_START);
        // The boundary: a mean of exactly SMALL_SEGMENT is large.
        assert!(steer(NAP_START, SMALL_SEGMENT * 10, 10) < NAP_START);
        assert!(steer(NAP_START, SMALL_SEGMENT * 10 - 1, 10) > NAP_START);
    }

    #[test]
    fn the_pacer_steers_by_what_came_since_its_last_read() {
        let mut p = Pacer::new();
        // The first read only takes note (what came before it includes the handshake).
        assert_eq!(p.after_read(Some((1_000_000, 10))), NAP_START);
        // Then 64 kB in 100 segments: small, longer.
        assert_eq!(p.after_read(Some((1_065_536, 110))), NAP_START * 5 / 4);
        // The kernel says nothing this time: the nap stays, and the next read counts from
        // the last counts it had.
        assert_eq!(p.after_read(None), NAP_START * 5 / 4);
        assert_eq!(
            p.after_read(Some((1_196_608, 112))),
            NAP_START * 5 / 4 * 9 / 10
        );
        // Segment counts wrap around (a u32 in `tcp_info`).
        let mut p = Pacer::new();
        p.after_read(Some((0, u32::MAX - 1)));
        assert_eq!(p.after_read(Some((128 * 1024, 1))), NAP_START * 9 / 10);
    }

    fn err(message: &str, kind: ErrorKind) -> StreamError {
        stream_error(
            "m",
            WireError {
                kind,
                message: message.into(),
            },
        )
    }

    #[test]
    fn a_slot_that_lost_its_wal_is_not_retried() {
        let lost = [
            "cannot read from logical replication slot \"m\" (SQLSTATE 55000)",
            "can no longer get changes from replication slot \"m\" (SQLSTATE 55000)",
            "requested WAL segment 000000010000000000000003 has already been removed \
             (SQLSTATE 58P01)",
        ];
        for message in lost {
            let e = err(message, ErrorKind::Server);
            assert!(e.slot_lost() && !e.transient, "{message}");
        }
        let busy = err(
            "replication slot \"m\" is active for PID 7 (SQLSTATE 55006)",
            ErrorKind::Server,
        );
        assert!(busy.slot_in_use() && busy.transient && !busy.slot_lost());
        let gone = err(
            "replication slot \"m\" does not exist (SQLSTATE 42704)",
            ErrorKind::Server,
        );
        assert!(!gone.transient && !gone.slot_lost() && gone.gone());
        let role = err(
            "role \"app\" does not exist (SQLSTATE 28000)",
            ErrorKind::Auth,
        );
        assert!(!role.transient && !role.gone());
        let refused = err(
            "password authentication failed for user \"app\" (SQLSTATE 28P01)",
            ErrorKind::Auth,
        );
        assert!(!refused.transient);
        // A server speaking another language is still understood by its SQLSTATE.
        let localized = err(
            "le slot de réplication « m » n'existe pas (SQLSTATE 42704)",
            ErrorKind::Server,
        );
        assert!(!localized.transient && localized.gone());
        let io = err("reading from the server: connection reset", ErrorKind::Io);
        assert!(io.transient && !io.slot_lost());
    }

    /// A CopyData message holding XLogData sent at `sent` with `data`.
    fn xlog(sent: i64, data: &[u8]) -> Vec<u8> {
        let mut m = BytesMut::new();
        m.put_u8(b'd');
        m.put_u32((4 + 25 + data.len()) as u32);
        m.put_u8(b'w');
        m.put_u64(0x10);
        m.put_u64(0x10);
        m.put_i64(sent);
        m.put_slice(data);
        m.to_vec()
    }

    fn begin(final_lsn: u64, commit_ts: i64) -> Vec<u8> {
        let mut b = vec![b'B'];
        b.extend_from_slice(&final_lsn.to_be_bytes());
        b.extend_from_slice(&commit_ts.to_be_bytes());
        b.extend_from_slice(&7u32.to_be_bytes());
        b
    }

    fn keepalive(wal_end: u64, reply: bool) -> Vec<u8> {
        let mut m = vec![b'd', 0, 0, 0, 22, b'k'];
        m.extend_from_slice(&wal_end.to_be_bytes());
        m.extend_from_slice(&0i64.to_be_bytes());
        m.push(reply as u8);
        m
    }

    #[test]
    fn the_scan_finds_whole_messages_and_replies_asked_for() {
        let mut buf = xlog(1_000_000, &begin(0x20, 100));
        buf.extend(keepalive(0x30, true));
        let whole = buf.len();
        // Half of a third message.
        buf.extend(&xlog(5, &begin(0x40, 0))[..20]);
        let s = scan(&buf, 0).unwrap();
        assert_eq!(s.whole, whole);
        assert!(s.reply && !s.last);
        // Resumed where the last look ended.
        assert_eq!(scan(&buf, whole).unwrap().whole, whole);
        let quiet = keepalive(0x30, false);
        assert!(!scan(&quiet, 0).unwrap().reply);
        // Nothing after an error is looked at.
        let mut e = b"E\0\0\0\x0aC55000\0\0".to_vec();
        e.extend(keepalive(1, true));
        let s = scan(&e, 0).unwrap();
        assert!(s.last && !s.reply && s.whole == 11);
        assert!(scan(b"d\0\0\0\x01", 0).is_err());
    }

    #[test]
    fn copy_data_becomes_events() {
        let ev = parse_copy_data(Bytes::from(xlog(1, &begin(0x20, 99))[5..].to_vec())).unwrap();
        assert!(matches!(
            ev,
            Some(Event::Begin {
                final_lsn: Lsn(0x20),
                commit_ts: 99
            })
        ));
        let mut commit = vec![b'C', 0];
        commit.extend_from_slice(&0x20u64.to_be_bytes());
        commit.extend_from_slice(&0x28u64.to_be_bytes());
        commit.extend_from_slice(&5i64.to_be_bytes());
        let ev = parse_pgoutput(Bytes::from(commit)).unwrap();
        assert!(matches!(ev, Event::Commit { end_lsn: Lsn(0x28) }));
        let mut msg = vec![b'M', 0];
        msg.extend_from_slice(&0x30u64.to_be_bytes());
        msg.extend_from_slice(b"pgcutover\0");
        msg.extend_from_slice(&3u32.to_be_bytes());
        msg.extend_from_slice(b"123");
        match parse_pgoutput(Bytes::from(msg.clone())).unwrap() {
            Event::Message {
                transactional,
                lsn,
                prefix,
                content,
            } => {
                assert!(!transactional);
                assert_eq!(lsn, Lsn(0x30));
                assert_eq!(prefix, "pgcutover");
                assert_eq!(&content[..], b"123");
            }
            other => panic!("{other:?}"),
        }
        // Every truncation of these is an error or an event, never a panic.
        for whole in [
            msg,
            begin(1, 2),
            xlog(1, b"U")[5..].to_vec(),
            keepalive(1, false),
        ] {
            for cut in 0..whole.len() {
                let _ = parse_pgoutput(Bytes::from(whole[..cut].to_vec()));
                let _ = parse_copy_data(Bytes::from(whole[..cut].to_vec()));
            }
        }
        let ka = parse_copy_data(Bytes::from(keepalive(0x99, false)[5..].to_vec())).unwrap();
        assert!(matches!(ka, Some(Event::KeepAlive { wal_end: Lsn(0x99) })));
    }

    #[test]
    fn status_updates_carry_the_confirmed_position() {
        let m = status_update(Lsn(0x1_0000_0002), 77);
        assert_eq!(&m[..6], b"d\0\0\0\x26r");
        for i in 0..3 {
            assert_eq!(be_u64(&m[6 + 8 * i..]), 0x1_0000_0002);
        }
        assert_eq!(be_u64(&m[30..]), 77);
        assert_eq!(m[38], 0);
        assert_eq!(frame_len(&m).unwrap(), Some(39));
    }
}
