//! The heartbeat: once a second the daemon writes a non-transactional logical message
//! stamped with its own clock into the source's WAL (see "Lag" in [`super`]), and reads the
//! source's WAL position and the slot's retained WAL for `/status`. The same connection looks
//! for new tables now and then.
//!
//! It also watches the slot's `wal_status` (PostgreSQL 13+): `unreserved` means the slot holds
//! more WAL than `max_slot_wal_keep_size` allows and the source's next checkpoint may remove it;
//! `lost` means it did, and the slot can no longer stream (see [`super::stream`]). Both are
//! logged once as they happen and shown in `/status` and `/metrics`, with `safe_wal_size`: how
//! much more WAL the source may write before the slot is in danger.

use std::sync::Arc;
use std::time::Duration;

use crate::config::Config;
use crate::pg::{Lsn, SqlContext, SqlError, TableName};
use crate::status::{SlotState, StatusBoard, unix_micros};

const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);
const NEW_TABLE_CHECK_EVERY: u64 = 10;

/// Prefix of our heartbeat messages, per migration so that two migrations from one source
/// never read each other's.
pub(super) fn prefix(cfg: &Config) -> String {
    format!(
        "pgcutover.heartbeat.{}",
        cfg.replication.migration_id.as_str()
    )
}

/// Once a second: stamp a heartbeat into the source's WAL and read its WAL position and the
/// slot's retained WAL. Failures are logged and retried; lag then shows as growing. Every
/// [`NEW_TABLE_CHECK_EVERY`] heartbeats, look for tables (or partitions) created on the source
/// that the patterns select but the migration does not have, and report them on `new_tables`.
pub(super) async fn run(
    cfg: Config,
    status: Arc<StatusBoard>,
    known: Vec<TableName>,
    new_tables: tokio::sync::watch::Sender<Vec<TableName>>,
) {
    let prefix = prefix(&cfg);
    let slot = cfg.replication.migration_id.slot_name();
    let mut client = None;
    let mut warned = false;
    let mut wal_status: Option<String> = None;
    let mut tick = tokio::time::interval(HEARTBEAT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for beat in 0u64.. {
        tick.tick().await;
        if client.is_none() {
            match cfg.source.connect("pgcutover-heartbeat").await {
                Ok(c) => client = Some(c),
                Err(e) => {
                    if !warned {
                        tracing::warn!(error = %e, "heartbeat: cannot connect to the source");
                        warned = true;
                    }
                    continue;
                }
            }
        }
        let Some(c) = client.as_ref() else { continue };
        let sent = unix_micros();
        let result = c
            .query_one(
                // `to_jsonb` reads columns that PostgreSQL 12 does not have as NULL.
                "SELECT pg_logical_emit_message(false, $1, $2)::text,
                        pg_current_wal_lsn()::text,
                        s.restart_lsn::text,
                        to_jsonb(s) ->> 'wal_status',
                        (to_jsonb(s) ->> 'safe_wal_size')::bigint
                   FROM (SELECT) AS one
                   LEFT JOIN pg_replication_slots s ON s.slot_name = $3",
                &[&prefix, &sent.to_string(), &slot],
            )
            .await
            .ctx(|| "writing a heartbeat on the source".into());
        match result {
            Ok(row) => {
                warned = false;
                status.heartbeat_sent(sent);
                let current: Option<Lsn> = row.get::<_, String>(1).parse().ok();
                let slot_state = SlotState {
                    restart_lsn: row.get::<_, Option<String>>(2).and_then(|s| s.parse().ok()),
                    wal_status: row.get(3),
                    safe_wal_bytes: row.get(4),
                };
                if slot_state.wal_status != wal_status {
                    report_wal_status(&slot, wal_status.as_deref(), &slot_state);
                    wal_status = slot_state.wal_status.clone();
                }
                if let Some(current) = current {
                    status.source_wal(current, slot_state);
                }
                if beat % NEW_TABLE_CHECK_EVERY == 0 {
                    match unknown_tables(c, &cfg, &known).await {
                        Ok(found) if !found.is_empty() => {
                            new_tables.send_if_modified(|v| {
                                let changed = *v != found;
                                *v = found;
                                changed
                            });
                        }
                        Ok(_) => {}
                        Err(e) => tracing::debug!(error = %e, "looking for new tables failed"),
                    }
                }
            }
            Err(e) => {
                if !warned {
                    tracing::warn!(error = %e, "heartbeat failed; lag in seconds is not measured");
                    warned = true;
                }
                if c.is_closed() {
                    client = None;
                }
            }
        }
    }
}

/// Log a change of the slot's `wal_status` that matters to the operator.
fn report_wal_status(slot: &str, before: Option<&str>, now: &SlotState) {
    let safe = now.safe_wal_bytes;
    match now.wal_status.as_deref() {
        Some("unreserved") => tracing::warn!(%slot, safe_wal_bytes = safe,
            "the slot holds more WAL than max_slot_wal_keep_size allows: the source may remove \
             it at its next checkpoint, and then the change stream cannot go on; let the apply \
             catch up, or raise max_slot_wal_keep_size on the source"),
        Some("lost") => tracing::error!(%slot,
            "the source removed WAL the slot still needed (max_slot_wal_keep_size): the change \
             stream cannot go on from this slot"),
        Some(status) if matches!(before, Some("unreserved" | "lost")) => {
            tracing::info!(%slot, wal_status = status, "the slot's WAL is safe again")
        }
        _ => {}
    }
}

/// Tables holding rows that the configured patterns select on the source now, but that the
/// migration did not load.
async fn unknown_tables(
    source: &tokio_postgres::Client,
    cfg: &Config,
    known: &[TableName],
) -> Result<Vec<TableName>, SqlError> {
    let all = crate::pg::catalog::list_tables(source).await?;
    let Ok(selection) =
        crate::pg::catalog::select(&all, &cfg.replication.tables, &cfg.replication.exclude)
    else {
        return Ok(Vec::new());
    };
    Ok(selection
        .units
        .into_iter()
        .map(|t| t.name)
        .filter(|t| !known.contains(t))
        .collect())
}
