//! `pgcutover demo`: a complete migration on this machine, with nothing to set up.
//!
//! Starts two throwaway clusters (see [`crate::pg::cluster`]), fills the source with a small
//! shop (about 400 000 rows in five tables, one of them partitioned, with an enum, jsonb,
//! identity and serial columns and foreign keys), and runs the daemon on them. Everything is
//! deleted when the demo stops.

use std::time::Duration;

use crate::config::Config;
use crate::daemon::{Daemon, DaemonError, shutdown_signal};
use crate::pg::cluster::{ClusterError, ClusterOptions, TempCluster};
use crate::pg::conn::ConnError;
use crate::pg::{SqlContext, SqlError};
use crate::status::Stage;

pub const SAMPLE_SQL: &str = include_str!("sample.sql");

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("starting a throwaway cluster: {0}")]
    Cluster(#[from] ClusterError),
    #[error(transparent)]
    Conn(#[from] ConnError),
    #[error(transparent)]
    Sql(#[from] SqlError),
    #[error(transparent)]
    Daemon(#[from] DaemonError),
    #[error("the demo configuration is invalid: {0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("the migration failed: {error}")]
    Failed { error: String, hint: String },
}

impl DemoError {
    pub fn hint(&self) -> String {
        match self {
            DemoError::Cluster(e) => e.hint(),
            DemoError::Conn(e) => e.hint(),
            DemoError::Daemon(e) => e.hint(),
            DemoError::Failed { hint, .. } => hint.clone(),
            _ => "this is a bug in the demo; please report it".into(),
        }
    }
}

pub struct DemoOptions {
    pub listen: String,
    /// Stop once the load has finished (or failed) instead of waiting for Ctrl-C.
    pub exit_after_load: bool,
}

/// Two clusters, the source filled with the sample data, and a config pointing at them.
pub struct DemoSetup {
    pub source: TempCluster,
    pub target: TempCluster,
    pub config: Config,
    pub state: tempfile::TempDir,
}

pub async fn setup(listen: &str) -> Result<DemoSetup, DemoError> {
    let opts = ClusterOptions::default();
    let (source, target) = tokio::task::spawn_blocking(move || {
        Ok::<_, ClusterError>((TempCluster::start(&opts)?, TempCluster::start(&opts)?))
    })
    .await
    .map_err(|e| ClusterError::Command {
        tool: "cluster start".into(),
        detail: e.to_string(),
    })??;
    for c in [&source, &target] {
        let admin = c.conn("postgres").connect("pgcutover demo").await?;
        admin
            .batch_execute("CREATE DATABASE app")
            .await
            .ctx(|| "creating database app".into())?;
    }
    let src = source.conn("app").connect("pgcutover demo").await?;
    src.batch_execute(SAMPLE_SQL)
        .await
        .ctx(|| "loading the sample data".into())?;
    let state = tempfile::Builder::new()
        .prefix("pgcutover-demo-")
        .tempdir()
        .map_err(ClusterError::Io)?;
    let toml = format!(
        "[source]\nurl = {:?}\n[target]\nurl = {:?}\n[replication]\nmigration_id = \"demo\"\n\
         tables = [\"public.*\"]\n[api]\nlisten = {listen:?}\n[state]\ndir = {:?}\n",
        source.url("app"),
        target.url("app"),
        state.path().display().to_string(),
    );
    let env = vec![
        (
            "PGCUTOVER_SOURCE_PASSWORD".to_string(),
            source.password().expose().to_string(),
        ),
        (
            "PGCUTOVER_TARGET_PASSWORD".to_string(),
            target.password().expose().to_string(),
        ),
    ];
    let config = Config::from_parts(&toml, &env, state.path())?;
    Ok(DemoSetup {
        source,
        target,
        config,
        state,
    })
}

/// Prove the demo's copy: a full validation (nothing writes to the sample source, so one
/// snapshot per side is exact). Sequences are left out: a cutover copies them, not the load.
async fn validate_demo(config: &Config) -> Result<(), DemoError> {
    let mut opts = crate::validate::Options::new(crate::validate::Mode::Full);
    opts.skip.insert(crate::validate::CheckName::Sequences);
    let progress = crate::validate::Progress::default();
    let point = crate::validate::Point::Static;
    match crate::validate::run(config, &opts, point, &progress).await {
        Ok(report) => {
            println!("\n{}", crate::validate::render::text(&report));
            if report.passed {
                Ok(())
            } else {
                Err(DemoError::Failed {
                    error: "the validation found differences".into(),
                    hint: "see the report above".into(),
                })
            }
        }
        Err(e) => Err(DemoError::Failed {
            error: e.to_string(),
            hint: e.hint(),
        }),
    }
}

pub async fn run(opts: DemoOptions) -> Result<(), DemoError> {
    println!("pgcutover demo: starting a throwaway source and target ...");
    let setup = setup(&opts.listen).await?;
    let daemon = Daemon::bind(setup.config.clone()).await?;
    let addr = daemon.local_addr();
    let status = daemon.status.clone();
    println!(
        "\nsource: {} (sample shop, ~400k rows)\ntarget: {}\n\nTry, while it runs:\n  \
         curl -s http://{addr}/healthz\n  curl -s http://{addr}/status\n  \
         curl -s -X POST http://{addr}/validation; curl -s http://{addr}/validation\n  \
         curl -s http://{addr}/metrics\n  \
         psql -h {} -p {} -U postgres app -c '\\dt+'   # the target\n\n\
         Ctrl-C stops the demo and deletes both clusters.\n",
        setup.source.url("app"),
        setup.target.url("app"),
        setup.target.dir().display(),
        setup.target.port(),
    );
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(daemon.run(async move {
        tokio::select! {
            _ = shutdown_signal() => {}
            _ = stop_rx => {}
        }
    }));
    let mut result = Ok(());
    if opts.exit_after_load {
        // Bounded: the sample loads in seconds; ten minutes means something is stuck.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
        loop {
            let stage = status.stage();
            if matches!(
                stage,
                Stage::Loaded | Stage::Cdc | Stage::Stopped | Stage::Failed
            ) {
                break;
            }
            if tokio::time::Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let view = status.view();
        println!(
            "{}",
            serde_json::to_string_pretty(&view).unwrap_or_default()
        );
        if let Some(e) = view.error {
            result = Err(DemoError::Failed {
                error: e.error,
                hint: e.hint,
            });
        } else if !matches!(view.stage, Stage::Loaded | Stage::Cdc) {
            result = Err(DemoError::Failed {
                error: "the load did not finish within 10 minutes".into(),
                hint: "look at the log above".into(),
            });
        } else {
            result = validate_demo(&setup.config).await;
        }
        let _ = stop_tx.send(());
    }
    match server.await {
        Ok(r) => r?,
        Err(e) => tracing::error!(error = %e, "the daemon task failed"),
    }
    drop(setup);
    result
}
