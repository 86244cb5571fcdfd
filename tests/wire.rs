//! pgcutover's own replication connections (`src/pg/wire.rs`) against a real server: every
//! password method PostgreSQL offers, refused credentials, a Unix socket, an error that
//! leaves the session usable, the receive window bounded on loopback, and a stream left
//! unread (then read by a reader that naps, on loopback) that loses nothing.

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
    // Loopback is a short round trip: the receive buffer may be bounded, and is (the kernel
    // doubles the figure for its bookkeeping); the session still works.
    let before = scram.receive_buffer().expect("SO_RCVBUF");
    assert!(scram.bound_receive_window(64 * 1024));
    let bounded = scram.receive_buffer().expect("SO_RCVBUF");
    assert!(
        (64 * 1024..=256 * 1024).contains(&bounded),
        "{before} -> {bounded}"
    );
    // TCP counts what came in: the answer just read is in them, and more after the next.
    let (bytes, segments) = scram.received_so_far().expect("TCP_INFO");
    assert!(
        bytes > 0 && segments > 0,
        "{bytes} bytes in {segments} segments"
    );
    assert_eq!(identify(&mut scram).await.len(), 4);
    let (bytes2, segments2) = scram.received_so_far().expect("TCP_INFO");
    assert!(
        bytes2 > bytes && segments2 > segments,
        "{bytes2}, {segments2}"
    );
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
    // No window to bound on a Unix socket.
    assert!(!unix.bound_receive_window(64 * 1024));
    assert_eq!(unix.received_so_far(), None);

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

/// The apply may leave the stream unread for longer than the source's `wal_sender_timeout`
/// (a slow target, a hold during cutover): the reader keeps answering the walsender while
/// the chunks it read wait, so the stream is neither ended nor loses anything, and the
/// position confirmed before closing is the slot's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_left_unread_keeps_its_walsender_and_loses_nothing() {
    use pgcutover::cdc::stream::{Event, Stream};
    use pgcutover::pg::Lsn;
    use std::time::{Duration, Instant};

    let cluster = tokio::task::spawn_blocking(|| TempCluster::start(&ClusterOptions::default()))
        .await
        .unwrap()
        .expect("start a cluster");
    let conn = cluster.conn("postgres");
    let admin = conn.connect("test").await.unwrap();
    // One statement per call: ALTER SYSTEM may not run in a transaction block.
    for sql in [
        "ALTER SYSTEM SET wal_sender_timeout = '1s'",
        "SELECT pg_reload_conf()",
    ] {
        admin.batch_execute(sql).await.unwrap();
    }
    admin
        .batch_execute(
            "CREATE TABLE t (id int PRIMARY KEY, v text);
             CREATE PUBLICATION p FOR TABLE t;",
        )
        .await
        .unwrap();
    let start: String = admin
        .query_one(
            "SELECT lsn::text FROM pg_create_logical_replication_slot('s', 'pgoutput')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let start: Lsn = start.parse().unwrap();
    // 200 transactions of 100 rows of 1 kB: about 20 MB of stream, far more than the
    // reader may read ahead (1 MB here) and the socket holds.
    admin
        .batch_execute(
            "DO $$ BEGIN FOR i IN 0..199 LOOP
               INSERT INTO t SELECT g, repeat(md5(g::text), 32)
                 FROM generate_series(i * 100, i * 100 + 99) g;
               COMMIT;
             END LOOP; END $$",
        )
        .await
        .unwrap();
    const AHEAD: usize = 1024 * 1024;
    let mut stream = Stream::open(&conn, "s", "p", start, Duration::from_millis(250), AHEAD)
        .await
        .unwrap();
    let sender = "SELECT pid FROM pg_stat_replication WHERE application_name = 'pgcutover'";
    let pid: i32 = admin.query_one(sender, &[]).await.unwrap().get(0);
    // Four times wal_sender_timeout without reading a thing.
    tokio::time::sleep(Duration::from_secs(4)).await;
    // The reader filled its read-ahead and stopped there (each chunk at most 256 kB).
    let held = stream.read_ahead_held();
    assert!(
        held > AHEAD - 256 * 1024 && held <= AHEAD,
        "{held} bytes read ahead"
    );
    let (mut commits, mut inserts, mut last_end) = (0, 0, start);
    let deadline = Instant::now() + Duration::from_secs(120);
    while commits < 200 {
        assert!(Instant::now() < deadline, "{commits} commits after 120 s");
        match stream.next().await.expect("the stream went on") {
            Some(Event::Commit { end_lsn }) => {
                commits += 1;
                last_end = end_lsn;
            }
            Some(Event::Data(d)) if d[0] == b'I' => inserts += 1,
            Some(_) => {}
            None => panic!("the server ended the stream"),
        }
    }
    assert_eq!(inserts, 20_000);
    let still: i32 = admin.query_one(sender, &[]).await.unwrap().get(0);
    assert_eq!(still, pid, "the same walsender all along");
    stream.confirm(last_end);
    stream.close().await;
    let confirmed: String = admin
        .query_one(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = 's'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(confirmed.parse::<Lsn>().unwrap(), last_end);
}
