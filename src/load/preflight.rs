//! Checks made before anything is changed on either side.
//!
//! Every check runs, and every problem found is reported at once with a hint, so a bad
//! setup costs one round trip: unreachable servers, wrong passwords, missing privileges
//! (`session_replication_role` on the target included), server versions (a source older
//! than 14, a target older than the source when the schema is copied), `wal_level`, free
//! slots and WAL senders, patterns that match nothing, tables that cannot be
//! replicated (correctness rule 7), a target that is not empty, a target schema that differs
//! (with `copy_schema = false`), and missing or too old `pg_dump`/`pg_restore`.

use std::collections::BTreeMap;
use std::fmt;

use tokio_postgres::Client;
use tokio_postgres::error::SqlState;

use super::copy::CopyUnit;
use super::progress::{self, MigrationRow, SchemaState};
use super::schema::SchemaTools;
use crate::config::Config;
use crate::pg::catalog::{self, Column, Selection};
use crate::pg::{SqlContext, SqlError, TableName, server_major};

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    pub error: String,
    pub hint: String,
}

fn problem(error: impl Into<String>, hint: impl Into<String>) -> Problem {
    Problem {
        error: error.into(),
        hint: hint.into(),
    }
}

#[derive(Debug, thiserror::Error)]
pub struct PreflightError {
    pub problems: Vec<Problem>,
    /// Every problem is a server that could not be reached, or a connection that broke:
    /// checking again later may pass.
    pub transient: bool,
}

impl fmt::Display for PreflightError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        write!(f, "preflight found {n} problem(s), nothing was changed")?;
        for p in &self.problems {
            write!(f, "\n  - {}\n    hint: {}", p.error, p.hint)?;
        }
        Ok(())
    }
}

impl From<SqlError> for PreflightError {
    fn from(e: SqlError) -> Self {
        PreflightError {
            transient: e.is_transient(),
            problems: vec![problem(e.to_string(), "check the server's log")],
        }
    }
}

/// What the checks learnt, for the load to use.
pub struct Facts {
    pub source: Client,
    pub target: Client,
    pub source_major: u32,
    pub block_size: u64,
    pub selection: Selection,
    /// Tables with rows to copy, with their columns.
    pub units: Vec<CopyUnit>,
    /// Top-level tables (with their partitions) the schema copy leaves out.
    pub excluded: Vec<TableName>,
    /// Bookkeeping of an earlier run of this migration, if any.
    pub resume: Option<MigrationRow>,
    pub tools: Option<SchemaTools>,
    /// Risks that do not stop the migration but that the operator should know of (shown in
    /// `/status` and logged).
    pub warnings: Vec<String>,
}

/// Show at most a few names.
fn some_names<'a>(names: impl Iterator<Item = &'a TableName>) -> String {
    let all: Vec<String> = names.map(TableName::display_plain).collect();
    if all.len() <= 5 {
        all.join(", ")
    } else {
        format!("{} and {} more", all[..5].join(", "), all.len() - 5)
    }
}

pub async fn check(cfg: &Config) -> Result<Facts, PreflightError> {
    let mut problems = Vec::new();
    let (src, tgt) = tokio::join!(
        cfg.source.connect("pgcutover"),
        cfg.target.connect("pgcutover")
    );
    let mut transient = true;
    let mut failed = |side: &str, e: crate::pg::conn::ConnError| {
        transient &= e.is_transient();
        problems.push(problem(format!("{side}: {e}"), e.hint()));
    };
    let src = src.map_err(|e| failed("source", e));
    let tgt = tgt.map_err(|e| failed("target", e));
    let (Ok(src), Ok(tgt)) = (src, tgt) else {
        return Err(PreflightError {
            problems,
            transient,
        });
    };

    let source_major = server_major(&src).await?;
    if let Some(p) = version_problem(source_major) {
        problems.push(p);
        return Err(PreflightError {
            problems,
            transient: false,
        });
    }
    for (side, client, hint) in [
        (
            "source",
            &src,
            "point source.url at the primary (on RDS/Aurora, the writer endpoint): the \
             publication is created there and the slot must live there",
        ),
        (
            "target",
            &tgt,
            "point target.url at the primary (on Aurora, the cluster's writer endpoint, not \
             the reader endpoint)",
        ),
    ] {
        if in_recovery(client).await? {
            problems.push(problem(
                format!("the {side} is a standby (in recovery, read-only)"),
                hint,
            ));
        }
    }
    if !problems.is_empty() {
        return Err(PreflightError {
            problems,
            transient: false,
        });
    }
    let mut warnings = Vec::new();
    let target_major = server_major(&tgt).await?;
    if let Some(p) = target_version_problem(source_major, target_major, cfg.replication.copy_schema)
    {
        problems.push(p);
    } else if target_major < source_major {
        warnings.push(format!(
            "the target runs PostgreSQL {target_major}, older than the source's \
             {source_major}: values and features the older server lacks fail when they are \
             applied"
        ));
    }
    let (source_encoding, target_encoding) = (encoding(&src).await?, encoding(&tgt).await?);
    warnings.extend(encoding_warning(&source_encoding, &target_encoding));
    let block_size = check_source_server(&src, &mut problems, &mut warnings).await?;
    let resume = progress::read_migration(&tgt, cfg.replication.migration_id.as_str()).await?;
    let resuming = resume.as_ref().is_some_and(|m| m.slot_lsn.is_some());

    let all = catalog::list_tables(&src).await?;
    let selection = match catalog::select(&all, &cfg.replication.tables, &cfg.replication.exclude) {
        Ok(s) => s,
        Err(list) => {
            for p in list {
                problems.push(problem(
                    p,
                    "fix replication.tables; patterns are schema.table with * and ?, and \
                     partitions come with their partitioned table",
                ));
            }
            Selection::default()
        }
    };
    if selection.roots.is_empty() && problems.is_empty() {
        problems.push(problem(
            "the table patterns select no table once replication.exclude is applied",
            "fix replication.tables / replication.exclude",
        ));
    }
    check_source_tables(&selection, resuming, &mut problems);

    let oids: Vec<u32> = selection.units.iter().map(|t| t.oid).collect();
    let mut columns = catalog::columns(&src, &oids).await?;
    let src_cols: BTreeMap<TableName, Vec<Column>> = selection
        .units
        .iter()
        .map(|t| (t.name.clone(), columns.remove(&t.oid).unwrap_or_default()))
        .collect();
    let mut units: Vec<CopyUnit> = selection
        .units
        .iter()
        .map(|t| CopyUnit::new(t.name.clone(), &src_cols[&t.name], t.bytes.max(0) as u64))
        .collect();

    check_target_database(&tgt, &mut problems).await?;
    let schema_state = resume
        .as_ref()
        .map_or(SchemaState::None, |m| m.schema_state);
    let unit_names: Vec<TableName> = units.iter().map(|u| u.name.clone()).collect();
    let root_names: Vec<TableName> = selection.roots.iter().map(|t| t.name.clone()).collect();
    if cfg.replication.copy_schema && schema_state == SchemaState::None {
        let present = catalog::columns_by_name(&tgt, &root_names).await?;
        if !present.is_empty() {
            problems.push(problem(
                format!(
                    "the target already has table(s) {}",
                    some_names(present.keys())
                ),
                "copy_schema = true creates the tables itself: drop them on the target, or set \
                 copy_schema = false to load into the existing tables",
            ));
        }
    } else {
        let on_target = catalog::columns_by_name(&tgt, &unit_names).await?;
        for name in &unit_names {
            match on_target.get(name) {
                None => problems.push(problem(
                    format!(
                        "table {} does not exist on the target",
                        name.display_plain()
                    ),
                    "create it on the target, or set copy_schema = true",
                )),
                Some((_, tcols)) => {
                    let diffs = column_differences(&src_cols[name], tcols);
                    if !diffs.is_empty() {
                        problems.push(problem(
                            format!(
                                "table {} differs on the target: {}",
                                name.display_plain(),
                                diffs.join("; ")
                            ),
                            "make the target table match the source, or set copy_schema = true \
                             with an empty target",
                        ));
                    }
                }
            }
        }
        if !resuming {
            let mut not_empty = Vec::new();
            for name in unit_names.iter().filter(|n| on_target.contains_key(*n)) {
                let has_rows: bool = tgt
                    .query_one(&format!("SELECT EXISTS (SELECT 1 FROM ONLY {name})"), &[])
                    .await
                    .ctx(|| format!("looking into {}", name.display_plain()))?
                    .get(0);
                if has_rows {
                    not_empty.push(name.clone());
                }
            }
            if !not_empty.is_empty() {
                problems.push(problem(
                    format!(
                        "target table(s) {} are not empty",
                        some_names(not_empty.iter())
                    ),
                    "the full load needs empty target tables: TRUNCATE them on the target (after \
                     checking that nothing there is needed)",
                ));
            }
        }
        mark_fk_referenced(&tgt, &mut units).await?;
    }

    let tools = if cfg.replication.copy_schema && schema_state != SchemaState::Done {
        match SchemaTools::find(cfg.replication.pg_bin_dir.as_deref(), source_major) {
            Ok(t) => Some(t),
            Err(e) => {
                problems.push(problem(e.to_string(), e.hint()));
                None
            }
        }
    } else {
        None
    };

    if !problems.is_empty() {
        return Err(PreflightError {
            problems,
            transient: false,
        });
    }
    let excluded = all
        .iter()
        .filter(|t| {
            let top = t.root.as_ref().unwrap_or(&t.name);
            !root_names.contains(top)
        })
        .map(|t| t.name.clone())
        .collect();
    Ok(Facts {
        source: src,
        target: tgt,
        source_major,
        block_size,
        selection,
        units,
        excluded,
        resume,
        tools,
        warnings,
    })
}

/// The oldest source the native engine streams from: PostgreSQL 14's pgoutput is the first
/// to take the `messages` option, which carries the lag heartbeat (12 and 13 refuse the
/// START_REPLICATION that asks for it; both are out of support).
const OLDEST_SOURCE: u32 = 14;

fn version_problem(source_major: u32) -> Option<Problem> {
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
fn target_version_problem(
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

async fn in_recovery(c: &Client) -> Result<bool, SqlError> {
    let row = c
        .query_one("SELECT pg_catalog.pg_is_in_recovery()", &[])
        .await
        .ctx(|| "asking whether the server is a standby".into())?;
    Ok(row.get(0))
}

async fn encoding(c: &Client) -> Result<String, SqlError> {
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
fn encoding_warning(source: &str, target: &str) -> Option<String> {
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

async fn check_source_server(
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

fn check_source_tables(sel: &Selection, resuming: bool, problems: &mut Vec<Problem>) {
    let unlogged: Vec<_> = sel.units.iter().filter(|t| t.persistence == 'u').collect();
    if !unlogged.is_empty() {
        problems.push(problem(
            format!(
                "table(s) {} are UNLOGGED and cannot be replicated",
                some_names(unlogged.iter().map(|t| &t.name))
            ),
            "ALTER TABLE ... SET LOGGED on the source, or list them in replication.exclude",
        ));
    }
    for t in &sel.units {
        if let Some(p) = t.replica_identity_problem() {
            problems.push(problem(
                p,
                format!(
                    "add a primary key, or run ALTER TABLE {} REPLICA IDENTITY FULL on the \
                     source, or list it in replication.exclude",
                    t.name
                ),
            ));
        }
    }
    let unreadable: Vec<_> = sel.units.iter().filter(|t| !t.can_select).collect();
    if !unreadable.is_empty() {
        problems.push(problem(
            format!(
                "the source role may not read table(s) {}",
                some_names(unreadable.iter().map(|t| &t.name))
            ),
            "GRANT SELECT ON those tables to the source role",
        ));
    }
    let foreign: Vec<_> = sel.roots.iter().filter(|t| !t.owned).collect();
    if !resuming && !foreign.is_empty() {
        problems.push(problem(
            format!(
                "the source role does not own table(s) {}, so it cannot add them to a publication",
                some_names(foreign.iter().map(|t| &t.name))
            ),
            "connect as the tables' owner or a superuser (RDS/Aurora: rds_superuser)",
        ));
    }
}

async fn check_target_database(tgt: &Client, problems: &mut Vec<Problem>) -> Result<(), SqlError> {
    let r = tgt
        .query_one(
            "SELECT r.rolsuper OR has_database_privilege(current_database(), 'CREATE')
               FROM pg_roles r WHERE r.rolname = current_user",
            &[],
        )
        .await
        .ctx(|| "reading the target role's privileges".into())?;
    if !r.get::<_, bool>(0) {
        problems.push(problem(
            "the target role may not create schemas (no CREATE on the database)",
            "GRANT CREATE ON DATABASE <db> TO <role> on the target",
        ));
    }
    // The change stream applies with session_replication_role = replica (no user triggers,
    // no foreign-key checks: the source ran those). Who may set it differs by platform (a
    // superuser, rds_superuser on RDS/Aurora, a role granted SET on it on PostgreSQL 15+),
    // so it is tried, in a transaction rolled back, rather than inferred; found missing
    // here rather than when the stream starts after the whole load.
    match tgt
        .batch_execute("BEGIN; SET LOCAL session_replication_role = replica; ROLLBACK")
        .await
    {
        Ok(()) => {}
        Err(e) if e.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE) => {
            tgt.batch_execute("ROLLBACK")
                .await
                .ctx(|| "ending the privilege probe on the target".into())?;
            problems.push(problem(
                "the target role may not set session_replication_role, which the change \
                 stream needs (replicated changes must not fire the target's triggers and \
                 foreign-key checks)",
                "GRANT SET ON PARAMETER session_replication_role TO <role> on the target \
                 (PostgreSQL 15 and later), or connect as a superuser (RDS/Aurora: a member \
                 of rds_superuser)",
            ));
        }
        Err(e) => return Err(e).ctx(|| "setting session_replication_role on the target".into()),
    }
    Ok(())
}

async fn mark_fk_referenced(tgt: &Client, units: &mut [CopyUnit]) -> Result<(), SqlError> {
    let schemas: Vec<&str> = units.iter().map(|u| u.name.schema.as_str()).collect();
    let names: Vec<&str> = units.iter().map(|u| u.name.name.as_str()).collect();
    let rows = tgt
        .query(
            "SELECT w.s, w.t FROM unnest($1::text[], $2::text[]) AS w(s, t)
              WHERE EXISTS (SELECT 1 FROM pg_constraint co
                              JOIN pg_class c ON c.oid = co.confrelid
                              JOIN pg_namespace n ON n.oid = c.relnamespace
                             WHERE co.contype = 'f' AND n.nspname = w.s AND c.relname = w.t)",
            &[&schemas, &names],
        )
        .await
        .ctx(|| "looking for foreign keys on the target".into())?;
    for r in rows {
        let name = TableName::new(r.get::<_, String>(0), r.get::<_, String>(1));
        if let Some(u) = units.iter_mut().find(|u| u.name == name) {
            u.fk_referenced = true;
        }
    }
    Ok(())
}

/// What differs between a source table's columns and the target's, for a person to read.
pub fn column_differences(source: &[Column], target: &[Column]) -> Vec<String> {
    let mut diffs = Vec::new();
    for s in source {
        match target.iter().find(|t| t.name == s.name) {
            None => diffs.push(format!("column {:?} is missing", s.name)),
            Some(t) => {
                if t.type_name != s.type_name {
                    diffs.push(format!(
                        "column {:?} is {} on the target but {} on the source",
                        s.name, t.type_name, s.type_name
                    ));
                }
                if t.generated != s.generated {
                    diffs.push(format!(
                        "column {:?} is {}generated on the target but {}generated on the source",
                        s.name,
                        if t.generated { "" } else { "not " },
                        if s.generated { "" } else { "not " },
                    ));
                }
            }
        }
    }
    for t in target {
        if !source.iter().any(|s| s.name == t.name) {
            diffs.push(format!("column {:?} exists only on the target", t.name));
        }
    }
    diffs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings_that_may_lose_characters_are_pointed_out() {
        for (s, t) in [
            ("UTF8", "UTF8"),
            ("LATIN1", "UTF8"),
            ("WIN1252", "UTF8"),
            ("LATIN1", "LATIN1"),
        ] {
            assert_eq!(encoding_warning(s, t), None, "{s} -> {t}");
        }
        let w = encoding_warning("SQL_ASCII", "UTF8").unwrap();
        assert!(
            w.contains("SQL_ASCII") && w.contains("not valid UTF8"),
            "{w}"
        );
        let w = encoding_warning("UTF8", "LATIN1").unwrap();
        assert!(w.contains("cannot hold every character UTF8 can"), "{w}");
        assert!(encoding_warning("LATIN1", "SQL_ASCII").is_some());
    }

    fn col(name: &str, ty: &str) -> Column {
        Column {
            name: name.into(),
            type_name: ty.into(),
            generated: false,
            not_null: false,
            binary_safe: true,
        }
    }

    #[test]
    fn differences_are_precise() {
        let src = [
            col("id", "integer"),
            col("name", "text"),
            col("gone", "date"),
        ];
        let mut gen_col = col("name", "text");
        gen_col.generated = true;
        let tgt = [col("id", "bigint"), gen_col, col("extra", "text")];
        let d = column_differences(&src, &tgt);
        assert_eq!(
            d,
            [
                "column \"id\" is bigint on the target but integer on the source",
                "column \"name\" is generated on the target but not generated on the source",
                "column \"gone\" is missing",
                "column \"extra\" exists only on the target",
            ]
        );
        assert!(column_differences(&src, &src).is_empty());
    }

    #[test]
    fn sources_older_than_14_are_refused() {
        for old in [9, 12, 13] {
            let p = version_problem(old).expect("refused");
            assert!(
                p.error.contains(&format!("PostgreSQL {old}")),
                "{}",
                p.error
            );
            assert!(p.error.contains("14 or newer"), "{}", p.error);
        }
        assert!(version_problem(14).is_none() && version_problem(18).is_none());
    }

    #[test]
    fn older_targets_are_refused_when_the_schema_is_copied() {
        assert!(target_version_problem(15, 15, true).is_none());
        assert!(target_version_problem(15, 17, true).is_none());
        let p = target_version_problem(16, 15, true).expect("refused");
        assert!(
            p.error
                .contains("PostgreSQL 15, older than the source's 16"),
            "{}",
            p.error
        );
        assert!(p.hint.contains("copy_schema = false"), "{}", p.hint);
        assert!(target_version_problem(16, 15, false).is_none());
        assert!(target_version_problem(15, 11, false).is_some());
    }

    #[test]
    fn long_name_lists_are_shortened() {
        let names: Vec<TableName> = (0..8)
            .map(|i| TableName::new("s", format!("t{i}")))
            .collect();
        assert_eq!(
            some_names(names.iter()),
            "s.t0, s.t1, s.t2, s.t3, s.t4 and 3 more"
        );
    }
}
