//! The pgoutput decoder on real bytes from `pg_logical_slot_peek_binary_changes`.

use bytes::Bytes;
use pgcutover::cdc::decode::{Message, OldKind, Value, decode};
use pgcutover::pg::cluster::{ClusterOptions, TempCluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decodes_what_postgres_sends() {
    let cluster =
        tokio::task::spawn_blocking(|| TempCluster::start(&ClusterOptions::default()).unwrap())
            .await
            .unwrap();
    let c = cluster.conn("postgres").connect("test").await.unwrap();
    // One statement at a time: each is its own transaction, as an application's would be.
    for sql in [
        "CREATE TABLE kv (id int PRIMARY KEY, note text, big text)",
        "CREATE TABLE bag (a int, b text)",
        "ALTER TABLE bag REPLICA IDENTITY FULL",
        "CREATE PUBLICATION p FOR TABLE kv, bag",
        "SELECT pg_create_logical_replication_slot('s', 'pgoutput')",
        // md5 text does not compress, so the big value is stored out of line (TOAST).
        "INSERT INTO kv VALUES (1, '', (SELECT string_agg(md5(i::text), '') FROM generate_series(1, 4000) i)), (2, NULL, 'small')",
        "UPDATE kv SET note = 'changed' WHERE id = 1",
        "UPDATE kv SET id = 20 WHERE id = 2",
        "BEGIN; INSERT INTO kv VALUES (99, 'rolled back', NULL); ROLLBACK",
        "INSERT INTO bag VALUES (1, 'dup'), (1, 'dup')",
        "DELETE FROM kv WHERE id = 20",
        "SELECT pg_logical_emit_message(true, 'pgcutover', 'heartbeat')",
        "TRUNCATE bag RESTART IDENTITY",
    ] {
        c.batch_execute(sql).await.unwrap();
    }
    let rows = c
        .query(
            "SELECT data FROM pg_logical_slot_peek_binary_changes('s', NULL, NULL,
               'proto_version', '1', 'publication_names', 'p', 'messages', 'true')",
            &[],
        )
        .await
        .unwrap();
    let msgs: Vec<Message> = rows
        .iter()
        .map(|r| decode(Bytes::from(r.get::<_, Vec<u8>>(0))).expect("decodes"))
        .collect();

    let text = |v: &Value| match v {
        Value::Text(b) => Some(String::from_utf8_lossy(b).into_owned()),
        _ => None,
    };
    let inserts: Vec<&Vec<Value>> = msgs
        .iter()
        .filter_map(|m| match m {
            Message::Insert { new, .. } => Some(new),
            _ => None,
        })
        .collect();
    // Two kv rows and two identical bag rows; the rolled-back insert is absent.
    assert_eq!(inserts.len(), 4);
    assert_eq!(
        text(&inserts[0][1]).as_deref(),
        Some(""),
        "empty string kept"
    );
    assert_eq!(inserts[1][1], Value::Null, "NULL kept apart from ''");
    assert_eq!(text(&inserts[0][2]).map(|s| s.len()), Some(128_000));

    let updates: Vec<_> = msgs
        .iter()
        .filter_map(|m| match m {
            Message::Update { old, new, .. } => Some((old, new)),
            _ => None,
        })
        .collect();
    assert_eq!(updates.len(), 2);
    // The big value did not change: sent as unchanged TOAST, no old key (key unchanged).
    assert!(updates[0].0.is_none());
    assert!(
        updates[0].1[2] == Value::UnchangedToast,
        "big value was resent"
    );
    // A key change carries the old key.
    let (kind, old) = updates[1].0.as_ref().expect("old key on a key change");
    assert_eq!(*kind, OldKind::Key);
    assert_eq!(text(&old[0]).as_deref(), Some("2"));

    assert!(msgs.iter().any(|m| matches!(
        m,
        Message::Delete {
            old: (OldKind::Key, _),
            ..
        }
    )));
    assert!(msgs.iter().any(
        |m| matches!(m, Message::Message { prefix, content, transactional: true, .. }
        if prefix == "pgcutover" && content.as_ref() == b"heartbeat")
    ));
    assert!(msgs.iter().any(|m| matches!(m, Message::Truncate { restart_identity: true, relids, .. } if relids.len() == 1)));
    let relations: Vec<_> = msgs
        .iter()
        .filter_map(|m| match m {
            Message::Relation(r) => Some((r.name.as_str(), r.replica_identity, r.columns.len())),
            _ => None,
        })
        .collect();
    assert!(relations.contains(&("kv", b'd', 3)));
    assert!(relations.contains(&("bag", b'f', 2)));
    // Every transaction is framed, and commit LSNs only grow.
    let begins = msgs
        .iter()
        .filter(|m| matches!(m, Message::Begin { .. }))
        .count();
    let commits: Vec<_> = msgs
        .iter()
        .filter_map(|m| match m {
            Message::Commit { end_lsn, .. } => Some(*end_lsn),
            _ => None,
        })
        .collect();
    assert_eq!(begins, commits.len());
    assert!(commits.windows(2).all(|w| w[0] < w[1]));
}
