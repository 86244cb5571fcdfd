//! The human form of a [`Report`]: what `pgcutover validate` prints without `--json`.

use std::fmt::Write;

use super::Report;

pub fn text(r: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "validation ({}): {} in {:.1} s",
        serde_json::to_value(r.mode)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default(),
        if r.passed { "PASSED" } else { "FAILED" },
        r.duration_seconds
    );
    let _ = writeln!(
        out,
        "consistency: {}{}: {}",
        r.consistency.kind,
        r.consistency
            .source_lsn
            .map(|l| format!(" at {l}"))
            .unwrap_or_default(),
        r.consistency.note
    );
    let _ = writeln!(out);
    for c in &r.checks {
        let _ = writeln!(
            out,
            "{:<11} {}",
            c.name.as_str(),
            if c.passed { "pass" } else { "FAIL" }
        );
        for p in &c.problems {
            let _ = writeln!(out, "    - {p}");
        }
        for n in &c.notes {
            let _ = writeln!(out, "    note: {n}");
        }
    }
    if !r.tables.is_empty() {
        let width = r
            .tables
            .iter()
            .map(|t| t.table.chars().count())
            .max()
            .unwrap_or(5)
            .max(5);
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "{:<width$}  {:>14}  {:>14}  checksum",
            "table", "source rows", "target rows"
        );
        let rows = |n: Option<i64>, est: bool| match n {
            Some(n) if est => format!("~{n}"),
            Some(n) => n.to_string(),
            None => "-".into(),
        };
        for t in &r.tables {
            let _ = writeln!(
                out,
                "{:<width$}  {:>14}  {:>14}  {}",
                t.table,
                rows(t.source_rows, t.rows_estimated),
                rows(t.target_rows, t.rows_estimated),
                t.checksum
            );
        }
    }
    let _ = writeln!(
        out,
        "\n{} table(s) validated, {} with differing rows",
        r.tables_validated, r.mismatches
    );
    out
}
