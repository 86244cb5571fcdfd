//! Reading the catalog: which tables exist, how they are partitioned, their columns, and
//! which of them a configuration selects.
//!
//! Selection works on *top-level* tables (plain tables and partition roots); the partitions
//! of a selected root come with it. The units the loader copies are the tables that hold rows:
//! plain tables and leaf partitions, each copied into the same-named table on the target.

use std::collections::{BTreeMap, HashMap};

use tokio_postgres::Client;

use super::{SqlContext, SqlError, TableName};
use crate::pg::name::TablePattern;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceTable {
    pub oid: u32,
    pub name: TableName,
    /// `r` ordinary table, `p` partitioned table (holds no rows itself).
    pub relkind: char,
    pub is_partition: bool,
    /// The partition root, for a partition.
    pub root: Option<TableName>,
    /// `p` permanent, `u` unlogged (cannot be replicated).
    pub persistence: char,
    /// `d` default (primary key), `i` index, `f` full, `n` nothing.
    pub replident: char,
    pub has_pk: bool,
    pub has_identity_index: bool,
    /// Size of the heap in bytes (0 for a partitioned table).
    pub bytes: i64,
    /// The current user may act as the owner (needed to add it to a publication).
    pub owned: bool,
    pub can_select: bool,
}

impl SourceTable {
    /// Why changes to this table could not be replicated, if they could not.
    pub fn replica_identity_problem(&self) -> Option<String> {
        if self.relkind == 'p' {
            return None; // its partitions are checked one by one
        }
        match self.replident {
            'd' if !self.has_pk => Some(format!(
                "table {} has no primary key and REPLICA IDENTITY DEFAULT, so its updates and \
                 deletes cannot be replicated",
                self.name.display_plain()
            )),
            'i' if !self.has_identity_index => Some(format!(
                "table {} has REPLICA IDENTITY USING INDEX but the index is gone",
                self.name.display_plain()
            )),
            'n' => Some(format!(
                "table {} has REPLICA IDENTITY NOTHING, so its updates and deletes cannot be \
                 replicated",
                self.name.display_plain()
            )),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    pub type_name: String,
    pub generated: bool,
    pub not_null: bool,
    pub binary_safe: bool,
}

pub async fn list_tables(client: &Client) -> Result<Vec<SourceTable>, SqlError> {
    let rows = client
        .query(include_str!("sql/tables.sql"), &[])
        .await
        .ctx(|| "listing tables".into())?;
    let ch = |s: String| s.chars().next().unwrap_or('?');
    Ok(rows
        .into_iter()
        .map(|r| {
            let root_schema: Option<String> = r.get("root_schema");
            let root_name: Option<String> = r.get("root_name");
            SourceTable {
                oid: r.get("oid"),
                name: TableName::new(r.get::<_, String>("schema"), r.get::<_, String>("name")),
                relkind: ch(r.get("relkind")),
                is_partition: r.get("is_partition"),
                root: root_schema
                    .zip(root_name)
                    .map(|(s, n)| TableName::new(s, n)),
                persistence: ch(r.get("persistence")),
                replident: ch(r.get("replident")),
                has_pk: r.get("has_pk"),
                has_identity_index: r.get("has_identity_index"),
                bytes: r.get("bytes"),
                owned: r.get("owned"),
                can_select: r.get("can_select"),
            }
        })
        .collect())
}

/// Columns of each table, by oid, in attribute order.
pub async fn columns(client: &Client, oids: &[u32]) -> Result<HashMap<u32, Vec<Column>>, SqlError> {
    let rows = client
        .query(include_str!("sql/columns.sql"), &[&oids])
        .await
        .ctx(|| "reading columns".into())?;
    let mut out: HashMap<u32, Vec<Column>> = HashMap::new();
    for r in rows {
        out.entry(r.get("relid")).or_default().push(Column {
            name: r.get("name"),
            type_name: r.get("type_name"),
            generated: r.get("generated"),
            not_null: r.get("not_null"),
            binary_safe: r.get("binary_safe"),
        });
    }
    Ok(out)
}

/// Columns of tables found by name (on the target, where oids differ). Tables that do not
/// exist are absent from the map.
pub async fn columns_by_name(
    client: &Client,
    names: &[TableName],
) -> Result<BTreeMap<TableName, (u32, Vec<Column>)>, SqlError> {
    let schemas: Vec<&str> = names.iter().map(|t| t.schema.as_str()).collect();
    let tables: Vec<&str> = names.iter().map(|t| t.name.as_str()).collect();
    let rows = client
        .query(
            "SELECT c.oid, n.nspname, c.relname
               FROM unnest($1::text[], $2::text[]) AS w(s, t)
               JOIN pg_namespace n ON n.nspname = w.s
               JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = w.t
              WHERE c.relkind IN ('r', 'p')",
            &[&schemas, &tables],
        )
        .await
        .ctx(|| "looking up tables".into())?;
    let found: Vec<(u32, TableName)> = rows
        .iter()
        .map(|r| {
            (
                r.get(0),
                TableName::new(r.get::<_, String>(1), r.get::<_, String>(2)),
            )
        })
        .collect();
    let oids: Vec<u32> = found.iter().map(|(o, _)| *o).collect();
    let mut cols = columns(client, &oids).await?;
    Ok(found
        .into_iter()
        .map(|(oid, name)| (name, (oid, cols.remove(&oid).unwrap_or_default())))
        .collect())
}

/// What a configuration selects.
#[derive(Clone, Debug, Default)]
pub struct Selection {
    /// Top-level tables (plain tables and partition roots), for the publication.
    pub roots: Vec<SourceTable>,
    /// Tables that hold rows (plain tables and leaf partitions), for the copy.
    pub units: Vec<SourceTable>,
}

/// Apply include and exclude patterns to the catalog. Fails with one message per include
/// pattern that matches no table, since a typo there would silently migrate nothing.
pub fn select(
    tables: &[SourceTable],
    include: &[TablePattern],
    exclude: &[TablePattern],
) -> Result<Selection, Vec<String>> {
    let top: Vec<&SourceTable> = tables.iter().filter(|t| !t.is_partition).collect();
    let mut problems = Vec::new();
    for p in include {
        if !top.iter().any(|t| p.matches(&t.name)) {
            problems.push(format!(
                "the table pattern {:?} matches no table on the source",
                p.as_str()
            ));
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    let roots: Vec<SourceTable> = top
        .into_iter()
        .filter(|t| include.iter().any(|p| p.matches(&t.name)))
        .filter(|t| !exclude.iter().any(|p| p.matches(&t.name)))
        .cloned()
        .collect();
    let units = tables
        .iter()
        .filter(|t| t.relkind == 'r')
        .filter(|t| {
            let top_name = t.root.as_ref().unwrap_or(&t.name);
            roots.iter().any(|r| &r.name == top_name)
        })
        .cloned()
        .collect();
    Ok(Selection { roots, units })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(schema: &str, name: &str, relkind: char, root: Option<&str>) -> SourceTable {
        SourceTable {
            oid: 0,
            name: TableName::new(schema, name),
            relkind,
            is_partition: root.is_some(),
            root: root.map(|r| TableName::new(schema, r)),
            persistence: 'p',
            replident: 'd',
            has_pk: true,
            has_identity_index: false,
            bytes: 0,
            owned: true,
            can_select: true,
        }
    }

    fn pats(list: &[&str]) -> Vec<TablePattern> {
        list.iter()
            .map(|p| TablePattern::parse(p).unwrap())
            .collect()
    }

    #[test]
    fn partitions_follow_their_root() {
        let cat = vec![
            table("public", "events", 'p', None),
            table("public", "events_2026", 'r', Some("events")),
            table("public", "events_2027", 'r', Some("events")),
            table("public", "users", 'r', None),
            table("audit", "log", 'r', None),
        ];
        let s = select(&cat, &pats(&["public.*"]), &pats(&["users"])).unwrap();
        let roots: Vec<_> = s.roots.iter().map(|t| t.name.display_plain()).collect();
        assert_eq!(roots, ["public.events"]);
        let units: Vec<_> = s.units.iter().map(|t| t.name.display_plain()).collect();
        assert_eq!(units, ["public.events_2026", "public.events_2027"]);
        // A pattern that names a partition selects nothing: partitions go with their root.
        assert!(select(&cat, &pats(&["public.events_2026"]), &[]).is_err());
    }

    #[test]
    fn a_pattern_matching_nothing_is_an_error() {
        let cat = vec![table("public", "users", 'r', None)];
        let err = select(&cat, &pats(&["public.users", "sales.*"]), &[]).unwrap_err();
        assert_eq!(err.len(), 1);
        assert!(err[0].contains("sales.*"));
    }

    #[test]
    fn replica_identity_rules() {
        let mut t = table("public", "t", 'r', None);
        assert!(t.replica_identity_problem().is_none());
        t.has_pk = false;
        assert!(
            t.replica_identity_problem()
                .unwrap()
                .contains("no primary key")
        );
        t.replident = 'f';
        assert!(t.replica_identity_problem().is_none());
        t.replident = 'n';
        assert!(t.replica_identity_problem().is_some());
    }
}
