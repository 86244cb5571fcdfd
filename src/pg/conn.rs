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

/// Session settings every pgcutover SQL session runs with. No timeouts: a load's sessions
/// wait idle while others copy, for hours on a big database, and a site that ends idle
/// sessions (`idle_session_timeout`, PostgreSQL 14+, hence set only there) must not end
/// them. `lc_monetary = 'C'`: `money` is printed and parsed by that locale, and a source set
/// to `de_DE` prints `1.234,56 €`, which a target in another locale cannot read.
/// `xmloption = content`: a target set to `document` would refuse the XML fragments
/// (`<a/><b/>`, text around elements) an `xml` column may hold. `row_security = off`: a
/// query that a row-level security policy would filter fails instead of silently reading
/// or writing fewer rows (see [`crate::load::preflight`]). `default_transaction_read_only =
/// off` and `default_transaction_isolation = 'read committed'`: a database set to start its
/// sessions read-only (an operator keeping applications off the target until the switch, a
/// source fenced for the drain) or serializable fences applications, not the migration; the
/// apply's two sessions under serializable would pay for predicate locks and could fail each
/// other. What must read a snapshot says so itself (`BEGIN ISOLATION LEVEL REPEATABLE READ
/// READ ONLY`). Child processes get the same two as they need them (see
/// [`crate::load::schema`]).
pub const SESSION_SETTINGS: &str = "SET DateStyle = 'ISO, YMD'; SET TimeZone = 'UTC'; \
     SET IntervalStyle = 'postgres'; SET extra_float_digits = 3; SET bytea_output = 'hex'; \
     SET lc_monetary = 'C'; SET xmloption = content; SET row_security = off; \
     SET statement_timeout = 0; SET lock_timeout = 0; \
     SET default_transaction_read_only = off; \
     SET default_transaction_isolation = 'read committed'; \
     SET idle_in_transaction_session_timeout = 0; \
     SELECT pg_catalog.set_config('idle_session_timeout', '0', false) \
      WHERE pg_catalog.current_setting('server_version_num')::int >= 140000";

const KEEPALIVE_IDLE: Duration = Duration::from_secs(30);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_RETRIES: u32 = 3;

/// libpq's `sslmode` values that pgcutover speaks (`allow` and `verify-ca` are refused with
/// a message; see [`super::tls`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyFull,
}

impl SslMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

#[derive(Clone, PartialEq, Eq)]
pub struct ConnInfo {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub dbname: String,
    pub password: Option<Secret>,
    pub sslmode: SslMode,
    /// CA certificates for `verify-full`.
    pub sslrootcert: Option<PathBuf>,
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
    #[error("cannot set up TLS for {target}: {message}")]
    Tls { target: String, message: String },
    #[error(
        "cannot connect to {target}: no session within {secs:.0} s (connect_timeout): the \
         connection was accepted and never answered"
    )]
    Timeout { target: String, secs: f64 },
}

impl ConnError {
    /// Whether connecting again later can succeed without anyone fixing anything: the server
    /// did not answer, refused the connection, was starting or shutting down, or had no free
    /// connection slot. Refused credentials, a database or role that does not exist, and TLS
    /// failures are not.
    pub fn is_transient(&self) -> bool {
        match self {
            ConnError::Connect { source, .. } | ConnError::Setup { source, .. } => {
                crate::pg::is_transient(source) && !source.to_string().contains("TLS")
            }
            ConnError::Tls { .. } => false,
            ConnError::Timeout { .. } => true,
        }
    }

    /// The server answered, with an error (too many connections, a refused password, a
    /// server starting up): the network path to it works.
    pub fn server_answered(&self) -> bool {
        match self {
            ConnError::Connect { source, .. } | ConnError::Setup { source, .. } => {
                source.as_db_error().is_some()
            }
            ConnError::Tls { .. } => true,
            ConnError::Timeout { .. } => false,
        }
    }

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
            ConnError::Tls { .. } => {
                "check sslmode and sslrootcert in the url (sslrootcert must be a PEM file)".into()
            }
            ConnError::Timeout { .. } => "check that the server is up and answering, and what \
                sits between it and pgcutover (a pooler whose pool is full, a firewall); raise \
                connect_timeout in the url if it is only slow"
                .into(),
        }
    }
}

impl ConnInfo {
    /// Parse a URL (`postgres://user@host:port/db?sslmode=...`) or a `key=value` string.
    /// Missing parts default like libpq: port 5432, user `postgres`, database = user.
    pub fn parse(text: &str) -> Result<ConnInfo, String> {
        let (rest, sslmode, sslrootcert) = split_ssl_params(text)?;
        let cfg = tokio_postgres::Config::from_str(&rest).map_err(|e| {
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
        let sslmode = match sslmode.as_deref() {
            None | Some("prefer") => SslMode::Prefer,
            Some("disable") => SslMode::Disable,
            Some("require") => SslMode::Require,
            Some("verify-full") => SslMode::VerifyFull,
            Some("verify-ca") => {
                return Err(
                    "has sslmode=verify-ca, which pgcutover does not offer: use \
                            verify-full (checks the host name too) or require"
                        .into(),
                );
            }
            Some(other) => return Err(format!("has an unknown sslmode {other:?}")),
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
            sslrootcert: sslrootcert.map(PathBuf::from),
            connect_timeout,
        })
    }

    pub fn is_unix_socket(&self) -> bool {
        self.host.starts_with('/')
    }

    /// TCP keepalives end a session whose server or network went away without a word (a
    /// host that died, a firewall or NAT that forgot the connection) within about a minute of
    /// silence: probes after [`KEEPALIVE_IDLE`], [`KEEPALIVE_RETRIES`] of them
    /// [`KEEPALIVE_INTERVAL`] apart. The session's next call then fails as a broken
    /// connection, which the load and the change stream retry. A session waiting for a long
    /// statement is not affected: the server's kernel answers the probes. `tcp_user_timeout`
    /// is not set: Linux also applies it to a peer that keeps its receive window shut, which
    /// is what a target backend waiting on a lock does to an apply session that pipelined
    /// more than the socket holds, and it would cut that session.
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
            .keepalives_idle(KEEPALIVE_IDLE)
            .keepalives_interval(KEEPALIVE_INTERVAL)
            .keepalives_retries(KEEPALIVE_RETRIES);
        if let Some(p) = &self.password {
            cfg.password(p.expose());
        }
        cfg.ssl_mode(match self.sslmode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            SslMode::Require | SslMode::VerifyFull => tokio_postgres::config::SslMode::Require,
        });
        cfg
    }

    /// Open a SQL session with pgcutover's session settings. The connection task is spawned
    /// on the runtime and ends when the client is dropped. `connect_timeout` bounds it all,
    /// as in libpq: tokio-postgres applies it to the TCP connection only, and a server (or a
    /// pooler, a load balancer, a firewall) that accepts the connection and then never
    /// answers would hold the caller for ever.
    pub async fn connect(&self, application_name: &str) -> Result<Client, ConnError> {
        self.connect_with(application_name, true).await
    }

    /// A session without pgcutover's session settings, for a check that must leave the
    /// server connection as it found it: behind a connection pooler in transaction mode, a
    /// `SET` would stay on a server connection that the pooler then hands to its other
    /// clients.
    pub async fn connect_plain(&self, application_name: &str) -> Result<Client, ConnError> {
        self.connect_with(application_name, false).await
    }

    async fn connect_with(
        &self,
        application_name: &str,
        settings: bool,
    ) -> Result<Client, ConnError> {
        tokio::time::timeout(
            self.connect_timeout,
            self.open_session(application_name, settings),
        )
        .await
        .unwrap_or_else(|_| {
            Err(ConnError::Timeout {
                target: self.to_string(),
                secs: self.connect_timeout.as_secs_f64(),
            })
        })
    }

    async fn open_session(
        &self,
        application_name: &str,
        settings: bool,
    ) -> Result<Client, ConnError> {
        let cfg = self.pg_config(application_name);
        let connect_err = |source| ConnError::Connect {
            target: self.to_string(),
            source,
        };
        // The connection task ends when the client is dropped; its errors reach the caller
        // through the client's next call.
        let client = if self.sslmode == SslMode::Disable {
            let (client, connection) = cfg.connect(NoTls).await.map_err(connect_err)?;
            tokio::spawn(async move {
                let _ = connection.await;
            });
            client
        } else {
            let tls = super::tls::client_config(self.sslmode, self.sslrootcert.as_deref())
                .map_err(|message| ConnError::Tls {
                    target: self.to_string(),
                    message,
                })?;
            let tls = tokio_postgres_rustls::MakeRustlsConnect::new(tls);
            let (client, connection) = cfg.connect(tls).await.map_err(connect_err)?;
            tokio::spawn(async move {
                let _ = connection.await;
            });
            client
        };
        if settings {
            client
                .batch_execute(SESSION_SETTINGS)
                .await
                .map_err(|source| ConnError::Setup {
                    target: self.to_string(),
                    source,
                })?;
        }
        Ok(client)
    }

    /// libpq keyword/value string for child processes (`pg_dump`, `psql`), without the
    /// password: that goes in the child's `PGPASSWORD`, which no `ps` listing shows.
    pub fn libpq_conninfo(&self) -> String {
        let q = |v: &str| format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"));
        let mut s = format!(
            "host={} port={} user={} dbname={} sslmode={} connect_timeout={}",
            q(&self.host),
            self.port,
            q(&self.user),
            q(&self.dbname),
            self.sslmode.as_str(),
            self.connect_timeout.as_secs().max(1)
        );
        if let Some(root) = &self.sslrootcert {
            s.push_str(&format!(" sslrootcert={}", q(&root.to_string_lossy())));
        }
        s
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

/// Take `sslmode` and `sslrootcert` out of a URL or key=value string (tokio-postgres knows
/// neither `verify-full` nor `sslrootcert`), returning the rest and the two values.
fn split_ssl_params(text: &str) -> Result<(String, Option<String>, Option<String>), String> {
    let (mut mode, mut root) = (None, None);
    let mut take = |key: &str, value: String| match key {
        "sslmode" => {
            mode = Some(value);
            true
        }
        "sslrootcert" => {
            root = Some(value);
            true
        }
        _ => false,
    };
    let rest = if text.starts_with("postgres://") || text.starts_with("postgresql://") {
        match text.split_once('?') {
            None => text.to_string(),
            Some((base, query)) => {
                let kept: Vec<&str> = query
                    .split('&')
                    .filter(|kv| {
                        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                        !take(k, percent_decode(v))
                    })
                    .collect();
                if kept.is_empty() {
                    base.to_string()
                } else {
                    format!("{base}?{}", kept.join("&"))
                }
            }
        }
    } else {
        let kept: Vec<&str> = text
            .split_whitespace()
            .filter(|tok| {
                let (k, v) = tok.split_once('=').unwrap_or((tok, ""));
                !take(k.trim(), v.trim_matches('\'').to_string())
            })
            .collect();
        kept.join(" ")
    };
    Ok((rest, mode, root))
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(v);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
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
    fn ssl_settings_are_ours() {
        let c = ConnInfo::parse(
            "postgres://a@h/db?sslmode=verify-full&sslrootcert=%2Fetc%2Frds.pem&application_name=x",
        )
        .unwrap();
        assert_eq!(c.sslmode, SslMode::VerifyFull);
        assert_eq!(
            c.sslrootcert.as_deref(),
            Some(std::path::Path::new("/etc/rds.pem"))
        );
        let info = c.libpq_conninfo();
        assert!(info.contains("sslmode=verify-full "), "{info}");
        assert!(info.ends_with(" sslrootcert='/etc/rds.pem'"), "{info}");
        let c = ConnInfo::parse("host=h user=u sslmode=require").unwrap();
        assert_eq!(c.sslmode, SslMode::Require);
        assert_eq!(
            ConnInfo::parse("postgres://a@h/db").unwrap().sslmode,
            SslMode::Prefer
        );
        assert!(
            ConnInfo::parse("postgres://a@h/db?sslmode=verify-ca")
                .unwrap_err()
                .contains("verify-full")
        );
        assert!(ConnInfo::parse("postgres://a@h/db?sslmode=bogus").is_err());
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
