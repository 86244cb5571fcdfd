//! Throwaway PostgreSQL clusters, for the tests and for `pgcutover demo`.
//!
//! A cluster is made with the local server binaries (see [`super::tools`]) in a fresh
//! temporary folder, listens on a free port on 127.0.0.1 and on a socket in that folder, runs
//! with `wal_level = logical`, and is stopped and deleted when the value is dropped. When we
//! run as root, initdb and the server run as the `postgres` OS user (PostgreSQL refuses root).
//! The superuser `postgres` gets a random password and TCP connections use SCRAM, so every
//! connection made through a cluster exercises the same authentication path as production.

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use crate::pg::conn::ConnInfo;
use crate::secret::Secret;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("{tool} failed: {detail}")]
    Command { tool: String, detail: String },
    #[error(transparent)]
    Tool(#[from] super::tools::ToolError),
    #[error("cannot prepare the cluster folder: {0}")]
    Io(#[from] std::io::Error),
    #[error("running as root, but there is no `postgres` OS user to run the server as")]
    NoPostgresUser,
}

impl ClusterError {
    pub fn hint(&self) -> String {
        match self {
            ClusterError::Tool(e) => e.hint(),
            ClusterError::NoPostgresUser => {
                "create it (useradd --system postgres) or install the postgresql package".into()
            }
            _ => "the server log in the cluster folder says more; install the PostgreSQL \
                  server binaries (apt-get install postgresql) if they are missing"
                .into(),
        }
    }
}

/// How to make a cluster.
#[derive(Clone, Debug, Default)]
pub struct ClusterOptions {
    /// Extra `postgresql.conf` settings, appended last.
    pub settings: Vec<(String, String)>,
    /// `false` turns fsync off: fine for tests, wrong for benchmarks.
    pub durable: bool,
    /// Serve TLS only on TCP (a throwaway CA signs the server certificate, see
    /// [`TempCluster::ca_cert`]); plain TCP connections are rejected.
    pub tls: bool,
    /// Environment of the server's processes (e.g. `LOCPATH` for locales of a test's own).
    pub env: Vec<(String, String)>,
}

pub struct TempCluster {
    dir: tempfile::TempDir,
    bindir: PathBuf,
    port: u16,
    password: Secret,
    run_as: Option<(u32, u32)>,
    tls: bool,
    env: Vec<(String, String)>,
}

impl TempCluster {
    /// initdb, configure and start a cluster. Blocks (it runs initdb and pg_ctl).
    pub fn start(options: &ClusterOptions) -> Result<TempCluster, ClusterError> {
        let initdb = super::tools::find_tool("initdb", None, 0)?;
        let bindir = initdb.parent().map(Path::to_path_buf).unwrap_or_default();
        let run_as = if unsafe { libc::geteuid() } == 0 {
            Some(postgres_ids().ok_or(ClusterError::NoPostgresUser)?)
        } else {
            None
        };
        let dir = tempfile::Builder::new().prefix("pgcutover-pg-").tempdir()?;
        if let Some((uid, gid)) = run_as {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))?;
        }
        let password = Secret::new(random_token());
        let pwfile = dir.path().join("pwfile");
        std::fs::write(&pwfile, format!("{}\n", password.expose()))?;
        if let Some((uid, gid)) = run_as {
            std::os::unix::fs::chown(&pwfile, Some(uid), Some(gid))?;
        }
        let data = dir.path().join("data");
        let mut cluster = TempCluster {
            dir,
            bindir,
            port: 0,
            password,
            run_as,
            tls: options.tls,
            env: options.env.clone(),
        };
        cluster.run(
            "initdb",
            &[
                "-D",
                &data.to_string_lossy(),
                "-U",
                "postgres",
                "--pwfile",
                &pwfile.to_string_lossy(),
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "-E",
                "UTF8",
                "--no-locale",
                "--no-sync",
            ],
        )?;
        std::fs::remove_file(&pwfile)?;
        let mut conf = String::from("\n# pgcutover throwaway cluster\n");
        if options.tls {
            cluster.make_certificates(&data)?;
            conf.push_str("ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n");
            let hba_path = data.join("pg_hba.conf");
            let hba = std::fs::read_to_string(&hba_path)?;
            std::fs::write(
                &hba_path,
                format!("hostnossl all all 0.0.0.0/0 reject\n{hba}"),
            )?;
        }
        let sock = cluster.dir.path().to_string_lossy().into_owned();
        let base = [
            ("listen_addresses", "'127.0.0.1'".to_string()),
            ("unix_socket_directories", format!("'{sock}'")),
            ("wal_level", "logical".into()),
            ("max_wal_senders", "20".into()),
            ("max_replication_slots", "20".into()),
            ("max_connections", "100".into()),
            ("fsync", if options.durable { "on" } else { "off" }.into()),
            (
                "synchronous_commit",
                if options.durable { "on" } else { "off" }.into(),
            ),
            (
                "full_page_writes",
                if options.durable { "on" } else { "off" }.into(),
            ),
            ("logging_collector", "off".into()),
            ("log_min_messages", "warning".into()),
        ];
        for (k, v) in base.iter().map(|(k, v)| (k.to_string(), v.clone())) {
            conf.push_str(&format!("{k} = {v}\n"));
        }
        for (k, v) in &options.settings {
            conf.push_str(&format!("{k} = {v}\n"));
        }
        let conf_path = data.join("postgresql.conf");
        let mut existing = std::fs::read_to_string(&conf_path)?;
        existing.push_str(&conf);
        std::fs::write(&conf_path, existing)?;

        // A free port can be taken between our probe and the server's bind: try a few.
        let mut last = None;
        for _ in 0..5 {
            cluster.port = free_port()?;
            let log = cluster.dir.path().join("server.log");
            match cluster.run(
                "pg_ctl",
                &[
                    "-D",
                    &data.to_string_lossy(),
                    "-l",
                    &log.to_string_lossy(),
                    "-o",
                    &format!("-p {}", cluster.port),
                    "-w",
                    "-t",
                    "60",
                    "start",
                ],
            ) {
                Ok(_) => return Ok(cluster),
                Err(e) => {
                    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
                    last = Some(ClusterError::Command {
                        tool: "pg_ctl start".into(),
                        detail: format!("{e}; server log: {}", tail(&log_text, 800)),
                    });
                }
            }
        }
        Err(last.expect("loop ran"))
    }

    fn command(&self, tool: &str) -> Command {
        let mut cmd = Command::new(self.bindir.join(tool));
        cmd.current_dir(self.dir.path());
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        if let Some((uid, gid)) = self.run_as {
            cmd.uid(uid).gid(gid);
        }
        cmd
    }

    fn run(&self, tool: &str, args: &[&str]) -> Result<Output, ClusterError> {
        let out = self
            .command(tool)
            .args(args)
            .output()
            .map_err(|e| ClusterError::Command {
                tool: tool.into(),
                detail: e.to_string(),
            })?;
        if out.status.success() {
            Ok(out)
        } else {
            Err(ClusterError::Command {
                tool: tool.into(),
                detail: format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ),
            })
        }
    }

    /// CA certificate that signed a TLS cluster's server certificate (for `sslrootcert`).
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    /// A throwaway CA and a server certificate for 127.0.0.1 and localhost, made by openssl.
    fn make_certificates(&self, data: &Path) -> Result<(), ClusterError> {
        let dir = self.dir.path();
        let openssl = |args: &[&str]| -> Result<(), ClusterError> {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(dir)
                .output()
                .map_err(|e| ClusterError::Command {
                    tool: "openssl".into(),
                    detail: e.to_string(),
                })?;
            if out.status.success() {
                Ok(())
            } else {
                Err(ClusterError::Command {
                    tool: "openssl".into(),
                    detail: String::from_utf8_lossy(&out.stderr).into_owned(),
                })
            }
        };
        std::fs::write(
            dir.join("san.ext"),
            "subjectAltName = IP:127.0.0.1, DNS:localhost\nbasicConstraints = CA:FALSE\n",
        )?;
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=pgcutover test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=keyCertSign,cRLSign",
        ])?;
        openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ])?;
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "san.ext",
            "-out",
            "server.crt",
        ])?;
        for f in ["server.crt", "server.key"] {
            let to = data.join(f);
            std::fs::copy(dir.join(f), &to)?;
            std::fs::set_permissions(&to, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
            if let Some((uid, gid)) = self.run_as {
                std::os::unix::fs::chown(&to, Some(uid), Some(gid))?;
            }
        }
        Ok(())
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn bindir(&self) -> &Path {
        &self.bindir
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn password(&self) -> &Secret {
        &self.password
    }

    /// A URL without the password (pass it separately, as in production).
    pub fn url(&self, dbname: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/{dbname}?sslmode={}",
            self.port,
            if self.tls { "require" } else { "disable" }
        )
    }

    /// Connection settings for the superuser, password included.
    pub fn conn(&self, dbname: &str) -> ConnInfo {
        let mut c = ConnInfo::parse(&self.url(dbname)).expect("well-formed url");
        c.password = Some(self.password.clone());
        c
    }

    /// Connection settings for another role with its password.
    pub fn conn_as(&self, dbname: &str, user: &str, password: &str) -> ConnInfo {
        let mut c = self.conn(dbname);
        c.user = user.to_string();
        c.password = Some(Secret::new(password));
        c
    }

    /// Stop the server at once, as a crash would (no shutdown checkpoint).
    pub fn stop_immediate(&self) {
        let data = self.dir.path().join("data");
        let _ = self
            .command("pg_ctl")
            .args([
                "-D",
                &data.to_string_lossy(),
                "-m",
                "immediate",
                "-w",
                "-t",
                "30",
                "stop",
            ])
            .output();
    }
}

impl TempCluster {
    /// Restart the server as a standby with nothing to follow: it stays in recovery and
    /// serves read-only sessions (what a replica, or Aurora's reader endpoint, looks like).
    pub fn restart_as_standby(&self) -> Result<(), ClusterError> {
        self.stop_immediate();
        let signal = self.dir.path().join("data").join("standby.signal");
        std::fs::write(&signal, "")?;
        if let Some((uid, gid)) = self.run_as {
            std::os::unix::fs::chown(&signal, Some(uid), Some(gid))?;
        }
        self.restart()
    }

    /// Start the server again on its port, after [`TempCluster::stop_immediate`] (it recovers
    /// from its WAL as after a crash).
    pub fn restart(&self) -> Result<(), ClusterError> {
        let data = self.dir.path().join("data");
        let log = self.dir.path().join("server.log");
        self.run(
            "pg_ctl",
            &[
                "-D",
                &data.to_string_lossy(),
                "-l",
                &log.to_string_lossy(),
                "-o",
                &format!("-p {}", self.port),
                "-w",
                "-t",
                "60",
                "start",
            ],
        )
        .map(|_| ())
    }
}

impl Drop for TempCluster {
    fn drop(&mut self) {
        self.stop_immediate();
    }
}

fn free_port() -> std::io::Result<u16> {
    let l = TcpListener::bind(("127.0.0.1", 0))?;
    Ok(l.local_addr()?.port())
}

fn tail(s: &str, n: usize) -> &str {
    let start = s.len().saturating_sub(n);
    let start = (start..s.len())
        .find(|&i| s.is_char_boundary(i))
        .unwrap_or(s.len());
    &s[start..]
}

fn postgres_ids() -> Option<(u32, u32)> {
    let name = std::ffi::CString::new("postgres").ok()?;
    // SAFETY: getpwnam returns a pointer into static storage or NULL; we copy the two ids
    // out before any other call could overwrite it.
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    if pw.is_null() {
        return None;
    }
    let (uid, gid) = unsafe { ((*pw).pw_uid, (*pw).pw_gid) };
    Some((uid, gid))
}

/// 32 hex characters from the OS's random source.
pub fn random_token() -> String {
    let mut bytes = [0u8; 16];
    let ok = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .is_ok();
    if !ok {
        // Not a secret worth much without /dev/urandom, but still unique per run.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_nanos();
        bytes = (t ^ u128::from(std::process::id())).to_le_bytes();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
