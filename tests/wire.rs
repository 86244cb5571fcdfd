//! pgcutover's own replication connections (`src/pg/wire.rs`) against a real server: every
//! password method PostgreSQL offers, refused credentials, a Unix socket, and an error that
//! leaves the session usable.

use pgcutover::pg::cluster::{ClusterOptions, TempCluster};
use pgcutover::pg::wire::{Conn, ErrorKind};

async fn identify(conn: &mut Conn) -> Vec<Option<String>> {
    let rows = conn.simple_query("IDENTIFY_SYSTEM").await.unwrap();
    assert_eq!(rows.len(), 1);
    rows.into_iter().next().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replication_sessions_authenticate_every_way_and_report_errors() {
    let cluster = tokio::task::spawn_blocking(|| TempCluster::start(&ClusterOptions::default()))
        .await
        .unwrap()
        .expect("start a cluster");
    let admin = cluster.conn("postgres").connect("test").await.unwrap();
    admin
        .batch_execute(
            "SET password_encryption = 'md5';
             CREATE ROLE md5_user LOGIN REPLICATION PASSWORD 'md5-secret';
             SET password_encryption = 'scram-sha-256';
             CREATE ROLE plain_user LOGIN REPLICATION PASSWORD 'plain-secret';",
        )
        .await
        .unwrap();
    // The methods for these two roles, ahead of the cluster's scram-sha-256 lines.
    let hba = cluster.dir().join("data").join("pg_hba.conf");
    let rest = std::fs::read_to_string(&hba).unwrap();
    std::fs::write(
        &hba,
        format!(
            "host all md5_user 127.0.0.1/32 md5\n\
             host all plain_user 127.0.0.1/32 password\n{rest}"
        ),
    )
    .unwrap();
    admin
        .batch_execute("SELECT pg_reload_conf()")
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;

    // SCRAM-SHA-256 (the cluster's own method), MD5, and a clear-text password.
    let mut scram = Conn::connect(&cluster.conn("postgres"), "test")
        .await
        .unwrap();
    let row = identify(&mut scram).await;
    assert_eq!(row.len(), 4, "systemid, timeline, xlogpos, dbname: {row:?}");
    assert_eq!(row[3].as_deref(), Some("postgres"));
    for (user, password) in [("md5_user", "md5-secret"), ("plain_user", "plain-secret")] {
        let mut c = Conn::connect(&cluster.conn_as("postgres", user, password), "test")
            .await
            .unwrap_or_else(|e| panic!("{user}: {e}"));
        assert_eq!(identify(&mut c).await.len(), 4);
        c.terminate().await;
    }

    // Refused: a wrong password for each method, never echoed back.
    for user in ["postgres", "md5_user", "plain_user"] {
        let wrong = "not-the-password-7f3a";
        let e = match Conn::connect(&cluster.conn_as("postgres", user, wrong), "test").await {
            Ok(_) => panic!("{user} got in with a wrong password"),
            Err(e) => e,
        };
        assert_eq!(e.kind, ErrorKind::Auth, "{user}: {e}");
        assert!(
            e.message.contains("password authentication failed"),
            "{user}: {e}"
        );
        assert!(!e.message.contains(wrong));
    }

    // A Unix socket (the cluster trusts local connections).
    let mut local = cluster.conn("postgres");
    local.host = cluster.dir().display().to_string();
    local.password = None;
    let mut unix = Conn::connect(&local, "test").await.unwrap();
    assert_eq!(identify(&mut unix).await.len(), 4);

    // A command the server refuses is an error with its SQLSTATE, and the session goes on.
    let e = scram
        .simple_query("CREATE_REPLICATION_SLOT \"bad slot\" LOGICAL no_such_plugin")
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Server);
    assert!(e.message.contains("SQLSTATE"), "{e}");
    assert_eq!(identify(&mut scram).await.len(), 4);
    let e = scram
        .start_copy_both("START_REPLICATION SLOT no_such_slot LOGICAL 0/0")
        .await
        .unwrap_err();
    assert!(e.message.contains("42704"), "{e}");
    scram.terminate().await;

    // Nothing listening: an I/O error, which a retry may cure.
    let mut closed = cluster.conn("postgres");
    closed.port = 1;
    let e = match Conn::connect(&closed, "test").await {
        Ok(_) => panic!("connected to port 1"),
        Err(e) => e,
    };
    assert_eq!(e.kind, ErrorKind::Io, "{e}");
}
