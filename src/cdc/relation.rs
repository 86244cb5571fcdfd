//! What the stream says about each table, checked against the target.
//!
//! pgoutput sends a Relation message before the first change of a table in each session and
//! again after any DDL on it, so Relation messages are where schema changes on the source show
//! up. Every one of them is compared with the target table's columns (names, types, type
//! modifiers; generated columns are not sent and not compared). A difference stops the apply
//! before any change of the enclosing source transaction commits, with a message that names
//! the table and each difference. Rows for a relation id that has not been described are
//! refused: applying them would mean guessing their columns.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use tokio_postgres::Client;

use super::decode::Relation;
use crate::pg::{Lsn, SqlContext, SqlError, TableName};

/// OIDs below this are built in and identical on every PostgreSQL server.
const FIRST_NORMAL_OBJECT_ID: u32 = 16384;

/// One column as the apply uses it.
#[derive(Clone, Debug)]
pub struct ColInfo {
    pub name: String,
    /// The target's type, schema-qualified when not in pg_catalog, for `::type` casts.
    pub cast: String,
    /// Part of the replica identity.
    pub key: bool,
    /// `GENERATED ALWAYS AS IDENTITY` on the target: inserted with `OVERRIDING SYSTEM VALUE`,
    /// never in a SET list (PostgreSQL refuses it; the source cannot change it either, short
    /// of `SET col = DEFAULT`, which is reported).
    pub always_identity: bool,
    /// How the column's values travel in multi-row statements.
    pub wire: Wire,
    /// A built-in type with a btree equality: REPLICA IDENTITY FULL matches compare it with
    /// `=` as well (see [`super::apply`]), which an index on the column can serve.
    pub indexable: bool,
}

/// The element type of a column's array parameter in multi-row statements.
///
/// Integers go as binary `int2[]`/`int4[]`/`int8[]`: the target then neither parses text
/// nor casts (an I/O coercion per value, about a tenth of its time per updated row on the
/// bulk backlog). Only where the source column is that same built-in type, so the text the
/// stream carries is its canonical output and always parses. Everything else goes as `text[]`
/// and is cast on the target by the column's type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wire {
    Text,
    Int2,
    Int4,
    Int8,
}

impl Wire {
    /// For a column of the built-in type `type_oid` on both sides.
    pub fn of(type_oid: u32) -> Wire {
        match type_oid {
            21 => Wire::Int2,
            23 => Wire::Int4,
            20 => Wire::Int8,
            _ => Wire::Text,
        }
    }

    /// The array parameter's type, as written in SQL.
    pub fn array_type(self) -> &'static str {
        match self {
            Wire::Text => "text[]",
            Wire::Int2 => "int2[]",
            Wire::Int4 => "int4[]",
            Wire::Int8 => "int8[]",
        }
    }
}

/// A described, checked relation.
#[derive(Debug)]
pub struct RelInfo {
    pub relid: u32,
    pub table: TableName,
    /// `d`, `i`, `f` or `n`.
    pub identity: u8,
    /// In the order the stream sends values.
    pub columns: Vec<ColInfo>,
    /// Positions of the identity columns in `columns`.
    pub key: Vec<usize>,
    /// Changes committed before this position are already in the table's copy.
    pub skip_before: Lsn,
    /// The target has unique or exclusion constraints besides the identity key, which a
    /// multi-row UPDATE could trip over in between rows: such tables are updated row by row.
    pub extra_unique: bool,
    /// The target table (or one of its partitions) has triggers or rules that fire during the
    /// apply (`ENABLE ALWAYS` or `ENABLE REPLICA`): its changes keep their exact order among
    /// every other table's and are never merged (see [`super::coalesce`]).
    pub ordered: bool,
    /// Bumped each time the relation is described again, so statements built for an older
    /// shape are not reused.
    pub generation: u64,
}

impl RelInfo {
    pub fn full_identity(&self) -> bool {
        self.identity == b'f'
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RelationError {
    #[error(
        "the source's table {table} no longer matches the target: {}",
        differences.join("; ")
    )]
    Drift {
        table: String,
        differences: Vec<String>,
    },
    #[error("the source sent changes for table {table}, which is not part of this migration")]
    NotMigrated { table: String },
    #[error(
        "the source sent changes for table {to}, which replication.tables does not select: {}",
        if was.is_empty() {
            "a migrated table renamed or moved out of the patterns (DDL is not replicated), or \
             a table added to the migration's publication by hand".to_string()
        } else {
            format!(
                "a migrated table renamed or moved out of the patterns (DDL is not replicated); \
                 migrated and no longer on the source under that name: {}",
                was.join(", ")
            )
        }
    )]
    MovedOut { to: String, was: Vec<String> },
    #[error("table {table} is missing on the target")]
    MissingOnTarget { table: String },
    #[error("the stream sent a row for relation id {relid} before describing it")]
    Unknown { relid: u32 },
    #[error(
        "table {table} has no replica identity columns; its updates and deletes cannot be applied"
    )]
    NoKey { table: String },
    #[error(transparent)]
    Sql(#[from] SqlError),
}

impl RelationError {
    pub fn hint(&self) -> String {
        match self {
            RelationError::Drift { table, .. } => format!(
                "make {table} on the target match the source (run the same ALTER TABLE there), \
                 then POST /replication/resume or restart pgcutover: nothing of the stopped \
                 transaction was applied"
            ),
            RelationError::NotMigrated { .. } => "a table renamed or moved on the source \
                 (DDL is not replicated): pgcutover names it at its next check for new tables, \
                 within 10 s; POST /replication/resume then shows what to do. Otherwise the \
                 publication was changed by hand: restore it to the migration's tables, or \
                 clean up and start over"
                .into(),
            RelationError::MovedOut { to, .. } => format!(
                "DDL is not replicated, and pgcutover cannot tell whether {to} should still be \
                 migrated. To keep it: do the same on the target (ALTER TABLE … RENAME TO / SET \
                 SCHEMA), add {to} to replication.tables and restart pgcutover: it is copied \
                 again under its new name and the stream goes on. To leave it out: add {to} to \
                 replication.exclude and restart: its changes are skipped, it is \
                 taken out of the migration's publication, and its copy on the target stays as \
                 it was"
            ),
            RelationError::MissingOnTarget { table } => format!(
                "create {table} on the target like the source, then POST /replication/resume"
            ),
            RelationError::Unknown { .. } => {
                "restart pgcutover; if it happens again, report it with the log".into()
            }
            RelationError::NoKey { table } => format!(
                "give {table} a primary key or REPLICA IDENTITY FULL on the source and the \
                 target, then POST /replication/resume"
            ),
            RelationError::Sql(_) => "check the target's log for the reason".into(),
        }
    }
}

#[derive(Debug)]
struct TargetColumn {
    name: String,
    type_oid: u32,
    typmod: i32,
    type_ns: String,
    type_name: String,
    /// For a domain, the type it is based on (what pgoutput's Type message names).
    base_ns: String,
    base_name: String,
    display: String,
    always_identity: bool,
    indexable: bool,
}

#[derive(Default)]
pub struct RelationCache {
    /// Each relation's last Relation message, and what was made of it (looked up for every
    /// change, hence the fast hasher).
    rels: HashMap<u32, (Relation, Arc<RelInfo>), foldhash::fast::RandomState>,
    /// Non-built-in types the stream described: oid → (schema, name).
    types: HashMap<u32, (String, String)>,
    generation: u64,
}

impl RelationCache {
    pub fn get(&self, relid: u32) -> Result<&Arc<RelInfo>, RelationError> {
        self.rels
            .get(&relid)
            .map(|(_, info)| info)
            .ok_or(RelationError::Unknown { relid })
    }

    /// Remember a relation whose changes before `skip_before` are skipped without looking at
    /// the target, which no longer has its streamed name: the source renamed (or moved) it
    /// to `now` after these changes, and either the table was copied again under its new
    /// name at `skip_before`, after the rename (a change at or after it under the old name
    /// cannot exist: the description under the new name comes first; if one came, it would
    /// be refused as not matching), or `replication.exclude` leaves the new name out of the
    /// migration (`skip_before` is then [`Lsn::MAX`]).
    pub fn renamed(&mut self, rel: &Relation, now: TableName, skip_before: Lsn) {
        self.generation += 1;
        let info = Arc::new(RelInfo {
            relid: rel.relid,
            table: now,
            identity: rel.replica_identity,
            columns: Vec::new(),
            key: Vec::new(),
            skip_before,
            extra_unique: false,
            ordered: false,
            generation: self.generation,
        });
        self.rels.insert(rel.relid, (rel.clone(), info));
    }

    pub fn note_type(&mut self, oid: u32, namespace: String, name: String) {
        self.types.insert(oid, (namespace, name));
    }

    /// Check a Relation message against the target and remember it.
    ///
    /// pgoutput sends a relation's description again after every invalidation of the table
    /// on the source: each VACUUM and ANALYZE (autovacuum's included), an index built, any
    /// DDL. The same description as last time keeps what was checked then. Checking it again
    /// would stall the apply (the catalog read queues behind the statements in flight on the
    /// session) and, under a new generation, prepare the table's statements anew on every
    /// session, without end over a long stream. A new session checks everything afresh.
    pub async fn describe(
        &mut self,
        target: &Client,
        rel: &Relation,
        snapshots: &BTreeMap<TableName, Lsn>,
    ) -> Result<Arc<RelInfo>, RelationError> {
        if let Some((seen, info)) = self.rels.get(&rel.relid)
            && seen == rel
        {
            return Ok(info.clone());
        }
        let table = TableName::new(rel.namespace.clone(), rel.name.clone());
        let skip_before = *snapshots
            .get(&table)
            .ok_or_else(|| RelationError::NotMigrated {
                table: table.display_plain(),
            })?;
        let (
            cols,
            TableTraits {
                extra_unique,
                ordered,
            },
        ) = target_columns(target, &table).await?;
        if cols.is_empty() {
            return Err(RelationError::MissingOnTarget {
                table: table.display_plain(),
            });
        }
        let differences = self.differences(target, rel, &cols).await?;
        if !differences.is_empty() {
            return Err(RelationError::Drift {
                table: table.display_plain(),
                differences,
            });
        }
        let by_name: HashMap<&str, &TargetColumn> =
            cols.iter().map(|c| (c.name.as_str(), c)).collect();
        let columns: Vec<ColInfo> = rel
            .columns
            .iter()
            .map(|c| ColInfo {
                name: c.name.clone(),
                cast: by_name[c.name.as_str()].display.clone(),
                key: c.key,
                always_identity: by_name[c.name.as_str()].always_identity,
                // The type check above made a built-in source type the target's type too.
                wire: Wire::of(c.type_oid),
                indexable: by_name[c.name.as_str()].indexable,
            })
            .collect();
        let key: Vec<usize> = (0..columns.len()).filter(|&i| columns[i].key).collect();
        self.generation += 1;
        let info = Arc::new(RelInfo {
            relid: rel.relid,
            table,
            identity: rel.replica_identity,
            columns,
            key,
            skip_before,
            extra_unique,
            ordered,
            generation: self.generation,
        });
        self.rels.insert(rel.relid, (rel.clone(), info.clone()));
        Ok(info)
    }

    async fn differences(
        &self,
        target: &Client,
        rel: &Relation,
        cols: &[TargetColumn],
    ) -> Result<Vec<String>, SqlError> {
        let mut out = Vec::new();
        for c in &rel.columns {
            let Some(t) = cols.iter().find(|t| t.name == c.name) else {
                out.push(format!(
                    "column {} is on the source but not on the target",
                    c.name
                ));
                continue;
            };
            let same_type = if c.type_oid < FIRST_NORMAL_OBJECT_ID {
                c.type_oid == t.type_oid
            } else {
                // pgoutput names a domain by its base type, and pg_catalog as "".
                self.types.get(&c.type_oid).is_some_and(|(ns, name)| {
                    let ns = if ns.is_empty() { "pg_catalog" } else { ns };
                    (ns == t.type_ns && *name == t.type_name)
                        || (ns == t.base_ns && *name == t.base_name)
                })
            };
            if !same_type || c.type_modifier != t.typmod {
                let source_type = if c.type_oid < FIRST_NORMAL_OBJECT_ID {
                    // Built-in OIDs mean the same type on the target, which can spell it.
                    target
                        .query_one(
                            "SELECT format_type($1::int8::oid, $2)",
                            &[&i64::from(c.type_oid), &c.type_modifier],
                        )
                        .await
                        .ctx(|| "naming a column type".into())?
                        .get::<_, String>(0)
                } else {
                    match self.types.get(&c.type_oid) {
                        Some((ns, name)) => format!("{ns}.{name}"),
                        None => format!("type oid {}", c.type_oid),
                    }
                };
                out.push(format!(
                    "column {} is {} on the source but {} on the target",
                    c.name, source_type, t.display
                ));
            }
        }
        for t in cols {
            if !rel.columns.iter().any(|c| c.name == t.name) {
                out.push(format!(
                    "column {} is on the target but not on the source",
                    t.name
                ));
            }
        }
        Ok(out)
    }
}

/// What the apply must know of a target table besides its columns.
#[derive(Debug, Default)]
struct TableTraits {
    /// Unique or exclusion constraints other than the replica identity.
    extra_unique: bool,
    /// Triggers or rules that fire under `session_replication_role = replica`.
    ordered: bool,
}

/// The target table's stored (not generated, not dropped) columns, and its [`TableTraits`].
/// No columns when the table is absent.
async fn target_columns(
    target: &Client,
    table: &TableName,
) -> Result<(Vec<TargetColumn>, TableTraits), SqlError> {
    let rows = target
        .query(
            "SELECT a.attname::text, a.atttypid::int8, a.atttypmod, tn.nspname::text,
                    t.typname::text, format_type(a.atttypid, a.atttypmod),
                    bn.nspname::text, b.typname::text, a.attidentity = 'a',
                    a.atttypid < 16384 AND EXISTS (
                        SELECT 1 FROM pg_catalog.pg_opclass oc
                          JOIN pg_catalog.pg_am am ON am.oid = oc.opcmethod
                         WHERE am.amname = 'btree' AND oc.opcdefault
                           AND oc.opcintype = CASE a.atttypid WHEN 1043 THEN 25
                                                              ELSE a.atttypid END)
               FROM pg_catalog.pg_class c
               JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
               JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid
               JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
               JOIN pg_catalog.pg_namespace tn ON tn.oid = t.typnamespace
               LEFT JOIN pg_catalog.pg_type d1 ON d1.oid = t.typbasetype
               LEFT JOIN pg_catalog.pg_type d2 ON d2.oid = d1.typbasetype
               JOIN pg_catalog.pg_type b ON b.oid = coalesce(d2.oid, d1.oid, t.oid)
               JOIN pg_catalog.pg_namespace bn ON bn.oid = b.typnamespace
              WHERE n.nspname = $1 AND c.relname = $2
                AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
              ORDER BY a.attnum",
            &[&table.schema, &table.name],
        )
        .await
        .ctx(|| {
            format!(
                "reading the columns of {} on the target",
                table.display_plain()
            )
        })?;
    let cols = rows
        .iter()
        .map(|r| TargetColumn {
            name: r.get(0),
            type_oid: r.get::<_, i64>(1) as u32,
            typmod: r.get(2),
            type_ns: r.get(3),
            type_name: r.get(4),
            display: r.get(5),
            base_ns: r.get(6),
            base_name: r.get(7),
            always_identity: r.get(8),
            indexable: r.get(9),
        })
        .collect();
    let traits = target
        .query_opt(
            "WITH RECURSIVE tree AS (
                 SELECT c.oid FROM pg_catalog.pg_class c
                   JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                  WHERE n.nspname = $1 AND c.relname = $2
                 UNION ALL
                 SELECT i.inhrelid FROM pg_catalog.pg_inherits i JOIN tree ON i.inhparent = tree.oid)
             SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_index i JOIN tree ON i.indrelid = tree.oid
                             WHERE i.indisunique AND NOT i.indisprimary AND NOT i.indisreplident)
                 OR EXISTS (SELECT 1 FROM pg_catalog.pg_constraint x JOIN tree ON x.conrelid = tree.oid
                             WHERE x.contype = 'x'),
                    EXISTS (SELECT 1 FROM pg_catalog.pg_trigger g JOIN tree ON g.tgrelid = tree.oid
                             WHERE NOT g.tgisinternal AND g.tgenabled IN ('A', 'R'))
                 OR EXISTS (SELECT 1 FROM pg_catalog.pg_rewrite r JOIN tree ON r.ev_class = tree.oid
                             WHERE r.ev_enabled IN ('A', 'R') AND r.rulename <> '_RETURN')",
            &[&table.schema, &table.name],
        )
        .await
        .ctx(|| format!("reading the constraints and triggers of {} on the target", table.display_plain()))?
        .map(|r| TableTraits {
            extra_unique: r.get(0),
            ordered: r.get(1),
        })
        .unwrap_or_default();
    Ok((cols, traits))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_for_an_undescribed_relation_are_refused() {
        let cache = RelationCache::default();
        let err = cache.get(16385).unwrap_err();
        assert!(matches!(err, RelationError::Unknown { relid: 16385 }));
        assert!(err.to_string().contains("before describing it"));
    }

    #[test]
    fn drift_names_the_table_and_every_difference_with_a_way_forward() {
        let e = RelationError::Drift {
            table: "app.items".into(),
            differences: vec![
                "column stock is on the source but not on the target".into(),
                "column price is numeric(12,3) on the source but numeric(10,2) on the target"
                    .into(),
            ],
        };
        let text = e.to_string();
        assert!(text.contains("app.items") && text.contains("stock") && text.contains("price"));
        assert!(e.hint().contains("ALTER TABLE") && e.hint().contains("/replication/resume"));
    }
}
