//! The full load: from nothing to a target that holds every selected row as of a known
//! source position, ready for the change stream to continue from.
//!
//! Steps, each recorded on the target before the next begins:
//!
//! 1. **preflight** (read-only, [`preflight`]);
//! 2. **setup**: the publication and the logical slot, whose exported snapshot is the point
//!    the copy is taken at (the slot's consistent point is recorded in `pgcutover.migration`);
//! 3. **schema** pre-data, in one transaction with its record ([`schema`]);
//! 4. **copy** by N workers sharing one snapshot ([`copy`], [`plan`]); each chunk commits
//!    with its progress row;
//! 5. **post-data** (indexes, constraints) with `pg_restore -j N`, then the materialized
//!    views refreshed ([`schema::refresh_matviews`]);
//! 6. **statistics**: `ANALYZE` of what was copied (not recorded, see [`analyze`]).
//!
//! ## Resume
//!
//! A killed daemon loses its exported snapshot: PostgreSQL keeps a snapshot importable only
//! while the exporting session lives. pgcopydb answers this by asking the operator to keep a
//! snapshot-holding process alive across the failure; PostgreSQL's own table-sync workers
//! answer it with a per-table "synced at" position. We take the second way, because it
//! survives any crash, including the host's: tables whose every chunk committed are kept;
//! every other table is emptied and copied again from a *new* snapshot, exported by a
//! temporary slot created on resume, and each table's rows in `pgcutover.load_progress` carry
//! the position of the snapshot it was copied at. The permanent slot still starts at the
//! first consistent point, which is never later than any table's snapshot, so the change
//! stream has every change; it applies a change to a table only if the change committed at
//! or after that table's snapshot position, and so nothing is missed or applied twice.

pub mod analyze;
pub mod copy;
pub mod plan;
pub mod preflight;
pub mod progress;
pub mod schema;

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::config::Config;
use crate::pg::slot::{self, ExportedSnapshot, SlotError};
use crate::pg::{Lsn, SqlError, TableName};
use crate::status::{Stage, StatusBoard};
use copy::{CopyError, CopyUnit, Worker};
use plan::{PlanOptions, WorkItem};
use preflight::PreflightError;
use progress::{LoadedTable, SchemaState};
use schema::SchemaError;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Preflight(#[from] PreflightError),
    #[error(transparent)]
    Slot(#[from] SlotError),
    #[error("schema copy: {0}")]
    Schema(#[from] SchemaError),
    #[error(transparent)]
    Copy(#[from] CopyError),
    #[error(transparent)]
    Sql(#[from] SqlError),
    #[error(transparent)]
    Conn(#[from] crate::pg::conn::ConnError),
    #[error("replication slot {slot} recorded by an earlier run is gone from the source")]
    SlotLost { slot: String },
    #[error(
        "the source invalidated replication slot {slot}: it removed WAL the slot still needed \
         (max_slot_wal_keep_size)"
    )]
    SlotInvalidated { slot: String },
    #[error("publication {publication} recorded by an earlier run is gone from the source")]
    PublicationLost { publication: String },
    #[error("a load worker stopped unexpectedly: {0}")]
    WorkerPanicked(String),
    #[error("cannot create the state folder {path}: {source}")]
    StateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl LoadError {
    /// Worth running the load again on its own (it resumes where it stopped): a server that
    /// could not be reached, or a connection that broke, beyond the retries of single
    /// chunks. What someone must fix (a preflight problem, refused credentials, a lost slot,
    /// a schema the target refuses) is not.
    pub fn is_transient(&self) -> bool {
        match self {
            LoadError::Preflight(e) => e.transient,
            LoadError::Slot(SlotError::Sql(e)) | LoadError::Sql(e) => e.is_transient(),
            LoadError::Copy(e) => e.is_transient(),
            LoadError::Conn(e) => e.is_transient(),
            LoadError::Slot(_)
            | LoadError::Schema(_)
            | LoadError::SlotLost { .. }
            | LoadError::SlotInvalidated { .. }
            | LoadError::PublicationLost { .. }
            | LoadError::WorkerPanicked(_)
            | LoadError::StateDir { .. } => false,
        }
    }

    pub fn hint(&self) -> String {
        match self {
            LoadError::Preflight(e) => e
                .problems
                .first()
                .map(|p| p.hint.clone())
                .unwrap_or_default(),
            LoadError::Slot(e) => e.hint(),
            LoadError::Schema(e) => e.hint(),
            LoadError::Copy(_) | LoadError::Sql(_) | LoadError::Conn(_) => {
                "POST /replication/resume (or restart pgcutover) once the cause is fixed: \
                 tables already copied are kept, the rest is copied again"
                    .into()
            }
            LoadError::SlotInvalidated { .. } => {
                "changes since the load began can no longer be replayed: run `pgcutover \
                 cleanup`, empty the target, and start the migration again; raise \
                 max_slot_wal_keep_size on the source (or set it to -1) for the time of the \
                 migration, so that the slot keeps the WAL of a long load or of a stopped \
                 daemon"
                    .into()
            }
            LoadError::SlotLost { .. } | LoadError::PublicationLost { .. } => {
                "changes since the load began can no longer be replayed: run `pgcutover \
                 cleanup`, empty the target, and start the migration again"
                    .into()
            }
            LoadError::StateDir { .. } => "check state.dir and its permissions".into(),
            LoadError::WorkerPanicked(_) => "this is a bug in pgcutover; restart to resume \
                the load and report it with the log"
                .into(),
        }
    }
}

/// Where the load ended: the slot to stream from and each table's snapshot position.
#[derive(Clone, Debug)]
pub struct LoadOutcome {
    pub slot_lsn: Lsn,
    pub tables: BTreeMap<TableName, LoadedTable>,
}

/// How often the slot's state is read during the load.
const SLOT_WATCH_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Run (or resume) the full load of the configured migration.
///
/// The slot holds every byte of WAL the source writes until the change stream has caught up,
/// so a long load is when it holds the most: its state (retained WAL, `wal_status`) is read
/// into `/status` every 5 s from the moment it exists.
pub async fn run(cfg: &Config, status: Arc<StatusBoard>) -> Result<LoadOutcome, LoadError> {
    status.set_stage(Stage::Preflight);
    preflight::no_transaction_pooler(cfg).await?;
    let slot = cfg.replication.migration_id.slot_name();
    let watch = slot::watch_slot(&cfg.source, &slot, SLOT_WATCH_EVERY, |s| {
        status.slot_state(s)
    });
    tokio::select! {
        r = run_load(cfg, status.clone()) => r,
        never = watch => match never {},
    }
}

/// Read the slot's state into `status`; an invalidated slot ends the load.
async fn check_slot(
    src: &tokio_postgres::Client,
    slot_name: &str,
    status: &StatusBoard,
) -> Result<(), LoadError> {
    let Some(state) = slot::slot_state(src, slot_name).await? else {
        return Err(LoadError::SlotLost {
            slot: slot_name.to_string(),
        });
    };
    let lost = state.wal_status.as_deref() == Some("lost");
    let now = state.clone();
    let before = status.slot_state(state);
    slot::log_wal_status_change(slot_name, before.as_deref(), &now);
    if lost {
        return Err(LoadError::SlotInvalidated {
            slot: slot_name.to_string(),
        });
    }
    Ok(())
}

async fn run_load(cfg: &Config, status: Arc<StatusBoard>) -> Result<LoadOutcome, LoadError> {
    let id = cfg.replication.migration_id.clone();
    let slot_name = id.slot_name();
    let publication = id.publication_name();
    status.set_stage(Stage::Preflight);
    let facts = preflight::check(cfg).await?;
    let (src, tgt) = (&facts.source, &facts.target);
    for w in &facts.warnings {
        tracing::warn!("{w}");
        status.warn(w.clone());
    }

    status.set_stage(Stage::Setup);
    let state_dir = cfg.state_dir.join(id.as_str());
    std::fs::create_dir_all(&state_dir).map_err(|source| LoadError::StateDir {
        path: state_dir.clone(),
        source,
    })?;
    let mut m = progress::ensure_migration(tgt, id.as_str(), &slot_name, &publication).await?;
    let mut snapshot: Option<ExportedSnapshot> = None;
    let slot_lsn = match m.slot_lsn {
        None => {
            // A slot of ours without a record is left from a run that crashed right after
            // creating it; nothing was copied from its snapshot, so start over.
            if slot::drop_slot(src, &slot_name).await? {
                tracing::warn!(slot = %slot_name, "dropped a slot left by an interrupted setup");
            }
            let roots: Vec<TableName> = facts
                .selection
                .roots
                .iter()
                .map(|t| t.name.clone())
                .collect();
            slot::create_publication(src, &publication, &roots).await?;
            tracing::info!(%publication, tables = roots.len(), "publication created");
            let snap =
                create_slot_watched(cfg, src, &slot_name, false, facts.source_major, &status)
                    .await?;
            progress::set_slot_lsn(tgt, id.as_str(), snap.lsn).await?;
            tracing::info!(slot = %slot_name, lsn = %snap.lsn, "replication slot created");
            let lsn = snap.lsn;
            snapshot = Some(snap);
            m.slot_lsn = Some(lsn);
            lsn
        }
        Some(lsn) => {
            if slot::slot_info(src, &slot_name).await?.is_none() {
                return Err(LoadError::SlotLost { slot: slot_name });
            }
            check_slot(src, &slot_name, &status).await?;
            if !slot::publication_exists(src, &publication).await? {
                return Err(LoadError::PublicationLost { publication });
            }
            // Tables created on the source since (and matching the patterns) join the
            // publication now, before the snapshot they are copied at: every change after
            // that snapshot is then streamed. Tables the patterns no longer select (renamed
            // out of them, or excluded since) leave it: nothing would apply their changes.
            let published = slot::publication_tables(src, &publication).await?;
            let selected: Vec<TableName> = facts
                .selection
                .roots
                .iter()
                .map(|t| t.name.clone())
                .collect();
            let plain = |list: &[TableName]| {
                list.iter()
                    .map(|t| t.display_plain())
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let new: Vec<TableName> = selected
                .iter()
                .filter(|t| !published.contains(t))
                .cloned()
                .collect();
            if !new.is_empty() {
                slot::add_to_publication(src, &publication, &new).await?;
                tracing::info!(tables = %plain(&new), "new tables added to the publication");
            }
            let left_out: Vec<TableName> = published
                .into_iter()
                .filter(|t| !selected.contains(t))
                .collect();
            if !left_out.is_empty() {
                slot::drop_from_publication(src, &publication, &left_out).await?;
                tracing::info!(tables = %plain(&left_out),
                    "tables the patterns no longer select taken out of the publication \
                     (their copies on the target are left as they are)");
            }
            tracing::info!(slot = %slot_name, lsn = %lsn, "resuming the migration");
            lsn
        }
    };
    status.set_slot_lsn(slot_lsn);

    let loaded = progress::loaded_tables(tgt, id.as_str()).await?;
    let pending: Vec<&CopyUnit> = facts
        .units
        .iter()
        .filter(|u| !loaded.contains_key(&u.name))
        .collect();
    let copy_schema = cfg.replication.copy_schema;
    let need_pre_data = copy_schema && m.schema_state == SchemaState::None;
    let archive = state_dir.join("schema.dump");
    let need_dump =
        copy_schema && m.schema_state != SchemaState::Done && (need_pre_data || !archive.exists());
    if snapshot.is_none() && (need_pre_data || !pending.is_empty()) {
        let snap = create_slot_watched(
            cfg,
            src,
            &id.resume_slot_name(),
            true,
            facts.source_major,
            &status,
        )
        .await?;
        tracing::info!(lsn = %snap.lsn, tables = pending.len(), "new snapshot for the tables still to copy");
        snapshot = Some(snap);
    }

    if need_dump && let Some(tools) = &facts.tools {
        status.set_stage(Stage::Schema);
        schema::dump(
            tools,
            &cfg.source,
            snapshot.as_ref().map(|s| s.name.as_str()),
            &archive,
            &facts.excluded,
        )
        .await?;
        if need_pre_data {
            schema::apply_pre_data(
                tools,
                &cfg.target,
                &archive,
                &progress::schema_state_sql(id.as_str(), SchemaState::PreData),
            )
            .await?;
            m.schema_state = SchemaState::PreData;
            tracing::info!("schema (pre-data) created on the target");
        }
    }

    status.set_stage(Stage::FullLoad);
    let opts = PlanOptions {
        workers: cfg.replication.parallel_workers,
        split_bytes: cfg.replication.split_tables_larger_than,
        block_size: facts.block_size,
    };
    let sizes: Vec<(TableName, u64)> = pending.iter().map(|u| (u.name.clone(), u.bytes)).collect();
    let items = plan::plan(&sizes, &opts);
    for u in &facts.units {
        match loaded.get(&u.name) {
            Some(l) => status.add_table(&u.name, 1, Some((l.rows, l.bytes as u64, l.snapshot_lsn))),
            None => {
                let chunks = plan::chunk_count(u.bytes, &opts) as i32;
                status.add_table(&u.name, chunks, None);
            }
        }
    }
    if let Some(snap) = &snapshot
        && !items.is_empty()
    {
        for u in &pending {
            progress::forget_table(tgt, id.as_str(), &u.name).await?;
            // Whole-table chunks empty their table in their own transaction; tables cut into
            // ranges are emptied once here, before any range lands.
            if plan::chunk_count(u.bytes, &opts) > 1 {
                tgt.batch_execute(&u.clear_sql())
                    .await
                    .map_err(|source| SqlError {
                        context: format!("emptying {}", u.name.display_plain()),
                        source,
                    })?;
            }
        }
        let units: Vec<CopyUnit> = pending.iter().map(|u| (*u).clone()).collect();
        let started = Instant::now();
        copy_all(cfg, snap, units, items, status.clone()).await?;
        tracing::info!(secs = started.elapsed().as_secs_f64(), "rows copied");
    }
    drop(snapshot);

    if copy_schema
        && m.schema_state != SchemaState::Done
        && let Some(tools) = &facts.tools
    {
        status.set_stage(Stage::PostData);
        let started = Instant::now();
        let n = schema::apply_post_data(
            tools,
            src,
            tgt,
            &cfg.target,
            &archive,
            cfg.replication.parallel_workers,
        )
        .await?;
        tracing::info!(
            items = n,
            secs = started.elapsed().as_secs_f64(),
            "indexes and constraints built"
        );
        let started = Instant::now();
        let views = schema::refresh_matviews(src, tgt).await?;
        if views.done > 0 {
            tracing::info!(
                views = views.done,
                secs = started.elapsed().as_secs_f64(),
                "materialized views refreshed on the target"
            );
        }
        for (view, error) in views.failed {
            let w = format!(
                "materialized view {} could not be refreshed on the target ({error}): it stays \
                 unpopulated there, and queries on it fail, until REFRESH MATERIALIZED VIEW \
                 succeeds on the target",
                view.display_plain()
            );
            tracing::warn!("{w}");
            status.warn(w);
        }
        progress::set_schema_state(tgt, id.as_str(), SchemaState::Done).await?;
    }
    let copied: Vec<TableName> = pending.iter().map(|u| u.name.clone()).collect();
    if !copied.is_empty() {
        let started = Instant::now();
        let sessions = cfg.replication.parallel_workers;
        let analyzed = analyze::run(&cfg.target, tgt, &copied, sessions).await?;
        tracing::info!(
            tables = analyzed.done,
            secs = started.elapsed().as_secs_f64(),
            "copied tables analyzed on the target"
        );
        for (table, error) in analyzed.failed {
            let w = format!(
                "table {} could not be analyzed on the target ({error}): its planner \
                 statistics wait for autovacuum (or ANALYZE it yourself)",
                table.display_plain()
            );
            tracing::warn!("{w}");
            status.warn(w);
        }
    }
    // A load that outlasted the WAL the source keeps for the slot is of no use: say so now,
    // rather than when the stream starts.
    check_slot(src, &slot_name, &status).await?;
    progress::set_stage(tgt, id.as_str(), "loaded").await?;
    let tables = progress::loaded_tables(tgt, id.as_str()).await?;
    status.set_stage(Stage::Loaded);
    tracing::info!(tables = tables.len(), %slot_lsn, "full load complete");
    Ok(LoadOutcome { slot_lsn, tables })
}

/// How long slot creation may wait before `/status` says what it waits for, and how often
/// that is read again.
const SLOT_WAIT_REPORT_AFTER: std::time::Duration = std::time::Duration::from_secs(3);
const SLOT_WAIT_REPORT_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// [`slot::create_slot_with_snapshot`], saying in `/status` (`waiting`) and in the log which
/// source transactions hold it up when it waits. A logical slot's snapshot is consistent
/// only once every transaction that was writing when it began has ended: one session left
/// idle in a transaction, or a forgotten prepared transaction, holds the migration's start
/// for as long as it stays open, with nothing to show for it but a hung command.
async fn create_slot_watched(
    cfg: &Config,
    src: &tokio_postgres::Client,
    slot_name: &str,
    temporary: bool,
    source_major: u32,
    status: &StatusBoard,
) -> Result<ExportedSnapshot, LoadError> {
    let started = Instant::now();
    let create = slot::create_slot_with_snapshot(&cfg.source, slot_name, temporary, source_major);
    tokio::pin!(create);
    let mut report = tokio::time::interval_at(
        tokio::time::Instant::now() + SLOT_WAIT_REPORT_AFTER,
        SLOT_WAIT_REPORT_EVERY,
    );
    let mut logged: Option<Vec<(Option<i32>, Option<String>)>> = None;
    loop {
        tokio::select! {
            created = &mut create => {
                status.set_waiting(None);
                if logged.is_some() {
                    tracing::info!(slot = slot_name, secs = started.elapsed().as_secs_f64(),
                        "the transactions in the way ended; replication slot created");
                }
                return Ok(created?);
            }
            _ = report.tick() => {
                let blockers = match slot::slot_blockers(src, started.elapsed()).await {
                    Ok(b) => b,
                    Err(e) => {
                        tracing::debug!(error = %e, "cannot list what the slot waits for");
                        Vec::new()
                    }
                };
                let who: Vec<_> = blockers.iter().map(|b| (b.pid, b.prepared_gid.clone())).collect();
                if logged.as_ref() != Some(&who) {
                    let list: Vec<String> = blockers.iter().map(|b| match (&b.pid, &b.prepared_gid) {
                        (_, Some(gid)) => format!("prepared transaction {gid:?}"),
                        (Some(pid), _) => format!("pid {pid} ({})", b.state.as_deref().unwrap_or("?")),
                        _ => "?".into(),
                    }).collect();
                    tracing::warn!(slot = slot_name, secs = started.elapsed().as_secs_f64(),
                        transactions = %list.join(", "),
                        "creating the replication slot waits for source transactions to end");
                    logged = Some(who);
                }
                status.set_waiting(Some(crate::status::Waiting {
                    reason: format!(
                        "creating replication slot {slot_name} waits for the source's \
                         transactions that were writing when it began to end"
                    ),
                    hint: "commit or roll back the transactions listed (or end their sessions \
                           with pg_terminate_backend(pid); a prepared one with COMMIT PREPARED \
                           or ROLLBACK PREPARED 'gid'): the load goes on by itself once they \
                           have ended; none listed means they belong to roles this one may not \
                           see (ask a superuser to look in pg_stat_activity)"
                        .into(),
                    seconds: started.elapsed().as_secs_f64(),
                    blockers,
                }));
            }
        }
    }
}

/// Attempts at one chunk before the load gives up on it (and the next run resumes it).
const CHUNK_ATTEMPTS: u32 = 5;

/// The wait before attempt `n + 1` of a chunk: 1, 2, 4, 8 s.
fn chunk_backoff(n: u32) -> std::time::Duration {
    std::time::Duration::from_secs(1 << (n - 1).min(3))
}

/// Copy every work item with up to `parallel_workers` workers sharing the snapshot. The
/// first error stops the others from taking new work and is returned.
///
/// A chunk whose sessions broke (a dropped connection, a terminated backend, a failover) is
/// copied again on new sessions that import the same snapshot, up to [`CHUNK_ATTEMPTS`]
/// times: nothing of a failed chunk committed (its rows and its progress row go in one
/// transaction), and one whose COMMIT went through before the break is found recorded and
/// counted as done. Without this, one dropped connection during a long load stopped the
/// migration, and a restart copied every unfinished table again from a new snapshot. Errors
/// the server gives for what a statement is (a type, a constraint) are not retried, nor is
/// anything once the exporting session is gone (the snapshot cannot be imported any more).
async fn copy_all(
    cfg: &Config,
    snapshot: &ExportedSnapshot,
    units: Vec<CopyUnit>,
    items: Vec<WorkItem>,
    status: Arc<StatusBoard>,
) -> Result<(), LoadError> {
    let workers = cfg.replication.parallel_workers.min(items.len()).max(1);
    let queue = Arc::new(Mutex::new(VecDeque::from(items)));
    let units = Arc::new(units);
    let stop = Arc::new(AtomicBool::new(false));
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..workers {
        let (queue, units, stop, status) =
            (queue.clone(), units.clone(), stop.clone(), status.clone());
        let (source, target) = (cfg.source.clone(), cfg.target.clone());
        let (name, lsn) = (snapshot.name.clone(), snapshot.lsn);
        let id = cfg.replication.migration_id.as_str().to_string();
        set.spawn(async move {
            let result = async {
                let mut worker: Option<Worker> = None;
                loop {
                    if stop.load(Ordering::Relaxed) {
                        return Ok(());
                    }
                    let next = queue.lock().unwrap_or_else(|p| p.into_inner()).pop_front();
                    let Some(item) = next else { return Ok(()) };
                    let unit = &units[item.table];
                    let live = status.chunk_started(&unit.name);
                    let started = Instant::now();
                    let mut attempt = 1;
                    let (rows, bytes) = loop {
                        let copied = match worker.as_mut() {
                            Some(w) => w.copy(unit, &item, &live).await,
                            None => match Worker::open(&source, &target, &name, lsn, &id).await {
                                Ok(w) => match w.committed(unit, &item).await {
                                    Ok(Some(done)) => Ok(done),
                                    Ok(None) => worker.insert(w).copy(unit, &item, &live).await,
                                    Err(e) => Err(e),
                                },
                                Err(e) => Err(e),
                            },
                        };
                        match copied {
                            Ok(done) => break done,
                            Err(e)
                                if e.is_transient()
                                    && attempt < CHUNK_ATTEMPTS
                                    && !stop.load(Ordering::Relaxed) =>
                            {
                                let wait = chunk_backoff(attempt);
                                tracing::warn!(table = %unit.name.display_plain(), chunk = item.chunk,
                                    attempt, error = %e, retry_in_seconds = wait.as_secs(),
                                    "a chunk's copy broke off; copying it again on new sessions");
                                status.chunk_retried(&unit.name);
                                worker = None;
                                tokio::time::sleep(wait).await;
                                attempt += 1;
                            }
                            Err(e) => return Err(e),
                        }
                    };
                    if status.chunk_done(&unit.name, rows, bytes, lsn) {
                        tracing::info!(table = %unit.name.display_plain(), rows, bytes,
                            binary = unit.binary, "table copied");
                    } else {
                        tracing::debug!(table = %unit.name.display_plain(), chunk = item.chunk,
                            rows, secs = started.elapsed().as_secs_f64(), "chunk copied");
                    }
                }
            }
            .await;
            if result.is_err() {
                stop.store(true, Ordering::Relaxed);
            }
            result
        });
    }
    let mut first: Option<LoadError> = None;
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                first.get_or_insert(e.into());
            }
            Err(panic) => {
                stop.store(true, Ordering::Relaxed);
                first.get_or_insert(LoadError::WorkerPanicked(panic.to_string()));
            }
        }
    }
    match first {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
