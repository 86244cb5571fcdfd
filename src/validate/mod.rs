//! Validation: proving, table by table, that the target holds what the source holds.
//!
//! Checks (each passes or fails with messages that name the table and what differs):
//! `keys` (CDC needs a key or a replica identity), `schema` (tables, columns, indexes,
//! constraints, sequences, extensions), `sequences` (the target hands out values past the
//! source's and past the data), `row_counts` (planner estimates in quick mode, exact in full
//! mode) and `checksums` (full mode: [`digest`] sums per table, located to key ranges and
//! then to keys by [`data`]).
//!
//! ## The consistent point
//!
//! Both databases move while the engine runs, so what a full validation guarantees depends on
//! the [`Point`] it compares at (the report says which in `consistency`):
//!
//! - **`snapshot`** (the daemon, native engine, change stream running): the apply is held,
//!   a temporary logical slot on the source exports a snapshot whose consistent point `C` is
//!   exactly "every transaction committed before `C`", the apply runs on to `C` and holds
//!   again, the target's snapshot is exported, and the apply goes on. Every worker imports
//!   one of the two snapshots, so source and target are compared at the same transaction
//!   boundary while replication keeps running; the hold lasts milliseconds. Exact.
//! - **`static`** (`pgcutover validate` with no change stream applying): one exported
//!   snapshot per side. Exact when nothing writes to either side (after the fence of a
//!   cutover, or with the migration stopped); otherwise rows in flight show as differences,
//!   and the report notes how far the target's applied position is behind the source.
//! - **`live`** (quick mode, everywhere): estimates and catalog reads without snapshots;
//!   approximate by design.
//!
//! Row values never appear in a report, a log or a response; only keys do (to find the row),
//! and for keyless tables a row digest with the query that finds it.
//!
//! This module runs a validation ([`run`]) and keeps its report; `point.rs` opens the
//! sessions at the consistent point and `checks.rs` turns what was found into each check's
//! verdict.

pub mod catalog;
mod checks;
pub mod data;
pub mod digest;
mod point;
pub mod render;
pub mod schema;
pub mod service;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tokio_postgres::Client;

use crate::cdc::Control;
use crate::cdc::hold::HoldError;
use crate::config::Config;
use crate::pg::catalog::{SourceTable, list_tables, select};
use crate::pg::conn::ConnError;
use crate::pg::name::TablePattern;
use crate::pg::slot::SlotError;
use crate::pg::{Lsn, SqlError, TableName};
use checks::{check, checksums_check, counts_differ, row_counts_check, sequences_check};
use data::{DataResult, TablePlan};
use point::{Pairs, open_sessions};

/// Version of the persisted report (`state/validation.json`).
pub const REPORT_VERSION: u32 = 1;
/// The persisted report's file name in the state folder.
pub const REPORT_FILE: &str = "validation.json";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Quick,
    Full,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckName {
    Keys,
    Schema,
    Sequences,
    RowCounts,
    Checksums,
}

impl CheckName {
    pub const ALL: [CheckName; 5] = [
        CheckName::Keys,
        CheckName::Schema,
        CheckName::Sequences,
        CheckName::RowCounts,
        CheckName::Checksums,
    ];

    pub fn parse(s: &str) -> Result<CheckName, String> {
        CheckName::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown check {s:?}: the checks are keys, schema, sequences, row_counts, \
                     checksums"
                )
            })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            CheckName::Keys => "keys",
            CheckName::Schema => "schema",
            CheckName::Sequences => "sequences",
            CheckName::RowCounts => "row_counts",
            CheckName::Checksums => "checksums",
        }
    }
}

/// What to validate.
#[derive(Clone, Debug)]
pub struct Options {
    pub mode: Mode,
    /// Narrow the configured selection (empty: all of it).
    pub tables: Vec<TablePattern>,
    /// Checks not to run.
    pub skip: BTreeSet<CheckName>,
    /// Full mode: compare this percentage of each keyed table's key ranges.
    pub sample_pct: Option<f64>,
    /// Tables compared at the same time (sessions per side).
    pub jobs: usize,
    /// Differing rows listed per table.
    pub max_diffs: usize,
}

impl Options {
    pub fn new(mode: Mode) -> Options {
        Options {
            mode,
            tables: vec![],
            skip: BTreeSet::new(),
            sample_pct: None,
            jobs: 2,
            max_diffs: 10,
        }
    }

    /// Options from user input (command line or HTTP body), checked.
    pub fn parse(
        mode: Mode,
        tables: &[String],
        skip: &[String],
        sample_pct: Option<f64>,
        jobs: Option<usize>,
    ) -> Result<Options, String> {
        let mut o = Options::new(mode);
        for t in tables {
            o.tables
                .push(TablePattern::parse(t).map_err(|e| format!("tables: {e}"))?);
        }
        for c in skip {
            o.skip.insert(CheckName::parse(c)?);
        }
        if let Some(p) = sample_pct {
            if mode != Mode::Full || !(p > 0.0 && p <= 100.0) {
                return Err(format!(
                    "sampling needs a full validation and a percentage in (0, 100], not {p}"
                ));
            }
            o.sample_pct = Some(p);
        }
        if let Some(j) = jobs {
            if !(1..=32).contains(&j) {
                return Err(format!("jobs must be 1 to 32, not {j}"));
            }
            o.jobs = j;
        }
        Ok(o)
    }

    fn runs(&self, c: CheckName) -> bool {
        !self.skip.contains(&c) && (c != CheckName::Checksums || self.mode == Mode::Full)
    }
}

/// Where the comparison is made (see the module documentation).
pub enum Point<'a> {
    Live,
    Static,
    Held(&'a Control),
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Consistency {
    /// `snapshot`, `static` or `live`.
    pub kind: String,
    /// The source position the comparison stands for (snapshot mode).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_lsn: Option<Lsn>,
    pub note: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Check {
    pub name: CheckName,
    pub passed: bool,
    pub problems: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TableReport {
    pub table: String,
    pub source_rows: Option<i64>,
    pub target_rows: Option<i64>,
    /// The row figures are planner estimates (quick mode) or sampled ranges' counts.
    pub rows_estimated: bool,
    /// `equal`, `different`, `not_compared` or `error`.
    pub checksum: String,
    #[serde(flatten)]
    pub data: Option<DataResult>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub columns_not_compared: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Report {
    pub version: u32,
    pub mode: Mode,
    pub passed: bool,
    pub consistency: Consistency,
    /// Seconds since the Unix epoch.
    pub started_at: f64,
    pub duration_seconds: f64,
    pub tables_validated: usize,
    /// Tables whose rows differ (counts or checksums).
    pub mismatches: usize,
    pub checks: Vec<Check>,
    pub tables: Vec<TableReport>,
}

#[derive(Debug, thiserror::Error)]
pub enum ValidateError {
    #[error(transparent)]
    Conn(#[from] ConnError),
    #[error(transparent)]
    Sql(#[from] SqlError),
    #[error("{}", .0.join("; "))]
    Selection(Vec<String>),
    #[error("no consistent point: {0}")]
    Hold(#[from] HoldError),
    #[error("no consistent point: {0}")]
    Slot(#[from] SlotError),
}

impl ValidateError {
    pub fn hint(&self) -> String {
        match self {
            ValidateError::Conn(e) => e.hint(),
            ValidateError::Sql(_) => "check the message; a validation changes nothing, so it \
                                      can simply be run again"
                .into(),
            ValidateError::Selection(_) => "fix --tables (patterns are schema.table with * and \
                                            ?) or replication.tables in the configuration"
                .into(),
            ValidateError::Hold(e) => e.hint(),
            ValidateError::Slot(e) => e.hint(),
        }
    }
}

/// How far a running validation is, for `GET /validation`.
#[derive(Debug, Default)]
pub struct Progress {
    pub tables_total: AtomicUsize,
    pub tables_done: AtomicUsize,
}

/// Run the validation.
pub async fn run(
    cfg: &Config,
    opts: &Options,
    point: Point<'_>,
    progress: &Progress,
) -> Result<Report, ValidateError> {
    let started_at = crate::status::unix_micros() as f64 / 1e6;
    let clock = Instant::now();
    let (src, tgt) = tokio::try_join!(
        cfg.source.connect("pgcutover-validate"),
        cfg.target.connect("pgcutover-validate")
    )?;
    let units = selected_units(cfg, opts, &src).await?;
    let names: Vec<TableName> = units.iter().map(|t| t.name.clone()).collect();
    progress.tables_total.store(names.len(), Ordering::Relaxed);
    progress.tables_done.store(0, Ordering::Relaxed);
    let mut checks = vec![];

    if opts.runs(CheckName::Keys) {
        let problems: Vec<String> = units
            .iter()
            .filter_map(|t| t.replica_identity_problem())
            .collect();
        checks.push(check(CheckName::Keys, problems, vec![]));
    }
    // Schema objects of the units and of their partition roots.
    let mut all_tables: BTreeSet<TableName> = names.iter().cloned().collect();
    all_tables.extend(units.iter().filter_map(|t| t.root.clone()));
    let all_tables: Vec<TableName> = all_tables.into_iter().collect();
    let schemas: Vec<String> = all_tables
        .iter()
        .map(|t| t.schema.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    if opts.runs(CheckName::Schema) {
        let (s, t) = tokio::try_join!(
            schema::objects(&src, &all_tables, &schemas),
            schema::objects(&tgt, &all_tables, &schemas)
        )?;
        let (problems, notes) = schema::differences(&s, &t);
        checks.push(check(CheckName::Schema, problems, notes));
    }
    if opts.runs(CheckName::Sequences) {
        checks.push(sequences_check(&src, &tgt, &schemas, &all_tables).await?);
    }

    let (s_info, t_info) =
        tokio::try_join!(catalog::tables(&src, &names), catalog::tables(&tgt, &names))?;
    let text_bytes = text_bytes(&src, &tgt).await?;
    let mut plans = vec![];
    let mut tables: Vec<TableReport> = vec![];
    for name in &names {
        let s = s_info.get(name).cloned().unwrap_or_default();
        let Some(t) = t_info.get(name) else {
            tables.push(TableReport {
                table: name.display_plain(),
                source_rows: None,
                target_rows: None,
                rows_estimated: opts.mode == Mode::Quick,
                checksum: "error".into(),
                data: None,
                columns_not_compared: vec![],
                error: Some("the table is not on the target".into()),
            });
            continue;
        };
        let mut plan = TablePlan {
            table: name.clone(),
            source_columns: vec![],
            target_columns: vec![],
            key: s.key.clone(),
            key_type: String::new(),
            key_collatable: false,
            estimate: s.estimate,
            text_bytes,
        };
        let mut not_compared = vec![];
        for c in &s.columns {
            match t.columns.iter().find(|tc| tc.digest.name == c.digest.name) {
                Some(tc) => {
                    plan.source_columns.push(c.digest.clone());
                    plan.target_columns.push(tc.digest.clone());
                }
                None => not_compared.push(c.digest.name.clone()),
            }
        }
        not_compared.extend(
            t.columns
                .iter()
                .filter(|tc| !s.columns.iter().any(|c| c.digest.name == tc.digest.name))
                .map(|tc| tc.digest.name.clone()),
        );
        if let Some(k) = s.key.first() {
            if let Some(c) = s.columns.iter().find(|c| &c.digest.name == k) {
                plan.key_type = c.type_name.clone();
                plan.key_collatable = matches!(
                    c.digest.base_type.as_str(),
                    "text" | "varchar" | "bpchar" | "name"
                );
            }
            // A key column missing on the target cannot locate rows there.
            if s.key.iter().any(|k| not_compared.contains(k)) {
                plan.key.clear();
            }
        }
        let quick = opts.mode == Mode::Quick;
        tables.push(TableReport {
            table: name.display_plain(),
            source_rows: quick.then_some(s.estimate as i64),
            target_rows: quick.then_some(t.estimate as i64),
            rows_estimated: quick,
            checksum: "not_compared".into(),
            data: None,
            columns_not_compared: not_compared,
            error: None,
        });
        plans.push((tables.len() - 1, plan));
    }

    let sums = opts.runs(CheckName::Checksums);
    let consistency = if opts.mode == Mode::Full && (sums || opts.runs(CheckName::RowCounts)) {
        let seed = crate::status::unix_micros() as u64;
        let (pairs, consistency) = open_sessions(cfg, opts.jobs.max(1), point).await?;
        let results = compare_all(pairs, &plans, opts, seed, progress).await;
        for ((i, plan), result) in plans.iter().zip(results) {
            let t = &mut tables[*i];
            match result {
                Ok(d) if !sums => {
                    t.source_rows = d.source_rows;
                    t.target_rows = d.target_rows;
                }
                Ok(d) => {
                    t.source_rows = d.source_rows;
                    t.target_rows = d.target_rows;
                    // Sampled tables count only the sampled ranges (keyless ones are whole).
                    t.rows_estimated = opts.sample_pct.is_some() && !plan.key.is_empty();
                    t.checksum = if d.equal { "equal" } else { "different" }.into();
                    t.data = Some(d);
                }
                Err(e) => {
                    t.checksum = "error".into();
                    t.error = Some(e);
                }
            }
        }
        consistency
    } else {
        progress.tables_done.store(names.len(), Ordering::Relaxed);
        Consistency {
            kind: "live".into(),
            source_lsn: None,
            note: "quick mode reads planner estimates and catalogs while both sides run: \
                   approximate"
                .into(),
        }
    };

    if opts.runs(CheckName::RowCounts) {
        checks.push(row_counts_check(&tables, opts.mode));
    }
    if opts.runs(CheckName::Checksums) {
        checks.push(checksums_check(&tables, &plans));
    }
    let mismatches = tables
        .iter()
        .filter(|t| t.checksum == "different" || t.error.is_some() || counts_differ(t))
        .count();
    Ok(Report {
        version: REPORT_VERSION,
        mode: opts.mode,
        passed: checks.iter().all(|c| c.passed),
        consistency,
        started_at,
        duration_seconds: clock.elapsed().as_secs_f64(),
        tables_validated: tables.len(),
        mismatches,
        checks,
        tables,
    })
}

/// The configured selection's row-holding tables, narrowed by `opts.tables` (a pattern
/// matches a table or its partition root).
/// How the digest hashes characters: as the servers hold them when their encodings agree,
/// as UTF-8 otherwise (see [`digest`]).
async fn text_bytes(src: &Client, tgt: &Client) -> Result<digest::TextBytes, ValidateError> {
    let encoding = async |c: &Client| -> Result<String, SqlError> {
        use crate::pg::SqlContext;
        let row = c
            .query_one("SELECT pg_catalog.current_setting('server_encoding')", &[])
            .await
            .ctx(|| "reading the server's encoding".into())?;
        Ok(row.get(0))
    };
    let (s, t) = tokio::try_join!(encoding(src), encoding(tgt))?;
    Ok(if s == t {
        digest::TextBytes::Server
    } else {
        digest::TextBytes::Utf8
    })
}

async fn selected_units(
    cfg: &Config,
    opts: &Options,
    src: &Client,
) -> Result<Vec<SourceTable>, ValidateError> {
    let all = list_tables(src).await?;
    let sel = select(&all, &cfg.replication.tables, &cfg.replication.exclude)
        .map_err(ValidateError::Selection)?;
    if opts.tables.is_empty() {
        return Ok(sel.units);
    }
    let hits = |p: &TablePattern, t: &SourceTable| {
        p.matches(&t.name) || t.root.as_ref().is_some_and(|r| p.matches(r))
    };
    let unmatched: Vec<String> = opts
        .tables
        .iter()
        .filter(|p| !sel.units.iter().any(|t| hits(p, t)))
        .map(|p| format!("--tables {:?} matches no selected table", p.as_str()))
        .collect();
    if !unmatched.is_empty() {
        return Err(ValidateError::Selection(unmatched));
    }
    Ok(sel
        .units
        .into_iter()
        .filter(|t| opts.tables.iter().any(|p| hits(p, t)))
        .collect())
}

/// Compare the planned tables on `pairs` of sessions, the largest first; results in plan order.
async fn compare_all(
    pairs: Pairs,
    plans: &[(usize, TablePlan)],
    opts: &Options,
    seed: u64,
    progress: &Progress,
) -> Vec<Result<DataResult, String>> {
    let mut order: Vec<usize> = (0..plans.len()).collect();
    order.sort_by(|a, b| plans[*b].1.estimate.total_cmp(&plans[*a].1.estimate));
    let queue = Arc::new(std::sync::Mutex::new(order.into_iter()));
    let results = Arc::new(std::sync::Mutex::new(
        (0..plans.len()).map(|_| None).collect::<Vec<_>>(),
    ));
    let workers = pairs.into_iter().map(|(s, t)| {
        let (queue, results) = (queue.clone(), results.clone());
        async move {
            loop {
                let next = queue.lock().unwrap_or_else(|e| e.into_inner()).next();
                let Some(i) = next else { break };
                let plan = &plans[i].1;
                let r = match opts.sample_pct {
                    _ if !opts.runs(CheckName::Checksums) => data::count(&s, &t, plan).await,
                    Some(pct) if !plan.key.is_empty() => {
                        data::compare_sampled(&s, &t, plan, pct, seed ^ i as u64, opts.max_diffs)
                            .await
                    }
                    _ => data::compare(&s, &t, plan, opts.max_diffs).await,
                };
                progress.tables_done.fetch_add(1, Ordering::Relaxed);
                results.lock().unwrap_or_else(|e| e.into_inner())[i] =
                    Some(r.map_err(|e| e.to_string()));
            }
        }
    });
    futures_util::future::join_all(workers).await;
    let mut results = results.lock().unwrap_or_else(|e| e.into_inner());
    results
        .iter_mut()
        .map(|r| {
            r.take()
                .unwrap_or_else(|| Err("not compared: its worker stopped".into()))
        })
        .collect()
}

/// Write the report to the state folder atomically (temp file, fsync, rename, fsync of the
/// folder).
pub fn save(state_dir: &Path, report: &Report) -> std::io::Result<PathBuf> {
    let path = state_dir.join(REPORT_FILE);
    let json = serde_json::to_vec_pretty(report).map_err(std::io::Error::other)?;
    crate::statefile::write_atomic(&path, &json)?;
    Ok(path)
}

/// The last persisted report, if any (an unreadable one is reported as an error).
pub fn load_last(state_dir: &Path) -> Result<Option<Report>, String> {
    let path = state_dir.join(REPORT_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| format!("{} is not a validation report: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}
