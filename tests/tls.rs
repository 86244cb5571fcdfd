//! TLS to both databases: a load and then the change stream over TLS-only servers, and
//! verification that fails closed.

mod common;

use std::time::Duration;

use common::*;
use pgcutover::load;
use pgcutover::pg::cluster::{ClusterOptions, TempCluster};
use pgcutover::pg::conn::ConnInfo;
use pgcutover::status::StatusBoard;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loads_and_streams_over_tls_and_verifies_certificates() {
    let tls = ClusterOptions {
        tls: true,
        ..ClusterOptions::default()
    };
    let pair = Pair::start_with_both(tls).await;
    pair.src()
        .await
        .batch_execute(
            "CREATE TABLE t (id int PRIMARY KEY, v text);
             INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 10000) g;
             CREATE TABLE marker (id serial PRIMARY KEY);",
        )
        .await
        .unwrap();

    // Source with `require` (encrypted, unverified), target with `verify-full` against the
    // throwaway CA: the slot, the copy, pg_dump and psql all go through TLS-only servers.
    let mut cfg = pair.config("");
    cfg.source.sslmode = pgcutover::pg::conn::SslMode::Require;
    cfg.target.sslmode = pgcutover::pg::conn::SslMode::VerifyFull;
    cfg.target.sslrootcert = Some(pair.target.ca_cert());
    load::run(&cfg, StatusBoard::new("native", "t"))
        .await
        .expect("load over TLS");
    assert_eq!(
        digests(&pair.src().await).await,
        digests(&pair.tgt().await).await
    );

    // The daemon resumes the migration and streams changes: START_REPLICATION, the apply
    // sessions and the heartbeat all go through TLS too.
    let (addr, stop, server) = start_daemon_with(cfg.clone()).await;
    wait_for(
        Duration::from_secs(60),
        "the change stream to run",
        || async { get(addr, "/status").await.1["stage"] == "cdc" },
    )
    .await;
    let (src, tgt) = (pair.src().await, pair.tgt().await);
    src.batch_execute(
        "UPDATE t SET v = NULL WHERE id % 3 = 0;
         DELETE FROM t WHERE id > 9000;
         INSERT INTO t VALUES (20000, ''), (20001, NULL);",
    )
    .await
    .unwrap();
    wait_caught_up(&src, &tgt, Duration::from_secs(60)).await;
    assert_eq!(digests(&src).await, digests(&tgt).await);
    let walsender_ssl: Vec<bool> = src
        .query(
            "SELECT s.ssl FROM pg_stat_replication r JOIN pg_stat_ssl s USING (pid)",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(walsender_ssl, vec![true], "one walsender, over TLS");
    // No limit on the slot's WAL here, so nothing to warn of.
    let (_, status) = get(addr, "/status").await;
    assert!(status.get("warnings").is_none(), "{status}");
    let _ = stop.send(());
    server.await.unwrap().unwrap();

    // Plain connections are rejected by these servers, so the above really used TLS.
    let mut plain = pair.source.conn("app");
    plain.sslmode = pgcutover::pg::conn::SslMode::Disable;
    assert!(plain.connect("test").await.is_err());

    // verify-full fails closed: against the public roots, and against the wrong CA.
    let mut unverified = tls_conn(&pair.target);
    unverified.sslrootcert = None;
    let err = unverified.connect("test").await.unwrap_err().to_string();
    assert!(err.to_lowercase().contains("certificate"), "{err}");
    let mut wrong_ca = tls_conn(&pair.target);
    wrong_ca.sslrootcert = Some(pair.source.ca_cert());
    assert!(wrong_ca.connect("test").await.is_err());
    assert!(tls_conn(&pair.target).connect("test").await.is_ok());
}

fn tls_conn(c: &TempCluster) -> ConnInfo {
    let mut conn = c.conn("app");
    conn.sslmode = pgcutover::pg::conn::SslMode::VerifyFull;
    conn.sslrootcert = Some(c.ca_cert());
    conn
}
