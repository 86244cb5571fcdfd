//! Validation inside the daemon: one run at a time in the background, its progress, and the
//! last result (kept in `state/validation.json`, so it survives a restart).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use serde::Serialize;

use super::{Mode, Options, Point, Progress, Report};
use crate::cdc::Control;
use crate::config::Config;
use crate::status::{ErrorReport, Stage, StatusBoard};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("a validation is already running")]
    Busy,
    #[error("a full validation needs the full load to be finished (stage {0})")]
    NotReady(String),
}

impl StartError {
    pub fn hint(&self) -> String {
        match self {
            StartError::Busy => "GET /validation shows its progress; start another when it is \
                                 done"
                .into(),
            StartError::NotReady(_) => "wait for stage cdc in GET /status, or run a quick \
                                        validation ({\"mode\": \"quick\"})"
                .into(),
        }
    }
}

#[derive(Default)]
struct State {
    running: Option<RunningView>,
    last: Option<Report>,
    last_error: Option<ErrorReport>,
}

#[derive(Clone, Debug, Serialize)]
struct RunningView {
    mode: Mode,
    started_at: f64,
}

/// What `GET /validation` shows.
#[derive(Debug, Serialize)]
pub struct ServiceView {
    pub running: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    running_since: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    running_mode: Option<Mode>,
    pub tables_done: usize,
    pub tables_total: usize,
    /// The last finished validation (also after a restart).
    pub last: Option<Report>,
    /// Why the last validation could not finish, if it could not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<ErrorReport>,
}

pub struct Service {
    cfg: Config,
    control: Arc<Control>,
    status: Arc<StatusBoard>,
    progress: Progress,
    state: Mutex<State>,
}

impl Service {
    pub fn new(cfg: Config, control: Arc<Control>, status: Arc<StatusBoard>) -> Arc<Service> {
        let last = match super::load_last(&cfg.state_dir) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "ignoring the saved validation report");
                None
            }
        };
        Arc::new(Service {
            cfg,
            control,
            status,
            progress: Progress::default(),
            state: Mutex::new(State {
                last,
                ..State::default()
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Start a validation in the background.
    pub fn start(self: &Arc<Self>, opts: Options) -> Result<(), StartError> {
        let stage = self.status.stage();
        if opts.mode == Mode::Full && !matches!(stage, Stage::Cdc | Stage::Loaded | Stage::Stopped)
        {
            let name = serde_json::to_value(stage)
                .ok()
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_default();
            return Err(StartError::NotReady(name));
        }
        {
            let mut g = self.lock();
            if g.running.is_some() {
                return Err(StartError::Busy);
            }
            g.running = Some(RunningView {
                mode: opts.mode,
                started_at: crate::status::unix_micros() as f64 / 1e6,
            });
        }
        let me = self.clone();
        tokio::spawn(async move {
            let point = match me.status.stage() {
                Stage::Cdc => Point::Held(&me.control),
                _ => Point::Static,
            };
            tracing::info!(mode = ?opts.mode, "validation started");
            let result = super::run(&me.cfg, &opts, point, &me.progress).await;
            let mut g = me.lock();
            g.running = None;
            match result {
                Ok(report) => {
                    tracing::info!(
                        passed = report.passed,
                        tables = report.tables_validated,
                        mismatches = report.mismatches,
                        seconds = report.duration_seconds,
                        "validation finished"
                    );
                    if let Err(e) = super::save(&me.cfg.state_dir, &report) {
                        tracing::error!(error = %e, "cannot save the validation report");
                    }
                    g.last = Some(report);
                    g.last_error = None;
                }
                Err(e) => {
                    tracing::error!(error = %e, hint = %e.hint(), "validation failed");
                    g.last_error = Some(ErrorReport {
                        error: e.to_string(),
                        hint: e.hint(),
                    });
                }
            }
        });
        Ok(())
    }

    pub fn view(&self) -> ServiceView {
        let g = self.lock();
        ServiceView {
            running: g.running.is_some(),
            running_since: g.running.as_ref().map(|r| r.started_at),
            running_mode: g.running.as_ref().map(|r| r.mode),
            tables_done: self.progress.tables_done.load(Ordering::Relaxed),
            tables_total: self.progress.tables_total.load(Ordering::Relaxed),
            last: g.last.clone(),
            last_error: g.last_error.clone(),
        }
    }

    /// Prometheus lines about the last validation.
    pub fn metrics(&self, out: &mut String) {
        let g = self.lock();
        let gauge = |out: &mut String, name: &str, help: &str, v: f64| {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}\n"
            ));
        };
        gauge(
            out,
            "pgcutover_validation_running",
            "1 while a validation runs.",
            f64::from(u8::from(g.running.is_some())),
        );
        if let Some(r) = &g.last {
            gauge(
                out,
                "pgcutover_validation_tables_validated",
                "Tables the last validation compared.",
                r.tables_validated as f64,
            );
            gauge(
                out,
                "pgcutover_validation_mismatches",
                "Tables whose rows differed in the last validation.",
                r.mismatches as f64,
            );
            gauge(
                out,
                "pgcutover_validation_duration_seconds",
                "How long the last validation took.",
                r.duration_seconds,
            );
            gauge(
                out,
                "pgcutover_validation_passed",
                "1 when every check of the last validation passed.",
                f64::from(u8::from(r.passed)),
            );
            gauge(
                out,
                "pgcutover_validation_last_run_timestamp_seconds",
                "When the last validation started (Unix time).",
                r.started_at,
            );
        }
    }
}
