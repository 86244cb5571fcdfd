//! The command line. `main.rs` only calls [`main`].

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{Config, LogFormat};

#[derive(Parser, Debug)]
#[command(
    name = "pgcutover",
    version,
    about = "Move a live PostgreSQL database to another \
    PostgreSQL with a write freeze of seconds"
)]
pub struct Cli {
    /// Log format: text or json (overrides log.format).
    #[arg(long, global = true)]
    pub log_format: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the daemon: full load (and, in later versions, CDC and cutover) plus the HTTP API.
    Serve {
        #[arg(long, short, default_value = "config/pgcutover.toml")]
        config: PathBuf,
    },
    /// Print the daemon's status.
    Status {
        #[arg(long, default_value = "http://127.0.0.1:8089")]
        url: String,
    },
    /// Drop the slot, the publication and every helper object pgcutover created.
    Cleanup {
        #[arg(long, short, default_value = "config/pgcutover.toml")]
        config: PathBuf,
    },
    /// Compare source and target: keys, schema, sequences, row counts, checksums. Exit 0 when
    /// equal, 1 when a difference is found, 2 on an error.
    #[command(group(clap::ArgGroup::new("mode").required(true).args(["quick", "full"])))]
    Validate {
        /// Planner estimates and catalog checks, while everything runs (approximate).
        #[arg(long)]
        quick: bool,
        /// Exact counts and checksums of every row, at one snapshot per side.
        #[arg(long)]
        full: bool,
        #[arg(long, short, default_value = "config/pgcutover.toml")]
        config: PathBuf,
        /// Only these tables (schema.table patterns, comma-separated).
        #[arg(long, value_delimiter = ',')]
        tables: Vec<String>,
        /// Checks to leave out (keys, schema, sequences, row_counts, checksums).
        #[arg(long, value_delimiter = ',')]
        skip: Vec<String>,
        /// Compare only this percentage of each keyed table's key ranges.
        #[arg(long, value_name = "PCT")]
        sample: Option<f64>,
        /// Tables compared at the same time.
        #[arg(long, default_value_t = 2)]
        jobs: usize,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// Run it in the daemon at this URL (e.g. http://127.0.0.1:8089): while it
        /// replicates, it compares both sides at one exact point. Uses the config's API token.
        #[arg(long)]
        url: Option<String>,
    },
    /// Start a throwaway source and target with sample data and migrate it.
    Demo {
        #[arg(long, default_value = "127.0.0.1:8089")]
        listen: String,
        /// When the full load is done, validate the copy and exit (instead of waiting for
        /// Ctrl-C).
        #[arg(long)]
        exit_after_load: bool,
    },
}

fn init_tracing(format: LogFormat, level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PGCUTOVER_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    // A second initialisation (tests) is harmless.
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

fn log_format(cli: &Option<String>, cfg: Option<&Config>) -> Result<LogFormat, String> {
    match cli.as_deref() {
        Some("json") => Ok(LogFormat::Json),
        Some("text") => Ok(LogFormat::Text),
        Some(other) => Err(format!("--log-format must be text or json, not {other:?}")),
        None => Ok(cfg.map_or(LogFormat::Text, |c| c.log.format)),
    }
}

fn fail(error: impl std::fmt::Display, hint: &str) -> ExitCode {
    eprintln!("error: {error}");
    if !hint.is_empty() {
        eprintln!("hint: {hint}");
    }
    ExitCode::from(2)
}

fn load_config(path: &std::path::Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::from(2)
    })
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return fail(e, "the process could not start its runtime"),
    };
    runtime.block_on(run(cli))
}

pub async fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Serve { config } => {
            let cfg = match load_config(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            match log_format(&cli.log_format, Some(&cfg)) {
                Ok(f) => init_tracing(f, &cfg.log.level),
                Err(e) => return fail(e, ""),
            }
            let daemon = match crate::daemon::Daemon::bind(cfg).await {
                Ok(d) => d,
                Err(e) => return fail(&e, &e.hint()),
            };
            match daemon.run(crate::daemon::shutdown_signal()).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(&e, &e.hint()),
            }
        }
        Command::Status { url } => match http_get(&url, "/status").await {
            Ok(body) => {
                println!("{body}");
                ExitCode::SUCCESS
            }
            Err(e) => fail(
                e,
                "is the daemon running (pgcutover serve) and is --url right?",
            ),
        },
        Command::Cleanup { config } => {
            let cfg = match load_config(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            init_tracing(LogFormat::Text, &cfg.log.level);
            let report = crate::cleanup::run(&cfg).await;
            for d in &report.done {
                println!("{d}");
            }
            if report.done.is_empty() && report.failed.is_empty() {
                println!(
                    "nothing to clean up for migration {}",
                    cfg.replication.migration_id
                );
            }
            for f in &report.failed {
                eprintln!("error: {f}");
            }
            if report.failed.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            }
        }
        Command::Validate {
            quick,
            full: _,
            config,
            tables,
            skip,
            sample,
            jobs,
            json,
            url,
        } => {
            let cfg = match load_config(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            match log_format(&cli.log_format, Some(&cfg)) {
                Ok(f) => init_tracing(f, "warn"),
                Err(e) => return fail(e, ""),
            }
            let mode = if quick {
                crate::validate::Mode::Quick
            } else {
                crate::validate::Mode::Full
            };
            let opts =
                match crate::validate::Options::parse(mode, &tables, &skip, sample, Some(jobs)) {
                    Ok(o) => o,
                    Err(e) => return fail(e, "see pgcutover validate --help"),
                };
            let report = if let Some(url) = url {
                let request = serde_json::json!({
                    "mode": mode, "tables": tables, "skip": skip, "sample_pct": sample,
                    "jobs": jobs,
                });
                match validate_in_daemon(&url, &cfg, request).await {
                    Ok(r) => r,
                    Err(e) => {
                        return fail(e, "is the daemon running at --url, with this config?");
                    }
                }
            } else {
                let progress = crate::validate::Progress::default();
                let point = crate::validate::Point::Static;
                let report = match crate::validate::run(&cfg, &opts, point, &progress).await {
                    Ok(r) => r,
                    Err(e) => return fail(&e, &e.hint()),
                };
                if let Err(e) = crate::validate::save(&cfg.state_dir, &report) {
                    let dir = cfg.state_dir.display();
                    eprintln!("warning: cannot save the report in {dir}: {e}");
                }
                report
            };
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report).unwrap_or_default()
                );
            } else {
                print!("{}", crate::validate::render::text(&report));
            }
            if report.passed {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Command::Demo {
            listen,
            exit_after_load,
        } => {
            match log_format(&cli.log_format, None) {
                Ok(f) => init_tracing(f, "info"),
                Err(e) => return fail(e, ""),
            }
            match crate::demo::run(crate::demo::DemoOptions {
                listen,
                exit_after_load,
            })
            .await
            {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(&e, &e.hint()),
            }
        }
    }
}

/// A plain HTTP/1.1 GET to the daemon that must answer 200; its body.
async fn http_get(base: &str, path: &str) -> Result<String, String> {
    let (code, status_line, body) = http_request(base, "GET", path, None, "").await?;
    if code != 200 {
        return Err(format!("{status_line}: {body}"));
    }
    Ok(body)
}

/// One HTTP/1.1 request to the daemon (loopback or a trusted admin network; no TLS): the
/// status code, the status line and the body.
async fn http_request(
    base: &str,
    method: &str,
    path: &str,
    token: Option<&crate::secret::Secret>,
    body: &str,
) -> Result<(u16, String, String), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = base
        .strip_prefix("http://")
        .ok_or_else(|| format!("--url must start with http://, not {base:?}"))?;
    let authority = rest.trim_end_matches('/');
    let mut stream = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        tokio::net::TcpStream::connect(authority),
    )
    .await
    .map_err(|_| format!("connecting to {authority} timed out"))?
    .map_err(|e| format!("cannot connect to {authority}: {e}"))?;
    let auth = token
        .map(|t| format!("Authorization: Bearer {}\r\n", t.expose()))
        .unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {authority}\r\nAccept: application/json\r\n{auth}\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(30),
        stream.take(64 << 20).read_to_end(&mut buf),
    )
    .await
    .map_err(|_| "the daemon did not answer within 30 s".to_string())?
    .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or("the daemon's answer is not HTTP")?;
    let status_line = head.lines().next().unwrap_or_default().to_string();
    let code = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or("the daemon's answer is not HTTP")?;
    Ok((code, status_line, body.to_string()))
}

/// `validate --url`: run the validation in the daemon (which can hold its change stream at a
/// consistent point), wait for it, and return its report.
async fn validate_in_daemon(
    url: &str,
    cfg: &Config,
    request: serde_json::Value,
) -> Result<crate::validate::Report, String> {
    let token = cfg.api.token.as_ref();
    let (code, status_line, body) =
        http_request(url, "POST", "/validation", token, &request.to_string()).await?;
    if code != 202 {
        return Err(format!("{status_line}: {body}"));
    }
    // Bounded: a validation of a very large database can take hours, not days.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(48 * 3600);
    let mut shown = usize::MAX;
    while std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        let v: serde_json::Value = serde_json::from_str(&http_get(url, "/validation").await?)
            .map_err(|e| format!("GET /validation: {e}"))?;
        if v["running"] == true {
            let done = v["tables_done"].as_u64().unwrap_or(0) as usize;
            if done != shown {
                eprintln!("validating: {done} of {} tables", v["tables_total"]);
                shown = done;
            }
            continue;
        }
        if let Some(e) = v["last_error"].as_object() {
            return Err(format!(
                "{} (hint: {})",
                e.get("error").and_then(|x| x.as_str()).unwrap_or_default(),
                e.get("hint").and_then(|x| x.as_str()).unwrap_or_default()
            ));
        }
        return serde_json::from_value(v["last"].clone())
            .map_err(|e| format!("the daemon's report is not readable: {e}"));
    }
    Err("the validation did not finish within 48 hours".into())
}
