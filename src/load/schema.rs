//! Copying the schema with PostgreSQL's own tools, split around the data load.
//!
//! One `pg_dump --schema-only -Fc` inside the exported snapshot gives an archive. Its
//! *pre-data* section (extensions, types, functions, tables, sequences) is turned into a
//! script by `pg_restore -f` and run by `psql --single-transaction` with the update of our
//! schema state appended, so the schema and the record that it exists commit together.
//! Its *post-data* section (indexes, constraints, foreign keys, triggers) is restored after
//! the load by `pg_restore -j N`; on a resumed run, items that already exist on the target are
//! left out of the restore list (each index or constraint is built in its own transaction, so
//! after a crash each one is either wholly there or absent).
//!
//! Owners and grants are not copied (`--no-owner --no-privileges`): the roles of the source
//! rarely exist on the target, and Aurora's admin is not a superuser. Publications and
//! subscriptions are not copied either.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::process::Command;
use tokio_postgres::Client;
use tokio_postgres::error::SqlState;

use crate::pg::conn::ConnInfo;
use crate::pg::tools::{ToolError, find_tool};
use crate::pg::{SqlContext, SqlError, TableName};

#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error(transparent)]
    Tool(#[from] ToolError),
    #[error("{step} failed: {stderr}")]
    Failed { step: String, stderr: String },
    #[error("{step}: {source}")]
    Io {
        step: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Sql(#[from] SqlError),
}

impl SchemaError {
    pub fn hint(&self) -> String {
        match self {
            SchemaError::Tool(e) => e.hint(),
            SchemaError::Failed { stderr, .. } if stderr.contains("already exists") => {
                "the target already has some of these objects; start from an empty target \
                 database, or set copy_schema = false and create the schema yourself"
                    .into()
            }
            SchemaError::Failed { .. } => {
                "the message above is PostgreSQL's; fix the cause on the named side and start \
                 again (the schema copy runs in one transaction and left nothing behind)"
                    .into()
            }
            SchemaError::Io { .. } => "check that the state folder is writable".into(),
            SchemaError::Sql(_) => "check the target's log".into(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct SchemaTools {
    pub pg_dump: PathBuf,
    pub pg_restore: PathBuf,
    pub psql: PathBuf,
}

impl SchemaTools {
    /// Tools of the source's major version or newer.
    pub fn find(explicit: Option<&Path>, source_major: u32) -> Result<SchemaTools, ToolError> {
        Ok(SchemaTools {
            pg_dump: find_tool("pg_dump", explicit, source_major)?,
            pg_restore: find_tool("pg_restore", explicit, source_major)?,
            psql: find_tool("psql", explicit, 0)?,
        })
    }
}

async fn run(step: &str, mut cmd: Command) -> Result<String, SchemaError> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let out = cmd.output().await.map_err(|source| SchemaError::Io {
        step: step.into(),
        source,
    })?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        let tail: String = {
            let s = stderr.trim();
            let start = s.len().saturating_sub(2000);
            let start = (start..s.len())
                .find(|&i| s.is_char_boundary(i))
                .unwrap_or(0);
            s[start..].to_string()
        };
        return Err(SchemaError::Failed {
            step: step.into(),
            stderr: tail,
        });
    }
    if !stderr.trim().is_empty() {
        tracing::debug!(step, stderr = %stderr.trim(), "tool output");
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn with_conn(mut cmd: Command, conn: &ConnInfo) -> Command {
    cmd.envs(conn.child_env());
    cmd
}

/// psql-style pattern that matches exactly this table.
fn exact_pattern(t: &TableName) -> String {
    format!(
        "\"{}\".\"{}\"",
        t.schema.replace('"', "\"\""),
        t.name.replace('"', "\"\"")
    )
}

/// Dump the schema (all of it but the tables in `exclude` and pgcutover's own schema), in
/// UTF8 whatever the source database's encoding (a LATIN1 or SQL_ASCII database's names,
/// comments and defaults then reach the target converted; pgcutover reads the scripts and
/// listings pg_restore makes of it as UTF-8).
pub async fn dump(
    tools: &SchemaTools,
    source: &ConnInfo,
    snapshot: Option<&str>,
    archive: &Path,
    exclude: &[TableName],
) -> Result<(), SchemaError> {
    let mut cmd = Command::new(&tools.pg_dump);
    cmd.args([
        "--schema-only",
        "--format=custom",
        "--no-owner",
        "--no-privileges",
        "--no-publications",
        "--no-subscriptions",
        "--exclude-schema=pgcutover",
        "--encoding=UTF8",
    ]);
    if let Some(s) = snapshot {
        cmd.arg(format!("--snapshot={s}"));
    }
    for t in exclude {
        cmd.arg(format!("--exclude-table={}", exact_pattern(t)));
    }
    cmd.arg("--file").arg(archive);
    cmd.arg(format!("--dbname={}", source.libpq_conninfo()));
    run("pg_dump --schema-only", with_conn(cmd, source)).await?;
    Ok(())
}

/// Run the pre-data section on the target in one transaction, together with `marker_sql`.
pub async fn apply_pre_data(
    tools: &SchemaTools,
    target: &ConnInfo,
    archive: &Path,
    marker_sql: &str,
) -> Result<(), SchemaError> {
    let script = archive.with_extension("pre-data.sql");
    let mut cmd = Command::new(&tools.pg_restore);
    cmd.args([
        "--section=pre-data",
        "--no-owner",
        "--no-privileges",
        "--file",
    ])
    .arg(&script)
    .arg(archive);
    run("pg_restore --section=pre-data", cmd).await?;
    let io = |source| SchemaError::Io {
        step: "writing the pre-data script".into(),
        source,
    };
    // Bytes, not text: the script is in the dump's encoding and passes through unchanged.
    // It runs in one transaction, read-write under read committed whatever the database's
    // defaults (one set read-only keeps applications off the target until the switch, not
    // the migration): first in the transaction, before any query.
    let mut text =
        b"SET TRANSACTION READ WRITE;\nSET TRANSACTION ISOLATION LEVEL READ COMMITTED;\n".to_vec();
    text.extend(tokio::fs::read(&script).await.map_err(io)?);
    text.extend_from_slice(b"\n-- pgcutover: the schema and the record of it commit together\n");
    text.extend_from_slice(marker_sql.as_bytes());
    text.push(b'\n');
    tokio::fs::write(&script, text).await.map_err(io)?;
    let mut cmd = Command::new(&tools.psql);
    cmd.args([
        "-X",
        "-q",
        "-v",
        "ON_ERROR_STOP=1",
        "--single-transaction",
        "-f",
    ])
    .arg(&script)
    .arg(format!("--dbname={}", target.libpq_conninfo()));
    run(
        "creating the schema on the target (psql)",
        with_conn(cmd, target),
    )
    .await?;
    Ok(())
}

/// An item of the archive's table of contents: `dump_id; catalog oid desc ...`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TocItem {
    pub line: String,
    pub catalog: u32,
    pub oid: u32,
}

pub fn parse_toc(list: &str) -> Vec<TocItem> {
    list.lines()
        .filter(|l| !l.starts_with(';') && !l.trim().is_empty())
        .filter_map(|l| {
            let (_, rest) = l.split_once(';')?;
            let mut words = rest.split_whitespace();
            let catalog = words.next()?.parse().ok()?;
            let oid = words.next()?.parse().ok()?;
            Some(TocItem {
                line: l.to_string(),
                catalog,
                oid,
            })
        })
        .collect()
}

/// Which post-data items (by source oid) already exist on the target: indexes, constraints
/// and triggers, matched by schema, table and name.
async fn existing_on_target(
    source: &Client,
    target: &Client,
    items: &[TocItem],
) -> Result<HashSet<u32>, SqlError> {
    const PG_CLASS: u32 = 1259;
    const PG_CONSTRAINT: u32 = 2606;
    const PG_TRIGGER: u32 = 2620;
    let oids = |cat: u32| -> Vec<u32> {
        items
            .iter()
            .filter(|i| i.catalog == cat)
            .map(|i| i.oid)
            .collect()
    };
    let mut out = HashSet::new();
    let checks = [
        (
            PG_CLASS,
            "SELECT c.oid, n.nspname, '', c.relname FROM pg_class c
               JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = ANY($1)",
            "SELECT w.o FROM unnest($1::oid[], $2::text[], $3::text[], $4::text[]) AS w(o, s, t, n)
              WHERE EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace ns ON ns.oid = c.relnamespace
                             WHERE ns.nspname = w.s AND c.relname = w.n)",
        ),
        (
            PG_CONSTRAINT,
            "SELECT co.oid, n.nspname, c.relname, co.conname FROM pg_constraint co
               JOIN pg_class c ON c.oid = co.conrelid
               JOIN pg_namespace n ON n.oid = c.relnamespace WHERE co.oid = ANY($1)",
            "SELECT w.o FROM unnest($1::oid[], $2::text[], $3::text[], $4::text[]) AS w(o, s, t, n)
              WHERE EXISTS (SELECT 1 FROM pg_constraint co JOIN pg_class c ON c.oid = co.conrelid
                              JOIN pg_namespace ns ON ns.oid = c.relnamespace
                             WHERE ns.nspname = w.s AND c.relname = w.t AND co.conname = w.n)",
        ),
        (
            PG_TRIGGER,
            "SELECT tg.oid, n.nspname, c.relname, tg.tgname FROM pg_trigger tg
               JOIN pg_class c ON c.oid = tg.tgrelid
               JOIN pg_namespace n ON n.oid = c.relnamespace WHERE tg.oid = ANY($1)",
            "SELECT w.o FROM unnest($1::oid[], $2::text[], $3::text[], $4::text[]) AS w(o, s, t, n)
              WHERE EXISTS (SELECT 1 FROM pg_trigger tg JOIN pg_class c ON c.oid = tg.tgrelid
                              JOIN pg_namespace ns ON ns.oid = c.relnamespace
                             WHERE ns.nspname = w.s AND c.relname = w.t AND tg.tgname = w.n)",
        ),
    ];
    for (catalog, on_source, on_target) in checks {
        let wanted = oids(catalog);
        if wanted.is_empty() {
            continue;
        }
        let rows = source
            .query(on_source, &[&wanted])
            .await
            .ctx(|| "reading post-data objects on the source".into())?;
        let o: Vec<u32> = rows.iter().map(|r| r.get(0)).collect();
        let s: Vec<String> = rows.iter().map(|r| r.get(1)).collect();
        let t: Vec<String> = rows.iter().map(|r| r.get(2)).collect();
        let n: Vec<String> = rows.iter().map(|r| r.get(3)).collect();
        let found = target
            .query(on_target, &[&o, &s, &t, &n])
            .await
            .ctx(|| "checking post-data objects on the target".into())?;
        out.extend(found.iter().map(|r| r.get::<_, u32>(0)));
    }
    Ok(out)
}

/// Startup options that make a child's sessions read-write under read committed, when the
/// target database (or role) starts them otherwise (`reset_val` is what a session starts
/// with, before pgcutover's own settings); `None` when it does not, so that nothing is added
/// that a connection pooler in front of the target might refuse.
pub async fn session_defaults_options(target: &Client) -> Result<Option<String>, SchemaError> {
    let rows = target
        .query(
            "SELECT name, reset_val FROM pg_catalog.pg_settings \
              WHERE name IN ('default_transaction_read_only', 'default_transaction_isolation')",
            &[],
        )
        .await
        .map_err(|source| {
            SchemaError::Sql(SqlError {
                context: "reading the target's session defaults".into(),
                source,
            })
        })?;
    let differs = rows.iter().any(|r| {
        let (name, value): (&str, &str) = (r.get(0), r.get(1));
        match name {
            "default_transaction_read_only" => value != "off",
            _ => value != "read committed",
        }
    });
    Ok(differs.then(|| {
        "-c default_transaction_read_only=off \
         -c default_transaction_isolation=read\\ committed"
            .to_string()
    }))
}

/// Restore the post-data section with `jobs` parallel jobs, skipping what already exists.
/// Returns how many items were restored.
pub async fn apply_post_data(
    tools: &SchemaTools,
    source: &Client,
    target_client: &Client,
    target: &ConnInfo,
    archive: &Path,
    jobs: usize,
) -> Result<usize, SchemaError> {
    let mut cmd = Command::new(&tools.pg_restore);
    cmd.args(["--list", "--section=post-data"]).arg(archive);
    let list = run("pg_restore --list", cmd).await?;
    let items = parse_toc(&list);
    let existing = existing_on_target(source, target_client, &items).await?;
    let todo: Vec<&TocItem> = items
        .iter()
        .filter(|i| !existing.contains(&i.oid))
        .collect();
    if todo.is_empty() {
        return Ok(0);
    }
    let list_path = archive.with_extension("post-data.list");
    let text: String = todo.iter().map(|i| format!("{}\n", i.line)).collect();
    tokio::fs::write(&list_path, text)
        .await
        .map_err(|source| SchemaError::Io {
            step: "writing the post-data list".into(),
            source,
        })?;
    let mut cmd = Command::new(&tools.pg_restore);
    cmd.args([
        "--section=post-data",
        "--no-owner",
        "--no-privileges",
        "--exit-on-error",
        &format!("--jobs={}", jobs.max(1)),
        "--use-list",
    ])
    .arg(&list_path)
    .arg(format!("--dbname={}", target.libpq_conninfo()))
    .arg(archive);
    let mut cmd = with_conn(cmd, target);
    if let Some(options) = session_defaults_options(target_client).await? {
        cmd.env("PGOPTIONS", options);
    }
    run("pg_restore --section=post-data", cmd).await?;
    Ok(todo.len())
}

/// Materialized views the schema copy left empty on the target, filled from the copied data.
#[derive(Debug, Default)]
pub struct Refreshed {
    pub done: usize,
    /// Views whose refresh the target refused, with its message: they stay unpopulated.
    pub failed: Vec<(TableName, String)>,
}

const MATVIEWS: &str = "SELECT n.nspname, c.relname FROM pg_class c
      JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE c.relkind = 'm' AND c.relispopulated = $1 AND n.nspname <> 'pgcutover'
     ORDER BY 1, 2";

/// Refresh on the target the materialized views that are populated on the source. A
/// schema-only dump creates them `WITH NO DATA` (their contents are data, not schema), so
/// without this every query on them fails on the target after the switch. Views built on
/// other views are refreshed after those: a refresh refused because a view it reads is not
/// populated yet (SQLSTATE 55000) is tried again in the next pass. A view the target cannot
/// refresh for another reason (a function that fails there, say) does not stop the
/// migration: it is returned in `failed`. Those already populated on the target are left
/// alone, so a resumed run only does what is left.
pub async fn refresh_matviews(source: &Client, target: &Client) -> Result<Refreshed, SqlError> {
    let names = |rows: Vec<tokio_postgres::Row>| -> Vec<TableName> {
        rows.iter()
            .map(|r| TableName::new(r.get::<_, String>(0), r.get::<_, String>(1)))
            .collect()
    };
    let populated: HashSet<TableName> = names(
        source
            .query(MATVIEWS, &[&true])
            .await
            .ctx(|| "listing the source's materialized views".into())?,
    )
    .into_iter()
    .collect();
    let mut todo: Vec<(TableName, String)> = names(
        target
            .query(MATVIEWS, &[&false])
            .await
            .ctx(|| "listing the target's materialized views".into())?,
    )
    .into_iter()
    .filter(|v| populated.contains(v))
    .map(|v| (v, String::new()))
    .collect();
    let mut out = Refreshed::default();
    // A pass that refreshes nothing ends it (what is left waits on views that failed), so
    // there are at most as many passes as views.
    while !todo.is_empty() {
        let before = todo.len();
        let mut waiting = Vec::new();
        for (view, _) in std::mem::take(&mut todo) {
            match target
                .batch_execute(&format!("REFRESH MATERIALIZED VIEW {view}"))
                .await
            {
                Ok(()) => out.done += 1,
                Err(e) if e.as_db_error().is_none() => {
                    return Err(SqlError {
                        context: format!("refreshing {} on the target", view.display_plain()),
                        source: e,
                    });
                }
                Err(e) if e.code() == Some(&SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE) => {
                    waiting.push((view, crate::pg::error_text(&e)));
                }
                Err(e) => out.failed.push((view, crate::pg::error_text(&e))),
            }
        }
        todo = waiting;
        if todo.len() == before {
            break;
        }
    }
    out.failed.extend(todo);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toc_lines_are_parsed() {
        let list = ";\n; Archive created at 2026-11-22\n;\n\
            3268; 2606 16391 CONSTRAINT public pgbench_accounts pgbench_accounts_pkey postgres\n\
            3270; 1259 16400 INDEX public idx x postgres\n\
            3271; 2606 16402 FK CONSTRAINT public orders orders_fk postgres\n\
            garbage line\n";
        let items = parse_toc(list);
        assert_eq!(items.len(), 3);
        assert_eq!((items[0].catalog, items[0].oid), (2606, 16391));
        assert_eq!((items[1].catalog, items[1].oid), (1259, 16400));
        assert!(items[2].line.contains("FK CONSTRAINT"));
    }

    #[test]
    fn exact_patterns_quote_everything() {
        assert_eq!(
            exact_pattern(&TableName::new("a\"b", "C*d")),
            "\"a\"\"b\".\"C*d\""
        );
    }
}
