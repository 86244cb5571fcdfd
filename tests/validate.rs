//! Validation against real clusters: an exact copy passes; every kind of difference is caught
//! and named; a validation through the daemon is exact while writes keep coming.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::*;
use pgcutover::validate::{self, CheckName, Mode, Options, Point, Progress, Report};
use tokio_postgres::Client;

const LIMIT: Duration = Duration::from_secs(120);
/// Every schema, not only `public`.
const ALL: &str = "tables = [\"*.*\"]";

async fn setup(pair: &Pair) {
    let src = pair.src().await;
    src.batch_execute(&fixture("alltypes.sql")).await.unwrap();
    src.batch_execute(&fixture("cdc_extra.sql")).await.unwrap();
}

/// Load the target with the daemon, wait until it streams, and stop it.
async fn load(pair: &Pair) {
    let (addr, stop_tx, server) = start_daemon(pair, ALL).await;
    wait_for(LIMIT, "the change stream", || async {
        get(addr, "/status").await.1["stage"] == "cdc"
    })
    .await;
    wait_caught_up(&pair.src().await, &pair.tgt().await, LIMIT).await;
    stop_tx.send(()).unwrap();
    server.await.unwrap().unwrap();
}

/// What a cutover does to sequences: the target gets the source's values.
async fn copy_sequences(src: &Client, tgt: &Client) {
    for r in src
        .query(
            "SELECT format('%I.%I', schemaname, sequencename), last_value FROM pg_sequences
              WHERE last_value IS NOT NULL",
            &[],
        )
        .await
        .unwrap()
    {
        let (name, v): (String, i64) = (r.get(0), r.get(1));
        tgt.execute("SELECT setval($1::text::regclass, $2)", &[&name, &v])
            .await
            .unwrap();
    }
}

async fn validate(pair: &Pair, opts: &Options) -> Report {
    validate::run(&pair.config(ALL), opts, Point::Static, &Progress::default())
        .await
        .unwrap()
}

fn check(r: &Report, name: CheckName) -> &validate::Check {
    r.checks.iter().find(|c| c.name == name).unwrap()
}

fn problems(r: &Report, name: CheckName) -> String {
    check(r, name).problems.join("\n")
}

/// Run the command line; its exit code and stdout.
fn cli(pair: &Pair, args: &[&str]) -> (i32, String) {
    let cfg = pair.state.path().join("validate.toml");
    std::fs::write(&cfg, pair.toml(ALL)).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pgcutover"))
        .arg("validate")
        .args(args)
        .arg("--config")
        .arg(&cfg)
        .envs(pair.env())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exact_copy_passes_and_every_difference_is_named() {
    let pair = Pair::start().await;
    setup(&pair).await;
    load(&pair).await;
    let (src, tgt) = (pair.src().await, pair.tgt().await);
    copy_sequences(&src, &tgt).await;

    // The exact copy: every check passes, through the library and the command line.
    let r = validate(&pair, &Options::new(Mode::Full)).await;
    assert!(r.passed, "{}", validate::render::text(&r));
    assert_eq!(r.consistency.kind, "static");
    assert_eq!(r.mismatches, 0);
    for t in &r.tables {
        assert_eq!(t.checksum, "equal", "{t:?}");
        assert_eq!(t.source_rows, t.target_rows, "{t:?}");
    }
    let empty = r.tables.iter().find(|t| t.table == "public.empty_one");
    assert_eq!(empty.unwrap().source_rows, Some(0));
    assert!(r.tables.iter().any(|t| t.table == "Mixed Case.Order"));
    assert!(
        r.tables
            .iter()
            .any(|t| t.table == "public.Weird \"Name\" ; DROP")
    );
    let (code, out) = cli(&pair, &["--full"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("PASSED"), "{out}");
    let (code, out) = cli(&pair, &["--quick", "--json"]);
    assert_eq!(code, 0, "{out}");
    let quick: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(quick["consistency"]["kind"], "live");
    assert_eq!(quick["tables"][0]["rows_estimated"], true);

    // Every kind of difference, each on the target.
    tgt.batch_execute(
        "UPDATE alltypes SET num = num + 0.0001 WHERE id = 777;
         UPDATE alltypes SET t = '' WHERE id = 4;
         DELETE FROM big WHERE id = 12345;
         INSERT INTO \"Mixed Case\".\"Order\" VALUES ('zz', 1, 1);
         INSERT INTO no_pk VALUES (1, '');
         SELECT setval('counters_id_seq', 5);
         DROP INDEX big_payload_prefix;
         ALTER TABLE people ALTER COLUMN name TYPE varchar(50);",
    )
    .await
    .unwrap();
    let r = validate(&pair, &Options::new(Mode::Full)).await;
    assert!(!r.passed);
    let sums = problems(&r, CheckName::Checksums);
    let line = |table: &str| {
        sums.lines()
            .find(|l| l.starts_with(&format!("table {table}:")))
            .unwrap_or_else(|| panic!("no checksum problem for {table}:\n{sums}"))
            .to_string()
    };
    let alltypes = line("public.alltypes");
    assert!(alltypes.contains("changed 4"), "{alltypes}");
    assert!(alltypes.contains("changed 777"), "{alltypes}");
    assert!(
        alltypes.contains("key range(s): \"id\" < "),
        "a key range: {alltypes}"
    );
    assert!(
        line("public.big").contains("missing on target 12345"),
        "{sums}"
    );
    assert!(
        line("Mixed Case.Order").contains("extra on target (zz,1)"),
        "{sums}"
    );
    let no_pk = line("public.no_pk");
    assert!(
        no_pk.contains("2 time(s) on the source and 3 on the target"),
        "{no_pk}"
    );
    assert!(no_pk.contains("multiset"), "{no_pk}");
    // Nothing else differs, and no value but keys is shown.
    assert_eq!(sums.lines().count(), 4, "{sums}");
    assert_eq!(r.mismatches, 4);
    assert!(!sums.contains("dup"), "a row value leaked: {sums}");

    let counts = problems(&r, CheckName::RowCounts);
    assert!(
        counts.contains("table public.big: 210000 rows on the source, 209999 on the target"),
        "{counts}"
    );
    assert!(
        counts.contains("table public.no_pk: 1004 rows on the source, 1005"),
        "{counts}"
    );
    let seqs = problems(&r, CheckName::Sequences);
    assert!(
        seqs.contains(
            "sequence public.counters_id_seq would hand out 6 on the target but 101 on the source"
        ),
        "{seqs}"
    );
    let schema = problems(&r, CheckName::Schema);
    assert!(
        schema.contains("index public.big_payload_prefix is on the source but not on the target"),
        "{schema}"
    );
    assert!(
        schema.contains("column public.people.name differs: the source has `text`, the target `character varying(50)`"),
        "{schema}"
    );
    assert!(check(&r, CheckName::Keys).passed);

    // The command line says so with exit code 1, and JSON for machines.
    let (code, out) = cli(&pair, &["--full", "--json", "--tables", "public.big"]);
    assert_eq!(code, 1, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["tables"].as_array().unwrap().len(), 1);
    assert_eq!(
        v["tables"][0]["differences"][0]["kind"],
        "missing_on_target"
    );
    assert_eq!(v["tables"][0]["differences"][0]["key"], "12345");
    // Exact counts without checksums.
    let (code, out) = cli(
        &pair,
        &[
            "--full",
            "--skip",
            "checksums",
            "--json",
            "--tables",
            "public.big",
        ],
    );
    assert_eq!(code, 1, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["tables"][0]["source_rows"], 210000);
    assert_eq!(v["tables"][0]["target_rows"], 209999);
    assert_eq!(v["tables"][0]["rows_estimated"], false);
    assert_eq!(v["tables"][0]["checksum"], "not_compared");
    // The last report is kept in the state folder.
    let saved = validate::load_last(pair.state.path()).unwrap().unwrap();
    assert_eq!(saved.tables.len(), 1);

    // Sampling compares part of the key ranges; at 100 % it finds the missing row too.
    let mut o = Options::new(Mode::Full);
    o.tables = vec![pgcutover::pg::name::TablePattern::parse("public.big").unwrap()];
    o.sample_pct = Some(5.0);
    let r = validate(&pair, &o).await;
    let d = r.tables[0].data.as_ref().unwrap();
    assert!(d.ranges_compared < d.ranges_total, "{d:?}");
    o.sample_pct = Some(100.0);
    let r = validate(&pair, &o).await;
    assert!(
        problems(&r, CheckName::Checksums).contains("missing on target 12345"),
        "{r:?}"
    );

    // Bad input: exit code 2 with a message.
    let (code, _) = cli(&pair, &["--full", "--tables", "nope.none"]);
    assert_eq!(code, 2);
    let (code, _) = cli(&pair, &["--quick", "--sample", "5"]);
    assert_eq!(code, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_validates_exactly_while_writes_keep_coming() {
    let pair = Pair::start().await;
    setup(&pair).await;
    let (addr, stop_tx, server) = start_daemon(&pair, ALL).await;
    let (src, tgt) = (pair.src().await, pair.tgt().await);
    wait_caught_up(&src, &tgt, LIMIT).await;
    let stop = Arc::new(AtomicBool::new(false));
    let writer = start_writer(pair.src().await, stop.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Bad requests first.
    let (code, body) = http_with_body(addr, "POST", "/validation", None, "{\"mode\": 3}").await;
    assert_eq!(code, 400, "{body}");
    let (code, body) =
        http_with_body(addr, "POST", "/validation", None, "{\"skip\": [\"nope\"]}").await;
    assert_eq!(code, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("unknown check"),
        "{body}"
    );

    // Sequences are behind until a cutover copies them: leave them out here.
    let (code, body) = http_with_body(
        addr,
        "POST",
        "/validation",
        None,
        "{\"mode\": \"full\", \"skip\": [\"sequences\"]}",
    )
    .await;
    assert_eq!(code, 202, "{body}");
    wait_for(LIMIT, "the validation to finish", || async {
        let v = get(addr, "/validation").await.1;
        v["running"] == false && (v["last"].is_object() || v["last_error"].is_object())
    })
    .await;
    let view = get(addr, "/validation").await.1;
    let last = &view["last"];
    assert_eq!(last["consistency"]["kind"], "snapshot", "{view}");
    assert_eq!(last["passed"], true, "{view}");
    let churn = last["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["table"] == "public.churn")
        .unwrap();
    assert_eq!(churn["checksum"], "equal");
    assert!(churn["source_rows"].as_i64().unwrap() > 0, "{churn}");
    let (_, status) = get(addr, "/status").await;
    assert_eq!(status["stage"], "cdc", "replication went on: {status}");

    // The command line asks the daemon, and gets the same exact point.
    let url = format!("http://{addr}");
    let (code, out) = cli(&pair, &["--full", "--skip", "sequences", "--url", &url]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("consistency: snapshot at "), "{out}");
    let newest = get(addr, "/validation").await.1["last"]["started_at"].clone();
    assert_ne!(newest, last["started_at"]);

    let metrics = http_text(addr, "/metrics").await;
    assert!(
        metrics.contains("pgcutover_validation_tables_validated "),
        "{metrics}"
    );
    assert!(
        metrics.contains("pgcutover_validation_mismatches 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains("pgcutover_stage{stage=\"cdc\"} 1"),
        "{metrics}"
    );

    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    stop_tx.send(()).unwrap();
    server.await.unwrap().unwrap();

    // After a restart the last result is still there.
    let (addr, stop_tx, server) = start_daemon(&pair, ALL).await;
    let (_, v) = get(addr, "/validation").await;
    assert_eq!(v["last"]["passed"], true, "{v}");
    assert_eq!(v["last"]["started_at"], newest);
    stop_tx.send(()).unwrap();
    server.await.unwrap().unwrap();
}

async fn http_text(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.unwrap();
    buf
}

/// The row digest on a real server: NULL, '' and 'NULL' differ; numeric scale counts; -0
/// and 0, and every NaN, hash alike (they are equal); swapped columns differ.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_row_digest_is_null_safe_and_type_exact() {
    use pgcutover::validate::digest::{DigestColumn, TextBytes, row_hash};
    let pair = Pair::start().await;
    let c = pair.src().await;
    c.batch_execute(
        "CREATE TABLE d (id int, t text, n numeric, f float8, a int, b int, arr int[]);
         INSERT INTO d VALUES
           (1, NULL, NULL, NULL, NULL, NULL, NULL), (2, '', NULL, NULL, NULL, NULL, NULL),
           (3, 'NULL', NULL, NULL, NULL, NULL, NULL),
           (4, NULL, 1.0, NULL, NULL, NULL, NULL), (5, NULL, 1.00, NULL, NULL, NULL, NULL),
           (6, NULL, NULL, '0', NULL, NULL, NULL), (7, NULL, NULL, '-0', NULL, NULL, NULL),
           (8, NULL, NULL, 'NaN', NULL, NULL, NULL),
           (9, NULL, NULL, 'NaN'::float8 * -1, NULL, NULL, NULL),
           (10, NULL, NULL, NULL, 1, 2, NULL), (11, NULL, NULL, NULL, 2, 1, NULL),
           (12, NULL, NULL, NULL, NULL, NULL, '{}'), (13, NULL, NULL, NULL, NULL, NULL, '{NULL}');",
    )
    .await
    .unwrap();
    let col = |n: &str, t: &str| DigestColumn {
        name: n.into(),
        base_type: t.into(),
    };
    let cols = [
        col("t", "text"),
        col("n", "numeric"),
        col("f", "float8"),
        col("a", "int4"),
        col("b", "int4"),
        col("arr", "_int4"),
    ];
    // Both ways of hashing characters (the second when the servers' encodings differ).
    for text in [TextBytes::Server, TextBytes::Utf8] {
        let sql = format!(
            "SELECT id, {} FROM d AS x ORDER BY id",
            row_hash(&cols, "x.", text)
        );
        let h: std::collections::BTreeMap<i32, i64> = c
            .query(&sql, &[])
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        assert_ne!(h[&1], h[&2], "NULL vs ''");
        assert_ne!(h[&1], h[&3], "NULL vs 'NULL'");
        assert_ne!(h[&2], h[&3], "'' vs 'NULL'");
        assert_ne!(h[&4], h[&5], "1.0 vs 1.00");
        assert_eq!(h[&6], h[&7], "-0 and 0 are equal, and hash alike");
        assert_eq!(h[&8], h[&9], "every NaN hashes alike");
        assert_ne!(h[&6], h[&8]);
        assert_ne!(h[&10], h[&11], "values swapped between columns");
        assert_ne!(h[&12], h[&13], "{{}} vs {{NULL}}");
        assert_ne!(h[&1], h[&12]);
    }
}
