//! The heartbeat: once a second the daemon writes a non-transactional logical message
//! stamped with its own clock into the source's WAL (see "Lag" in [`super`]), and reads the
//! source's WAL position for `lag_bytes` and the slot's state
//! ([`crate::pg::slot::slot_state`]: retained WAL, `wal_status`, `safe_wal_size`), as the full
//! load did before it, logging a `wal_status` that turns `unreserved` or `lost` (see
//! [`super::stream`] for what a lost slot does to the stream). The same connection looks for
//! new tables now and then.

use std::sync::Arc;
use std::time::Duration;

use crate::config::Config;
use crate::pg::slot;
use crate::pg::{Lsn, SqlContext, SqlError, TableName};
use crate::status::{StatusBoard, unix_micros};

const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);
const NEW_TABLE_CHECK_EVERY: u64 = 10;

/// How the source's tables drifted from the migration, as the heartbeat last saw it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Drift {
    /// Tables (or partitions) the patterns select that the migration does not have.
    pub new: Vec<TableName>,
    /// Tables the migration copied and still selects, but whose table (or partition root)
    /// someone removed from the migration's publication: their changes are not streamed.
    pub unpublished: Vec<TableName>,
    /// Tables the migration copied that the source no longer has under that name (renamed,
    /// moved to another schema, or dropped). Reported with new tables, which a rename makes.
    pub vanished: Vec<TableName>,
}

impl Drift {
    pub fn is_empty(&self) -> bool {
        self.new.is_empty() && self.unpublished.is_empty()
    }
}

/// Prefix of our heartbeat messages, per migration so that two migrations from one source
/// never read each other's.
pub(super) fn prefix(cfg: &Config) -> String {
    format!(
        "pgcutover.heartbeat.{}",
        cfg.replication.migration_id.as_str()
    )
}

/// Once a second: stamp a heartbeat into the source's WAL and read its WAL position and the
/// slot's retained WAL. Failures are logged and retried; lag then shows as growing. A round
/// that takes longer than `replication.receive_timeout` gives up on its connection (one that
/// a firewall forgot would never answer) and the next opens another. Every
/// [`NEW_TABLE_CHECK_EVERY`] heartbeats, look for tables (or partitions) created on the source
/// that the patterns select but the migration does not have, and for migrated tables removed
/// from the publication, and report them on `drift`.
pub(super) async fn run(
    cfg: Config,
    status: Arc<StatusBoard>,
    known: Vec<TableName>,
    drift: tokio::sync::watch::Sender<Drift>,
) {
    let heart = Heart {
        prefix: prefix(&cfg),
        slot: cfg.replication.migration_id.slot_name(),
        cfg,
        status,
        known,
        drift,
    };
    let cfg = &heart.cfg;
    let mut client = None;
    let mut warned = false;
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
        let round = heart.beat(c, beat.is_multiple_of(NEW_TABLE_CHECK_EVERY));
        // A connection that died without being closed would hold the heartbeat (and the lag
        // it measures) for as long as the kernel retransmits: give up on it instead.
        let limit = cfg.replication.receive_timeout;
        let (failure, reconnect) = match tokio::time::timeout(limit, round).await {
            Ok(Ok(())) => {
                warned = false;
                continue;
            }
            Ok(Err(e)) => (e.to_string(), c.is_closed()),
            Err(_) => (
                format!(
                    "the source did not answer within {} s (replication.receive_timeout); \
                     reconnecting",
                    limit.as_secs_f64()
                ),
                true,
            ),
        };
        if !warned {
            tracing::warn!(error = %failure, "heartbeat failed; lag in seconds is not measured");
            warned = true;
        }
        if reconnect {
            client = None;
        }
    }
}

/// What the heartbeat works with.
struct Heart {
    cfg: Config,
    status: Arc<StatusBoard>,
    prefix: String,
    slot: String,
    known: Vec<TableName>,
    drift: tokio::sync::watch::Sender<Drift>,
}

impl Heart {
    /// One heartbeat: stamp it into the source's WAL, then read the source's position, the
    /// slot's state and, when `look_for_drift`, the drift of the source's tables.
    async fn beat(&self, c: &tokio_postgres::Client, look_for_drift: bool) -> Result<(), SqlError> {
        let Heart {
            cfg,
            status,
            prefix,
            slot,
            known,
            drift,
        } = self;
        let sent = unix_micros();
        let row = c
            .query_one(
                "SELECT pg_logical_emit_message(false, $1, $2)::text,
                    pg_current_wal_lsn()::text",
                &[&prefix, &sent.to_string()],
            )
            .await
            .ctx(|| "writing a heartbeat on the source".into())?;
        status.heartbeat_sent(sent);
        let current: Option<Lsn> = row.get::<_, String>(1).parse().ok();
        if let Some(current) = current {
            status.source_wal(current);
        }
        if let Ok(Some(state)) = slot::slot_state(c, slot).await {
            let now = state.clone();
            let before = status.slot_state(state);
            slot::log_wal_status_change(slot, before.as_deref(), &now);
        }
        if look_for_drift {
            match drift_of(c, cfg, known).await {
                Ok(found) if !found.is_empty() => {
                    drift.send_if_modified(|v| {
                        let changed = *v != found;
                        *v = found;
                        changed
                    });
                }
                Ok(_) => {}
                Err(e) => tracing::debug!(error = %e, "looking for new tables failed"),
            }
        }
        Ok(())
    }
}

/// Compare the source's tables and the migration's publication with what the migration has.
async fn drift_of(
    source: &tokio_postgres::Client,
    cfg: &Config,
    known: &[TableName],
) -> Result<Drift, SqlError> {
    let all = crate::pg::catalog::list_tables(source).await?;
    let Ok(selection) =
        crate::pg::catalog::select(&all, &cfg.replication.tables, &cfg.replication.exclude)
    else {
        return Ok(Drift::default());
    };
    let publication = cfg.replication.migration_id.publication_name();
    // A publication dropped altogether is not a drift of its tables: the stream stops on it
    // at the next change, saying the publication is gone (there is no resuming from that).
    let published = match slot::publication_exists(source, &publication).await? {
        true => Some(slot::publication_tables(source, &publication).await?),
        false => None,
    };
    let mut drift = Drift {
        vanished: known
            .iter()
            .filter(|k| !all.iter().any(|t| &t.name == *k))
            .cloned()
            .collect(),
        ..Drift::default()
    };
    for unit in selection.units {
        let top = unit.root.as_ref().unwrap_or(&unit.name);
        if !known.contains(&unit.name) {
            drift.new.push(unit.name);
        } else if published.as_ref().is_some_and(|p| !p.contains(top)) {
            drift.unpublished.push(unit.name);
        }
    }
    Ok(drift)
}
