//! Reading the TOML table: environment overrides applied onto it, then each known key read
//! with its type and range checked, every problem recorded (never stopping at the first),
//! and unknown keys reported. Durations and sizes in the units operators write.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{KEYS, SECRET_ENV};
use crate::pg::conn::ConnInfo;
use crate::pg::name::TablePattern;
use crate::secret::Secret;

/// Apply `PGCUTOVER_<SECTION>_<KEY>=value` onto the table. Values are read as TOML when they
/// parse as a TOML value of a non-string kind (`true`, `8`, `["a", "b"]`), else as a string.
pub(super) fn apply_env(
    table: &mut toml::Table,
    env: &[(String, String)],
    problems: &mut Vec<String>,
) {
    for (name, value) in env {
        if SECRET_ENV.contains(&name.as_str()) || !name.starts_with("PGCUTOVER_") {
            continue;
        }
        let rest = name["PGCUTOVER_".len()..].to_ascii_lowercase();
        let Some(&(section, key)) = KEYS.iter().find(|(s, k)| rest == format!("{s}_{k}")) else {
            // Other PGCUTOVER_ variables (e.g. test settings) are not ours to judge.
            continue;
        };
        let parsed = format!("v = {value}")
            .parse::<toml::Table>()
            .ok()
            .and_then(|mut t| t.remove("v"))
            .filter(|v| !v.is_str());
        let value = parsed.unwrap_or_else(|| toml::Value::String(value.clone()));
        match table
            .entry(section)
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
        {
            toml::Value::Table(t) => {
                t.insert(key.to_string(), value);
            }
            _ => problems.push(format!("[{section}] must be a table")),
        }
    }
}

pub(super) struct Reader<'a> {
    pub(super) table: &'a toml::Table,
    pub(super) base: &'a Path,
    pub(super) problems: Vec<String>,
    pub(super) seen: BTreeSet<(String, String)>,
}

impl Reader<'_> {
    pub(super) fn get(&mut self, section: &str, key: &str) -> Option<&toml::Value> {
        debug_assert!(
            KEYS.contains(&(section, key)),
            "{section}.{key} missing in KEYS"
        );
        self.seen.insert((section.into(), key.into()));
        self.table.get(section)?.as_table()?.get(key)
    }

    pub(super) fn typed<T>(
        &mut self,
        section: &str,
        key: &str,
        what: &str,
        f: impl FnOnce(&toml::Value) -> Option<T>,
    ) -> Option<T> {
        let v = self.get(section, key)?.clone();
        let out = f(&v);
        if out.is_none() {
            self.problems
                .push(format!("{section}.{key} must be {what}, not {v}"));
        }
        out
    }

    pub(super) fn string(&mut self, section: &str, key: &str) -> Option<String> {
        self.typed(section, key, "a string", |v| v.as_str().map(str::to_string))
    }

    pub(super) fn bool(&mut self, section: &str, key: &str) -> Option<bool> {
        self.typed(section, key, "true or false", toml::Value::as_bool)
    }

    pub(super) fn int(&mut self, section: &str, key: &str) -> Option<i64> {
        self.typed(section, key, "an integer", toml::Value::as_integer)
    }

    pub(super) fn strings(&mut self, section: &str, key: &str) -> Option<Vec<String>> {
        self.typed(section, key, "a list of strings", |v| match v {
            toml::Value::Array(items) => items
                .iter()
                .map(|i| i.as_str().map(str::to_string))
                .collect(),
            // From the environment: "a,b,c".
            toml::Value::String(s) => Some(
                s.split(',')
                    .map(|p| p.trim().to_string())
                    .filter(|p| !p.is_empty())
                    .collect(),
            ),
            _ => None,
        })
    }

    pub(super) fn patterns(&mut self, section: &str, key: &str) -> Option<Vec<TablePattern>> {
        let list = self.strings(section, key)?;
        let mut out = Vec::new();
        for p in list {
            match TablePattern::parse(&p) {
                Ok(p) => out.push(p),
                Err(e) => self.problems.push(format!("{section}.{key}: {e}")),
            }
        }
        Some(out)
    }

    pub(super) fn path(&mut self, section: &str, key: &str) -> Option<PathBuf> {
        let s = self.string(section, key)?;
        Some(self.base.join(s))
    }

    pub(super) fn duration(&mut self, section: &str, key: &str) -> Option<Duration> {
        let s = self.string(section, key)?;
        match parse_duration(&s) {
            Ok(d) if !d.is_zero() => Some(d),
            Ok(_) => {
                self.problems
                    .push(format!("{section}.{key} must be more than 0"));
                None
            }
            Err(e) => {
                self.problems.push(format!("{section}.{key}: {e}"));
                None
            }
        }
    }

    pub(super) fn size(&mut self, section: &str, key: &str) -> Option<u64> {
        let s = self.string(section, key)?;
        parse_size(&s)
            .map_err(|e| self.problems.push(format!("{section}.{key}: {e}")))
            .ok()
    }

    pub(super) fn read_secret_file(&mut self, what: &str, path: &Path) -> Option<Secret> {
        match std::fs::read_to_string(path) {
            Ok(s) => Some(Secret::new(s.trim_end_matches(['\n', '\r']).to_string())),
            Err(e) => {
                self.problems
                    .push(format!("{what}: cannot read {}: {e}", path.display()));
                None
            }
        }
    }

    pub(super) fn endpoint(
        &mut self,
        section: &str,
        env_password: Option<Secret>,
    ) -> Option<ConnInfo> {
        let url = self.string(section, "url");
        let file = self.path(section, "password_file");
        let Some(url) = url else {
            self.problems.push(format!(
                "{section}.url is missing (or set PGCUTOVER_{}_URL)",
                section.to_uppercase()
            ));
            return None;
        };
        let mut info = match ConnInfo::parse(&url) {
            Ok(i) => i,
            Err(e) => {
                self.problems.push(format!("{section}.url {e}"));
                return None;
            }
        };
        let from_file =
            file.and_then(|f| self.read_secret_file(&format!("{section}.password_file"), &f));
        if let Some(p) = env_password.or(from_file) {
            info.password = Some(p);
        }
        Some(info)
    }

    pub(super) fn report_unknown_keys(&mut self) {
        for (section, value) in self.table {
            let known_section = KEYS.iter().any(|(s, _)| s == section);
            match value.as_table() {
                Some(t) if known_section => {
                    for key in t.keys() {
                        if !KEYS.contains(&(section.as_str(), key.as_str())) {
                            self.problems.push(format!("unknown key {section}.{key}"));
                        }
                    }
                }
                _ => self
                    .problems
                    .push(format!("unknown section or key {section}")),
            }
        }
    }
}

/// `"500ms"`, `"5s"`, `"2m"`, `"1h"`; a bare number is seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like \"500ms\", \"5s\" or \"2m\""))?;
    let secs = match unit.trim() {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("{s:?} has an unknown unit (use ms, s, m or h)")),
    };
    if !secs.is_finite() || secs > 1e9 {
        return Err(format!("{s:?} is too long"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// `"512MB"`, `"1GB"`, `"64kB"`, `"0"`; units are powers of 1024 like PostgreSQL's.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size like \"512MB\" or \"1GB\""))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1 << 10,
        "mb" => 1 << 20,
        "gb" => 1 << 30,
        "tb" => 1 << 40,
        _ => return Err(format!("{s:?} has an unknown unit (use kB, MB, GB or TB)")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))
}
