//! The full load against real clusters: exactness, resume after SIGKILL, bad input, cleanup.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use pgcutover::load;
use pgcutover::status::{Stage, StatusBoard};

const LIMIT: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loads_every_type_exactly_with_split_tables() {
    let pair = Pair::start().await;
    pair.src()
        .await
        .batch_execute(&fixture("alltypes.sql"))
        .await
        .unwrap();
    // 1MB split threshold: `big` and `alltypes` are copied in block ranges, the rest whole.
    let cfg =
        pair.config("tables = [\"*.*\"]\nparallel_workers = 3\nsplit_tables_larger_than = \"1MB\"");
    let status = StatusBoard::new("native", "t");
    let outcome = load::run(&cfg, status.clone())
        .await
        .expect("load succeeds");
    assert_eq!(status.stage(), Stage::Loaded);
    // The slot holds the source's WAL from its creation on, and /status says how much.
    let slot = status.view().slot.expect("the slot's state");
    assert_eq!(slot.wal_status.as_deref(), Some("reserved"));
    assert!(slot.retained_wal_bytes > Some(0), "{slot:?}");
    // What reads it every few seconds during a load, here every 50 ms.
    let mut seen = Vec::new();
    let watch = pgcutover::pg::slot::watch_slot(
        &cfg.source,
        "pgcutover_t",
        std::time::Duration::from_millis(50),
        |s| {
            seen.push(s);
            None
        },
    );
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), watch).await;
    assert!(seen.len() >= 3, "{seen:?}");
    assert!(
        seen.iter()
            .all(|s| s.wal_status.as_deref() == Some("reserved") && s.restart_lsn.is_some()),
        "{seen:?}"
    );

    let (src, tgt) = (pair.src().await, pair.tgt().await);
    let (a, b) = (digests(&src).await, digests(&tgt).await);
    assert!(a.len() >= 10, "fixture tables missing: {a:?}");
    assert_eq!(a, b, "target differs from source");
    assert!(a["public.big"].0 >= 210_000);

    // Every table is recorded with the slot's snapshot, and some were split.
    assert_eq!(outcome.tables.len(), a.len());
    assert!(
        outcome
            .tables
            .values()
            .all(|t| t.snapshot_lsn == outcome.slot_lsn)
    );
    let split = scalar(
        &tgt,
        "SELECT count(*) FROM pgcutover.load_progress WHERE chunks > 1",
    )
    .await;
    assert!(split >= 2, "no table was split");
    let view = status.view();
    assert_eq!(view.tables_done, view.tables_total);

    // Post-data: indexes, primary keys and the foreign key exist on the target.
    assert_one_each(
        &tgt,
        &[
        (
            "SELECT count(*) FROM pg_indexes WHERE indexname = 'big_payload_prefix'",
            "expression index",
        ),
        (
            "SELECT count(*) FROM pg_constraint WHERE contype = 'f' AND conrelid = 'big_refs'::regclass",
            "foreign key",
        ),
        (
            "SELECT count(*) FROM pg_constraint WHERE contype = 'p' AND conrelid = '\"Mixed Case\".\"Order\"'::regclass",
            "primary key",
        ),
        ],
    )
    .await;
    // Every copied table that has rows has planner statistics, and the partitioned table's
    // parent has its own (autovacuum never analyzes a parent).
    let stats = |t: String, inherited: bool| {
        let tgt = &tgt;
        async move {
            scalar(
                tgt,
                &format!(
                    "SELECT count(*) FROM pg_statistic
                      WHERE starelid = '{}'::regclass AND stainherit = {inherited}",
                    t.replace('\'', "''")
                ),
            )
            .await
        }
    };
    for t in user_tables(&tgt).await {
        let rows = scalar(&tgt, &format!("SELECT count(*) FROM {t}")).await;
        assert!(
            rows == 0 || stats(t.clone(), false).await > 0,
            "no statistics for {t}"
        );
    }
    assert!(stats("measurements".into(), true).await > 0);
    // Generated columns are computed by the target and match.
    let bad = scalar(
        &tgt,
        "SELECT count(*) FROM line_items WHERE total IS DISTINCT FROM qty * price",
    )
    .await;
    assert_eq!(bad, 0);
    // The slot and the publication exist on the source.
    assert_eq!(slot_count(&src).await, 1);
    assert_eq!(publication_count(&src).await, 1);

    // Cleanup removes them, and a second cleanup has nothing left to do.
    let report = pgcutover::cleanup::run(&cfg).await;
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    assert!(report.done.len() >= 3, "{:?}", report.done);
    assert_eq!(slot_count(&src).await, 0);
    assert_eq!(publication_count(&src).await, 0);
    assert!(!has_pgcutover_schema(&tgt).await);
    let again = pgcutover::cleanup::run(&cfg).await;
    assert!(
        again.failed.is_empty() && again.done.is_empty(),
        "{again:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loads_into_existing_tables_without_schema_copy() {
    let pair = Pair::start().await;
    let ddl = "CREATE TABLE items (id int PRIMARY KEY, name text, created date);
               CREATE TABLE tags (item_id int REFERENCES items, tag text);
               ALTER TABLE tags REPLICA IDENTITY FULL;";
    pair.src().await.batch_execute(ddl).await.unwrap();
    pair.tgt().await.batch_execute(ddl).await.unwrap();
    pair.src()
        .await
        .batch_execute(
            "INSERT INTO items SELECT g, 'item ' || g, '2026-01-01'::date + g FROM generate_series(1, 5000) g;
             INSERT INTO tags SELECT g % 5000 + 1, 'tag' || g FROM generate_series(1, 8000) g;",
        )
        .await
        .unwrap();
    let cfg = pair.config("copy_schema = false\nparallel_workers = 2");
    load::run(&cfg, StatusBoard::new("native", "t"))
        .await
        .expect("load succeeds");
    assert_eq!(
        digests(&pair.src().await).await,
        digests(&pair.tgt().await).await
    );
}

/// A copy session that dies in the middle of a chunk (here: its target backend is
/// terminated while a target-only trigger holds it at one row) costs that chunk a second
/// attempt on new sessions importing the same snapshot, not the load: it completes in the
/// same run, exact, and `/status` counts the retry on the table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_session_that_dies_mid_chunk_is_copied_again_in_the_same_run() {
    let pair = Pair::start().await;
    let ddl = "CREATE TABLE items (id int PRIMARY KEY, v text);
               CREATE TABLE other (id int PRIMARY KEY);";
    pair.src().await.batch_execute(ddl).await.unwrap();
    let tgt = pair.tgt().await;
    tgt.batch_execute(ddl).await.unwrap();
    tgt.batch_execute(
        "CREATE FUNCTION public.gate() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
           IF NEW.id = 777 THEN PERFORM pg_catalog.pg_advisory_xact_lock_shared(4242); END IF;
           RETURN NEW;
         END $$;
         CREATE TRIGGER gate BEFORE INSERT ON items FOR EACH ROW EXECUTE FUNCTION public.gate();
         ALTER TABLE items ENABLE ALWAYS TRIGGER gate;
         SELECT pg_advisory_lock(4242);",
    )
    .await
    .unwrap();
    pair.src()
        .await
        .batch_execute(
            "INSERT INTO items SELECT g, md5(g::text) FROM generate_series(1, 5000) g;
             INSERT INTO other SELECT generate_series(1, 100);",
        )
        .await
        .unwrap();
    let cfg = pair.config("copy_schema = false\nparallel_workers = 2");
    let status = StatusBoard::new("native", "t");
    let load = tokio::spawn({
        let status = status.clone();
        async move { load::run(&cfg, status).await }
    });

    // The copy of `items` waits at row 777 for the lock this test holds: end its session.
    let gated = "SELECT pid FROM pg_stat_activity
                  WHERE wait_event_type = 'Lock' AND wait_event = 'advisory'";
    let watcher = pair.tgt().await;
    let watcher = Arc::new(watcher);
    {
        let w = watcher.clone();
        wait_for(
            Duration::from_secs(120),
            "the copy to wait at the gate",
            move || {
                let w = w.clone();
                async move { !w.query(gated, &[]).await.unwrap().is_empty() }
            },
        )
        .await;
    }
    let killed = watcher
        .query_one(
            &format!("SELECT count(pg_terminate_backend(pid))::int8 FROM ({gated}) g"),
            &[],
        )
        .await
        .unwrap()
        .get::<_, i64>(0);
    assert_eq!(killed, 1);
    tgt.batch_execute("SELECT pg_advisory_unlock(4242)")
        .await
        .unwrap();

    load.await
        .unwrap()
        .expect("the load goes on after the broken chunk");
    assert_eq!(digests(&pair.src().await).await, digests(&tgt).await);
    let view = status.view();
    let items = view
        .tables
        .iter()
        .find(|t| t.table == "public.items")
        .unwrap();
    assert_eq!(items.retries, 1, "{view:?}");
    assert_eq!(items.rows, 5000, "rows counted once");
    assert!(
        view.tables
            .iter()
            .filter(|t| t.table != "public.items")
            .all(|t| t.retries == 0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_load_resumes_without_recopying_finished_tables() {
    let pair = Pair::start().await;
    let src = pair.src().await;
    // Many tables, one worker: the load takes long enough to be killed in the middle.
    let mut ddl = String::new();
    for i in 0..16 {
        ddl.push_str(&format!(
            "CREATE TABLE t{i:02} (id int PRIMARY KEY, v text);
             INSERT INTO t{i:02} SELECT g, repeat(md5(g::text), 4) FROM generate_series(1, 60000) g;"
        ));
    }
    src.batch_execute(&ddl).await.unwrap();
    let cfg_path = pair.state.path().join("pgcutover.toml");
    std::fs::write(&cfg_path, pair.toml("parallel_workers = 1")).unwrap();
    let bin = env!("CARGO_BIN_EXE_pgcutover");
    let spawn = || {
        let mut cmd = std::process::Command::new(bin);
        cmd.args(["serve", "--config"])
            .arg(&cfg_path)
            .envs(pair.env());
        cmd.stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        cmd.spawn().expect("start the daemon")
    };

    let tgt = pair.tgt().await;
    let done_tables = |c: Arc<tokio_postgres::Client>| async move {
        c.query(
            "SELECT table_name, snapshot_lsn::text, done_at::text FROM pgcutover.load_progress ORDER BY 1",
            &[],
        )
        .await
        .map(|rows| {
            rows.iter()
                .map(|r| (r.get::<_, String>(0), r.get::<_, String>(1), r.get::<_, String>(2)))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default()
    };
    let tgt = Arc::new(tgt);
    let mut child = spawn();
    {
        let tgt = tgt.clone();
        wait_for(
            Duration::from_secs(120),
            "a few tables to finish",
            move || {
                let tgt = tgt.clone();
                async move { done_tables(tgt).await.len() >= 3 }
            },
        )
        .await;
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let before = done_tables(tgt.clone()).await;
    assert!(
        before.len() < 16,
        "the load finished before the kill; make it bigger"
    );

    let mut child = spawn();
    let tgt2 = tgt.clone();
    wait_for(
        Duration::from_secs(180),
        "the resumed load to finish",
        move || {
            let tgt = tgt2.clone();
            async move {
                tgt.query_one("SELECT stage FROM pgcutover.migration", &[])
                    .await
                    .map(|r| ["loaded", "cdc"].contains(&r.get::<_, String>(0).as_str()))
                    .unwrap_or(false)
            }
        },
    )
    .await;
    child.kill().unwrap();
    child.wait().unwrap();

    assert_eq!(
        digests(&src).await,
        digests(&tgt).await,
        "resumed copy is not exact"
    );
    let after = done_tables(tgt.clone()).await;
    assert_eq!(after.len(), 16);
    // Tables finished before the kill were not copied again: same snapshot, same commit time.
    for row in &before {
        assert!(after.contains(row), "{row:?} was copied again");
    }
    // The rest came from a newer snapshot (the resume slot's), recorded per table.
    let first_lsn = &before[0].1;
    assert!(
        after.iter().any(|r| &r.1 != first_lsn),
        "no table used the resume snapshot"
    );
    // One permanent slot; the temporary resume slot went away with its session.
    assert_eq!(slot_count(&src).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_post_data_restores_only_what_is_missing() {
    let pair = Pair::start().await;
    pair.src()
        .await
        .batch_execute(
            "CREATE TABLE parent (id int PRIMARY KEY, name text);
             CREATE TABLE child (id int PRIMARY KEY, parent_id int REFERENCES parent, v text);
             CREATE INDEX child_v_idx ON child (v);
             CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$;
             CREATE TRIGGER child_touch BEFORE UPDATE ON child FOR EACH ROW EXECUTE FUNCTION touch();
             INSERT INTO parent SELECT g, 'p' || g FROM generate_series(1, 1000) g;
             INSERT INTO child SELECT g, g % 1000 + 1, md5(g::text) FROM generate_series(1, 5000) g;",
        )
        .await
        .unwrap();
    let cfg = pair.config("");
    load::run(&cfg, StatusBoard::new("native", "t"))
        .await
        .expect("first load");
    let tgt = pair.tgt().await;
    let before = digests(&tgt).await;
    // As if the daemon died in the middle of post-data: one index and the foreign key built,
    // the rest not.
    tgt.batch_execute(
        "DROP INDEX child_v_idx; ALTER TABLE child DROP CONSTRAINT child_parent_id_fkey;
         UPDATE pgcutover.migration SET schema_state = 'pre_data', stage = 'post_data'",
    )
    .await
    .unwrap();
    load::run(&cfg, StatusBoard::new("native", "t"))
        .await
        .expect("resumed post-data");
    assert_one_each(
        &tgt,
        &[
            (
                "SELECT count(*) FROM pg_indexes WHERE indexname = 'child_v_idx'",
                "index",
            ),
            (
                "SELECT count(*) FROM pg_constraint WHERE conname = 'child_parent_id_fkey'",
                "foreign key",
            ),
            (
                "SELECT count(*) FROM pg_trigger WHERE tgname = 'child_touch'",
                "trigger",
            ),
            (
                "SELECT count(*) FROM pg_constraint WHERE conname = 'child_pkey'",
                "primary key",
            ),
        ],
    )
    .await;
    // No row was copied again and the data is unchanged.
    assert_eq!(digests(&tgt).await, before);
    assert_eq!(before, digests(&pair.src().await).await);
}

/// A schema-only dump creates materialized views empty: the load fills those populated on the
/// source, in dependency order (`a_top` reads `z_by_region` through a view, and is tried
/// first), leaves alone one the source never filled, and points out one the target cannot
/// refresh instead of failing the migration. A resumed post-data fills what is still empty.
/// Large objects, which nothing replicates, are pointed out before the load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn materialized_views_are_filled_on_the_target_and_large_objects_pointed_out() {
    let pair = Pair::start().await;
    let (src, tgt) = (pair.src().await, pair.tgt().await);
    let tgt_port: i32 = tgt
        .query_one("SELECT current_setting('port')::int", &[])
        .await
        .unwrap()
        .get(0);
    src.batch_execute(&format!(
        "CREATE TABLE sales (id int PRIMARY KEY, region text, amount numeric);
         INSERT INTO sales SELECT g, 'r' || g % 7, g * 1.5 FROM generate_series(1, 1000) g;
         CREATE MATERIALIZED VIEW z_by_region AS
             SELECT region, sum(amount) AS total, count(*) AS n FROM sales GROUP BY region;
         CREATE UNIQUE INDEX z_by_region_key ON z_by_region (region);
         CREATE VIEW busy_regions AS SELECT region FROM z_by_region WHERE n > 100;
         CREATE MATERIALIZED VIEW a_top AS SELECT region FROM busy_regions;
         CREATE SCHEMA \"Odd \"\"Schema\"\"\";
         CREATE MATERIALIZED VIEW \"Odd \"\"Schema\"\"\".\"; DROP\" AS SELECT count(*) AS n FROM sales;
         CREATE MATERIALIZED VIEW later AS SELECT 1 AS x WITH NO DATA;
         CREATE FUNCTION not_on_target() RETURNS int LANGUAGE sql
             AS $$ SELECT 1 / (current_setting('port')::int - {tgt_port}) $$;
         CREATE MATERIALIZED VIEW fails_on_target AS SELECT not_on_target() AS x;
         SELECT lo_from_bytea(0, 'a large object');"
    ))
    .await
    .unwrap();
    let cfg = pair.config("");
    let status = StatusBoard::new("native", "t");
    load::run(&cfg, status.clone())
        .await
        .expect("load succeeds");

    let populated = |name: &'static str| {
        let tgt = &tgt;
        async move {
            tgt.query_one(
                "SELECT relispopulated FROM pg_class WHERE relkind = 'm' AND relname = $1",
                &[&name],
            )
            .await
            .unwrap()
            .get::<_, bool>(0)
        }
    };
    assert!(populated("z_by_region").await && populated("a_top").await);
    assert!(populated("; DROP").await);
    assert!(!populated("later").await, "a view the source never filled");
    assert!(!populated("fails_on_target").await);
    let contents =
        "SELECT (SELECT string_agg(format('%s=%s/%s', region, total, n), ',' ORDER BY region)
                              FROM z_by_region)
                        || (SELECT string_agg(region, ',' ORDER BY region) FROM a_top)
                        || (SELECT n FROM \"Odd \"\"Schema\"\"\".\"; DROP\")";
    let of = |c: tokio_postgres::Row| c.get::<_, String>(0);
    let want = of(src.query_one(contents, &[]).await.unwrap());
    assert_eq!(of(tgt.query_one(contents, &[]).await.unwrap()), want);
    assert!(want.contains("r0=") && want.ends_with("1000"), "{want}");

    let warnings = status.view().warnings;
    let said = |what: &[&str]| warnings.iter().any(|w| what.iter().all(|p| w.contains(p)));
    assert!(
        said(&["public.fails_on_target", "division by zero", "REFRESH"]),
        "{warnings:?}"
    );
    assert!(said(&["1 large object", "pg_restore -L"]), "{warnings:?}");
    assert!(!said(&["a_top"]) && !said(&["later"]), "{warnings:?}");

    // As if the daemon died during post-data, before the views were filled.
    tgt.batch_execute(
        "REFRESH MATERIALIZED VIEW z_by_region WITH NO DATA;
         UPDATE pgcutover.migration SET schema_state = 'pre_data', stage = 'post_data'",
    )
    .await
    .unwrap();
    load::run(&cfg, StatusBoard::new("native", "t"))
        .await
        .expect("resumed post-data");
    assert!(populated("z_by_region").await);
    assert_eq!(of(tgt.query_one(contents, &[]).await.unwrap()), want);
}

/// A session left idle in a transaction that wrote something holds up the creation of the
/// slot (its snapshot is consistent only once that transaction ends): while the load waits,
/// `/status` names it (pid, state, age; not its query), and the load goes on by itself
/// once it ends, with the row it wrote in the copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_left_open_on_the_source_is_named_while_the_slot_waits_for_it() {
    let pair = Pair::start_with(pgcutover::pg::cluster::ClusterOptions {
        settings: vec![("max_prepared_transactions".into(), "4".into())],
        ..Default::default()
    })
    .await;
    let src = pair.src().await;
    src.batch_execute(
        "CREATE TABLE t (id int PRIMARY KEY, v text);
         INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 100) g;",
    )
    .await
    .unwrap();
    let blocker = pair.src().await;
    let pid: i32 = blocker
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    blocker
        .batch_execute("BEGIN; INSERT INTO t VALUES (101, 'secret-ish literal')")
        .await
        .unwrap();
    // A prepared transaction, forgotten by whoever prepared it: it has no session to end.
    src.batch_execute(
        "BEGIN; INSERT INTO t VALUES (102, 'prepared'); PREPARE TRANSACTION 'forgotten gid'",
    )
    .await
    .unwrap();

    let status = StatusBoard::new("native", "t");
    let cfg = pair.config("");
    let load = tokio::spawn({
        let status = status.clone();
        async move { load::run(&cfg, status).await }
    });
    wait_for(LIMIT, "the wait and its blocker in /status", || async {
        status.view().waiting.is_some_and(|w| {
            w.blockers
                .iter()
                .any(|b| b.pid == Some(pid) && b.state.as_deref() == Some("idle in transaction"))
        })
    })
    .await;
    let view = serde_json::to_value(status.view()).unwrap();
    let waiting = &view["waiting"];
    assert!(
        waiting["reason"].as_str().unwrap().contains("pgcutover_t")
            && waiting["hint"]
                .as_str()
                .unwrap()
                .contains("pg_terminate_backend")
            && waiting["blockers"][0]["transaction_seconds"].as_f64() > Some(0.0),
        "{view}"
    );
    assert!(!view.to_string().contains("secret-ish"), "{view}");
    assert!(!load.is_finished());

    let prepared = |b: &pgcutover::status::Blocker| {
        b.pid.is_none()
            && b.state.as_deref() == Some("prepared")
            && b.prepared_gid.as_deref() == Some("forgotten gid")
            && b.transaction_seconds > Some(0.0)
    };
    assert!(
        status.view().waiting.unwrap().blockers.iter().any(prepared),
        "{view}"
    );
    assert!(
        waiting["hint"]
            .as_str()
            .unwrap()
            .contains("COMMIT PREPARED"),
        "{view}"
    );

    // The session's transaction ends; the prepared one still holds the slot back, alone.
    blocker.batch_execute("COMMIT").await.unwrap();
    wait_for(
        LIMIT,
        "the prepared transaction as the only blocker",
        || async {
            status
                .view()
                .waiting
                .is_some_and(|w| w.blockers.len() == 1 && prepared(&w.blockers[0]))
        },
    )
    .await;
    assert!(!load.is_finished());
    src.batch_execute("COMMIT PREPARED 'forgotten gid'")
        .await
        .unwrap();
    tokio::time::timeout(LIMIT, load)
        .await
        .expect("the load goes on")
        .unwrap()
        .expect("load succeeds");
    assert!(status.view().waiting.is_none());
    assert_eq!(
        scalar(&pair.tgt().await, "SELECT count(*) FROM t").await,
        102
    );
}

/// A SQL_ASCII source (bytes stored unchecked) into a UTF8 target: the preflight warns, and
/// a value that is not valid UTF-8 stops the load with an error naming its table, not
/// stored garbled; the rows of valid tables are copied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sql_ascii_source_is_pointed_out_and_invalid_bytes_are_named() {
    let pair = Pair::start().await;
    let admin = pair.source.conn("postgres").connect("test").await.unwrap();
    admin
        .batch_execute(
            "CREATE DATABASE raw ENCODING 'SQL_ASCII' LC_COLLATE 'C' LC_CTYPE 'C' \
             TEMPLATE template0",
        )
        .await
        .unwrap();
    let tadmin = pair.target.conn("postgres").connect("test").await.unwrap();
    tadmin.batch_execute("CREATE DATABASE raw").await.unwrap();
    let src = pair.source.conn("raw").connect("test").await.unwrap();
    src.batch_execute(
        "CREATE TABLE fine (id int PRIMARY KEY, v text);
         INSERT INTO fine VALUES (1, 'plain ascii');
         CREATE TABLE latin (id int PRIMARY KEY, v text);
         INSERT INTO latin VALUES (1, E'caf\\351');",
    )
    .await
    .unwrap();
    let mut cfg = pair.config("parallel_workers = 1");
    cfg.source.dbname = "raw".into();
    cfg.target.dbname = "raw".into();
    let status = StatusBoard::new("native", "t");
    let err = load::run(&cfg, status.clone())
        .await
        .expect_err("invalid UTF-8 must stop the load");
    let text = err.to_string();
    assert!(text.contains("latin") && text.contains("UTF8"), "{text}");
    let warnings = status.view().warnings.join("\n");
    assert!(warnings.contains("SQL_ASCII"), "{warnings}");
    let tgt = pair.target.conn("raw").connect("test").await.unwrap();
    assert_eq!(scalar(&tgt, "SELECT count(*) FROM latin").await, 0);
}
