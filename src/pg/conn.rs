//! Connection settings and connections to one database.
//!
//! `ConnInfo` is parsed from a libpq-style URL or `key=value` string by tokio-postgres, then
//! held in our own shape so that the password lives in a [`Secret`] and every consumer (SQL
//! sessions, the replication session, `pg_dump`/`psql` child processes) gets the same host,
//! port, user and database. Every session pins the settings that change how values are
//! printed (DateStyle, TimeZone, IntervalStyle, extra_float_digits, bytea_output), so a value
//! read as text on one server is read back identically by the other.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use tokio_postgres::config::Host;
use tokio_postgres::{Client, NoTls};

use crate::secret::Secret;

/// Session settings every pgcutover SQL session runs with.
pub const SESSION_SETTINGS: &str = "SET DateStyle = 'ISO, YMD'; SET TimeZone = 'UTC'; \
     SET IntervalStyle = 'postgres'; SET extra_float_digits = 3; SET bytea_output = 'hex'; \
     SET statement_timeout = 0; SET lock_timeout = 0; \
     SET idle_in_transaction_session_timeout = 0";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
}

#[derive(Clone, PartialEq, Eq)]
pub struct ConnInfo {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub dbname: String,
    pub password: Option<Secret>,
    pub sslmode: SslMode,
    pub connect_timeout: Duration,
}

/// Shows where it connects to, never the password.
impl fmt::Debug for ConnInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

impl fmt::Display for ConnInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}@{}:{}/{}",
            self.user, self.host, self.port, self.dbname
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error("cannot connect to {target}: {}", crate::pg::error_text(source))]
    Connect {
        target: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error(
        "cannot set up a session on {target}: {}",
        crate::pg::error_text(source)
    )]
    Setup {
        target: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("{target} requires TLS (sslmode=require), which this build does not speak yet")]
    TlsUnsupported { target: String },
}

impl ConnError {
    pub fn hint(&self) -> String {
        match self {
            ConnError::Connect { source, .. } => {
                let text = crate::pg::error_text(source);
                if text.contains("password authentication failed")
                    || text.contains("no password")
                    || text.contains("password missing")
                {
                    "check the user name and the password (PGCUTOVER_*_PASSWORD or password_file)"
                        .into()
                } else if text.contains("does not exist") {
                    "check the database and user names in the url".into()
                } else if text.contains("no pg_hba.conf entry") {
                    "allow this host in the server's pg_hba.conf".into()
                } else {
                    "check that the server is up and that host and port in the url are right".into()
                }
            }
            ConnError::Setup { .. } => {
                "the server refused a session setting; check its logs".into()
            }
            ConnError::TlsUnsupported { .. } => {
                "connect with sslmode=disable or prefer for now (TLS support is on the roadmap)"
                    .into()
            }
        }
    }
}

impl ConnInfo {
    /// Parse a URL (`postgres://user@host:port/db?sslmode=...`) or a `key=value` string.
    /// Missing parts default like libpq: port 5432, user `postgres`, database = user.
    pub fn parse(text: &str) -> Result<ConnInfo, String> {
        let cfg = tokio_postgres::Config::from_str(text).map_err(|e| {
            // tokio-postgres' messages never echo the password, but keep ours generic anyway.
            format!("is not a valid connection url ({e})")
        })?;
        let host = match cfg.get_hosts() {
            [] => "localhost".to_string(),
            [Host::Tcp(h)] => h.clone(),
            [Host::Unix(p)] => p.display().to_string(),
            _ => return Err("names several hosts; give exactly one".into()),
        };
        let port = match cfg.get_ports() {
            [] => 5432,
            [p] => *p,
            _ => return Err("names several ports; give exactly one".into()),
        };
        let user = cfg.get_user().unwrap_or("postgres").to_string();
        let dbname = cfg.get_dbname().unwrap_or(&user).to_string();
        let password = cfg
            .get_password()
            .map(|p| Secret::new(String::from_utf8_lossy(p).into_owned()));
        let sslmode = match cfg.get_ssl_mode() {
            tokio_postgres::config::SslMode::Disable => SslMode::Disable,
            tokio_postgres::config::SslMode::Require => SslMode::Require,
            _ => SslMode::Prefer,
        };
        let connect_timeout = cfg
            .get_connect_timeout()
            .copied()
            .unwrap_or(Duration::from_secs(10));
        Ok(ConnInfo {
            host,
            port,
            user,
            dbname,
            password,
            sslmode,
            connect_timeout,
        })
    }

    pub fn is_unix_socket(&self) -> bool {
        self.host.starts_with('/')
    }

    fn pg_config(&self, application_name: &str) -> tokio_postgres::Config {
        let mut cfg = tokio_postgres::Config::new();
        if self.is_unix_socket() {
            cfg.host_path(PathBuf::from(&self.host));
        } else {
            cfg.host(&self.host);
        }
        cfg.port(self.port)
            .user(&self.user)
            .dbname(&self.dbname)
            .application_name(application_name)
            .connect_timeout(self.connect_timeout)
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(30));
        if let Some(p) = &self.password {
            cfg.password(p.expose());
        }
        cfg.ssl_mode(match self.sslmode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            _ => tokio_postgres::config::SslMode::Prefer,
        });
        cfg
    }

    /// Open a SQL session with pgcutover's session settings. The connection task is spawned
    /// on the runtime and ends when the client is dropped.
    pub async fn connect(&self, application_name: &str) -> Result<Client, ConnError> {
        if self.sslmode == SslMode::Require {
            return Err(ConnError::TlsUnsupported {
                target: self.to_string(),
            });
        }
        let (client, connection) = self
            .pg_config(application_name)
            .connect(NoTls)
            .await
            .map_err(|source| ConnError::Connect {
                target: self.to_string(),
                source,
            })?;
        tokio::spawn(async move {
            // The error reaches the caller through the client's next call; a closed connection
            // after the client was dropped is the normal end.
            let _ = connection.await;
        });
        client
            .batch_execute(SESSION_SETTINGS)
            .await
            .map_err(|source| ConnError::Setup {
                target: self.to_string(),
                source,
            })?;
        Ok(client)
    }

    /// libpq keyword/value string for child processes (`pg_dump`, `psql`), without the
    /// password: that goes in the child's `PGPASSWORD`, which no `ps` listing shows.
    pub fn libpq_conninfo(&self) -> String {
        let q = |v: &str| format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"));
        let sslmode = match self.sslmode {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
        };
        format!(
            "host={} port={} user={} dbname={} sslmode={} connect_timeout={}",
            q(&self.host),
            self.port,
            q(&self.user),
            q(&self.dbname),
            sslmode,
            self.connect_timeout.as_secs().max(1)
        )
    }

    /// Environment for a child process that connects with [`Self::libpq_conninfo`].
    pub fn child_env(&self) -> Vec<(String, String)> {
        let mut env = vec![
            ("PGAPPNAME".to_string(), "pgcutover".to_string()),
            ("PGCONNECT_TIMEOUT".to_string(), "10".to_string()),
        ];
        if let Some(p) = &self.password {
            env.push(("PGPASSWORD".to_string(), p.expose().to_string()));
        }
        env
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls_and_hides_the_password() {
        let c =
            ConnInfo::parse("postgres://app:s3cret@db.example:6543/shop?sslmode=disable").unwrap();
        assert_eq!(c.host, "db.example");
        assert_eq!(c.port, 6543);
        assert_eq!(c.user, "app");
        assert_eq!(c.dbname, "shop");
        assert_eq!(c.sslmode, SslMode::Disable);
        assert_eq!(c.password.as_ref().unwrap().expose(), "s3cret");
        let shown = format!("{c} {c:?} {}", c.libpq_conninfo());
        assert!(!shown.contains("s3cret"), "{shown}");
    }

    #[test]
    fn defaults_like_libpq() {
        let c = ConnInfo::parse("host=/tmp/sock user=bob").unwrap();
        assert!(c.is_unix_socket());
        assert_eq!((c.port, c.dbname.as_str()), (5432, "bob"));
        assert!(ConnInfo::parse("postgres://a@h1,h2/db").is_err());
        assert!(ConnInfo::parse("not a url at all ===").is_err());
    }

    #[test]
    fn conninfo_quotes_values() {
        let c = ConnInfo::parse("host=h user='o\\'brien' dbname='my db'").unwrap();
        assert!(
            c.libpq_conninfo()
                .contains("user='o\\'brien' dbname='my db'")
        );
    }
}
