//! Replication connections of pgcutover's own: the `replication=database` sessions that
//! create the slot (exporting the load's snapshot) and stream changes from it.
//!
//! tokio-postgres cannot open these (it sends no `replication` startup parameter and knows
//! no CopyBoth), so this module speaks the protocol itself
//! (<https://www.postgresql.org/docs/current/protocol-replication.html>): the socket (TCP or
//! a Unix socket), `SSLRequest` and TLS through rustls with the same settings as the SQL
//! sessions ([`super::tls`]), the startup message, password, MD5 and SCRAM-SHA-256
//! authentication (`postgres-protocol` does the cryptography), simple queries, and
//! `START_REPLICATION` up to the server's CopyBothResponse. What happens in CopyBoth mode is
//! [`crate::cdc::stream`]'s.
//!
//! Why not a library's transport: the stream reads the socket in large chunks and hands
//! them on whole, so a message costs neither an allocation nor a channel hop of its own
//! ([`crate::cdc::stream`]), and what the socket does is ours to measure and tune (session
//! 21 tried a receive low-water mark on it). So the socket is a plain non-blocking file
//! descriptor under tokio's [`AsyncFd`], and TLS is driven by hand over it: bytes are read
//! raw, handed to rustls, and the plaintext lands in the connection's buffer.
//!
//! Errors say what went wrong without the password (neither the server nor this code ever
//! echo it), and whether trying again may help ([`ErrorKind`]).

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use postgres_protocol::authentication::sasl::{self, ChannelBinding, ScramSha256};
use postgres_protocol::message::frontend;
use rustls::pki_types::ServerName;
use tokio::io::unix::AsyncFd;

use super::conn::{ConnInfo, SslMode};

/// Largest backend message accepted: PostgreSQL's own limit on a value is 1 GB.
const MAX_MESSAGE: usize = 1 << 30;

/// How much one read asks the kernel for.
const READ_SIZE: usize = 256 * 1024;

/// Startup options of replication sessions (the source is PostgreSQL 14+): the session that
/// exported the load's snapshot waits in its transaction for the whole load, and must not
/// be ended by a site's `idle_in_transaction_session_timeout` (nor `idle_session_timeout`):
/// a chunk copied again, or a worker started late, imports that snapshot. Values in text as
/// the target parses them back, whatever the server's defaults.
pub(crate) const REPLICATION_OPTIONS: &str = "-c idle_in_transaction_session_timeout=0 \
     -c idle_session_timeout=0 \
     -c datestyle=ISO,YMD -c intervalstyle=postgres -c extra_float_digits=3 \
     -c bytea_output=hex -c timezone=UTC -c lc_monetary=C";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The network failed or the server went away: trying again may work.
    Io,
    /// TLS could not be set up, or the server's certificate was refused.
    Tls,
    /// The server refused the credentials, or asked for a method this client lacks.
    Auth,
    /// The server answered with an error; its SQLSTATE ends the message.
    Server,
    /// The server sent something this client does not understand.
    Protocol,
}

#[derive(Clone, Debug, thiserror::Error)]
#[error("{message}")]
pub struct WireError {
    pub kind: ErrorKind,
    pub message: String,
}

impl WireError {
    fn new(kind: ErrorKind, message: impl Into<String>) -> WireError {
        WireError {
            kind,
            message: message.into(),
        }
    }

    pub(crate) fn protocol(message: impl Into<String>) -> WireError {
        WireError::new(ErrorKind::Protocol, message)
    }

    fn io(what: &str, e: io::Error) -> WireError {
        WireError::new(ErrorKind::Io, format!("{what}: {e}"))
    }
}

/// The fields of an ErrorResponse as one line: the message, its detail, and the SQLSTATE.
pub(crate) fn server_error(payload: &[u8]) -> WireError {
    let (mut message, mut detail, mut code) = (None, None, None);
    let mut rest = payload;
    while let Some((&field, tail)) = rest.split_first() {
        if field == 0 {
            break;
        }
        let end = tail.iter().position(|&b| b == 0).unwrap_or(tail.len());
        let text = String::from_utf8_lossy(&tail[..end]).into_owned();
        match field {
            b'M' => message = Some(text),
            b'D' => detail = Some(text),
            b'C' => code = Some(text),
            _ => {}
        }
        rest = tail.get(end + 1..).unwrap_or_default();
    }
    let mut text = message.unwrap_or_else(|| "the server reported an error".into());
    if let Some(d) = detail {
        text.push_str(": ");
        text.push_str(&d);
    }
    let kind = match &code {
        // Class 28: invalid authorization (a refused password, an unknown role, pg_hba.conf).
        Some(c) if c.starts_with("28") => ErrorKind::Auth,
        _ => ErrorKind::Server,
    };
    if let Some(c) = code {
        text.push_str(&format!(" (SQLSTATE {c})"));
    }
    WireError::new(kind, text)
}

enum Sock {
    Tcp(std::net::TcpStream),
    Unix(std::os::unix::net::UnixStream),
}

impl AsRawFd for Sock {
    fn as_raw_fd(&self) -> RawFd {
        match self {
            Sock::Tcp(s) => s.as_raw_fd(),
            Sock::Unix(s) => s.as_raw_fd(),
        }
    }
}

/// A round trip short enough that bounding the receive window costs no throughput: a
/// machine's loopback or a local network (a few tens of microseconds to a few hundred),
/// not a link between sites.
pub const SHORT_ROUND_TRIP: std::time::Duration = std::time::Duration::from_millis(1);

/// The kernel's smoothed round-trip time of a TCP socket (`TCP_INFO`), once measured.
fn round_trip_of(fd: RawFd) -> Option<std::time::Duration> {
    // SAFETY: `tcp_info` is plain data; zeroes are a valid value of it.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: a valid socket, and a `tcp_info` with its size for the answer.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    (r == 0 && info.tcpi_rtt > 0)
        .then(|| std::time::Duration::from_micros(u64::from(info.tcpi_rtt)))
}

/// `recv()` into the free space at the end of `buf`, growing it first when little is left.
/// `Ok(0)` is the end of the stream.
fn recv_into(fd: RawFd, buf: &mut BytesMut, at_most: usize) -> io::Result<usize> {
    if buf.capacity() - buf.len() < READ_SIZE / 4 {
        buf.reserve(READ_SIZE);
    }
    let spare = buf.spare_capacity_mut();
    let want = spare.len().min(at_most);
    // SAFETY: `spare` is writable memory of at least `want` bytes owned by `buf`; recv writes
    // at most `want` bytes into it and returns how many it wrote.
    let n = unsafe { libc::recv(fd, spare.as_mut_ptr().cast(), want, 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let n = n as usize;
    // SAFETY: recv initialized the first `n` bytes of the spare capacity.
    unsafe { buf.set_len(buf.len() + n) };
    Ok(n)
}

fn send_some(fd: RawFd, data: &[u8]) -> io::Result<usize> {
    // SAFETY: `data` is a valid slice; MSG_NOSIGNAL turns a closed peer into EPIPE, not a signal.
    let n = unsafe { libc::send(fd, data.as_ptr().cast(), data.len(), libc::MSG_NOSIGNAL) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

fn eof() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "the server closed the connection",
    )
}

/// A connection in the replication protocol, after authentication.
pub struct Conn {
    fd: AsyncFd<Sock>,
    tls: Option<Box<rustls::ClientConnection>>,
    /// Bytes received from the server (decrypted) and not yet taken as messages.
    pub(crate) buf: BytesMut,
    /// Raw bytes read for TLS, not yet handed to rustls.
    raw: BytesMut,
    out: BytesMut,
}

impl Conn {
    /// Connect, authenticate and wait until the server is ready for a command.
    pub async fn connect(info: &ConnInfo, application: &str) -> Result<Conn, WireError> {
        let attempt = async {
            match Conn::connect_once(info, application, info.sslmode).await {
                // Like libpq's `prefer`: a server that refuses the TLS handshake is tried
                // once more in plain text.
                Err(e) if info.sslmode == SslMode::Prefer && e.kind == ErrorKind::Tls => {
                    Conn::connect_once(info, application, SslMode::Disable).await
                }
                other => other,
            }
        };
        match tokio::time::timeout(info.connect_timeout, attempt).await {
            Ok(r) => r,
            Err(_) => Err(WireError::new(
                ErrorKind::Io,
                format!(
                    "no session within {} s (connect_timeout)",
                    info.connect_timeout.as_secs_f64()
                ),
            )),
        }
    }

    async fn connect_once(
        info: &ConnInfo,
        application: &str,
        sslmode: SslMode,
    ) -> Result<Conn, WireError> {
        let unix = info.host.starts_with('/');
        let sock = if unix {
            let path = format!("{}/.s.PGSQL.{}", info.host, info.port);
            let s = tokio::net::UnixStream::connect(&path)
                .await
                .map_err(|e| WireError::io(&format!("cannot connect to {path}"), e))?;
            Sock::Unix(s.into_std().map_err(|e| WireError::io("socket", e))?)
        } else {
            let s = tokio::net::TcpStream::connect((info.host.as_str(), info.port))
                .await
                .map_err(|e| {
                    WireError::io(&format!("cannot connect to {}:{}", info.host, info.port), e)
                })?;
            s.set_nodelay(true)
                .map_err(|e| WireError::io("socket", e))?;
            Sock::Tcp(s.into_std().map_err(|e| WireError::io("socket", e))?)
        };
        let mut conn = Conn {
            // SAFETY: `Sock` owns its descriptor, keeps it open until it is dropped with the
            // `AsyncFd`, and always returns the same one.
            fd: unsafe { AsyncFd::register(sock) }
                .map_err(|e| WireError::io("socket", e.into_parts().1))?,
            tls: None,
            buf: BytesMut::with_capacity(READ_SIZE),
            raw: BytesMut::new(),
            out: BytesMut::with_capacity(1024),
        };
        match sslmode {
            SslMode::Disable => {}
            _ if unix => {
                if sslmode != SslMode::Prefer {
                    return Err(WireError::new(
                        ErrorKind::Tls,
                        "TLS is not available over a Unix socket (sslmode=require or \
                         verify-full with a socket directory as host)",
                    ));
                }
            }
            mode => conn.start_tls(info, mode).await?,
        }
        conn.startup(info, application).await?;
        Ok(conn)
    }

    async fn start_tls(&mut self, info: &ConnInfo, mode: SslMode) -> Result<(), WireError> {
        self.out.clear();
        frontend::ssl_request(&mut self.out);
        let request = self.out.split().freeze();
        self.send_raw(&request).await?;
        // One byte, read alone: anything the network put after it must not be taken as
        // part of the TLS handshake (CVE-2021-23222).
        let mut answer = BytesMut::with_capacity(1);
        loop {
            let mut guard = self
                .fd
                .readable()
                .await
                .map_err(|e| WireError::io("socket", e))?;
            match guard.try_io(|s| recv_into(s.get_ref().as_raw_fd(), &mut answer, 1)) {
                Ok(Ok(0)) => return Err(WireError::io("TLS request", eof())),
                Ok(Ok(_)) => break,
                Ok(Err(e)) => return Err(WireError::io("TLS request", e)),
                Err(_) => continue,
            }
        }
        match answer[0] {
            b'S' => {}
            b'N' if mode == SslMode::Prefer => return Ok(()),
            b'N' => {
                return Err(WireError::new(
                    ErrorKind::Tls,
                    format!(
                        "the server does not accept TLS connections, and sslmode={} requires it",
                        mode.as_str()
                    ),
                ));
            }
            other => {
                return Err(WireError::protocol(format!(
                    "unexpected answer {:?} to the TLS request",
                    other as char
                )));
            }
        }
        let config = super::tls::client_config(mode, info.sslrootcert.as_deref())
            .map_err(|m| WireError::new(ErrorKind::Tls, m))?;
        let name = ServerName::try_from(info.host.clone())
            .map_err(|e| WireError::new(ErrorKind::Tls, format!("host {}: {e}", info.host)))?;
        let tls = rustls::ClientConnection::new(Arc::new(config), name)
            .map_err(|e| WireError::new(ErrorKind::Tls, format!("TLS setup failed: {e}")))?;
        self.tls = Some(Box::new(tls));
        loop {
            self.flush_tls().await?;
            if !self.tls.as_ref().is_some_and(|t| t.is_handshaking()) {
                return Ok(());
            }
            self.fill().await.map_err(|e| {
                WireError::new(ErrorKind::Tls, format!("TLS handshake: {}", e.message))
            })?;
        }
    }

    async fn startup(&mut self, info: &ConnInfo, application: &str) -> Result<(), WireError> {
        let params = [
            ("user", info.user.as_str()),
            ("database", info.dbname.as_str()),
            ("replication", "database"),
            ("client_encoding", "UTF8"),
            ("application_name", application),
            ("options", REPLICATION_OPTIONS),
        ];
        self.out.clear();
        frontend::startup_message(params, &mut self.out)
            .map_err(|e| WireError::protocol(format!("startup message: {e}")))?;
        self.send_out().await?;
        let password = || {
            info.password.as_ref().map(|p| p.expose()).ok_or_else(|| {
                WireError::new(
                    ErrorKind::Auth,
                    "the server asks for a password and none was given",
                )
            })
        };
        let mut scram: Option<ScramSha256> = None;
        loop {
            let (tag, mut body) = self.message().await?;
            match tag {
                b'R' => {
                    if body.len() < 4 {
                        return Err(WireError::protocol("short authentication request"));
                    }
                    match body.get_i32() {
                        0 => {}
                        3 => {
                            self.out.clear();
                            frontend::password_message(password()?.as_bytes(), &mut self.out)
                                .map_err(|e| WireError::protocol(e.to_string()))?;
                            self.send_out().await?;
                        }
                        5 => {
                            if body.len() < 4 {
                                return Err(WireError::protocol("short MD5 salt"));
                            }
                            let salt = [body[0], body[1], body[2], body[3]];
                            let hash = postgres_protocol::authentication::md5_hash(
                                info.user.as_bytes(),
                                password()?.as_bytes(),
                                salt,
                            );
                            self.out.clear();
                            frontend::password_message(hash.as_bytes(), &mut self.out)
                                .map_err(|e| WireError::protocol(e.to_string()))?;
                            self.send_out().await?;
                        }
                        10 => {
                            let offered = body
                                .split(|&b| b == 0)
                                .any(|m| m == sasl::SCRAM_SHA_256.as_bytes());
                            if !offered {
                                return Err(WireError::new(
                                    ErrorKind::Auth,
                                    "the server offers no SASL mechanism this client knows \
                                     (SCRAM-SHA-256)",
                                ));
                            }
                            // No channel binding ("n"): the server may offer it, and then
                            // accepts a client that says it does not support it.
                            let s = ScramSha256::new(
                                password()?.as_bytes(),
                                ChannelBinding::unsupported(),
                            );
                            self.out.clear();
                            frontend::sasl_initial_response(
                                sasl::SCRAM_SHA_256,
                                s.message(),
                                &mut self.out,
                            )
                            .map_err(|e| WireError::protocol(e.to_string()))?;
                            scram = Some(s);
                            self.send_out().await?;
                        }
                        11 => {
                            let s = scram.as_mut().ok_or_else(|| {
                                WireError::protocol("SASL continue before SASL start")
                            })?;
                            s.update(&body).map_err(|e| {
                                WireError::new(ErrorKind::Auth, format!("SCRAM: {e}"))
                            })?;
                            self.out.clear();
                            frontend::sasl_response(s.message(), &mut self.out)
                                .map_err(|e| WireError::protocol(e.to_string()))?;
                            self.send_out().await?;
                        }
                        12 => {
                            let s = scram.as_mut().ok_or_else(|| {
                                WireError::protocol("SASL final before SASL start")
                            })?;
                            // Checks the server's signature: a server that does not know
                            // the password cannot pass for one that does.
                            s.finish(&body).map_err(|e| {
                                WireError::new(ErrorKind::Auth, format!("SCRAM: {e}"))
                            })?;
                        }
                        other => {
                            return Err(WireError::new(
                                ErrorKind::Auth,
                                format!(
                                    "the server asks for an authentication method this \
                                     client does not support (code {other}); use \
                                     scram-sha-256, md5 or password in pg_hba.conf"
                                ),
                            ));
                        }
                    }
                }
                b'E' => return Err(server_error(&body)),
                b'Z' => return Ok(()),
                // Parameter status, backend key, notices, protocol negotiation.
                _ => {}
            }
        }
    }

    /// Run `sql` with the simple query protocol; its rows as text (`None` for NULL).
    pub async fn simple_query(&mut self, sql: &str) -> Result<Vec<Vec<Option<String>>>, WireError> {
        self.out.clear();
        frontend::query(sql, &mut self.out).map_err(|e| WireError::protocol(e.to_string()))?;
        self.send_out().await?;
        let mut rows = Vec::new();
        let mut failed = None;
        loop {
            let (tag, body) = self.message().await?;
            match tag {
                b'D' => rows.push(data_row(body)?),
                b'E' => failed = Some(server_error(&body)),
                b'Z' => return failed.map_or(Ok(rows), Err),
                _ => {}
            }
        }
    }

    /// `START_REPLICATION` (`sql`), up to the server's CopyBothResponse. From then on the
    /// server streams; the connection's buffer may already hold the first bytes of it.
    pub async fn start_copy_both(&mut self, sql: &str) -> Result<(), WireError> {
        self.out.clear();
        frontend::query(sql, &mut self.out).map_err(|e| WireError::protocol(e.to_string()))?;
        self.send_out().await?;
        loop {
            let (tag, body) = self.message().await?;
            match tag {
                b'W' => return Ok(()),
                b'E' => return Err(server_error(&body)),
                b'Z' => {
                    return Err(WireError::protocol(
                        "the server finished the command without streaming",
                    ));
                }
                _ => {}
            }
        }
    }

    /// The next whole message (tag, body), reading as needed.
    async fn message(&mut self) -> Result<(u8, Bytes), WireError> {
        loop {
            if let Some(len) = frame_len(&self.buf)? {
                let mut frame = self.buf.split_to(len).freeze();
                let tag = frame[0];
                frame.advance(5);
                return Ok((tag, frame));
            }
            self.fill().await?;
        }
    }

    /// Wait until the socket is readable and read what it has (at least one byte).
    pub async fn fill(&mut self) -> Result<usize, WireError> {
        loop {
            let mut guard = self
                .fd
                .readable()
                .await
                .map_err(|e| WireError::io("socket", e))?;
            let Conn { tls, buf, raw, .. } = self;
            match guard.try_io(|s| read_some(s.get_ref().as_raw_fd(), tls, buf, raw)) {
                Ok(Ok(n)) => return Ok(n),
                Ok(Err(e)) => return Err(read_error(e)),
                Err(_) => continue,
            }
        }
    }

    /// Bound the socket's receive buffer to `bytes` (the kernel doubles the figure for its
    /// bookkeeping, and stops tuning it), when the connection is TCP and its measured round
    /// trip is under [`SHORT_ROUND_TRIP`]: a window of that size then still carries more per
    /// round trip than the stream needs (see [`crate::cdc::stream`] for why the stream wants
    /// it). Over a longer round trip the window is what bounds throughput, so it is left to
    /// the kernel. Returns whether the buffer was bounded.
    pub fn bound_receive_window(&mut self, bytes: usize) -> bool {
        let Sock::Tcp(s) = self.fd.get_ref() else {
            return false;
        };
        let fd = s.as_raw_fd();
        if round_trip_of(fd).is_none_or(|rtt| rtt >= SHORT_ROUND_TRIP) {
            return false;
        }
        let value = bytes.min(i32::MAX as usize) as libc::c_int;
        // SAFETY: a valid socket, and a pointer to an int of the size given.
        let r = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                (&value as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        r == 0
    }

    /// TCP's count of bytes and data segments received so far on this connection
    /// (`TCP_INFO`'s `tcpi_bytes_received` and `tcpi_data_segs_in`), `None` on a Unix
    /// socket or when the kernel does not say. The stream steers its reader's pace by them
    /// ([`crate::cdc::stream`]).
    pub fn received_so_far(&self) -> Option<(u64, u32)> {
        let Sock::Tcp(s) = self.fd.get_ref() else {
            return None;
        };
        // SAFETY: `tcp_info` is plain data; zeroes are a valid value of it.
        let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        // SAFETY: a valid socket, and a `tcp_info` with its size for the answer.
        let r = unsafe {
            libc::getsockopt(
                s.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_INFO,
                (&mut info as *mut libc::tcp_info).cast(),
                &mut len,
            )
        };
        (r == 0).then_some((info.tcpi_bytes_received, info.tcpi_data_segs_in))
    }

    /// The socket's receive buffer as the kernel reports it (`SO_RCVBUF`).
    pub fn receive_buffer(&self) -> Option<usize> {
        let fd = self.fd.get_ref().as_raw_fd();
        let mut value: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: a valid socket, and an int with its size for the answer.
        let r = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                (&mut value as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        (r == 0).then_some(value as usize)
    }

    /// Send `bytes` (encrypted when TLS is on), waiting while the socket is full.
    pub async fn send(&mut self, bytes: &[u8]) -> Result<(), WireError> {
        match &mut self.tls {
            Some(tls) => {
                tls.writer()
                    .write_all(bytes)
                    .map_err(|e| WireError::io("TLS", e))?;
                self.flush_tls().await
            }
            None => self.send_raw(bytes).await,
        }
    }

    async fn send_out(&mut self) -> Result<(), WireError> {
        let out = self.out.split().freeze();
        self.send(&out).await
    }

    async fn flush_tls(&mut self) -> Result<(), WireError> {
        while let Some(tls) = self.tls.as_mut()
            && tls.wants_write()
        {
            let mut records = Vec::new();
            tls.write_tls(&mut records)
                .map_err(|e| WireError::io("TLS", e))?;
            self.send_raw(&records).await?;
        }
        Ok(())
    }

    async fn send_raw(&self, mut data: &[u8]) -> Result<(), WireError> {
        while !data.is_empty() {
            let mut guard = self
                .fd
                .writable()
                .await
                .map_err(|e| WireError::io("socket", e))?;
            match guard.try_io(|s| send_some(s.get_ref().as_raw_fd(), data)) {
                Ok(Ok(n)) => data = &data[n..],
                Ok(Err(e)) => return Err(WireError::io("sending to the server", e)),
                Err(_) => continue,
            }
        }
        Ok(())
    }

    /// Say goodbye (Terminate) and close the socket.
    pub async fn terminate(mut self) {
        self.out.clear();
        frontend::terminate(&mut self.out);
        let _ = self.send_out().await;
        if let Some(tls) = self.tls.as_mut() {
            tls.send_close_notify();
            let _ = self.flush_tls().await;
        }
    }
}

fn read_error(e: io::Error) -> WireError {
    match e.kind() {
        io::ErrorKind::InvalidData => WireError::new(ErrorKind::Tls, format!("TLS: {e}")),
        _ => WireError::io("reading from the server", e),
    }
}

/// One non-blocking read; with TLS, the records are decrypted into `buf`. Returns the raw
/// bytes read; `WouldBlock` when there were none, `UnexpectedEof` at the end of the stream.
fn read_some(
    fd: RawFd,
    tls: &mut Option<Box<rustls::ClientConnection>>,
    buf: &mut BytesMut,
    raw: &mut BytesMut,
) -> io::Result<usize> {
    let Some(tls) = tls else {
        return match recv_into(fd, buf, usize::MAX)? {
            0 => Err(eof()),
            n => Ok(n),
        };
    };
    raw.clear();
    let n = recv_into(fd, raw, usize::MAX)?;
    if n == 0 {
        return Err(eof());
    }
    let mut rest = &raw[..];
    while !rest.is_empty() {
        tls.read_tls(&mut rest)?;
        let state = tls
            .process_new_packets()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        let mut plain = tls.reader();
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match plain.read(&mut chunk) {
                Ok(0) => return Err(eof()),
                Ok(k) => buf.put_slice(&chunk[..k]),
                Err(e) if would_block(&e) => break,
                Err(e) => return Err(e),
            }
        }
        if state.peer_has_closed() {
            return Err(eof());
        }
    }
    Ok(n)
}

/// The length of the first message in `buf` if all of it is there.
pub(crate) fn frame_len(buf: &[u8]) -> Result<Option<usize>, WireError> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
    if !(4..=MAX_MESSAGE).contains(&len) {
        return Err(WireError::protocol(format!(
            "a message of {len} bytes (tag {:?}) cannot be right",
            buf[0] as char
        )));
    }
    Ok((buf.len() > len).then_some(len + 1))
}

fn data_row(mut body: Bytes) -> Result<Vec<Option<String>>, WireError> {
    let bad = || WireError::protocol("malformed data row");
    if body.len() < 2 {
        return Err(bad());
    }
    let n = body.get_i16();
    let mut row = Vec::with_capacity(n.max(0) as usize);
    for _ in 0..n {
        if body.len() < 4 {
            return Err(bad());
        }
        let len = body.get_i32();
        if len < 0 {
            row.push(None);
            continue;
        }
        let len = len as usize;
        if body.len() < len {
            return Err(bad());
        }
        row.push(Some(String::from_utf8_lossy(&body[..len]).into_owned()));
        body.advance(len);
    }
    Ok(row)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_responses_keep_message_detail_and_sqlstate() {
        let body = b"SFATAL\0VFATAL\0C28P01\0Mpassword authentication failed for user \"x\"\0\0";
        let e = server_error(body);
        assert_eq!(e.kind, ErrorKind::Auth);
        assert_eq!(
            e.message,
            "password authentication failed for user \"x\" (SQLSTATE 28P01)"
        );
        let e = server_error(b"C42704\0Mslot \"m\" does not exist\0Dgone\0\0");
        assert_eq!(e.kind, ErrorKind::Server);
        assert_eq!(
            e.message,
            "slot \"m\" does not exist: gone (SQLSTATE 42704)"
        );
        // Truncated or empty bodies still give an error, never a panic.
        for body in [&b""[..], b"M", b"Mabc", b"C", b"\0", b"Zxx\0Mmsg"] {
            let _ = server_error(body);
        }
    }

    #[test]
    fn frames_are_cut_where_their_length_says() {
        assert_eq!(frame_len(b"Z\0\0\0").unwrap(), None);
        assert_eq!(frame_len(b"Z\0\0\0\x05").unwrap(), None);
        assert_eq!(frame_len(b"Z\0\0\0\x05I").unwrap(), Some(6));
        assert_eq!(frame_len(b"Z\0\0\0\x05Ixyz").unwrap(), Some(6));
        assert!(frame_len(b"Z\0\0\0\x03").is_err());
        assert!(frame_len(b"Z\x7f\xff\xff\xff").is_err());
    }

    #[test]
    fn data_rows_are_read_as_text_with_nulls_apart() {
        let mut b = BytesMut::new();
        b.put_i16(3);
        b.put_i32(2);
        b.put_slice(b"ab");
        b.put_i32(-1);
        b.put_i32(0);
        let row = data_row(b.freeze()).unwrap();
        assert_eq!(row, vec![Some("ab".into()), None, Some(String::new())]);
        let mut short = BytesMut::new();
        short.put_i16(2);
        short.put_i32(9);
        short.put_slice(b"abc");
        assert!(data_row(short.freeze()).is_err());
    }
}
