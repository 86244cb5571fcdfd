//! Checks of the servers themselves: versions, standbys, encodings, and the source's
//! replication settings, privileges and risks (slots, WAL senders, `max_slot_wal_keep_size`,
//! large objects).

use tokio_postgres::Client;

use super::{Problem, problem};
use crate::pg::{SqlContext, SqlError};

/// The oldest source the native engine streams from: PostgreSQL 14's pgoutput is the first
/// to take the `messages` option, which carries the lag heartbeat (12 and 13 refuse the
/// START_REPLICATION that asks for it; both are out of support).
pub(super) const OLDEST_SOURCE: u32 = 14;

pub(super) fn version_problem(source_major: u32) -> Option<Problem> {
    (source_major < OLDEST_SOURCE).then(|| {
        problem(
            format!(
                "the source runs PostgreSQL {source_major}; pgcutover needs {OLDEST_SOURCE} or \
                 newer (its change stream uses pgoutput's logical messages)"
            ),
            "upgrade the source first (pg_upgrade), or migrate with pg_dump during a write \
             freeze",
        )
    })
}

/// A target the migration cannot work with: older than 12 (the load reads its partition
/// trees with 12's functions), or, when pgcutover copies the schema, older than the source
/// (`pg_dump`'s output is only meant for servers of its own version or newer).
pub(super) fn target_version_problem(
    source_major: u32,
    target_major: u32,
    copy_schema: bool,
) -> Option<Problem> {
    if target_major < 12 {
        return Some(problem(
            format!("the target runs PostgreSQL {target_major}; pgcutover needs 12 or newer"),
            "migrate to a supported PostgreSQL version",
        ));
    }
    (copy_schema && target_major < source_major).then(|| {
        problem(
            format!(
                "the target runs PostgreSQL {target_major}, older than the source's \
                 {source_major}, and copy_schema = true copies the schema with pg_dump, whose \
                 output is for servers of its own version or newer"
            ),
            "use a target of the source's major version or newer (the usual way), or create \
             the schema on the target yourself and set copy_schema = false",
        )
    })
}

/// Whether two sessions to `info` are not each served by a server backend of their own;
/// `None` when a session cannot be opened (the preflight's own connection then says why). A
/// connection pooler in transaction or statement mode (PgBouncer's `pool_mode =
/// transaction`) hands a server connection to whichever client runs the next transaction:
/// over a few transactions taken in turn by two sessions, one session meets two backends, or
/// both meet the same one. Over a direct connection each session keeps its own backend.
/// pgcutover's sessions keep state from one transaction to the next
/// (`session_replication_role`, prepared statements, the exported snapshot the copy reads,
/// [`crate::pg::conn::SESSION_SETTINGS`]), which such a pool would lose, or hand on to its
/// other clients, and a stalled apply session is ended by its backend's process id, which
/// would then be another client's. So this runs before any session of pgcutover's, on
/// sessions that change no setting. (A pooler that always gave each session the same server
/// connection would pass, and would behave as a session pool for as long as it did.)
pub(super) async fn shares_backend(info: &crate::pg::conn::ConnInfo) -> Option<bool> {
    // One simple query each: a statement prepared in one round trip and run in the next
    // could meet two server connections, and fail.
    async fn backend(c: &Client) -> Option<String> {
        c.simple_query("SELECT pg_catalog.pg_backend_pid()")
            .await
            .ok()?
            .into_iter()
            .find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
                _ => None,
            })
    }
    let first = info.connect_plain("pgcutover").await.ok()?;
    let second = info.connect_plain("pgcutover").await.ok()?;
    let (mut mine, mut other) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        mine.push(backend(&first).await?);
        other.push(backend(&second).await?);
    }
    let own = |pids: &[String]| pids.iter().all(|p| *p == pids[0]);
    Some(!own(&mine) || !own(&other) || mine[0] == other[0])
}

pub(super) async fn in_recovery(c: &Client) -> Result<bool, SqlError> {
    let row = c
        .query_one("SELECT pg_catalog.pg_is_in_recovery()", &[])
        .await
        .ctx(|| "asking whether the server is a standby".into())?;
    Ok(row.get(0))
}

pub(super) async fn encoding(c: &Client) -> Result<String, SqlError> {
    let row = c
        .query_one("SELECT pg_catalog.current_setting('server_encoding')", &[])
        .await
        .ctx(|| "reading the server's encoding".into())?;
    Ok(row.get(0))
}

/// What a difference of database encodings can do to the data on its way (every session
/// speaks UTF8, so the servers convert). From a single-byte or other encoding to UTF8 every
/// character converts; the other way, or from SQL_ASCII (which stores bytes unchecked),
/// some may not, and the row that holds one is refused by the target, stopping the load or
/// the stream there.
pub(super) fn encoding_warning(source: &str, target: &str) -> Option<String> {
    if source == target || (target == "UTF8" && source != "SQL_ASCII") {
        return None;
    }
    Some(if source == "SQL_ASCII" {
        format!(
            "the source database's encoding is SQL_ASCII, which stores bytes without checking \
             them, and the target's is {target}: a value with bytes that are not valid \
             {target} is refused by the target and stops the load or the stream at its row \
             (the error names the table); clean such values on the source first, or create the \
             target database with the encoding the data really is in"
        )
    } else {
        format!(
            "the source database's encoding is {source} and the target's {target}, which \
             cannot hold every character {source} can: a value with such a character is \
             refused by the target and stops the load or the stream at its row (the error \
             names the table); create the target database in UTF8 (or {source})"
        )
    })
}

pub(super) async fn check_source_server(
    src: &Client,
    problems: &mut Vec<Problem>,
    warnings: &mut Vec<String>,
) -> Result<u64, SqlError> {
    let r = src
        .query_one(
            "SELECT current_setting('wal_level'),
                    current_setting('max_replication_slots')::int,
                    (SELECT count(*) FROM pg_replication_slots)::int,
                    current_setting('max_wal_senders')::int,
                    (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'walsender')::int,
                    r.rolsuper, r.rolreplication,
                    coalesce((SELECT pg_has_role(oid, 'MEMBER') FROM pg_roles
                               WHERE rolname = 'rds_replication'), false),
                    has_database_privilege(current_database(), 'CREATE'),
                    current_setting('block_size')::int8,
                    (SELECT setting::int8 FROM pg_settings
                      WHERE name = 'max_slot_wal_keep_size'),
                    (SELECT count(*) FROM pg_largeobject_metadata)
               FROM pg_roles r WHERE r.rolname = current_user",
            &[],
        )
        .await
        .ctx(|| "reading the source's settings".into())?;
    let wal_level: String = r.get(0);
    if wal_level != "logical" {
        problems.push(problem(
            format!("the source has wal_level = {wal_level}, logical replication needs logical"),
            "set wal_level = logical and restart the source (RDS/Aurora: set \
             rds.logical_replication = 1 in the parameter group and reboot)",
        ));
    }
    let (max_slots, used_slots): (i32, i32) = (r.get(1), r.get(2));
    if max_slots - used_slots < 1 {
        problems.push(problem(
            format!("the source has no free replication slot ({used_slots} of max_replication_slots = {max_slots} in use)"),
            "raise max_replication_slots (needs a restart) or drop unused slots",
        ));
    }
    let (max_senders, used_senders): (i32, i32) = (r.get(3), r.get(4));
    if max_senders - used_senders < 1 {
        problems.push(problem(
            format!("the source has no free WAL sender ({used_senders} of max_wal_senders = {max_senders} in use)"),
            "raise max_wal_senders (needs a restart)",
        ));
    }
    let (superuser, replication, rds): (bool, bool, bool) = (r.get(5), r.get(6), r.get(7));
    if !(superuser || replication || rds) {
        problems.push(problem(
            "the source role may not use replication",
            "ALTER ROLE <role> WITH REPLICATION (RDS/Aurora: GRANT rds_replication TO <role>)",
        ));
    }
    let can_create: bool = r.get(8);
    if !(superuser || can_create) {
        problems.push(problem(
            "the source role may not create a publication (no CREATE on the database)",
            "GRANT CREATE ON DATABASE <db> TO <role>",
        ));
    }
    // PostgreSQL 13+, in MB; -1 is unlimited.
    if let Some(keep_mb) = r.get::<_, Option<i64>>(10).filter(|mb| *mb >= 0) {
        warnings.push(format!(
            "the source limits the WAL a slot may hold (max_slot_wal_keep_size = {keep_mb} MB): if \
             it writes more than that before the change stream has caught up (during the full \
             load, or while pgcutover is stopped), it invalidates the slot and the migration \
             must start over; consider -1 (unlimited) for the migration, and watch \
             slot.safe_wal_bytes in /status"
        ));
    }
    let large_objects: i64 = r.get(11);
    if large_objects > 0 {
        warnings.push(format!(
            "the source has {large_objects} large object(s) (pg_largeobject): neither logical \
             replication nor pgcutover carries them, so they will be missing on the target; \
             copy them separately just before the switch, for example `pg_dump -Fc -b -f \
             lo.dump`, `pg_restore -l lo.dump | grep BLOB > lo.list`, `pg_restore -L lo.list \
             -d <target> lo.dump`"
        ));
    }
    Ok(r.get::<_, i64>(9).max(1) as u64)
}
