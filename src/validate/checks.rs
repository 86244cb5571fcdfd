//! The verdicts: each check's problems and notes, from what the comparison found (row
//! counts, exact or estimated; checksums with the first differing keys; sequences against
//! the target's data).

use tokio_postgres::Client;

use super::data::{self, DiffKind, TablePlan};
use super::{Check, CheckName, Mode, TableReport, ValidateError, schema};
use crate::pg::TableName;

pub(super) fn check(name: CheckName, problems: Vec<String>, notes: Vec<String>) -> Check {
    Check {
        name,
        passed: problems.is_empty(),
        problems,
        notes,
    }
}

pub(super) fn counts_differ(t: &TableReport) -> bool {
    !t.rows_estimated && t.source_rows != t.target_rows
}

/// Estimates differing by more than this fraction (and [`ESTIMATE_SLACK`] rows) fail.
const ESTIMATE_TOLERANCE: f64 = 0.10;
const ESTIMATE_SLACK: i64 = 1000;

pub(super) fn row_counts_check(tables: &[TableReport], mode: Mode) -> Check {
    let mut problems = vec![];
    let mut notes = vec![];
    for t in tables {
        let (Some(s), Some(g)) = (t.source_rows, t.target_rows) else {
            if let Some(e) = &t.error {
                problems.push(format!("table {}: {e}", t.table));
            }
            continue;
        };
        if t.rows_estimated && mode == Mode::Quick {
            if s < 0 || g < 0 {
                notes.push(format!(
                    "table {}: no estimate yet (never analyzed on the {})",
                    t.table,
                    if s < 0 { "source" } else { "target" }
                ));
            } else if (s - g).abs() > ESTIMATE_SLACK
                && (s - g).abs() as f64 > ESTIMATE_TOLERANCE * s.max(g) as f64
            {
                problems.push(format!(
                    "table {}: about {s} rows on the source but about {g} on the target \
                     (planner estimates)",
                    t.table
                ));
            }
        } else if s != g {
            problems.push(format!(
                "table {}: {s} rows on the source, {g} on the target{}",
                t.table,
                if t.rows_estimated {
                    " (in the sampled key ranges)"
                } else {
                    ""
                }
            ));
        }
    }
    if mode == Mode::Quick {
        notes.push("row counts are planner estimates (pg_class.reltuples)".into());
    }
    check(CheckName::RowCounts, problems, notes)
}

pub(super) fn checksums_check(tables: &[TableReport], plans: &[(usize, TablePlan)]) -> Check {
    let mut problems = vec![];
    let mut notes = vec![];
    for (i, plan) in plans {
        let t = &tables[*i];
        if !t.columns_not_compared.is_empty() {
            notes.push(format!(
                "table {}: columns not on both sides were not compared: {}",
                t.table,
                t.columns_not_compared.join(", ")
            ));
        }
        if let Some(e) = &t.error {
            problems.push(format!("table {}: {e}", t.table));
            continue;
        }
        let Some(d) = &t.data else { continue };
        if d.equal {
            continue;
        }
        let mut msg = format!("table {}: rows differ", t.table);
        if plan.key.is_empty() {
            msg.push_str(" (no key: compared as a multiset)");
        } else {
            msg.push_str(&format!(
                " in {} of {} key range(s): {}",
                d.differing_ranges.len(),
                d.ranges_compared,
                d.differing_ranges.join("; ")
            ));
        }
        let listed: Vec<String> = d
            .differences
            .iter()
            .map(|r| match (&r.kind, &r.key) {
                (DiffKind::Changed, Some(k)) => format!("changed {k}"),
                (DiffKind::MissingOnTarget, Some(k)) => format!("missing on target {k}"),
                (DiffKind::ExtraOnTarget, Some(k)) => format!("extra on target {k}"),
                _ => format!(
                    "a row (digest {}) is {} time(s) on the source and {} on the target; \
                     find it with: {}",
                    r.digest.unwrap_or_default(),
                    r.source_count.unwrap_or_default(),
                    r.target_count.unwrap_or_default(),
                    data::find_by_digest_sql(plan, false, r.digest.unwrap_or_default())
                ),
            })
            .collect();
        if !listed.is_empty() {
            msg.push_str(&format!(
                "; first differing rows: {}{}",
                listed.join(", "),
                if d.more_differences { ", …" } else { "" }
            ));
        }
        problems.push(msg);
    }
    check(CheckName::Checksums, problems, notes)
}

pub(super) async fn sequences_check(
    src: &Client,
    tgt: &Client,
    schemas: &[String],
    tables: &[TableName],
) -> Result<Check, ValidateError> {
    let (s, t) = tokio::try_join!(
        schema::sequences(src, schemas),
        schema::sequences(tgt, schemas)
    )?;
    let fed = schema::fed_columns(tgt, schemas).await?;
    let mut problems = vec![];
    for (name, sv) in &s {
        let Some(tv) = t.get(name) else {
            problems.push(format!("sequence {name} is not on the target"));
            continue;
        };
        let mut problem = schema::sequence_problem(name, sv, tv, None);
        if problem.is_none() {
            for (_, table, column) in fed.iter().filter(|(seq, tb, _)| {
                seq == name && tables.iter().any(|t| t == tb || t.schema == tb.schema)
            }) {
                let extreme = schema::column_extreme(tgt, table, column, sv.increment < 0).await?;
                let label = format!("{}.{column}", table.display_plain());
                if let Some(x) = extreme
                    && let Some(p) =
                        schema::sequence_problem(name, sv, tv, Some((label.as_str(), x)))
                {
                    problem = Some(p);
                    break;
                }
            }
        }
        problems.extend(problem);
    }
    Ok(check(CheckName::Sequences, problems, vec![]))
}
