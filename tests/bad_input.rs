//! Each bad input gets one clear error with a hint, and nothing is changed on either side.

mod common;

use common::*;
use pgcutover::load::{self, LoadError};
use pgcutover::pg::cluster::ClusterOptions;
use pgcutover::status::StatusBoard;

/// Run the load, expect a preflight refusal mentioning `needle`, and check both sides are
/// untouched.
async fn refused(pair: &Pair, cfg: pgcutover::config::Config, needle: &str) -> String {
    let err = load::run(&cfg, StatusBoard::new("native", "t"))
        .await
        .expect_err("the load must be refused");
    let text = err.to_string();
    assert!(
        matches!(err, LoadError::Preflight(_)),
        "not a preflight error: {text}"
    );
    assert!(text.contains(needle), "expected {needle:?} in: {text}");
    assert!(text.contains("hint:"), "no hint in: {text}");
    assert!(!err.hint().is_empty());
    let (src, tgt) = (pair.src().await, pair.tgt().await);
    assert_eq!(slot_count(&src).await, 0, "a slot was created");
    assert_eq!(
        publication_count(&src).await,
        0,
        "a publication was created"
    );
    assert!(!has_pgcutover_schema(&tgt).await, "the target was changed");
    // No password in the message.
    assert!(!text.contains(pair.source.password().expose()));
    assert!(!text.contains(pair.target.password().expose()));
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_are_refused_before_any_change() {
    let pair = Pair::start().await;
    pair.src()
        .await
        .batch_execute(
            "CREATE TABLE ok (id int PRIMARY KEY, v text);
             INSERT INTO ok SELECT g, 'v' FROM generate_series(1, 100) g;
             CREATE ROLE weak LOGIN PASSWORD 'weak-password-123';
             GRANT SELECT ON ok TO weak;",
        )
        .await
        .unwrap();

    // Wrong password (source and target at once: both are reported).
    let mut cfg = pair.config("");
    cfg.source.password = Some(pgcutover::secret::Secret::new("wrong-password"));
    cfg.target.password = Some(pgcutover::secret::Secret::new("wrong-too"));
    let text = refused(&pair, cfg, "password authentication failed").await;
    assert!(
        text.contains("source:") && text.contains("target:"),
        "{text}"
    );
    assert!(!text.contains("wrong-password"));

    // Unreachable server.
    let mut cfg = pair.config("");
    cfg.source.port = 1;
    refused(&pair, cfg, "cannot connect").await;

    // A pattern that matches nothing.
    let cfg = pair.config("tables = [\"public.ok\", \"sales.*\"]");
    refused(&pair, cfg, "\"sales.*\" matches no table").await;

    // A role without REPLICATION and not owning the table.
    let mut cfg = pair.config("");
    cfg.source = pair.source.conn_as("app", "weak", "weak-password-123");
    let text = refused(&pair, cfg, "may not use replication").await;
    assert!(text.contains("does not own"), "{text}");

    // A target role that may not create anything.
    pair.tgt()
        .await
        .batch_execute("CREATE ROLE tweak LOGIN PASSWORD 'tweak-password-123'")
        .await
        .unwrap();
    let mut cfg = pair.config("");
    cfg.target = pair.target.conn_as("app", "tweak", "tweak-password-123");
    refused(&pair, cfg, "the target role may not create schemas").await;

    // A table without a usable replica identity.
    pair.src()
        .await
        .batch_execute("CREATE TABLE keyless (a int, b text)")
        .await
        .unwrap();
    refused(&pair, pair.config(""), "public.keyless has no primary key").await;
    pair.src()
        .await
        .batch_execute("DROP TABLE keyless")
        .await
        .unwrap();

    // copy_schema = true but the target already has the table.
    pair.tgt()
        .await
        .batch_execute("CREATE TABLE ok (id int PRIMARY KEY, v varchar(5), extra int)")
        .await
        .unwrap();
    refused(
        &pair,
        pair.config(""),
        "the target already has table(s) public.ok",
    )
    .await;

    // copy_schema = false with different columns: every difference is named.
    let text = refused(
        &pair,
        pair.config("copy_schema = false"),
        "differs on the target",
    )
    .await;
    assert!(
        text.contains("\"v\" is character varying(5) on the target but text on the source"),
        "{text}"
    );
    assert!(
        text.contains("\"extra\" exists only on the target"),
        "{text}"
    );

    // copy_schema = false into a table that is not empty.
    pair.tgt()
        .await
        .batch_execute("DROP TABLE ok; CREATE TABLE ok (id int PRIMARY KEY, v text); INSERT INTO ok VALUES (1, 'x')")
        .await
        .unwrap();
    refused(
        &pair,
        pair.config("copy_schema = false"),
        "public.ok are not empty",
    )
    .await;
}

/// A standby on either side (a replica, or Aurora's reader endpoint given by mistake) is
/// refused before anything, both named at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standbys_are_refused_on_either_side() {
    let pair = Pair::start().await;
    pair.src()
        .await
        .batch_execute("CREATE TABLE ok (id int PRIMARY KEY)")
        .await
        .unwrap();
    // The test servers commit asynchronously: make the table survive the restart.
    pair.src().await.batch_execute("CHECKPOINT").await.unwrap();
    std::thread::scope(|s| {
        s.spawn(|| pair.source.restart_as_standby().expect("source standby"));
        s.spawn(|| pair.target.restart_as_standby().expect("target standby"));
    });
    let text = refused(&pair, pair.config(""), "the source is a standby").await;
    assert!(
        text.contains("the target is a standby") && text.contains("writer endpoint"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wal_level_and_slot_limits_are_checked() {
    let opts = ClusterOptions {
        settings: vec![
            ("wal_level".into(), "replica".into()),
            ("max_replication_slots".into(), "0".into()),
            ("max_wal_senders".into(), "0".into()),
        ],
        ..ClusterOptions::default()
    };
    let pair = Pair::start_with(opts).await;
    pair.src()
        .await
        .batch_execute("CREATE TABLE ok (id int PRIMARY KEY)")
        .await
        .unwrap();
    let text = refused(&pair, pair.config(""), "wal_level = replica").await;
    assert!(text.contains("no free replication slot"), "{text}");
    assert!(text.contains("no free WAL sender"), "{text}");
}

#[test]
fn a_bad_config_file_lists_every_problem_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[source]\nurl = \"postgres://u:supersecret@h/db\"\n[replication]\nengine = \"x\"\nparallel_workers = 999\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pgcutover"))
        .args(["serve", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    for needle in [
        "target.url is missing",
        "engine must be",
        "parallel_workers must be between",
        "hint:",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in {err}");
    }
    assert!(!err.contains("supersecret"), "password leaked: {err}");
}

/// A connection pooler in transaction mode in front of either side is refused before anything
/// is changed (its sessions would share server backends between transactions, and lose
/// `session_replication_role`, prepared statements and the copy's snapshot on the way); one in
/// session mode passes the check in front of the target, and in front of the source is
/// refused for not passing replication connections on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_pooler_in_front_of_either_side_is_refused() {
    let pair = Pair::start().await;
    pair.src()
        .await
        .batch_execute("CREATE TABLE ok (id int PRIMARY KEY)")
        .await
        .unwrap();
    let (src_pool, tgt_pool) = (
        Pooler::start(&pair.source, "transaction").await,
        Pooler::start(&pair.target, "transaction").await,
    );
    let through = |source: &str, target: &str| {
        let toml = pair
            .toml("")
            .replacen(&pair.source.url("app"), source, 1)
            .replacen(&pair.target.url("app"), target, 1);
        pgcutover::config::Config::from_parts(&toml, &pair.env(), pair.state.path()).unwrap()
    };
    let cfg = through(&src_pool.url("app"), &tgt_pool.url("app"));
    let text = refused(
        &pair,
        cfg,
        "sessions to the source do not keep a server backend of their own",
    )
    .await;
    assert!(
        text.contains("sessions to the target do not keep a server backend of their own")
            && text.contains("pool_mode = transaction")
            && text.contains("session mode"),
        "{text}"
    );
    // The check changed no setting on the pools' server connections, which their other
    // clients get next (PgBouncer gives out the one used last).
    for pool in [&src_pool, &tgt_pool] {
        let app = pgcutover::pg::conn::ConnInfo::parse(&pool.url("app"))
            .unwrap()
            .connect_plain("app")
            .await
            .unwrap();
        for (setting, default) in [("row_security", "on"), ("extra_float_digits", "1")] {
            let got: String = app
                .query_one(&format!("SHOW {setting}"), &[])
                .await
                .unwrap()
                .get(0);
            assert_eq!(got, default, "{setting} left on a pooled server connection");
        }
    }
    // The target alone behind it.
    let cfg = through(&pair.source.url("app"), &tgt_pool.url("app"));
    let text = refused(&pair, cfg, "sessions to the target do not keep").await;
    assert!(!text.contains("to the source"), "{text}");

    // In session mode every session has a backend of its own: the check passes.
    let session_pool = Pooler::start(&pair.target, "session").await;
    let cfg = through(&pair.source.url("app"), &session_pool.url("app"));
    pgcutover::load::preflight::check(&cfg)
        .await
        .expect("a session-mode pool passes the preflight");

    // In front of the source, this PgBouncer refuses the stream's replication connection:
    // said before a publication or slot is created, with what to do.
    let source_pool = Pooler::start(&pair.source, "session").await;
    let cfg = through(&source_pool.url("app"), &pair.target.url("app"));
    let text = refused(&pair, cfg, "the source refuses a replication connection").await;
    assert!(
        text.contains("does not pass replication connections") && text.contains("source.url"),
        "{text}"
    );
}
