//! Planner statistics for the tables a load copied, gathered as its last step.
//!
//! A table filled by `COPY` has no statistics until autovacuum gets round to it (a minute or
//! more, later on a busy target), and a partitioned table's parent never gets any from
//! autovacuum at all: until then the planner guesses, and the first queries after the switch
//! can get plans far off the source's. Validation's quick row counts read `reltuples` too.
//! So the load ends with `ANALYZE` of each table it copied, or of the root of each copied
//! partition (which covers its partitions and gives the parent statistics of its own), on
//! up to `parallel_workers` target sessions, largest first. It changes no data and is not
//! recorded: a run stopped in the middle of it leaves the rest to autovacuum, which never
//! analyzes a partitioned table's parent (`ANALYZE` it by hand then).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio_postgres::Client;

use crate::pg::conn::ConnInfo;
use crate::pg::{SqlContext, SqlError, TableName, error_text};

use super::LoadError;

/// The tables to analyze for `copied` (the roots of partitions), largest first.
async fn roots(target: &Client, copied: &[TableName]) -> Result<Vec<TableName>, SqlError> {
    let (schemas, names): (Vec<&str>, Vec<&str>) = copied
        .iter()
        .map(|t| (t.schema.as_str(), t.name.as_str()))
        .unzip();
    let rows = target
        .query(
            "SELECT n.nspname, r.relname,
                    CASE WHEN r.relkind = 'p'
                         THEN (SELECT sum(pg_relation_size(p.relid))
                                 FROM pg_partition_tree(r.oid) p)
                         ELSE pg_relation_size(r.oid) END AS bytes
               FROM (SELECT DISTINCT coalesce(pg_partition_root(c.oid), c.oid) AS oid
                       FROM unnest($1::text[], $2::text[]) AS u(s, t)
                       JOIN pg_namespace n ON n.nspname = u.s
                       JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = u.t) AS roots
               JOIN pg_class r ON r.oid = roots.oid
               JOIN pg_namespace n ON n.oid = r.relnamespace
              ORDER BY bytes DESC NULLS LAST, 1, 2",
            &[&schemas, &names],
        )
        .await
        .ctx(|| "listing the copied tables to analyze".into())?;
    Ok(rows
        .iter()
        .map(|r| TableName::new(r.get::<_, String>(0), r.get::<_, String>(1)))
        .collect())
}

/// What [`run`] did: tables analyzed, and those the target refused, with its message.
#[derive(Debug, Default)]
pub struct Analyzed {
    pub done: usize,
    pub failed: Vec<(TableName, String)>,
}

/// `ANALYZE` the tables in `copied` (see the module docs) on up to `sessions` sessions.
/// A broken connection fails the step (the next run starts it again); a table the target
/// refuses to analyze is reported in [`Analyzed::failed`] and the others go on.
pub async fn run(
    target: &ConnInfo,
    first: &Client,
    copied: &[TableName],
    sessions: usize,
) -> Result<Analyzed, LoadError> {
    if copied.is_empty() {
        return Ok(Analyzed::default());
    }
    let todo = roots(first, copied).await?;
    let sessions = sessions.clamp(1, todo.len().max(1));
    let queue = Arc::new(Mutex::new(VecDeque::from(todo)));
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..sessions {
        let (queue, target) = (queue.clone(), target.clone());
        set.spawn(async move {
            let client = target.connect("pgcutover-analyze").await?;
            let mut out = Analyzed::default();
            loop {
                let next = queue.lock().unwrap_or_else(|p| p.into_inner()).pop_front();
                let Some(table) = next else {
                    return Ok::<_, LoadError>(out);
                };
                match client.batch_execute(&format!("ANALYZE {table}")).await {
                    Ok(()) => out.done += 1,
                    Err(e) if e.as_db_error().is_some() => {
                        out.failed.push((table, error_text(&e)));
                    }
                    Err(source) => {
                        return Err(SqlError {
                            context: format!("analyzing {}", table.display_plain()),
                            source,
                        }
                        .into());
                    }
                }
            }
        });
    }
    let mut all = Analyzed::default();
    while let Some(joined) = set.join_next().await {
        let part = joined.map_err(|e| LoadError::WorkerPanicked(e.to_string()))??;
        all.done += part.done;
        all.failed.extend(part.failed);
    }
    Ok(all)
}
