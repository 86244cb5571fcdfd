//! TLS to both databases: a load over TLS-only servers, and verification that fails closed.

mod common;

use common::*;
use pgcutover::load;
use pgcutover::pg::cluster::{ClusterOptions, TempCluster};
use pgcutover::pg::conn::ConnInfo;
use pgcutover::status::StatusBoard;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loads_over_tls_and_verifies_certificates() {
    let tls = ClusterOptions {
        tls: true,
        ..ClusterOptions::default()
    };
    let pair = Pair::start_with_both(tls).await;
    pair.src()
        .await
        .batch_execute(
            "CREATE TABLE t (id int PRIMARY KEY, v text);
             INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 10000) g;",
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
