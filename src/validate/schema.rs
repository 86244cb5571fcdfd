//! The checks that read catalogs: schema parity and sequences.
//!
//! Schema objects are described the same way on both sides (`pg_get_indexdef`,
//! `pg_get_constraintdef`, `format_type`, `pg_get_expr` with `search_path = pg_catalog`, so
//! every name in a definition is schema-qualified) and compared by name.

use std::collections::{BTreeMap, BTreeSet};

use tokio_postgres::Client;

use crate::pg::{SqlContext, SqlError, TableName, quote_ident};

/// (kind, name) → definition.
pub type Objects = BTreeMap<(String, String), String>;

/// Tables (by name), their columns, indexes and constraints, the sequences of `schemas`, and
/// every extension.
pub async fn objects(
    c: &Client,
    tables: &[TableName],
    schemas: &[String],
) -> Result<Objects, SqlError> {
    let ts: Vec<&str> = tables.iter().map(|t| t.schema.as_str()).collect();
    let tn: Vec<&str> = tables.iter().map(|t| t.name.as_str()).collect();
    c.batch_execute("SET search_path = pg_catalog")
        .await
        .ctx(|| "setting search_path".into())?;
    let rows = c
        .query(include_str!("objects.sql"), &[&ts, &tn, &schemas])
        .await
        .ctx(|| "reading schema objects".into());
    c.batch_execute("RESET search_path")
        .await
        .ctx(|| "resetting search_path".into())?;
    Ok(rows?
        .iter()
        .map(|r| ((r.get(0), r.get(1)), r.get(2)))
        .collect())
}

/// Differences between the two sides' objects: (problems, notes). An extension only the
/// target has, or at another version, is a note (managed targets bring their own).
pub fn differences(source: &Objects, target: &Objects) -> (Vec<String>, Vec<String>) {
    let (mut problems, mut notes) = (vec![], vec![]);
    let keys: BTreeSet<&(String, String)> = source.keys().chain(target.keys()).collect();
    for key @ (kind, name) in keys {
        let ext = kind == "extension";
        match (source.get(key), target.get(key)) {
            (Some(_), None) => problems.push(format!(
                "{kind} {name} is on the source but not on the target"
            )),
            (None, Some(_)) if ext => {}
            (None, Some(_)) => problems.push(format!(
                "{kind} {name} is on the target but not on the source"
            )),
            (Some(s), Some(t)) if s != t && ext => notes.push(format!(
                "extension {name} is at version {s} on the source and {t} on the target"
            )),
            (Some(s), Some(t)) if s != t => problems.push(format!(
                "{kind} {name} differs: the source has `{s}`, the target `{t}`"
            )),
            _ => {}
        }
    }
    (problems, notes)
}

/// A sequence and the next value it would hand out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeqState {
    pub next: i128,
    pub increment: i128,
}

/// Sequences of `schemas`, by `schema.name`.
pub async fn sequences(
    c: &Client,
    schemas: &[String],
) -> Result<BTreeMap<String, SeqState>, SqlError> {
    let rows = c
        .query(
            "SELECT schemaname::text || '.' || sequencename::text,
                    (CASE WHEN last_value IS NULL THEN start_value::numeric
                          ELSE last_value::numeric + increment_by END)::text,
                    increment_by::text
               FROM pg_sequences WHERE schemaname = ANY($1)",
            &[&schemas],
        )
        .await
        .ctx(|| "reading sequences".into())?;
    let num = |s: String| s.parse::<i128>().unwrap_or(0);
    Ok(rows
        .into_iter()
        .map(|r| {
            (
                r.get::<_, String>(0),
                SeqState {
                    next: num(r.get(1)),
                    increment: num(r.get(2)),
                },
            )
        })
        .collect())
}

/// The columns each sequence of `schemas` feeds (it owns them, or their default calls it):
/// `schema.sequence` → (table, column).
pub async fn fed_columns(
    c: &Client,
    schemas: &[String],
) -> Result<Vec<(String, TableName, String)>, SqlError> {
    let rows = c
        .query(
            "SELECT DISTINCT sn.nspname::text || '.' || s.relname::text, tn.nspname::text,
                    t.relname::text, a.attname::text
               FROM pg_class s
               JOIN pg_namespace sn ON sn.oid = s.relnamespace
               JOIN LATERAL (
                    SELECT d.refobjid AS relid, d.refobjsubid::int2 AS attnum
                      FROM pg_depend d
                     WHERE d.classid = 'pg_class'::regclass AND d.objid = s.oid
                       AND d.refclassid = 'pg_class'::regclass AND d.refobjsubid > 0
                       AND d.deptype IN ('a', 'i')
                    UNION
                    SELECT ad.adrelid, ad.adnum
                      FROM pg_depend d JOIN pg_attrdef ad ON ad.oid = d.objid
                     WHERE d.classid = 'pg_attrdef'::regclass
                       AND d.refclassid = 'pg_class'::regclass AND d.refobjid = s.oid) f ON true
               JOIN pg_class t ON t.oid = f.relid
               JOIN pg_namespace tn ON tn.oid = t.relnamespace
               JOIN pg_attribute a ON a.attrelid = f.relid AND a.attnum = f.attnum
              WHERE s.relkind = 'S' AND sn.nspname = ANY($1)
                AND t.relkind IN ('r', 'p') AND NOT t.relispartition",
            &[&schemas],
        )
        .await
        .ctx(|| "reading which columns sequences feed".into())?;
    Ok(rows
        .iter()
        .map(|r| {
            (
                r.get(0),
                TableName::new(r.get::<_, String>(1), r.get::<_, String>(2)),
                r.get(3),
            )
        })
        .collect())
}

/// The highest (or lowest, for a descending sequence) value in a column, if any row.
pub async fn column_extreme(
    c: &Client,
    table: &TableName,
    column: &str,
    descending: bool,
) -> Result<Option<i128>, SqlError> {
    let f = if descending { "min" } else { "max" };
    let sql = format!(
        "SELECT {f}({})::numeric::text FROM {table}",
        quote_ident(column)
    );
    let row = c
        .query_one(&sql, &[])
        .await
        .ctx(|| format!("reading {f}({column}) of {}", table.display_plain()))?;
    Ok(row
        .get::<_, Option<String>>(0)
        .and_then(|s| s.split('.').next().and_then(|i| i.parse().ok())))
}

/// Whether `target` is at or past `source` and past `extreme` (the column's highest value,
/// or lowest for a descending sequence); the problem otherwise.
pub fn sequence_problem(
    name: &str,
    source: &SeqState,
    target: &SeqState,
    fed: Option<(&str, i128)>,
) -> Option<String> {
    let down = source.increment < 0;
    let behind = if down {
        target.next > source.next
    } else {
        target.next < source.next
    };
    if behind {
        return Some(format!(
            "sequence {name} would hand out {} on the target but {} on the source",
            target.next, source.next
        ));
    }
    if let Some((column, extreme)) = fed {
        let clash = if down {
            target.next >= extreme
        } else {
            target.next <= extreme
        };
        if clash {
            return Some(format!(
                "sequence {name} would hand out {} on the target, but {column} there already \
                 holds {extreme}",
                target.next
            ));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn objs(items: &[(&str, &str, &str)]) -> Objects {
        items
            .iter()
            .map(|(k, n, d)| ((k.to_string(), n.to_string()), d.to_string()))
            .collect()
    }

    #[test]
    fn differences_name_the_object_and_both_definitions() {
        let s = objs(&[
            ("column", "public.t.a", "integer NOT NULL"),
            ("index", "public.t_a_idx", "CREATE INDEX ..."),
            ("extension", "pgcrypto", "1.3"),
            ("extension", "plpgsql", "1.0"),
        ]);
        let t = objs(&[
            ("column", "public.t.a", "bigint NOT NULL"),
            ("column", "public.t.b", "text"),
            ("extension", "plpgsql", "1.1"),
            ("extension", "aws_commons", "1.2"),
        ]);
        let (p, n) = differences(&s, &t);
        assert_eq!(
            p,
            vec![
                "column public.t.a differs: the source has `integer NOT NULL`, the target \
                 `bigint NOT NULL`",
                "column public.t.b is on the target but not on the source",
                "extension pgcrypto is on the source but not on the target",
                "index public.t_a_idx is on the source but not on the target",
            ]
        );
        assert_eq!(
            n,
            vec!["extension plpgsql is at version 1.0 on the source and 1.1 on the target"]
        );
    }

    #[test]
    fn sequences_must_be_ahead_of_source_and_data() {
        let s = |next, increment| SeqState { next, increment };
        assert!(sequence_problem("q", &s(10, 1), &s(10, 1), Some(("t.id", 9))).is_none());
        let p = sequence_problem("q", &s(10, 1), &s(5, 1), None).unwrap();
        assert!(p.contains("5 on the target but 10 on the source"), "{p}");
        let p = sequence_problem("q", &s(10, 1), &s(10, 1), Some(("t.id", 10))).unwrap();
        assert!(p.contains("t.id there already holds 10"), "{p}");
        // Descending.
        assert!(sequence_problem("q", &s(-10, -1), &s(-11, -1), Some(("t.id", -10))).is_none());
        assert!(sequence_problem("q", &s(-10, -1), &s(-9, -1), None).is_some());
    }
}
