//! Configuration: a TOML file, overridden by `PGCUTOVER_<SECTION>_<KEY>` environment variables.
//!
//! Loading never stops at the first problem: the reader (`reader.rs`) walks every known key,
//! records each problem (wrong type, bad value, unknown key, unreadable file) and reports them
//! all at once, so an operator fixes a config in one round. [`KEYS`] is the one list of known keys; a test
//! checks that `config/pgcutover.example.toml` documents each of them.
//!
//! Secrets: passwords come from `PGCUTOVER_SOURCE_PASSWORD` / `PGCUTOVER_TARGET_PASSWORD`,
//! from `password_file`, or from the url (in that order of precedence); the API token from
//! `PGCUTOVER_API_TOKEN` or `token_file`. They are held as [`Secret`]s.

use std::collections::BTreeSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::pg::conn::ConnInfo;
use crate::pg::name::TablePattern;
use crate::pg::wal_compression::{self, WalCompression};
use crate::secret::Secret;

mod reader;

use reader::{Reader, apply_env};
pub use reader::{parse_duration, parse_size};

/// Every key the configuration knows, as `(section, key)`.
pub const KEYS: &[(&str, &str)] = &[
    ("source", "url"),
    ("source", "password_file"),
    ("target", "url"),
    ("target", "password_file"),
    ("replication", "engine"),
    ("replication", "migration_id"),
    ("replication", "tables"),
    ("replication", "exclude"),
    ("replication", "copy_schema"),
    ("replication", "parallel_workers"),
    ("replication", "apply_sessions"),
    ("replication", "split_tables_larger_than"),
    ("replication", "pg_bin_dir"),
    ("replication", "receive_timeout"),
    ("replication", "target_wal_compression"),
    ("cutover", "max_lag"),
    ("cutover", "max_freeze"),
    ("cutover", "app_roles"),
    ("cutover", "switch_hook"),
    ("api", "listen"),
    ("api", "token_file"),
    ("state", "dir"),
    ("log", "format"),
    ("log", "level"),
];

/// Environment variables that carry secrets rather than keys of the file.
const SECRET_ENV: &[&str] = &[
    "PGCUTOVER_SOURCE_PASSWORD",
    "PGCUTOVER_TARGET_PASSWORD",
    "PGCUTOVER_API_TOKEN",
];

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    Native,
    Dms,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Debug)]
pub struct Config {
    pub source: ConnInfo,
    pub target: ConnInfo,
    pub replication: Replication,
    pub cutover: Cutover,
    pub api: Api,
    pub state_dir: PathBuf,
    pub log: Log,
}

#[derive(Clone, Debug)]
pub struct Replication {
    pub engine: Engine,
    pub migration_id: MigrationId,
    pub tables: Vec<TablePattern>,
    pub exclude: Vec<TablePattern>,
    pub copy_schema: bool,
    pub parallel_workers: usize,
    /// Target sessions the change stream applies batches on (batches that write different
    /// rows run side by side).
    pub apply_sessions: usize,
    /// Tables with more bytes than this are copied in block ranges by several workers;
    /// 0 never splits.
    pub split_tables_larger_than: u64,
    pub pg_bin_dir: Option<PathBuf>,
    /// How long the change stream may receive nothing before pgcutover asks the source, on a
    /// new connection, whether the stream's connection still works (see
    /// [`crate::cdc::stream`]); also the longest a heartbeat round may take, and how long an
    /// apply session may wait for the target's answer before the target is asked about it
    /// (see [`crate::cdc::stall`]).
    pub receive_timeout: Duration,
    /// What the apply sessions ask of the target's `wal_compression` (see
    /// [`crate::pg::wal_compression`]).
    pub target_wal_compression: WalCompression,
}

#[derive(Clone, Debug)]
pub struct Cutover {
    pub max_lag: Duration,
    pub max_freeze: Duration,
    pub app_roles: Vec<String>,
    pub switch_hook: Vec<String>,
}

#[derive(Clone, Debug)]
pub struct Api {
    pub listen: SocketAddr,
    pub token: Option<Secret>,
}

#[derive(Clone, Debug)]
pub struct Log {
    pub format: LogFormat,
    pub level: String,
}

impl Replication {
    /// Whether the patterns select `table` (`tables`, less `exclude`).
    pub fn selects(&self, table: &crate::pg::TableName) -> bool {
        self.tables.iter().any(|p| p.matches(table)) && !self.excludes(table)
    }

    /// Whether `exclude` leaves `table` out.
    pub fn excludes(&self, table: &crate::pg::TableName) -> bool {
        self.exclude.iter().any(|p| p.matches(table))
    }
}

/// The migration's name: it names the slot, the publication and the helper rows, so two
/// migrations from one source never collide. Lower-case letters, digits and `_`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct MigrationId(String);

impl MigrationId {
    pub fn parse(s: &str) -> Result<Self, String> {
        let ok = !s.is_empty()
            && s.len() <= 40
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if ok {
            Ok(MigrationId(s.to_string()))
        } else {
            Err(format!(
                "{s:?} must be 1-40 characters of a-z, 0-9 and _ (it names the replication slot)"
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The logical replication slot on the source.
    pub fn slot_name(&self) -> String {
        format!("pgcutover_{}", self.0)
    }

    /// The slot created on resume to export a fresh snapshot; temporary, dropped with its
    /// session.
    pub fn resume_slot_name(&self) -> String {
        format!("pgcutover_{}_resume", self.0)
    }

    pub fn publication_name(&self) -> String {
        format!("pgcutover_{}", self.0)
    }
}

impl fmt::Display for MigrationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Every problem found in a configuration.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    pub problems: Vec<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "the configuration has {} problem(s):",
            self.problems.len()
        )?;
        for p in &self.problems {
            writeln!(f, "  - {p}")?;
        }
        write!(
            f,
            "hint: config/pgcutover.example.toml documents every key and its default"
        )
    }
}

impl Config {
    /// Load from a file, with overrides from the process environment.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            problems: vec![format!("cannot read {}: {e}", path.display())],
        })?;
        let env: Vec<(String, String)> = std::env::vars()
            .filter(|(k, _)| k.starts_with("PGCUTOVER_"))
            .collect();
        let base = path.parent().unwrap_or(Path::new("."));
        Config::from_parts(&text, &env, base)
    }

    /// Build from TOML text and `PGCUTOVER_*` variables; relative file names are resolved
    /// against `base` (the config file's folder).
    pub fn from_parts(
        toml_text: &str,
        env: &[(String, String)],
        base: &Path,
    ) -> Result<Config, ConfigError> {
        let mut problems = Vec::new();
        let mut table = match toml_text.parse::<toml::Table>() {
            Ok(t) => t,
            Err(e) => {
                return Err(ConfigError {
                    problems: vec![format!("the file is not valid TOML: {}", e.message())],
                });
            }
        };
        let secret_env = |name: &str| {
            env.iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| Secret::new(v.clone()))
        };
        apply_env(&mut table, env, &mut problems);
        let mut r = Reader {
            table: &table,
            base,
            problems,
            seen: BTreeSet::new(),
        };

        let source = r.endpoint("source", secret_env("PGCUTOVER_SOURCE_PASSWORD"));
        let target = r.endpoint("target", secret_env("PGCUTOVER_TARGET_PASSWORD"));

        let engine = match r.string("replication", "engine").as_deref() {
            None | Some("native") => Engine::Native,
            Some("dms") => {
                r.problems.push(
                    "replication.engine = \"dms\" is not available in this build yet; use \"native\""
                        .into(),
                );
                Engine::Dms
            }
            Some(other) => {
                r.problems.push(format!(
                    "replication.engine must be \"native\" or \"dms\", not {other:?}"
                ));
                Engine::Native
            }
        };
        let migration_id = match r.string("replication", "migration_id") {
            None => MigrationId("default".into()),
            Some(s) => MigrationId::parse(&s).unwrap_or_else(|e| {
                r.problems.push(format!("replication.migration_id {e}"));
                MigrationId("default".into())
            }),
        };
        let tables = r
            .patterns("replication", "tables")
            .unwrap_or_else(|| vec![TablePattern::parse("public.*").expect("valid")]);
        if tables.is_empty() {
            r.problems
                .push("replication.tables is empty: name at least one table pattern".into());
        }
        let exclude = r.patterns("replication", "exclude").unwrap_or_default();
        let copy_schema = r.bool("replication", "copy_schema").unwrap_or(true);
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        let parallel_workers = match r.int("replication", "parallel_workers") {
            None => cpus,
            Some(n) if (1..=64).contains(&n) => n as usize,
            Some(n) => {
                r.problems.push(format!(
                    "replication.parallel_workers must be between 1 and 64, not {n}"
                ));
                cpus
            }
        };
        let apply_sessions = match r.int("replication", "apply_sessions") {
            None => DEFAULT_APPLY_SESSIONS,
            Some(n) if (1..=8).contains(&n) => n as usize,
            Some(n) => {
                r.problems.push(format!(
                    "replication.apply_sessions must be between 1 and 8, not {n}"
                ));
                DEFAULT_APPLY_SESSIONS
            }
        };
        let split_tables_larger_than = r
            .size("replication", "split_tables_larger_than")
            .unwrap_or(DEFAULT_SPLIT_BYTES);
        let pg_bin_dir = r.path("replication", "pg_bin_dir");
        let receive_timeout = match r.duration("replication", "receive_timeout") {
            None => DEFAULT_RECEIVE_TIMEOUT,
            Some(d) if d >= Duration::from_secs(1) => d,
            Some(d) => {
                r.problems.push(format!(
                    "replication.receive_timeout must be at least 1s, not {}ms",
                    d.as_millis()
                ));
                DEFAULT_RECEIVE_TIMEOUT
            }
        };
        let target_wal_compression = match r.string("replication", "target_wal_compression") {
            None => WalCompression::default(),
            Some(s) => s.parse().unwrap_or_else(|()| {
                r.problems.push(format!(
                    "replication.target_wal_compression must be {}, not {s:?}",
                    wal_compression::CHOICES
                ));
                WalCompression::default()
            }),
        };

        let max_lag = r
            .duration("cutover", "max_lag")
            .unwrap_or(Duration::from_secs(5));
        let max_freeze = r
            .duration("cutover", "max_freeze")
            .unwrap_or(Duration::from_secs(10));
        let app_roles = r.strings("cutover", "app_roles").unwrap_or_default();
        let switch_hook = r.strings("cutover", "switch_hook").unwrap_or_default();

        let listen = match r.string("api", "listen") {
            None => SocketAddr::from(([127, 0, 0, 1], 8089)),
            Some(s) => s.parse().unwrap_or_else(|_| {
                r.problems.push(format!(
                    "api.listen must be an address with a port like 127.0.0.1:8089, not {s:?}"
                ));
                SocketAddr::from(([127, 0, 0, 1], 8089))
            }),
        };
        let token = secret_env("PGCUTOVER_API_TOKEN").or_else(|| {
            let path = r.path("api", "token_file")?;
            r.read_secret_file("api.token_file", &path)
        });
        if token.as_ref().is_some_and(|t| t.expose().len() < 16) {
            r.problems
                .push("the API token must be at least 16 characters long".into());
        }
        if token.is_none() && !listen.ip().is_loopback() {
            r.problems.push(format!(
                "api.listen = {listen} is not a loopback address and no API token is set; \
                 set api.token_file (or PGCUTOVER_API_TOKEN) or listen on 127.0.0.1"
            ));
        }

        let state_dir = r.path("state", "dir").unwrap_or_else(|| base.join("state"));
        let format = match r.string("log", "format").as_deref() {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => {
                r.problems.push(format!(
                    "log.format must be \"text\" or \"json\", not {other:?}"
                ));
                LogFormat::Text
            }
        };
        let level = r.string("log", "level").unwrap_or_else(|| "info".into());
        if tracing_subscriber::EnvFilter::try_new(&level).is_err() {
            r.problems.push(format!(
                "log.level {level:?} is not a valid filter (try \"info\")"
            ));
        }

        r.report_unknown_keys();
        let Reader { problems, .. } = r;
        let (Some(source), Some(target)) = (source, target) else {
            return Err(ConfigError { problems });
        };
        if !problems.is_empty() {
            return Err(ConfigError { problems });
        }
        Ok(Config {
            source,
            target,
            replication: Replication {
                engine,
                migration_id,
                tables,
                exclude,
                copy_schema,
                parallel_workers,
                apply_sessions,
                split_tables_larger_than,
                pg_bin_dir,
                receive_timeout,
                target_wal_compression,
            },
            cutover: Cutover {
                max_lag,
                max_freeze,
                app_roles,
                switch_hook,
            },
            api: Api { listen, token },
            state_dir,
            log: Log { format, level },
        })
    }
}

/// Like PostgreSQL's `wal_receiver_timeout`.
pub const DEFAULT_RECEIVE_TIMEOUT: Duration = Duration::from_secs(60);

/// 1 GiB: below that a table is one unit of work (and can be loaded with `COPY FREEZE`).
pub const DEFAULT_SPLIT_BYTES: u64 = 1 << 30;
/// Two sessions let a batch run while the one before it commits; more rarely pay on the
/// CPUs a target usually has for one stream (see `cdc::apply`).
pub const DEFAULT_APPLY_SESSIONS: usize = 2;

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        [source]
        url = "postgres://app@db-old:5432/app"
        [target]
        url = "postgres://admin@db-new:5432/app"
    "#;

    fn load(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_parts(text, &env, Path::new("/etc/pgcutover"))
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = load(MINIMAL, &[]).unwrap();
        assert_eq!(c.replication.engine, Engine::Native);
        assert_eq!(c.replication.migration_id.slot_name(), "pgcutover_default");
        assert!(c.replication.copy_schema);
        assert_eq!(c.replication.tables.len(), 1);
        assert_eq!(c.cutover.max_lag, Duration::from_secs(5));
        assert_eq!(c.replication.receive_timeout, Duration::from_secs(60));
        assert_eq!(c.replication.target_wal_compression, WalCompression::Auto);
        assert_eq!(c.api.listen.to_string(), "127.0.0.1:8089");
        assert_eq!(c.state_dir, PathBuf::from("/etc/pgcutover/state"));
        assert!(c.source.password.is_none());
    }

    #[test]
    fn env_overrides_the_file_and_carries_secrets() {
        let c = load(
            MINIMAL,
            &[
                ("PGCUTOVER_SOURCE_URL", "postgres://other@elsewhere/x"),
                ("PGCUTOVER_SOURCE_PASSWORD", "pw-from-env"),
                ("PGCUTOVER_REPLICATION_PARALLEL_WORKERS", "3"),
                ("PGCUTOVER_REPLICATION_COPY_SCHEMA", "false"),
                ("PGCUTOVER_REPLICATION_TARGET_WAL_COMPRESSION", "zstd"),
                ("PGCUTOVER_REPLICATION_TABLES", "public.a, sales.*"),
                ("PGCUTOVER_STATE_DIR", "/var/lib/pgcutover"),
                ("PGCUTOVER_SOMETHING_ELSE", "ignored"),
            ],
        )
        .unwrap();
        assert_eq!(c.source.host, "elsewhere");
        assert_eq!(c.source.password.unwrap().expose(), "pw-from-env");
        assert_eq!(c.replication.parallel_workers, 3);
        assert!(!c.replication.copy_schema);
        assert_eq!(
            c.replication.target_wal_compression,
            WalCompression::Method(wal_compression::Method::Zstd)
        );
        let pats: Vec<_> = c.replication.tables.iter().map(|p| p.as_str()).collect();
        assert_eq!(pats, ["public.a", "sales.*"]);
        assert_eq!(c.state_dir, PathBuf::from("/var/lib/pgcutover"));
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let err = load(
            r#"
            [source]
            url = 5
            [target]
            [replication]
            engine = "carrier-pigeon"
            migration_id = "Bad Id!"
            parallel_workers = 0
            apply_sessions = 9
            tables = ["public."]
            copy_schema = "yes"
            split_tables_larger_than = "lots"
            receive_timeout = "500ms"
            target_wal_compression = "fast"
            colour = "blue"
            [cutover]
            max_lag = "5 parsecs"
            [api]
            listen = "0.0.0.0:8089"
            [log]
            format = "xml"
            [bogus]
            "#,
            &[],
        )
        .unwrap_err();
        let text = err.to_string();
        for needle in [
            "source.url must be a string",
            "target.url is missing",
            "engine must be",
            "migration_id",
            "parallel_workers must be between",
            "apply_sessions must be between 1 and 8",
            "has an empty part",
            "copy_schema must be true or false",
            "split_tables_larger_than",
            "receive_timeout must be at least 1s, not 500ms",
            "target_wal_compression must be \"auto\", \"server\"",
            "unknown key replication.colour",
            "max_lag",
            "not a loopback address",
            "log.format",
            "unknown section or key bogus",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
        }
        assert!(err.problems.len() >= 15, "{text}");
    }

    #[test]
    fn password_file_is_read_and_never_shown() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pw"), "file-secret\n").unwrap();
        let text = format!("{MINIMAL}\n");
        let text = text.replace(
            "url = \"postgres://app@db-old:5432/app\"",
            "url = \"postgres://app@db-old:5432/app\"\npassword_file = \"pw\"",
        );
        let c = Config::from_parts(&text, &[], dir.path()).unwrap();
        assert_eq!(c.source.password.as_ref().unwrap().expose(), "file-secret");
        assert!(!format!("{c:?}").contains("file-secret"));

        let missing = text.replace("\"pw\"", "\"nope\"");
        let err = Config::from_parts(&missing, &[], dir.path()).unwrap_err();
        assert!(err.to_string().contains("password_file: cannot read"));
    }

    #[test]
    fn public_listen_needs_a_long_token() {
        let text = format!("{MINIMAL}\n[api]\nlisten = \"0.0.0.0:8089\"\n");
        assert!(load(&text, &[("PGCUTOVER_API_TOKEN", "short")]).is_err());
        let c = load(&text, &[("PGCUTOVER_API_TOKEN", "0123456789abcdef0123")]).unwrap();
        assert!(!format!("{c:?}").contains("0123456789abcdef"));
    }

    #[test]
    fn the_patterns_say_which_tables_are_migrated_and_which_are_left_out() {
        let c = load(
            &format!(
                "{MINIMAL}\n[replication]\ntables = [\"public.*\", \"sales.orders\"]\n\
                 exclude = [\"public.tmp_*\", \"archive.*\"]"
            ),
            &[],
        )
        .unwrap();
        let r = &c.replication;
        let t = |s: &str, n: &str| crate::pg::TableName::new(s, n);
        assert!(r.selects(&t("public", "items")) && r.selects(&t("sales", "orders")));
        assert!(!r.selects(&t("public", "tmp_x")) && r.excludes(&t("public", "tmp_x")));
        // Moved out of the patterns: neither selected nor excluded (the operator decides).
        assert!(!r.selects(&t("sales", "other")) && !r.excludes(&t("sales", "other")));
        assert!(!r.selects(&t("archive", "items")) && r.excludes(&t("archive", "items")));
    }

    #[test]
    fn durations_and_sizes() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("7").unwrap(), Duration::from_secs(7));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("").is_err());
        assert_eq!(parse_size("512MB").unwrap(), 512 << 20);
        assert_eq!(parse_size("0").unwrap(), 0);
        assert!(parse_size("99999999999TB").is_err());
        assert!(parse_size("1.5GB").is_err());
    }

    #[test]
    fn example_file_documents_every_key_and_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/pgcutover.example.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let table: toml::Table = text.parse().unwrap();
        for (section, key) in KEYS {
            let documented = table
                .get(*section)
                .and_then(|s| s.as_table())
                .is_some_and(|s| s.contains_key(*key))
                || text.contains(&format!("# {key} ="));
            assert!(documented, "{section}.{key} is not in the example config");
        }
        // The example is loadable once its secret files exist.
        let mut env = vec![("PGCUTOVER_API_TOKEN".to_string(), "x".repeat(32))];
        env.push(("PGCUTOVER_SOURCE_PASSWORD".into(), "p".into()));
        env.push(("PGCUTOVER_TARGET_PASSWORD".into(), "p".into()));
        let stripped: String = text
            .lines()
            .filter(|l| {
                !l.trim_start().starts_with("password_file")
                    && !l.trim_start().starts_with("token_file")
            })
            .map(|l| format!("{l}\n"))
            .collect();
        Config::from_parts(&stripped, &env, Path::new(".")).unwrap();
    }
}
