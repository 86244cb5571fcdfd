//! Shared test harness: a source and a target cluster, configs pointing at them, and an
//! order-independent digest of every table.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use pgcutover::config::Config;
use pgcutover::pg::cluster::{ClusterOptions, TempCluster};
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

    async fn start_both(source_opts: ClusterOptions, target_opts: ClusterOptions) -> Pair {
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
