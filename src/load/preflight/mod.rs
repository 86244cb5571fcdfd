//! Checks made before anything is changed on either side.
//!
//! Every check runs, and every problem found is reported at once with a hint, so a bad
//! setup costs one round trip: unreachable servers, wrong passwords, missing privileges
//! (`session_replication_role` on the target included), server versions (a source older
//! than 14, a target older than the source when the schema is copied), `wal_level`, free
//! slots and WAL senders, patterns that match nothing, tables that cannot be
//! replicated (correctness rule 7), row-level security that would hide rows from the copy or
//! the apply (`rls.rs`), a target that is not empty, a target schema that differs (with
//! `copy_schema = false`), and missing or too old `pg_dump`/`pg_restore`.

use std::collections::BTreeMap;
use std::fmt;

use tokio_postgres::Client;
use tokio_postgres::error::SqlState;

use super::copy::CopyUnit;
use super::progress::{self, MigrationRow, SchemaState};
use super::schema::SchemaTools;
use crate::config::Config;
use crate::pg::catalog::{self, Column, Selection};
use crate::pg::wal_compression::{self, WalCompression};
use crate::pg::{SqlContext, SqlError, TableName, server_major};
use server::{
    check_source_server, encoding, encoding_warning, in_recovery, shares_backend,
    target_version_problem, version_problem,
};

mod rls;
mod server;

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

/// Refuse a connection pooler in transaction or statement mode in front of either side (see
/// `server::shares_backend`). Runs before any other session of pgcutover's opens, so that
/// nothing it sets stays on a pooled server connection and nothing else's queries move the
/// pooler's choice of connection between the check's two.
pub async fn no_transaction_pooler(cfg: &Config) -> Result<(), PreflightError> {
    let mut problems = Vec::new();
    let pooled = tokio::join!(shares_backend(&cfg.source), shares_backend(&cfg.target));
    for (side, pooled) in [("source", pooled.0), ("target", pooled.1)] {
        if pooled == Some(true) {
            problems.push(problem(
                format!(
                    "sessions to the {side} do not keep a server backend of their own: \
                     {side}.url goes through a connection pooler in transaction or statement \
                     mode (PgBouncer's pool_mode = transaction, or the like)"
                ),
                format!(
                    "point {side}.url at the server itself, or at a pool in session mode: \
                     pgcutover's sessions keep state between transactions \
                     (session_replication_role, prepared statements, the copy's snapshot, \
                     their settings) and need server connections of their own"
                ),
            ));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(PreflightError {
            problems,
            transient: false,
        })
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
    if problems.is_empty()
        && let Some((error, hint)) = crate::pg::slot::replication_refusal(&cfg.source).await
    {
        problems.push(problem(
            format!("the source refuses a replication connection: {error}"),
            hint,
        ));
    }
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

    // Row-level security that would hide rows from the copy or the apply.
    let mut rls_names: Vec<TableName> = selection.roots.iter().map(|t| t.name.clone()).collect();
    rls_names.extend(selection.units.iter().map(|t| t.name.clone()));
    problems.extend(rls::problem_of(
        "source",
        &rls::subject_tables(&src, &rls_names).await?,
        false,
    ));
    let on_target = rls::subject_tables(&tgt, &rls_names).await?;
    problems.extend(rls::problem_of("target", &on_target, false));
    if cfg.replication.copy_schema && !rls::bypasses(&tgt).await? {
        let forced: Vec<TableName> = rls::forced_tables(&src, &rls_names)
            .await?
            .into_iter()
            .filter(|t| !on_target.contains(t))
            .collect();
        problems.extend(rls::problem_of("target", &forced, true));
    }

    check_target_database(&tgt, &mut problems).await?;
    if let WalCompression::Method(m) = cfg.replication.target_wal_compression
        && !wal_compression::allowed(&tgt, m).await?
    {
        problems.push(problem(
            format!(
                "the target refuses wal_compression = {} (replication.target_wal_compression), \
                 which the change stream's sessions would set",
                m.as_str()
            ),
            wal_compression::HINT,
        ));
    }
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
mod tests;
