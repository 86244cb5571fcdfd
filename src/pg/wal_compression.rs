//! The WAL compression pgcutover's apply sessions ask the target for
//! (`replication.target_wal_compression`).
//!
//! ## Why
//!
//! Most of the WAL a change stream's apply writes on a self-managed target is full-page
//! images: the first change to a page after each checkpoint logs the whole 8 kB page. A
//! backlog of 1M updates spread over a 5M-row table wrote about 900 MB of WAL on the target,
//! about 120 000 page images, for 130 MB of row data. The apply sessions then spend their CPU
//! copying pages into WAL buffers and writing them to the page cache, and the disk's writeback
//! leaves cores idle. `wal_compression = lz4` (PostgreSQL 15 and later, in a server built with
//! lz4, which the usual packages are) shrank that WAL to about 300 MB and took the catch-up
//! from 5.99 s to 5.12 s (medians of seven alternating catch-ups on one cluster pair,
//! `BENCHMARKS.md`, session 31): compressing a page costs less than writing it.
//!
//! `wal_compression` is a superuser setting that a session may change for itself (or a role
//! granted `SET ON PARAMETER wal_compression`, PostgreSQL 15 and later), and it only changes
//! how this session's own page images are logged: nothing else on the target changes, and
//! recovery and the target's standbys read compressed images as well as plain ones (a
//! standby must be built with the same method, as standbys of one server normally are;
//! `server` is the choice for a target whose standbys are not).
//!
//! ## The choices
//!
//! * `auto` (the default): where the target has it `off`, each apply session asks for `lz4`;
//!   where that is refused (a role without the right, a server without lz4, a service such as
//!   Aurora whose storage writes no full-page images) or the target already compresses, the
//!   target's setting stays. Never an error.
//! * `server`: never touch it.
//! * a method (`lz4`, `zstd`, `pglz`, `on`, `off`): every apply session sets it, and a target
//!   that refuses it is an error, found by the preflight before anything is created.

use tokio_postgres::Client;
use tokio_postgres::error::SqlState;

use super::{SqlContext, SqlError};

/// What the apply sessions ask of the target's `wal_compression`.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum WalCompression {
    /// `lz4` where the target has compression off and lets the session change it.
    #[default]
    Auto,
    /// The target's own setting.
    Server,
    /// This method on every apply session, or an error.
    Method(Method),
}

/// A value of PostgreSQL's `wal_compression`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Off,
    On,
    Pglz,
    Lz4,
    Zstd,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Off => "off",
            Method::On => "on",
            Method::Pglz => "pglz",
            Method::Lz4 => "lz4",
            Method::Zstd => "zstd",
        }
    }
}

/// The values `replication.target_wal_compression` accepts, for error messages.
pub const CHOICES: &str = "\"auto\", \"server\", \"lz4\", \"zstd\", \"pglz\", \"on\" or \"off\"";

impl std::str::FromStr for WalCompression {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        Ok(match s {
            "auto" => WalCompression::Auto,
            "server" => WalCompression::Server,
            "off" => WalCompression::Method(Method::Off),
            "on" => WalCompression::Method(Method::On),
            "pglz" => WalCompression::Method(Method::Pglz),
            "lz4" => WalCompression::Method(Method::Lz4),
            "zstd" => WalCompression::Method(Method::Zstd),
            _ => return Err(()),
        })
    }
}

/// How to let the target role set `wal_compression`, for hints.
pub const HINT: &str = "GRANT SET ON PARAMETER wal_compression TO <role> on the target \
    (PostgreSQL 15 and later) or connect as a superuser, use a method the target's server was \
    built with (SHOW wal_compression; lz4 and zstd need PostgreSQL 15), or set \
    replication.target_wal_compression = \"auto\" or \"server\"";

/// Whether the target lets a session use `method`: tried in a transaction rolled back, so
/// the session is left as it was. `Ok(false)` when the role may not set it or the server does
/// not know the value.
pub async fn allowed(client: &Client, method: Method) -> Result<bool, SqlError> {
    let probe = format!(
        "BEGIN; SET LOCAL wal_compression = '{}'; ROLLBACK",
        method.as_str()
    );
    match client.batch_execute(&probe).await {
        Ok(()) => Ok(true),
        Err(e) if refused(&e) => {
            client
                .batch_execute("ROLLBACK")
                .await
                .ctx(|| "ending the wal_compression probe on the target".into())?;
            Ok(false)
        }
        Err(e) => Err(e).ctx(|| "trying wal_compression on the target".into()),
    }
}

/// Set up one session of the target as `want` asks; returns the `wal_compression` the session
/// ends up with. Call it outside any transaction.
pub async fn set_up(client: &Client, want: &WalCompression) -> Result<String, SqlError> {
    let set = |method: Method| format!("SET wal_compression = '{}'", method.as_str());
    match want {
        WalCompression::Server => {}
        WalCompression::Method(m) => client.batch_execute(&set(*m)).await.ctx(|| {
            format!(
                "setting wal_compression = {} on the target (replication.target_wal_compression; \
                 {HINT})",
                m.as_str()
            )
        })?,
        WalCompression::Auto => {
            if show(client).await? == "off" {
                match client.batch_execute(&set(Method::Lz4)).await {
                    Ok(()) => {}
                    Err(e) if refused(&e) => {}
                    Err(e) => {
                        return Err(e).ctx(|| "setting wal_compression on the target".into());
                    }
                }
            }
        }
    }
    show(client).await
}

async fn show(client: &Client) -> Result<String, SqlError> {
    let row = client
        .query_one("SELECT pg_catalog.current_setting('wal_compression')", &[])
        .await
        .ctx(|| "reading the target's wal_compression".into())?;
    Ok(row.get(0))
}

/// The role may not set it, or the server does not know the value (no lz4 in its build, a
/// version before 15).
fn refused(e: &tokio_postgres::Error) -> bool {
    matches!(
        e.code(),
        Some(c) if *c == SqlState::INSUFFICIENT_PRIVILEGE || *c == SqlState::INVALID_PARAMETER_VALUE
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_choice_parses_and_nothing_else_does() {
        for (s, want) in [
            ("auto", WalCompression::Auto),
            ("server", WalCompression::Server),
            ("lz4", WalCompression::Method(Method::Lz4)),
            ("zstd", WalCompression::Method(Method::Zstd)),
            ("pglz", WalCompression::Method(Method::Pglz)),
            ("on", WalCompression::Method(Method::On)),
            ("off", WalCompression::Method(Method::Off)),
        ] {
            assert_eq!(s.parse::<WalCompression>(), Ok(want), "{s}");
            assert!(CHOICES.contains(&format!("\"{s}\"")), "{s}");
        }
        for bad in ["", "LZ4", "lz4; DROP TABLE t", "true", "zstd "] {
            assert!(bad.parse::<WalCompression>().is_err(), "{bad:?}");
        }
    }
}
