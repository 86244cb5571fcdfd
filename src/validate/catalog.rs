//! What validation reads from each side's catalog: per table its columns (with base types for
//! the digest), its key, and its planner estimate.

use std::collections::BTreeMap;

use tokio_postgres::Client;

use super::digest::DigestColumn;
use crate::pg::{SqlContext, SqlError, TableName};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ColumnInfo {
    pub digest: DigestColumn,
    /// `format_type` with typmod, e.g. `numeric(10,2)`.
    pub type_name: String,
}

#[derive(Clone, Debug, Default)]
pub struct TableInfo {
    pub columns: Vec<ColumnInfo>,
    /// Primary key columns, else those of the replica identity index; empty when neither.
    pub key: Vec<String>,
    /// `pg_class.reltuples` (-1 when never analyzed).
    pub estimate: f64,
}

/// Catalog facts of the given tables that exist on this side.
pub async fn tables(
    client: &Client,
    names: &[TableName],
) -> Result<BTreeMap<TableName, TableInfo>, SqlError> {
    let schemas: Vec<&str> = names.iter().map(|t| t.schema.as_str()).collect();
    let rels: Vec<&str> = names.iter().map(|t| t.name.as_str()).collect();
    let rows = client
        .query(
            "SELECT n.nspname, c.relname, c.reltuples::float8,
                    coalesce((SELECT array_agg(a.attname::text ORDER BY k.ord)
                                FROM pg_index i
                                CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
                                JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum
                               WHERE i.indexrelid = coalesce(
                                       (SELECT indexrelid FROM pg_index
                                         WHERE indrelid = c.oid AND indisprimary),
                                       (SELECT indexrelid FROM pg_index
                                         WHERE indrelid = c.oid AND indisreplident
                                           AND c.relreplident = 'i'))),
                             '{}') AS key
               FROM unnest($1::text[], $2::text[]) AS w(s, t)
               JOIN pg_namespace n ON n.nspname = w.s
               JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = w.t
              WHERE c.relkind IN ('r', 'p')",
            &[&schemas, &rels],
        )
        .await
        .ctx(|| "reading tables for validation".into())?;
    let mut out = BTreeMap::new();
    for r in &rows {
        let name = TableName::new(r.get::<_, String>(0), r.get::<_, String>(1));
        out.insert(
            name,
            TableInfo {
                columns: vec![],
                key: r.get(3),
                estimate: r.get(2),
            },
        );
    }
    let rows = client
        .query(
            "SELECT n.nspname, c.relname, a.attname::text, bt.typname::text,
                    format_type(a.atttypid, a.atttypmod)
               FROM unnest($1::text[], $2::text[]) AS w(s, t)
               JOIN pg_namespace n ON n.nspname = w.s
               JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = w.t
               JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
               JOIN pg_type t ON t.oid = a.atttypid
               JOIN pg_type bt ON bt.oid = CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.oid END
              WHERE c.relkind IN ('r', 'p')
              ORDER BY 1, 2, a.attnum",
            &[&schemas, &rels],
        )
        .await
        .ctx(|| "reading columns for validation".into())?;
    for r in &rows {
        let name = TableName::new(r.get::<_, String>(0), r.get::<_, String>(1));
        if let Some(t) = out.get_mut(&name) {
            t.columns.push(ColumnInfo {
                digest: DigestColumn {
                    name: r.get(2),
                    // Arrays are `_int4` and the like: hashed from their text.
                    base_type: r.get(3),
                },
                type_name: r.get(4),
            });
        }
    }
    Ok(out)
}
