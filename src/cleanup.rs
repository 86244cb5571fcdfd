//! `pgcutover cleanup`: remove everything pgcutover created for a migration, on both sides.
//!
//! Source: the replication slot (its WAL is released), the resume slot if a session still
//! holds one, and the publication. Target: the migration's bookkeeping rows, and the
//! `pgcutover` schema once no other migration uses it. Local: the migration's state folder.
//! Each step is "if it exists", so running it twice is harmless; a side that cannot be reached
//! is reported and the other side is still cleaned.

use crate::config::Config;
use crate::pg::slot;
use crate::pg::{SqlContext, SqlError};

#[derive(Debug, Default)]
pub struct CleanupReport {
    /// What was removed.
    pub done: Vec<String>,
    /// What could not be removed, with why.
    pub failed: Vec<String>,
}

pub async fn run(cfg: &Config) -> CleanupReport {
    let mut report = CleanupReport::default();
    let id = &cfg.replication.migration_id;
    match source_side(cfg).await {
        Ok(mut done) => report.done.append(&mut done),
        Err(e) => report.failed.push(format!("source: {e}")),
    }
    match target_side(cfg).await {
        Ok(mut done) => report.done.append(&mut done),
        Err(e) => report.failed.push(format!("target: {e}")),
    }
    let dir = cfg.state_dir.join(id.as_str());
    if dir.exists() {
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => report.done.push(format!("removed {}", dir.display())),
            Err(e) => report
                .failed
                .push(format!("cannot remove {}: {e}", dir.display())),
        }
    }
    report
}

#[derive(Debug, thiserror::Error)]
enum SideError {
    #[error("{0} (hint: {1})")]
    Conn(crate::pg::conn::ConnError, String),
    #[error(transparent)]
    Sql(#[from] SqlError),
}

async fn source_side(cfg: &Config) -> Result<Vec<String>, SideError> {
    let id = &cfg.replication.migration_id;
    let src = cfg.source.connect("pgcutover cleanup").await.map_err(|e| {
        let h = e.hint();
        SideError::Conn(e, h)
    })?;
    let mut done = Vec::new();
    for name in [id.slot_name(), id.resume_slot_name()] {
        if slot::drop_slot(&src, &name).await? {
            done.push(format!("dropped replication slot {name} on the source"));
        }
    }
    let publication = id.publication_name();
    if slot::publication_exists(&src, &publication).await? {
        slot::drop_publication(&src, &publication).await?;
        done.push(format!("dropped publication {publication} on the source"));
    }
    Ok(done)
}

async fn target_side(cfg: &Config) -> Result<Vec<String>, SideError> {
    let id = cfg.replication.migration_id.as_str();
    let tgt = cfg.target.connect("pgcutover cleanup").await.map_err(|e| {
        let h = e.hint();
        SideError::Conn(e, h)
    })?;
    let mut done = Vec::new();
    let exists: bool = tgt
        .query_one("SELECT to_regnamespace('pgcutover') IS NOT NULL", &[])
        .await
        .ctx(|| "looking for the pgcutover schema".into())?
        .get(0);
    if !exists {
        return Ok(done);
    }
    let has_tables: bool = tgt
        .query_one("SELECT to_regclass('pgcutover.migration') IS NOT NULL", &[])
        .await
        .ctx(|| "looking for pgcutover's tables".into())?
        .get(0);
    let others: i64 = if has_tables {
        tgt.execute(
            "DELETE FROM pgcutover.load_progress WHERE migration_id = $1",
            &[&id],
        )
        .await
        .ctx(|| "deleting load progress".into())?;
        let n = tgt
            .execute("DELETE FROM pgcutover.migration WHERE id = $1", &[&id])
            .await
            .ctx(|| "deleting the migration row".into())?;
        if n > 0 {
            done.push(format!(
                "removed migration {id} from the target's bookkeeping"
            ));
        }
        tgt.query_one("SELECT count(*) FROM pgcutover.migration", &[])
            .await
            .ctx(|| "counting other migrations".into())?
            .get(0)
    } else {
        0
    };
    if others == 0 {
        tgt.batch_execute("DROP SCHEMA IF EXISTS pgcutover CASCADE")
            .await
            .ctx(|| "dropping the pgcutover schema".into())?;
        done.push("dropped schema pgcutover on the target".into());
    }
    Ok(done)
}
