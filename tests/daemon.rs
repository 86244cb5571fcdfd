//! The daemon's HTTP API on a real listener.

mod common;

use std::time::Duration;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_health_and_status_through_the_load() {
    let pair = Pair::start().await;
    pair.src()
        .await
        .batch_execute(
            "CREATE TABLE a (id int PRIMARY KEY, v text);
             INSERT INTO a SELECT g, md5(g::text) FROM generate_series(1, 20000) g;",
        )
        .await
        .unwrap();
    let (addr, stop_tx, server) = start_daemon(&pair, "").await;

    let (code, body) = get(addr, "/healthz").await;
    assert_eq!((code, body["status"].as_str()), (200, Some("ok")));
    wait_for(Duration::from_secs(60), "status to say cdc", || async {
        get(addr, "/status").await.1["stage"] == "cdc"
    })
    .await;
    let (_, status) = get(addr, "/status").await;
    assert_eq!(status["engine"], "native");
    assert_eq!(status["tables_done"], 1);
    assert_eq!(status["rows_copied"], 20000);
    assert_eq!(status["tables"][0]["table"], "public.a");
    assert!(status["slot_lsn"].as_str().unwrap().contains('/'));

    let (code, body) = get(addr, "/nope").await;
    assert_eq!(code, 404);
    assert!(body["error"].as_str().unwrap().contains("/nope"));
    assert!(body["hint"].is_string());

    stop_tx.send(()).unwrap();
    server.await.unwrap().unwrap();
}

/// Two daemons on one state directory for one migration would write the same files: the
/// second is refused at start, naming the first, and starts once the first has stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_daemon_on_the_same_state_directory_is_refused() {
    let pair = Pair::start().await;
    pair.src()
        .await
        .batch_execute("CREATE TABLE a (id int PRIMARY KEY)")
        .await
        .unwrap();
    let (_, stop_tx, server) = start_daemon(&pair, "").await;
    let err = match pgcutover::daemon::Daemon::bind(pair.config("")).await {
        Err(e) => e,
        Ok(_) => panic!("a second daemon started on the same state directory"),
    };
    let text = err.to_string();
    assert!(text.contains("another pgcutover daemon"), "{text}");
    assert!(
        text.contains(&format!("PID {}", std::process::id())),
        "{text}"
    );
    assert!(err.hint().contains("one daemon per migration"));
    // Another migration may share the directory.
    let mut cfg = pair.config("");
    cfg.replication.migration_id = pgcutover::config::MigrationId::parse("other").unwrap();
    let other = pgcutover::daemon::Daemon::bind(cfg).await;
    assert!(other.is_ok(), "{:?}", other.err().map(|e| e.to_string()));
    drop(other);

    stop_tx.send(()).unwrap();
    server.await.unwrap().unwrap();
    assert!(
        pgcutover::daemon::Daemon::bind(pair.config(""))
            .await
            .is_ok(),
        "the lock outlived the daemon"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_load_is_reported_in_status_with_its_hint() {
    let pair = Pair::start().await;
    pair.src()
        .await
        .batch_execute("CREATE TABLE keyless (a int)")
        .await
        .unwrap();
    let (addr, stop_tx, server) = start_daemon(&pair, "").await;
    wait_for(Duration::from_secs(60), "status to say failed", || async {
        get(addr, "/status").await.1["stage"] == "failed"
    })
    .await;
    let (_, status) = get(addr, "/status").await;
    assert!(
        status["error"]["error"]
            .as_str()
            .unwrap()
            .contains("public.keyless")
    );
    assert!(
        status["error"]["hint"]
            .as_str()
            .unwrap()
            .contains("REPLICA IDENTITY FULL")
    );
    // Not a passing failure: it is not retried on its own.
    assert!(status.get("interrupted").is_none(), "{status}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(get(addr, "/status").await.1["stage"], "failed");

    // Fixed on the source, and resumed without a restart.
    pair.src()
        .await
        .batch_execute("ALTER TABLE keyless REPLICA IDENTITY FULL; INSERT INTO keyless VALUES (1)")
        .await
        .unwrap();
    let (code, body) = http(addr, "POST", "/replication/resume", None).await;
    assert_eq!(
        (code, body["from_stage"].as_str()),
        (202, Some("failed")),
        "{body}"
    );
    wait_for(
        Duration::from_secs(60),
        "the load and the stream",
        || async { get(addr, "/status").await.1["stage"] == "cdc" },
    )
    .await;
    let (_, status) = get(addr, "/status").await;
    assert!(status.get("error").is_none(), "{status}");
    assert_eq!(
        scalar(&pair.tgt().await, "SELECT count(*) FROM keyless").await,
        1
    );
    stop_tx.send(()).unwrap();
    server.await.unwrap().unwrap();
}

/// A source out of reach when the daemon starts (or restarts) is a passing failure: the load
/// is tried again with backoff, `/status` says why and when, `POST /replication/resume` tries
/// at once, and once the source is back the migration goes on without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_out_of_reach_at_start_is_waited_for() {
    let pair = Pair::start().await;
    pair.src()
        .await
        .batch_execute(
            "CREATE TABLE marker (id serial PRIMARY KEY);
             CREATE TABLE a (id int PRIMARY KEY, v text);
             INSERT INTO a SELECT g, 'v' || g FROM generate_series(1, 1000) g;",
        )
        .await
        .unwrap();
    // The test servers commit asynchronously: make the tables survive the crash.
    pair.src().await.batch_execute("CHECKPOINT").await.unwrap();
    pair.source.stop_immediate();
    let (addr, stop_tx, server) = start_daemon(&pair, "").await;
    wait_for(Duration::from_secs(60), "two attempts", || async {
        let s = get(addr, "/status").await.1;
        assert_ne!(s["stage"], "failed", "{s}");
        s["interrupted"]["retry"].as_u64() >= Some(2)
    })
    .await;
    let (_, status) = get(addr, "/status").await;
    let why = &status["interrupted"];
    assert!(
        why["error"].as_str().unwrap().contains("cannot connect")
            && why["max_retries"].as_u64() == Some(20)
            && why["next_retry_in_seconds"].as_f64() >= Some(1.0),
        "{status}"
    );
    assert!(!status.to_string().contains(pair.source.password().expose()));

    let source = &pair.source;
    std::thread::scope(|s| {
        s.spawn(|| source.restart().expect("source back"));
    });
    let (code, body) = http(addr, "POST", "/replication/resume", None).await;
    assert_eq!(code, 202, "{body}");
    wait_for(
        Duration::from_secs(60),
        "the load and the stream",
        || async {
            let s = get(addr, "/status").await.1;
            assert_ne!(s["stage"], "failed", "{s}");
            s["stage"] == "cdc"
        },
    )
    .await;
    let (_, status) = get(addr, "/status").await;
    assert!(status.get("interrupted").is_none(), "{status}");
    let (src, tgt) = (pair.src().await, pair.tgt().await);
    src.batch_execute("UPDATE a SET v = 'changed' WHERE id <= 10")
        .await
        .unwrap();
    wait_caught_up(&src, &tgt, Duration::from_secs(60)).await;
    assert_eq!(
        scalar(&tgt, "SELECT count(*) FROM a WHERE v = 'changed'").await,
        10
    );
    stop_tx.send(()).unwrap();
    server.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutating_routes_need_the_token_when_one_is_set() {
    let pair = Pair::start().await;
    pair.src()
        .await
        .batch_execute("CREATE TABLE a (id int PRIMARY KEY)")
        .await
        .unwrap();
    let token = "s3cret-token-of-some-length";
    let mut env = pair.env();
    env.push(("PGCUTOVER_API_TOKEN".into(), token.into()));
    let cfg =
        pgcutover::config::Config::from_parts(&pair.toml(""), &env, pair.state.path()).unwrap();
    let daemon = pgcutover::daemon::Daemon::bind(cfg).await.unwrap();
    let addr = daemon.local_addr();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(daemon.run(async {
        let _ = stop_rx.await;
    }));
    for bad in [None, Some("wrong"), Some("s3cret-token-of-some-lengtH")] {
        let (code, body) = http(addr, "POST", "/replication/resume", bad).await;
        assert_eq!(code, 401, "{body}");
        assert!(
            !body.to_string().contains(token),
            "the token leaked: {body}"
        );
    }
    // With the token the request is authorised (and refused for what it asks: not stopped).
    let (code, _) = http(addr, "POST", "/replication/resume", Some(token)).await;
    assert_eq!(code, 409);
    // Reading needs no token.
    assert_eq!(get(addr, "/status").await.0, 200);
    stop_tx.send(()).unwrap();
    server.await.unwrap().unwrap();
}

/// The README's first command, in its scripted form: load the sample, prove it, exit 0.
#[test]
fn the_demo_loads_and_proves_the_copy() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pgcutover"))
        .args(["demo", "--exit-after-load", "--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("validation (full): PASSED"), "{stdout}");
    assert!(stdout.contains("\"stage\""), "{stdout}");
}
