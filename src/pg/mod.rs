//! Everything that talks to PostgreSQL at the lowest level: connections, WAL positions,
//! names, the catalog, the publication and the replication slot, and throwaway clusters for
//! tests and the demo. Nothing here knows about loading, streaming or cutting over.

pub mod catalog;
pub mod cluster;
pub mod conn;
pub mod lsn;
pub mod name;
pub mod slot;
pub mod tls;
pub mod tools;
pub mod wal_compression;
pub mod wire;

pub use lsn::Lsn;
pub use name::{TableName, quote_ident, quote_literal};

/// The server's own message for a database error (tokio-postgres' `Display` says only
/// "db error"), or the client-side error text. Never contains a password: neither the server
/// nor the client echo it.
pub fn error_text(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut s = db.message().to_string();
            if let Some(detail) = db.detail() {
                s.push_str(" (");
                s.push_str(detail);
                s.push(')');
            }
            s
        }
        None => {
            let mut s = e.to_string();
            let mut src = std::error::Error::source(e);
            while let Some(inner) = src {
                s.push_str(": ");
                s.push_str(&inner.to_string());
                src = inner.source();
            }
            s
        }
    }
}

/// An error from a SQL statement, with the server's message and what we were doing.
#[derive(Debug, thiserror::Error)]
#[error("{context}: {}", error_text(.source))]
pub struct SqlError {
    pub context: String,
    #[source]
    pub source: tokio_postgres::Error,
}

impl SqlError {
    /// See [`is_transient`].
    pub fn is_transient(&self) -> bool {
        is_transient(&self.source)
    }
}

/// Whether trying again on a new session can succeed without anyone fixing anything: the
/// connection broke or was ended by the server (shutdown, `pg_terminate_backend`, failover),
/// or the server gave up on a statement for a passing reason (deadlock, serialization
/// failure, out of connections or memory). A statement the server refused for what it is
/// (a constraint, a type, a missing table) is not transient.
pub fn is_transient(e: &tokio_postgres::Error) -> bool {
    let Some(db) = e.as_db_error() else {
        return true;
    };
    if e.is_closed() {
        return true;
    }
    let code = db.code().code();
    code.starts_with("08") // connection exception
        || code.starts_with("53") // insufficient resources
        || code.starts_with("57P") // admin/crash shutdown, cannot connect now
        || code == "40001" // serialization failure
        || code == "40P01" // deadlock
}

/// Attach what we were doing to a tokio-postgres error.
pub trait SqlContext<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T, SqlError>;
}

impl<T> SqlContext<T> for Result<T, tokio_postgres::Error> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T, SqlError> {
        self.map_err(|source| SqlError {
            context: context(),
            source,
        })
    }
}

/// The server's major version (`server_version_num / 10000`).
pub async fn server_major(client: &tokio_postgres::Client) -> Result<u32, SqlError> {
    let row = client
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .await
        .ctx(|| "reading the server version".into())?;
    let num: i32 = row.get(0);
    Ok((num / 10000) as u32)
}
