//! The publication and the logical replication slot on the source.
//!
//! The slot is created on a *replication* connection (the `replication=database` startup
//! parameter, which tokio-postgres cannot send; see [`super::wire`]): it authenticates, runs
//! `CREATE_REPLICATION_SLOT ... (SNAPSHOT 'export')`, and then simply stays open.
//! PostgreSQL keeps the exported snapshot importable exactly as long as that
//! session runs no other command and stays connected, so [`ExportedSnapshot`] owns the session
//! and the snapshot dies with it (correctness rule 1: every copy worker imports it before it
//! is dropped). See <https://www.postgresql.org/docs/current/protocol-replication.html>.

use tokio_postgres::Client;

use super::conn::ConnInfo;
use super::wire::{Conn, ErrorKind};
use super::{Lsn, SqlContext, SqlError, TableName, quote_ident};

#[derive(Debug, thiserror::Error)]
pub enum SlotError {
    #[error("cannot open a replication connection to {target}: {message}")]
    Connect { target: String, message: String },
    #[error("creating replication slot {slot} failed: {message}")]
    Create { slot: String, message: String },
    #[error(transparent)]
    Sql(#[from] SqlError),
}

impl SlotError {
    pub fn hint(&self) -> String {
        match self {
            SlotError::Connect { .. } => "the role needs the REPLICATION attribute (or \
                rds_replication on RDS/Aurora), and pg_hba.conf must allow its connection"
                .into(),
            SlotError::Create { message, .. } if message.contains("all replication slots") => {
                "raise max_replication_slots on the source, or drop unused slots".into()
            }
            SlotError::Create { .. } | SlotError::Sql(_) => {
                "check the source's log for the reason".into()
            }
        }
    }
}

/// A snapshot exported by slot creation, valid while this value lives.
pub struct ExportedSnapshot {
    /// The replication session that holds the snapshot open; dropping it ends the session.
    _session: Conn,
    /// The name workers pass to `SET TRANSACTION SNAPSHOT`.
    pub name: String,
    /// The slot's consistent point: the snapshot sees exactly the transactions that committed
    /// before it, and the slot streams exactly those that commit after it.
    pub lsn: Lsn,
}

/// Whether the source takes a replication connection as the stream will open it: a session
/// that runs `IDENTIFY_SYSTEM` (read-only) and ends. A connection that works for SQL
/// can still be refused there: by `pg_hba.conf`, or by a connection pooler that does not pass
/// replication connections on (PgBouncer before 1.23). The error, and what to do about it.
pub async fn replication_refusal(conn: &ConnInfo) -> Option<(String, String)> {
    let probe = async {
        let mut session = Conn::connect(conn, "pgcutover")
            .await
            .map_err(|e| e.to_string())?;
        let rows = session
            .simple_query("IDENTIFY_SYSTEM")
            .await
            .map_err(|e| e.to_string());
        session.terminate().await;
        rows.map(|_| ())
    };
    let message = match tokio::time::timeout(conn.connect_timeout * 2, probe).await {
        Ok(Ok(())) => return None,
        Ok(Err(message)) => message,
        Err(_) => format!(
            "no answer within {} s",
            (conn.connect_timeout * 2).as_secs()
        ),
    };
    let hint = if message.contains("unsupported startup parameter") {
        "source.url goes through a connection pooler that does not pass replication \
         connections on (PgBouncer before 1.23): point source.url at the server itself (the \
         stream and the copy's snapshot need a session of their own there)"
    } else if message.contains("pg_hba.conf") {
        "the source's pg_hba.conf must allow this role a replication connection to the \
         database (for logical replication, a line for the database, not the `replication` \
         keyword, covers it)"
    } else {
        "the role needs the REPLICATION attribute (or rds_replication on RDS/Aurora), the \
         source a free WAL sender, and anything between them must pass replication \
         connections on"
    };
    Some((message, hint.into()))
}

/// Create a logical slot (pgoutput) and export its snapshot. A `temporary` slot is dropped by
/// the server when the session ends.
pub async fn create_slot_with_snapshot(
    conn: &ConnInfo,
    slot: &str,
    temporary: bool,
    server_major: u32,
) -> Result<ExportedSnapshot, SlotError> {
    let mut session = Conn::connect(conn, "pgcutover")
        .await
        .map_err(|e| SlotError::Connect {
            target: conn.to_string(),
            message: e.to_string(),
        })?;
    let temp = if temporary { " TEMPORARY" } else { "" };
    // PostgreSQL 15 introduced the option list; the older keyword form is still accepted.
    let options = if server_major >= 15 {
        "(SNAPSHOT 'export')"
    } else {
        "EXPORT_SNAPSHOT"
    };
    let sql = format!(
        "CREATE_REPLICATION_SLOT {}{temp} LOGICAL pgoutput {options}",
        quote_ident(slot)
    );
    let rows = session.simple_query(&sql).await.map_err(|e| match e.kind {
        ErrorKind::Io | ErrorKind::Tls | ErrorKind::Auth => SlotError::Connect {
            target: conn.to_string(),
            message: e.message,
        },
        ErrorKind::Server | ErrorKind::Protocol => SlotError::Create {
            slot: slot.to_string(),
            message: e.message,
        },
    })?;
    let bad = |what: &str| SlotError::Create {
        slot: slot.to_string(),
        message: format!("unexpected reply: {what}"),
    };
    let row = rows.first().ok_or_else(|| bad("no row"))?;
    let text = |i: usize| -> Result<String, SlotError> {
        row.get(i)
            .cloned()
            .flatten()
            .ok_or_else(|| bad("missing column"))
    };
    let lsn: Lsn = text(1)?.parse().map_err(|_| bad("consistent_point"))?;
    let name = text(2)?;
    Ok(ExportedSnapshot {
        _session: session,
        name,
        lsn,
    })
}

/// The source's transactions a logical slot being created for `waited` so far may be waiting
/// for: its snapshot is consistent only once every transaction that had written something
/// (held an xid) when creation began has ended, prepared ones included, however long they
/// stay open. Oldest first, at most 20. A role that may not see other roles' sessions
/// (neither superuser nor `pg_read_all_stats`) sees none of theirs here.
pub async fn slot_blockers(
    client: &Client,
    waited: std::time::Duration,
) -> Result<Vec<crate::status::Blocker>, SqlError> {
    let rows = client
        .query(
            "SELECT a.pid, a.usename::text, a.application_name, a.state,
                    extract(epoch FROM now() - a.xact_start)::float8, NULL::text
               FROM pg_stat_activity a
              WHERE a.backend_xid IS NOT NULL AND a.pid <> pg_backend_pid()
                AND a.xact_start < now() - make_interval(secs => $1)
             UNION ALL
             SELECT NULL, p.owner::text, NULL, 'prepared',
                    extract(epoch FROM now() - p.prepared)::float8, p.gid
               FROM pg_prepared_xacts p
              WHERE p.prepared < now() - make_interval(secs => $1)
              ORDER BY 5 DESC NULLS LAST
              LIMIT 20",
            &[&waited.as_secs_f64()],
        )
        .await
        .ctx(|| "looking for the transactions a new slot waits for".into())?;
    Ok(rows
        .iter()
        .map(|r| crate::status::Blocker {
            pid: r.get(0),
            user: r.get(1),
            application: r.get::<_, Option<String>>(2).filter(|a| !a.is_empty()),
            state: r.get(3),
            transaction_seconds: r.get(4),
            prepared_gid: r.get(5),
        })
        .collect())
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotInfo {
    pub plugin: Option<String>,
    pub active_pid: Option<i32>,
    pub confirmed_flush: Option<Lsn>,
}

pub async fn slot_info(client: &Client, slot: &str) -> Result<Option<SlotInfo>, SqlError> {
    let row = client
        .query_opt(
            "SELECT plugin::text, active_pid, confirmed_flush_lsn::text
               FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .ctx(|| format!("looking up replication slot {slot}"))?;
    Ok(row.map(|r| SlotInfo {
        plugin: r.get(0),
        active_pid: r.get(1),
        confirmed_flush: r.get::<_, Option<String>>(2).and_then(|s| s.parse().ok()),
    }))
}

/// The walsender streaming from a slot, as the source sees it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SlotSender {
    /// `pg_replication_slots.active_pid`: none when no session streams from the slot.
    pub pid: Option<i32>,
    /// The send time the consumer put in its last status update (`pg_stat_replication.
    /// reply_time`, in seconds since 1970 by the consumer's clock); none before the first, or
    /// when the role may not see the walsender's statistics.
    pub reply_time: Option<f64>,
    /// The walsender was waiting: for the consumer to take what it sent, for the consumer to
    /// say something, or for WAL. It reads the consumer's status updates while it waits, so
    /// a `reply_time` that stands still then means that none arrive. Otherwise (busy on the
    /// CPU or on I/O, such as spilling or reading back a large transaction, or a role that
    /// may not see its wait) it may simply not have looked at its socket yet.
    pub waiting: bool,
}

/// Who streams from `slot` now, or `None` when there is no such slot.
pub async fn slot_sender(client: &Client, slot: &str) -> Result<Option<SlotSender>, SqlError> {
    let row = client
        .query_opt(
            "SELECT s.active_pid, extract(epoch FROM r.reply_time)::float8,
                    coalesce(a.wait_event IN ('WalSenderMain', 'WalSenderWaitForWAL',
                                              'WalSenderWriteData'), false)
               FROM pg_replication_slots s
               LEFT JOIN pg_stat_replication r ON r.pid = s.active_pid
               LEFT JOIN pg_stat_activity a ON a.pid = s.active_pid
              WHERE s.slot_name = $1",
            &[&slot],
        )
        .await
        .ctx(|| format!("looking up the walsender of replication slot {slot}"))?;
    Ok(row.map(|r| SlotSender {
        pid: r.get(0),
        reply_time: r.get(1),
        waiting: r.get(2),
    }))
}

/// How much WAL the source keeps for a slot, and whether it is safe.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SlotState {
    /// The source's current WAL position when it was read.
    pub current_lsn: Lsn,
    pub restart_lsn: Option<Lsn>,
    /// `reserved` or `extended` are fine; `unreserved` means the source's next checkpoint
    /// may remove WAL the slot needs (it holds more than `max_slot_wal_keep_size`); `lost`
    /// means it did, and the slot can no longer stream.
    pub wal_status: Option<String>,
    /// How much more WAL the source may write before the slot is in danger (`None` when
    /// `max_slot_wal_keep_size` is unlimited).
    pub safe_wal_bytes: Option<i64>,
}

impl SlotState {
    /// WAL the source keeps for the slot.
    pub fn retained_bytes(&self) -> Option<u64> {
        self.restart_lsn.map(|r| self.current_lsn.bytes_since(r))
    }
}

/// The slot's state, or `None` when there is no such slot.
pub async fn slot_state(client: &Client, slot: &str) -> Result<Option<SlotState>, SqlError> {
    let row = client
        .query_opt(
            "SELECT pg_current_wal_lsn()::text, restart_lsn::text, wal_status,
                    safe_wal_size::int8
               FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .ctx(|| format!("reading the state of replication slot {slot}"))?;
    Ok(row.map(|r| SlotState {
        current_lsn: r.get::<_, String>(0).parse().unwrap_or(Lsn::ZERO),
        restart_lsn: r.get::<_, Option<String>>(1).and_then(|s| s.parse().ok()),
        wal_status: r.get(2),
        safe_wal_bytes: r.get(3),
    }))
}

/// Log a change of the slot's `wal_status` that matters to the operator: `unreserved` (a
/// warning: the next checkpoint may remove its WAL), `lost`, and safe again.
pub fn log_wal_status_change(slot: &str, before: Option<&str>, now: &SlotState) {
    if before == now.wal_status.as_deref() {
        return;
    }
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

/// Read the slot's state every `every` and hand it to `report` (which returns the
/// `wal_status` it replaces, so that a change is logged), for as long as the returned future
/// is polled. Failures are skipped: the next read tries again, on a new connection if the
/// old one broke.
pub async fn watch_slot(
    conn: &ConnInfo,
    slot: &str,
    every: std::time::Duration,
    mut report: impl FnMut(SlotState) -> Option<String>,
) -> std::convert::Infallible {
    let mut client: Option<Client> = None;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if client.as_ref().is_none_or(|c| c.is_closed()) {
            client = conn.connect("pgcutover-slot-watch").await.ok();
        }
        let Some(c) = &client else { continue };
        if let Ok(Some(state)) = slot_state(c, slot).await {
            let now = state.clone();
            let before = report(state);
            log_wal_status_change(slot, before.as_deref(), &now);
        }
    }
}

/// Drop a slot if it exists, ending the session that holds it first. Returns whether a slot
/// was dropped.
pub async fn drop_slot(client: &Client, slot: &str) -> Result<bool, SqlError> {
    for _ in 0..50 {
        let Some(info) = slot_info(client, slot).await? else {
            return Ok(false);
        };
        if let Some(pid) = info.active_pid {
            client
                .execute("SELECT pg_terminate_backend($1)", &[&pid])
                .await
                .ctx(|| format!("ending the session that holds slot {slot}"))?;
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            continue;
        }
        match client
            .execute("SELECT pg_drop_replication_slot($1)", &[&slot])
            .await
        {
            Ok(_) => return Ok(true),
            // Became active again, or was dropped by someone else in between: look again.
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
        }
    }
    let source = client
        .execute("SELECT pg_drop_replication_slot($1)", &[&slot])
        .await
        .err();
    match source {
        None => Ok(true),
        Some(source) => Err(SqlError {
            context: format!("dropping replication slot {slot}"),
            source,
        }),
    }
}

/// Create (or recreate) the publication for exactly these tables.
pub async fn create_publication(
    client: &Client,
    name: &str,
    tables: &[TableName],
) -> Result<(), SqlError> {
    drop_publication(client, name).await?;
    let list: Vec<String> = tables.iter().map(|t| t.to_string()).collect();
    client
        .batch_execute(&format!(
            "CREATE PUBLICATION {} FOR TABLE {}",
            quote_ident(name),
            list.join(", ")
        ))
        .await
        .ctx(|| format!("creating publication {name}"))
}

/// The tables named in a publication (partitioned tables by their root).
pub async fn publication_tables(client: &Client, name: &str) -> Result<Vec<TableName>, SqlError> {
    let rows = client
        .query(
            "SELECT n.nspname::text, c.relname::text
               FROM pg_publication p
               JOIN pg_publication_rel pr ON pr.prpubid = p.oid
               JOIN pg_class c ON c.oid = pr.prrelid
               JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE p.pubname = $1",
            &[&name],
        )
        .await
        .ctx(|| format!("listing the tables of publication {name}"))?;
    Ok(rows
        .iter()
        .map(|r| TableName::new(r.get::<_, String>(0), r.get::<_, String>(1)))
        .collect())
}

/// Add tables to a publication.
pub async fn add_to_publication(
    client: &Client,
    name: &str,
    tables: &[TableName],
) -> Result<(), SqlError> {
    let list: Vec<String> = tables.iter().map(|t| t.to_string()).collect();
    client
        .batch_execute(&format!(
            "ALTER PUBLICATION {} ADD TABLE {}",
            quote_ident(name),
            list.join(", ")
        ))
        .await
        .ctx(|| format!("adding tables to publication {name}"))
}

/// Take tables out of a publication.
pub async fn drop_from_publication(
    client: &Client,
    name: &str,
    tables: &[TableName],
) -> Result<(), SqlError> {
    let list: Vec<String> = tables.iter().map(|t| t.to_string()).collect();
    client
        .batch_execute(&format!(
            "ALTER PUBLICATION {} DROP TABLE {}",
            quote_ident(name),
            list.join(", ")
        ))
        .await
        .ctx(|| format!("taking tables out of publication {name}"))
}

pub async fn publication_exists(client: &Client, name: &str) -> Result<bool, SqlError> {
    Ok(client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1)",
            &[&name],
        )
        .await
        .ctx(|| format!("looking up publication {name}"))?
        .get(0))
}

pub async fn drop_publication(client: &Client, name: &str) -> Result<(), SqlError> {
    client
        .batch_execute(&format!("DROP PUBLICATION IF EXISTS {}", quote_ident(name)))
        .await
        .ctx(|| format!("dropping publication {name}"))
}
