//! The status board: tables and chunks, the slot, waits and warnings, in JSON and metrics.

use super::*;

#[test]
fn counts_chunks_rows_and_live_bytes() {
    let board = StatusBoard::new("native", "m1");
    let t = TableName::new("public", "big");
    board.add_table(&t, 2, None);
    board.add_table(&TableName::new("public", "old"), 1, Some((5, 50, Lsn(7))));
    let live = board.chunk_started(&t);
    live.bytes.fetch_add(100, Ordering::Relaxed);
    let v = board.view();
    assert_eq!((v.tables_total, v.tables_done, v.bytes_copied), (2, 1, 150));
    assert!(!board.chunk_done(&t, 10, 100, Lsn(9)));
    live.bytes.fetch_add(30, Ordering::Relaxed);
    assert!(board.chunk_done(&t, 3, 30, Lsn(9)));
    let v = board.view();
    assert_eq!((v.tables_done, v.rows_copied, v.bytes_copied), (2, 18, 180));
    let json = serde_json::to_value(&v).unwrap();
    assert_eq!(json["tables"][0]["state"], "done");
    assert_eq!(json["tables"][0]["snapshot_lsn"], "0/9");
}

#[test]
fn the_slot_state_shows_in_status_and_metrics() {
    let board = StatusBoard::new("native", "m1");
    let empty = board.metrics();
    assert!(empty.contains("# TYPE pgcutover_slot_wal_status gauge"));
    assert!(!empty.contains("pgcutover_slot_wal_status{"));
    // During the load: a slot block, no change-stream block.
    let before = board.slot_state(SlotState {
        current_lsn: Lsn(0x3000),
        restart_lsn: Some(Lsn(0x1000)),
        wal_status: Some("unreserved".into()),
        safe_wal_bytes: Some(-4096),
    });
    assert_eq!(before, None);
    let v = serde_json::to_value(board.view()).unwrap();
    assert!(v.get("cdc").is_none(), "{v}");
    assert_eq!(v["slot"]["retained_wal_bytes"], 0x2000);
    assert_eq!(v["slot"]["wal_status"], "unreserved");
    assert_eq!(v["slot"]["safe_wal_bytes"], -4096);
    let m = board.metrics();
    assert!(
        m.contains("pgcutover_slot_wal_status{status=\"unreserved\"} 1\n"),
        "{m}"
    );
    assert!(m.contains("pgcutover_slot_safe_wal_bytes -4096\n"), "{m}");
    assert!(
        m.contains("pgcutover_slot_retained_wal_bytes 8192\n"),
        "{m}"
    );
    // During the stream the change-stream block shows the retained WAL too.
    board.source_wal(Lsn(0x5000));
    let before = board.slot_state(SlotState {
        current_lsn: Lsn(0x5000),
        restart_lsn: Some(Lsn(0x4000)),
        // Whatever else a server might say is not echoed into a label.
        wal_status: Some("x\"} 1\nevil".into()),
        safe_wal_bytes: None,
    });
    assert_eq!(before.as_deref(), Some("unreserved"));
    let v = serde_json::to_value(board.view()).unwrap();
    assert_eq!(v["cdc"]["retained_wal_bytes"], 0x1000);
    assert!(v["slot"].get("safe_wal_bytes").is_none(), "{v}");
    assert!(
        board
            .metrics()
            .contains("pgcutover_slot_wal_status{status=\"other\"} 1\n")
    );
}

#[test]
fn waits_and_warnings_show_in_status_and_metrics() {
    let board = StatusBoard::new("native", "m1");
    let m = board.metrics();
    assert!(m.contains("pgcutover_waiting_seconds 0\n") && m.contains("pgcutover_warnings 0\n"));
    board.warn("a risk".into());
    board.warn("a risk".into());
    board.set_waiting(Some(Waiting {
        reason: "creating the slot waits".into(),
        hint: "end them".into(),
        seconds: 12.5,
        blockers: vec![Blocker {
            pid: Some(42),
            user: Some("app".into()),
            application: None,
            state: Some("idle in transaction".into()),
            transaction_seconds: Some(30.0),
            prepared_gid: None,
        }],
    }));
    let m = board.metrics();
    assert!(m.contains("pgcutover_waiting_seconds 12.5\n"), "{m}");
    assert!(m.contains("pgcutover_warnings 1\n"), "{m}");
    let v = serde_json::to_value(board.view()).unwrap();
    assert_eq!(v["waiting"]["blockers"][0]["pid"], 42, "{v}");
    assert!(
        v["waiting"]["blockers"][0].get("prepared_gid").is_none(),
        "{v}"
    );
    board.set_waiting(None);
    let v = serde_json::to_value(board.view()).unwrap();
    assert!(v.get("waiting").is_none(), "{v}");
    assert!(board.metrics().contains("pgcutover_waiting_seconds 0\n"));
}

#[test]
fn what_waits_for_resume_and_what_a_retried_load_shows() {
    let board = StatusBoard::new("native", "m1");
    let why = |retry| Interruption {
        error: "cannot connect".into(),
        hint: "check the server".into(),
        retry,
        max_retries: 20,
        next_retry_in_seconds: 2.0,
    };
    board.set_stage(Stage::Preflight);
    assert!(!board.waits_for_resume());
    // A load failing for a passing reason: shown, and resumable at once.
    board.load_retrying(Some(why(2)));
    assert!(board.waits_for_resume());
    let v = serde_json::to_value(board.view()).unwrap();
    assert_eq!(v["interrupted"]["retry"], 2, "{v}");
    assert_eq!(v["stage"], "preflight", "{v}");
    // Any other failure: the error stands instead, and it waits for the operator.
    board.fail(ErrorReport {
        error: "e".into(),
        hint: "h".into(),
    });
    let v = serde_json::to_value(board.view()).unwrap();
    assert!(
        v.get("interrupted").is_none() && v["stage"] == "failed",
        "{v}"
    );
    assert!(board.waits_for_resume());
    // Run again: no error stands.
    board.load_retrying(None);
    board.set_stage(Stage::Preflight);
    let v = serde_json::to_value(board.view()).unwrap();
    assert!(
        v.get("error").is_none() && v.get("interrupted").is_none(),
        "{v}"
    );
    assert!(!board.waits_for_resume());
    // The change stream: running, retrying, stopped.
    board.cdc_running(Lsn(1));
    assert!(!board.waits_for_resume());
    board.cdc_interrupted(why(1));
    assert!(board.waits_for_resume());
    board.cdc_running(Lsn(2));
    assert!(!board.waits_for_resume());
    board.stop(ErrorReport {
        error: "e".into(),
        hint: "h".into(),
    });
    assert!(board.waits_for_resume());
}
