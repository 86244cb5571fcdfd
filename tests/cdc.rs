//! The change stream against real clusters: every change kind and replica identity, writes
//! during the load and after it, schema changes, and crashes at the worst moments.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::*;
use tokio_postgres::Client;

const LIMIT: Duration = Duration::from_secs(120);

/// Writes to `churn` in small transactions (inserts, updates, deletes) until stopped; returns
/// how many transactions committed.
fn start_writer(client: Client, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let mut n: i64 = 0;
        let mut txns = 0;
        while !stop.load(Ordering::Relaxed) && txns < 1_000_000 {
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

async fn setup(pair: &Pair) {
    let src = pair.src().await;
    src.batch_execute(&fixture("alltypes.sql")).await.unwrap();
    src.batch_execute(&fixture("cdc_extra.sql")).await.unwrap();
}

async fn assert_same(pair: &Pair) {
    let (src, tgt) = (pair.src().await, pair.tgt().await);
    wait_caught_up(&src, &tgt, LIMIT).await;
    let (a, b) = (digests(&src).await, digests(&tgt).await);
    for (t, d) in &a {
        assert_eq!(
            Some(d),
            b.get(t),
            "table {t} differs; target has {:?}",
            b.keys()
        );
    }
    assert_eq!(a.len(), b.len());
}

/// Run each statement as its own transaction.
async fn run_each(c: &Client, statements: &[&str]) {
    for s in statements {
        c.batch_execute(s)
            .await
            .unwrap_or_else(|e| panic!("{s}: {e:?}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_change_kind_converges_with_writes_during_and_after_the_load() {
    let pair = Pair::start().await;
    setup(&pair).await;
    let stop = Arc::new(AtomicBool::new(false));
    let writer = start_writer(pair.src().await, stop.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;

    let (addr, stop_tx, server) =
        start_daemon(&pair, "tables = [\"*.*\"]\nparallel_workers = 2").await;
    wait_for(LIMIT, "the change stream to run", || async {
        get(addr, "/status").await.1["stage"] == "cdc"
    })
    .await;

    let src = pair.src().await;
    run_each(
        &src,
        &[
            // Every type, through single-row and multi-row statements.
            "CREATE TEMP TABLE x AS SELECT * FROM alltypes WHERE id <= 4;
             UPDATE x SET id = id + 100000; INSERT INTO alltypes SELECT * FROM x; DROP TABLE x",
            "UPDATE alltypes SET t = coalesce(t, '') || '!' WHERE id <= 4",
            "UPDATE alltypes SET i4 = coalesce(i4, 0) + 1, jb = jb || '{\"u\": 1}' WHERE id BETWEEN 5 AND 3000",
            "DELETE FROM alltypes WHERE id BETWEEN 3001 AND 3500",
            "DELETE FROM alltypes WHERE id = 100003",
            // NULL <-> '' both ways.
            "UPDATE alltypes SET t = '' WHERE id = 100004",
            "UPDATE alltypes SET vc = NULL, t = NULL WHERE id = 100001",
            // Unchanged TOAST: payload stays, blob changes; then key changes with TOAST.
            "UPDATE big SET blob = NULL WHERE id % 1000 = 0 AND id BETWEEN 2000 AND 20000",
            "UPDATE big SET id = id + 1000000 WHERE id IN (30000, 31000)",
            "UPDATE big SET payload = 'short now' WHERE id = 40000",
            // Replica identity FULL with duplicate rows: one row per change.
            "UPDATE no_pk SET b = 'changed' WHERE ctid = (SELECT ctid FROM no_pk WHERE a = 3 LIMIT 1)",
            "DELETE FROM no_pk WHERE ctid = (SELECT ctid FROM no_pk WHERE a = 4 LIMIT 1)",
            "UPDATE no_pk SET a = 1 WHERE a IS NULL AND ctid = (SELECT ctid FROM no_pk WHERE a IS NULL LIMIT 1)",
            "UPDATE no_pk SET b = NULL WHERE b = '' AND ctid = (SELECT ctid FROM no_pk WHERE b = '' LIMIT 1)",
            "INSERT INTO no_pk VALUES (7, 'dup'), (7, 'dup')",
            // Replica identity using an index, key changes included.
            "UPDATE by_index SET c = upper(c) WHERE a <= 100",
            "UPDATE by_index SET a = a + 1000 WHERE a BETWEEN 101 AND 120",
            "DELETE FROM by_index WHERE a BETWEEN 200 AND 210",
            // Key swap in one transaction.
            "BEGIN; UPDATE by_index SET a = -1 WHERE a = 300;
             UPDATE by_index SET a = 300, b = 6 WHERE a = 301;
             UPDATE by_index SET a = 301, b = 0 WHERE a = -1; COMMIT",
            // A unique column besides the key, values rotated.
            "UPDATE people SET email = 'tmp' WHERE id = 1",
            "UPDATE people SET email = CASE id WHEN 2 THEN 'p1@x' ELSE email END WHERE id = 2",
            "UPDATE people SET email = 'p2@x' WHERE id = 1",
            // Partition moves.
            "UPDATE measurements SET at = '2026-06-01' WHERE id BETWEEN 1 AND 50",
            "UPDATE measurements SET at = '2030-01-01', val = -1 WHERE id BETWEEN 51 AND 60",
            "DELETE FROM measurements WHERE id BETWEEN 61 AND 70",
            // Composite text keys and awkward names.
            "UPDATE \"Mixed Case\".\"Order\" SET \"Value \"\"quoted\"\"\" = 0, \"from\" = \"from\" + 100000 WHERE \"from\" <= 100",
            "UPDATE \"Weird \"\"Name\"\" ; DROP\" SET \"a b\" = NULL, \"ÜNI\" = '{\"x\": [1, null]}' WHERE \"Select\" <= 10",
            "DELETE FROM \"Weird \"\"Name\"\" ; DROP\" WHERE \"Select\" > 90",
            // Generated columns are computed by the target.
            "UPDATE line_items SET qty = qty + 1 WHERE id <= 100",
            "INSERT INTO line_items (qty, price) VALUES (3, 9.99)",
            // Truncates.
            "INSERT INTO empty_one VALUES (1, 'soon gone')",
            "TRUNCATE empty_one",
            "TRUNCATE counters, counter_refs RESTART IDENTITY",
            "INSERT INTO counters (v) VALUES (42)",
            // A rolled-back transaction leaves nothing.
            "BEGIN; INSERT INTO empty_one VALUES (99, 'rolled back'); ROLLBACK",
            // Several tables in one transaction.
            "BEGIN; INSERT INTO empty_one VALUES (2, 'kept'); UPDATE alltypes SET ok = NOT ok WHERE id = 2;
             DELETE FROM by_index WHERE a = 1; COMMIT",
        ],
    )
    .await;

    stop.store(true, Ordering::Relaxed);
    let txns = writer.await.unwrap();
    assert!(txns > 10, "the writer hardly ran ({txns} transactions)");
    assert_same(&pair).await;
    let tgt = pair.tgt().await;
    assert_eq!(
        scalar(&tgt, "SELECT count(*) FROM empty_one WHERE id = 99").await,
        0
    );
    assert_eq!(
        scalar(&tgt, "SELECT max(id)::bigint FROM counters").await,
        1
    );

    // Lag is reported once heartbeats have gone round.
    wait_for(LIMIT, "lag in seconds", || async {
        get(addr, "/status").await.1["lag_seconds"].is_number()
    })
    .await;
    let (_, status) = get(addr, "/status").await;
    assert!(status["lag_bytes"].is_number(), "{status}");
    assert!(status["cdc"]["retained_wal_bytes"].is_number(), "{status}");
    assert!(
        status["cdc"]["changes_applied"].as_u64().unwrap() > 1000,
        "{status}"
    );
    assert_eq!(status["cdc"]["missing_rows"], 0, "{status}");

    stop_tx.send(()).unwrap();
    server.await.unwrap().unwrap();
}
