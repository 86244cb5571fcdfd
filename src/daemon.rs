//! `pgcutover serve`: the HTTP API plus the migration pipeline, until SIGINT/SIGTERM.
//!
//! A failed pipeline does not end the process: the daemon keeps answering `/status` with the
//! error and its hint, so the operator sees why. A load that failed for a passing reason (a
//! server out of reach, at start-up too: a daemon restarted while the source reboots) is run
//! again with backoff, as the change stream reconnects; any other failure waits for
//! `POST /replication/resume` once the cause is fixed. Either resumes from the state kept on
//! the target, as a restart does.

use std::sync::Arc;

use tokio::net::TcpListener;

use crate::config::Config;
use crate::http::{AppState, router};
use crate::status::{ErrorReport, StatusBoard};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the HTTP server stopped: {0}")]
    Serve(#[source] std::io::Error),
    #[error("another pgcutover daemon{} is running for this migration with state directory {}", holder.map(|p| format!(" (PID {p})")).unwrap_or_default(), dir.display())]
    Busy {
        dir: std::path::PathBuf,
        holder: Option<u32>,
    },
    #[error("cannot lock the state directory {}: {source}", dir.display())]
    StateDir {
        dir: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl DaemonError {
    pub fn hint(&self) -> String {
        match self {
            DaemonError::Listen { .. } => {
                "another process holds the port: stop it or change api.listen".into()
            }
            DaemonError::Serve(_) => "restart the daemon".into(),
            DaemonError::Busy { .. } => "one daemon per migration: stop the other one (or use \
                its HTTP API), or give this one another migration_id"
                .into(),
            DaemonError::StateDir { .. } => {
                "check that state.dir exists and is writable by this user".into()
            }
        }
    }
}

/// A daemon whose listener is bound (so its address is known) but not yet serving.
pub struct Daemon {
    cfg: Config,
    listener: TcpListener,
    pub status: Arc<StatusBoard>,
    /// Held for the daemon's life: one daemon per migration and state directory (two would
    /// write the same files). The operating system lets go of it when the process ends,
    /// however it ends.
    _lock: std::fs::File,
}

/// Lock `<state dir>/<migration id>/daemon.lock` and write our PID into it.
fn lock_state(cfg: &Config) -> Result<std::fs::File, DaemonError> {
    use std::io::{Read, Seek, Write};
    let dir = cfg.state_dir.join(cfg.replication.migration_id.as_str());
    let failed = |source| DaemonError::StateDir {
        dir: dir.clone(),
        source,
    };
    std::fs::create_dir_all(&dir).map_err(failed)?;
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(dir.join("daemon.lock"))
        .map_err(failed)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            return Err(DaemonError::Busy {
                dir: cfg.state_dir.clone(),
                holder: pid.trim().parse().ok(),
            });
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(failed(e)),
    }
    file.set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| writeln!(file, "{}", std::process::id()))
        .map_err(failed)?;
    Ok(file)
}

impl Daemon {
    pub async fn bind(cfg: Config) -> Result<Daemon, DaemonError> {
        let lock = lock_state(&cfg)?;
        let addr = cfg.api.listen;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| DaemonError::Listen { addr, source })?;
        let engine = match cfg.replication.engine {
            crate::config::Engine::Native => "native",
            crate::config::Engine::Dms => "dms",
        };
        let status = StatusBoard::new(engine, cfg.replication.migration_id.as_str());
        Ok(Daemon {
            cfg,
            listener,
            status,
            _lock: lock,
        })
    }

    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.listener.local_addr().unwrap_or(self.cfg.api.listen)
    }

    /// Serve until `shutdown` resolves.
    pub async fn run(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<(), DaemonError> {
        let Daemon {
            cfg,
            listener,
            status,
            _lock,
        } = self;
        tracing::info!(listen = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            migration = %cfg.replication.migration_id, "pgcutover daemon started");
        let pipeline_status = status.clone();
        let control = Arc::new(crate::cdc::Control::default());
        let validation =
            crate::validate::service::Service::new(cfg.clone(), control.clone(), status.clone());
        let app = router(AppState {
            status: status.clone(),
            control: control.clone(),
            validation,
            token: cfg.api.token.clone(),
        });
        let pipeline = tokio::spawn(async move {
            // The load returns at once when everything is loaded; it runs again when the
            // stream found new tables and the operator asked to take them in, after a
            // passing failure (a server out of reach, at start-up too), and on the
            // operator's word after any other.
            let mut retries = 0u32;
            loop {
                match crate::load::run(&cfg, pipeline_status.clone()).await {
                    Ok(outcome) => {
                        retries = 0;
                        pipeline_status.load_retrying(None);
                        crate::cdc::run_dedicated(
                            &cfg,
                            pipeline_status.clone(),
                            &outcome,
                            control.clone(),
                        )
                        .await;
                    }
                    Err(e) => {
                        let report = ErrorReport {
                            error: e.to_string(),
                            hint: e.hint(),
                        };
                        if e.is_transient() && retries < crate::cdc::MAX_RETRIES {
                            retries += 1;
                            let wait = crate::cdc::retry_wait(retries);
                            tracing::warn!(error = %report.error, retry = retries,
                                wait_secs = wait.as_secs_f64(), "the load failed; trying again");
                            pipeline_status.load_retrying(Some(crate::status::Interruption {
                                error: report.error,
                                hint: report.hint,
                                retry: retries,
                                max_retries: crate::cdc::MAX_RETRIES,
                                next_retry_in_seconds: wait.as_secs_f64(),
                            }));
                            tokio::select! {
                                _ = tokio::time::sleep(wait) => {}
                                _ = control.resumed() => {}
                            }
                            continue;
                        }
                        tracing::error!(error = %report.error, hint = %report.hint, "migration stopped");
                        pipeline_status.fail(report);
                        control.resumed().await;
                        tracing::info!("running the load again");
                        retries = 0;
                        pipeline_status.load_retrying(None);
                    }
                }
            }
        });
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await;
        pipeline.abort();
        served.map_err(DaemonError::Serve)
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down");
}
