//! Shared test harness: a source and a target cluster, configs pointing at them, and an
//! order-independent digest of every table.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pgcutover::config::Config;
use pgcutover::daemon::Daemon;
use pgcutover::pg::cluster::{ClusterOptions, TempCluster};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_postgres::Client;

pub struct Pair {
    pub source: TempCluster,
    pub target: TempCluster,
    pub state: tempfile::TempDir,
}

impl Pair {
    pub async fn start() -> Pair {
        Pair::start_with(ClusterOptions::default()).await
    }

    pub async fn start_with(source_opts: ClusterOptions) -> Pair {
        Pair::start_both(source_opts, ClusterOptions::default()).await
    }

    /// Both clusters with the same options.
    pub async fn start_with_both(opts: ClusterOptions) -> Pair {
        Pair::start_both(opts.clone(), opts).await
    }

    pub async fn start_both(source_opts: ClusterOptions, target_opts: ClusterOptions) -> Pair {
        let (source, target) = tokio::task::spawn_blocking(move || {
            let s = TempCluster::start(&source_opts).expect("start source cluster");
            let t = TempCluster::start(&target_opts).expect("start target cluster");
            (s, t)
        })
        .await
        .unwrap();
        for c in [&source, &target] {
            let admin = c.conn("postgres").connect("test").await.unwrap();
            admin.batch_execute("CREATE DATABASE app").await.unwrap();
        }
        let state = tempfile::tempdir().unwrap();
        Pair {
            source,
            target,
            state,
        }
    }

    pub async fn src(&self) -> Client {
        self.source.conn("app").connect("test").await.unwrap()
    }

    pub async fn tgt(&self) -> Client {
        self.target.conn("app").connect("test").await.unwrap()
    }

    /// TOML for this pair; `extra` is appended inside [replication].
    pub fn toml(&self, replication_extra: &str) -> String {
        format!(
            "[source]\nurl = {:?}\n[target]\nurl = {:?}\n[replication]\nmigration_id = \"t\"\n{replication_extra}\n[api]\nlisten = \"127.0.0.1:0\"\n[state]\ndir = {:?}\n",
            self.source.url("app"),
            self.target.url("app"),
            self.state.path().display().to_string()
        )
    }

    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            (
                "PGCUTOVER_SOURCE_PASSWORD".into(),
                self.source.password().expose().into(),
            ),
            (
                "PGCUTOVER_TARGET_PASSWORD".into(),
                self.target.password().expose().into(),
            ),
        ]
    }

    pub fn config(&self, replication_extra: &str) -> Config {
        Config::from_parts(
            &self.toml(replication_extra),
            &self.env(),
            self.state.path(),
        )
        .expect("valid test config")
    }
}

/// Plain tables and leaf partitions outside the system schemas and pgcutover's own.
pub async fn user_tables(c: &Client) -> Vec<String> {
    c.query(
        "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c
           JOIN pg_namespace n ON n.oid = c.relnamespace
          WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'pgcutover')
            AND n.nspname NOT LIKE 'pg\\_%'
          ORDER BY 1",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

/// Row count and an order-independent digest of every row's text, per table.
pub async fn digests(c: &Client) -> BTreeMap<String, (i64, String)> {
    let mut out = BTreeMap::new();
    for t in user_tables(c).await {
        let r = c
            .query_one(
                &format!(
                    "SELECT count(*), coalesce(md5(string_agg(r, E'\\n' ORDER BY r COLLATE \"C\")), '')
                       FROM (SELECT x::text AS r FROM ONLY {t} x) s"
                ),
                &[],
            )
            .await
            .unwrap();
        out.insert(t, (r.get(0), r.get(1)));
    }
    out
}

/// Poll `check` every 100 ms until it is true or `limit` passes.
pub async fn wait_for<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < limit {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out after {limit:?} waiting for {what}");
}

/// The single bigint a query returns.
pub async fn scalar(c: &Client, sql: &str) -> i64 {
    c.query_one(sql, &[]).await.unwrap().get(0)
}

/// Assert each `(query, what)` counts exactly one object.
pub async fn assert_one_each(c: &Client, checks: &[(&str, &str)]) {
    for (sql, what) in checks {
        assert_eq!(scalar(c, sql).await, 1, "{what}: expected exactly one");
    }
}

pub async fn slot_count(c: &Client) -> i64 {
    c.query_one("SELECT count(*) FROM pg_replication_slots", &[])
        .await
        .unwrap()
        .get(0)
}

pub async fn publication_count(c: &Client) -> i64 {
    c.query_one("SELECT count(*) FROM pg_publication", &[])
        .await
        .unwrap()
        .get(0)
}

pub async fn has_pgcutover_schema(c: &Client) -> bool {
    c.query_one("SELECT to_regnamespace('pgcutover') IS NOT NULL", &[])
        .await
        .unwrap()
        .get(0)
}

pub fn fixture(name: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name),
    )
    .unwrap()
}

/// One HTTP/1.1 request on a fresh connection; the status code and the JSON body.
pub async fn http(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> (u16, serde_json::Value) {
    http_with_body(addr, method, path, token, "").await
}

/// [`http`] with a request body.
pub async fn http_with_body(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (u16, serde_json::Value) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    s.write_all(
        format!(
            "{method} {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.unwrap();
    let (head, body) = buf.split_once("\r\n\r\n").unwrap();
    let code = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (
        code,
        serde_json::from_str(body).unwrap_or(serde_json::Value::Null),
    )
}

pub async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, serde_json::Value) {
    http(addr, "GET", path, None).await
}

pub type Server = tokio::task::JoinHandle<Result<(), pgcutover::daemon::DaemonError>>;

/// A daemon on a free port of 127.0.0.1, stopped by sending on the returned channel.
pub async fn start_daemon(
    pair: &Pair,
    replication_extra: &str,
) -> (
    std::net::SocketAddr,
    tokio::sync::oneshot::Sender<()>,
    Server,
) {
    start_daemon_with(pair.config(replication_extra)).await
}

/// [`start_daemon`] with a configuration of one's own.
pub async fn start_daemon_with(
    cfg: Config,
) -> (
    std::net::SocketAddr,
    tokio::sync::oneshot::Sender<()>,
    Server,
) {
    init_logs();
    let daemon = Daemon::bind(cfg).await.unwrap();
    let addr = daemon.local_addr();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(daemon.run(async {
        let _ = stop_rx.await;
    }));
    (addr, stop_tx, server)
}

/// The source's current WAL position, as text.
pub async fn source_lsn(src: &Client) -> String {
    src.query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .unwrap()
        .get(0)
}

/// Wait until the target has applied everything the source committed up to now, or panic.
/// Needs a published table `marker (id serial PRIMARY KEY)`: a row inserted there commits
/// after the position read first, so once the target's applied position is past that
/// position *and* the newest marker is on the target, every transaction the source committed
/// (markers included, so that the two sides can be compared row for row) is on the target.
/// Markers go in at growing intervals while waiting, in case the stream was not yet running
/// when the first one committed (it would then be in the copy, not in the stream).
pub async fn wait_caught_up(src: &Client, tgt: &Client, limit: Duration) {
    let lsn = source_lsn(src).await;
    let start = Instant::now();
    let mut next_marker = Instant::now();
    let mut every = Duration::from_secs(1);
    let mut newest: i32 = 0;
    loop {
        if Instant::now() >= next_marker {
            newest = src
                .query_one("INSERT INTO marker DEFAULT VALUES RETURNING id", &[])
                .await
                .unwrap()
                .get(0);
            next_marker = Instant::now() + every;
            every = (every * 2).min(Duration::from_secs(8));
        }
        let done = tgt
            .query_one(
                "SELECT coalesce((SELECT applied_lsn > $1::text::pg_lsn FROM pgcutover.migration), false)
                        AND EXISTS (SELECT FROM marker WHERE id = $2)",
                &[&lsn, &newest],
            )
            .await
            .map(|r| r.get::<_, bool>(0))
            .unwrap_or(false);
        if done {
            return;
        }
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for the target to apply up to {lsn} and marker {newest}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Logs of in-process daemons, shown for failed tests (filter: PGCUTOVER_LOG, default info).
pub fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PGCUTOVER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// `pgcutover serve` as a child process (so it can be SIGKILLed); killed on drop.
pub struct DaemonProc {
    pub child: std::process::Child,
}

impl DaemonProc {
    pub fn spawn(pair: &Pair, replication_extra: &str) -> DaemonProc {
        let cfg_path = pair.state.path().join("pgcutover.toml");
        std::fs::write(&cfg_path, pair.toml(replication_extra)).unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(pair.state.path().join("daemon.log"))
            .unwrap();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_pgcutover"))
            .args(["--log-format", "json", "serve", "--config"])
            .arg(&cfg_path)
            .envs(pair.env())
            // Our own debug lines too, so that `assert_no_secrets` sees them.
            .env("PGCUTOVER_LOG", "pgcutover=debug,info")
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start the daemon");
        DaemonProc { child }
    }

    /// SIGKILL, and reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Peak resident memory so far, in bytes (Linux).
    pub fn peak_rss(&self) -> Option<u64> {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
        let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb * 1024)
    }
}

impl Drop for DaemonProc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Neither password is in any file under the state folder: the daemon's log (debug lines
/// included), the journal and reports, the schema archive and scripts.
pub fn assert_no_secrets(pair: &Pair) {
    let secrets = [
        pair.source.password().expose().to_string(),
        pair.target.password().expose().to_string(),
    ];
    let mut dirs = vec![pair.state.path().to_path_buf()];
    let mut files = 0;
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            let bytes = std::fs::read(&path).unwrap_or_default();
            for s in &secrets {
                assert!(
                    !bytes.windows(s.len()).any(|w| w == s.as_bytes()),
                    "a password is in {}",
                    path.display()
                );
            }
            files += 1;
        }
    }
    assert!(files >= 3, "only {files} files in the state folder");
}

/// The daemon's log so far (for failure messages).
pub fn daemon_log(pair: &Pair) -> String {
    std::fs::read_to_string(pair.state.path().join("daemon.log")).unwrap_or_default()
}

/// Writes to `churn` in small transactions (inserts, updates, deletes) until stopped; returns
/// how many transactions committed.
pub fn start_writer(
    client: Client,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let mut n: i64 = 0;
        let mut txns = 0;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) && txns < 1_000_000 {
            let sql = format!(
                "BEGIN;
                 INSERT INTO churn SELECT g, 0, CASE WHEN g % 3 = 0 THEN NULL WHEN g % 3 = 1 THEN ''
                                                     ELSE md5(g::text) END
                   FROM generate_series({a}, {b}) g;
                 UPDATE churn SET v = v + 1, note = CASE WHEN note IS NULL THEN '' ELSE NULL END
                  WHERE id IN ({a} - 7, {a} - 3, {a});
                 DELETE FROM churn WHERE id = {a} - 5;
                 COMMIT;",
                a = n,
                b = n + 4
            );
            client.batch_execute(&sql).await.unwrap();
            n += 5;
            txns += 1;
        }
        txns
    })
}

/// A TCP proxy on 127.0.0.1 in front of a server's port, whose connections can be made to go
/// silent the way a firewall or NAT gateway that forgot them does: they stay open, carry
/// nothing more either way, and no end ever arrives (what each side sends is read and
/// dropped). Connections made afterwards work, unless new ones are held too (accepted, and
/// never answered, as behind a firewall that drops everything). Everything ends when the
/// proxy is dropped.
pub struct Proxy {
    pub port: u16,
    epoch: tokio::sync::watch::Sender<u64>,
    hold: Arc<std::sync::atomic::AtomicBool>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub async fn start(upstream_port: u16) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (epoch, epoch_rx) = tokio::sync::watch::channel(0u64);
        let hold = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let holding = hold.clone();
        let accept = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                if holding.load(std::sync::atomic::Ordering::SeqCst) {
                    conns.spawn(async move {
                        let _held = client;
                        std::future::pending::<()>().await
                    });
                    continue;
                }
                let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", upstream_port)).await
                else {
                    continue;
                };
                let born = *epoch_rx.borrow();
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                conns.spawn(pump(cr, sw, epoch_rx.clone(), born));
                conns.spawn(pump(sr, cw, epoch_rx.clone(), born));
            }
        });
        Proxy {
            port,
            epoch,
            hold,
            accept,
        }
    }

    /// Every connection made so far goes silent.
    pub fn silence_existing(&self) {
        self.epoch.send_modify(|e| *e += 1);
    }

    /// New connections are accepted and never answered (`true`), or work again.
    pub fn hold_new(&self, on: bool) {
        self.hold.store(on, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Copy one direction until either end closes, or for ever drop what arrives once the
/// connection was silenced (its other end then never hears of a close either).
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    epoch: tokio::sync::watch::Receiver<u64>,
    born: u64,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) if *epoch.borrow() > born => return std::future::pending().await,
            Ok(0) | Err(_) => {
                let _ = to.shutdown().await;
                return;
            }
            Ok(n) => n,
        };
        if *epoch.borrow() > born {
            continue;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// PgBouncer in front of a cluster's databases, in the given `pool_mode`, with its own
/// configuration in a temporary directory (`.ci/run` installs it). Clients connect to `port`
/// as `postgres` without a password; PgBouncer logs in to the server with the cluster's.
/// Stopped when dropped.
pub struct Pooler {
    pub port: u16,
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl Pooler {
    pub async fn start(cluster: &TempCluster, pool_mode: &str) -> Pooler {
        use std::os::unix::process::CommandExt;
        let binary = ["/usr/sbin/pgbouncer", "/usr/bin/pgbouncer"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("pgbouncer is installed (.ci/run installs it)");
        // PgBouncer refuses to run as root: as root, it runs as the postgres OS user.
        let ids = |flag: &str| -> Option<u32> {
            let out = std::process::Command::new("id")
                .args([flag, "postgres"])
                .output()
                .ok()?;
            String::from_utf8_lossy(&out.stdout).trim().parse().ok()
        };
        let run_as =
            (unsafe { libc::geteuid() } == 0).then(|| (ids("-u").unwrap(), ids("-g").unwrap()));
        let dir = tempfile::tempdir().unwrap();
        let path = |name: &str| dir.path().join(name).display().to_string();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        std::fs::write(path("users.txt"), "\"postgres\" \"\"\n").unwrap();
        std::fs::write(
            path("pgbouncer.ini"),
            format!(
                "[databases]\n* = host=127.0.0.1 port={} user=postgres password={}\n\
                 [pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\n\
                 unix_socket_dir =\nauth_type = trust\nauth_file = {}\npool_mode = {pool_mode}\n\
                 logfile = {}\npidfile = {}\nmax_client_conn = 100\ndefault_pool_size = 10\n\
                 ignore_startup_parameters = extra_float_digits, options\n",
                cluster.port(),
                cluster.password().expose(),
                path("users.txt"),
                path("pgbouncer.log"),
                path("pgbouncer.pid"),
            ),
        )
        .unwrap();
        let mut cmd = std::process::Command::new(binary);
        cmd.arg(path("pgbouncer.ini"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        if let Some((uid, gid)) = run_as {
            for entry in std::fs::read_dir(dir.path()).unwrap() {
                std::os::unix::fs::chown(entry.unwrap().path(), Some(uid), Some(gid)).unwrap();
            }
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).unwrap();
            cmd.uid(uid).gid(gid);
        }
        let child = cmd.spawn().expect("start pgbouncer");
        let pooler = Pooler {
            port,
            child,
            _dir: dir,
        };
        let started = Instant::now();
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "pgbouncer did not listen on {port}: {}",
                std::fs::read_to_string(pooler._dir.path().join("pgbouncer.log"))
                    .unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        pooler
    }

    /// A URL of the database through the pooler (no password: the pooler trusts its clients).
    pub fn url(&self, dbname: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/{dbname}?sslmode=disable",
            self.port
        )
    }
}

impl Drop for Pooler {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
