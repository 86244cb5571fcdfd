//! Row-level security that would apply to pgcutover's own roles.
//!
//! A policy filters what a role reads and writes without a word: a copy made as a role
//! subject to one copies only the rows the policy lets it see (none, for a policy on a
//! tenant setting pgcutover never sets), and an apply subject to one misses the rows it
//! updates or deletes. A table's owner is subject only when the table has `FORCE ROW LEVEL
//! SECURITY`; superusers and roles with `BYPASSRLS` never are. pgcutover's sessions run with
//! `row_security = off` (see [`crate::pg::conn::SESSION_SETTINGS`]), so that a query a
//! policy would filter fails instead; this check says so before anything starts.
//!
//! On the source, the role copies the tables it owns: a selected table with RLS on that
//! applies to the role is a problem. On the target, when pgcutover copies the schema, the
//! tables it creates are its role's, with `FORCE` where the source has it (pg_dump carries
//! it); otherwise they are the target's own tables, checked like the source's.

use tokio_postgres::Client;

use super::{Problem, problem};
use crate::pg::{SqlContext, SqlError, TableName};

/// Of `tables` (those that exist), the ones with row-level security that applies to the
/// session's role: none for a superuser or a `BYPASSRLS` role; otherwise those with RLS
/// enabled that are forced or owned by another role.
pub(super) async fn subject_tables(
    client: &Client,
    tables: &[TableName],
) -> Result<Vec<TableName>, SqlError> {
    if bypasses(client).await? {
        return Ok(Vec::new());
    }
    with_rls(client, tables, false).await
}

/// Of `tables`, those with `FORCE ROW LEVEL SECURITY` (and RLS enabled), whoever asks.
pub(super) async fn forced_tables(
    client: &Client,
    tables: &[TableName],
) -> Result<Vec<TableName>, SqlError> {
    with_rls(client, tables, true).await
}

/// Whether the session's role is exempt from row-level security.
pub(super) async fn bypasses(client: &Client) -> Result<bool, SqlError> {
    let row = client
        .query_one(
            "SELECT rolsuper OR rolbypassrls FROM pg_catalog.pg_roles
              WHERE rolname = current_user",
            &[],
        )
        .await
        .ctx(|| "reading whether the role bypasses row-level security".into())?;
    Ok(row.get(0))
}

async fn with_rls(
    client: &Client,
    tables: &[TableName],
    forced_only: bool,
) -> Result<Vec<TableName>, SqlError> {
    let (schemas, names): (Vec<&str>, Vec<&str>) = tables
        .iter()
        .map(|t| (t.schema.as_str(), t.name.as_str()))
        .unzip();
    let rows = client
        .query(
            "SELECT DISTINCT n.nspname::text, c.relname::text
               FROM unnest($1::text[], $2::text[]) AS u(s, t)
               JOIN pg_catalog.pg_namespace n ON n.nspname = u.s
               JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid AND c.relname = u.t
              WHERE c.relrowsecurity
                AND (c.relforcerowsecurity
                     OR (NOT $3 AND NOT pg_catalog.pg_has_role(c.relowner, 'USAGE')))
              ORDER BY 1, 2",
            &[&schemas, &names, &forced_only],
        )
        .await
        .ctx(|| "looking for row-level security that applies to the migration".into())?;
    Ok(rows
        .iter()
        .map(|r| TableName::new(r.get::<_, String>(0), r.get::<_, String>(1)))
        .collect())
}

/// The problem to report for `tables` on `side`, if any.
pub(super) fn problem_of(
    side: &str,
    tables: &[TableName],
    forced_from_source: bool,
) -> Option<Problem> {
    if tables.is_empty() {
        return None;
    }
    let names = super::some_names(tables.iter());
    let why = if forced_from_source {
        format!(
            "table(s) {names} have FORCE ROW LEVEL SECURITY on the source, which the schema copy \
             carries to the target: its policies would apply to the {side} role as the owner of \
             the copies, and the apply would miss the rows they hide"
        )
    } else {
        format!(
            "row-level security on table(s) {names} applies to the {side} role: the \
             migration would read or write only the rows its policies let it see"
        )
    };
    Some(problem(
        why,
        format!(
            "give the {side} role BYPASSRLS (ALTER ROLE … BYPASSRLS) for the migration, or \
             use a superuser; or turn the policies off for it (ALTER TABLE … NO FORCE ROW \
             LEVEL SECURITY, when the role owns the table)"
        ),
    ))
}
