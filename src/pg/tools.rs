//! Finding PostgreSQL's own programs (`pg_dump`, `pg_restore`, `psql`, `initdb`, `pg_ctl`).
//!
//! Order of search: an explicit folder (config `replication.pg_bin_dir` or the
//! `PGCUTOVER_PG_BINDIR` variable), then `pg_config --bindir`, then the Debian/Ubuntu layout
//! `/usr/lib/postgresql/<major>/bin` (newest first), then `PATH`. For the dump tools the major
//! version matters: `pg_dump` refuses servers newer than itself, so [`find_tool`] returns the
//! first one whose major version is at least the server's.

use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error("{tool} was not found (looked in {searched})")]
    Missing { tool: String, searched: String },
    #[error("{tool} is too old for a PostgreSQL {server_major} server: found {found}")]
    TooOld {
        tool: String,
        server_major: u32,
        found: String,
    },
}

impl ToolError {
    pub fn hint(&self) -> String {
        match self {
            ToolError::Missing { tool, .. } | ToolError::TooOld { tool, .. } => format!(
                "install the PostgreSQL client tools of the source's major version or newer \
                 (e.g. apt-get install postgresql-client-NN) and point replication.pg_bin_dir \
                 at the folder holding {tool}"
            ),
        }
    }
}

/// Candidate folders, best first.
pub fn candidate_dirs(explicit: Option<&Path>) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(d) = explicit {
        dirs.push(d.to_path_buf());
    }
    if let Ok(d) = std::env::var("PGCUTOVER_PG_BINDIR") {
        dirs.push(PathBuf::from(d));
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output()
        && out.status.success()
    {
        let d = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if !d.is_empty() {
            dirs.push(PathBuf::from(d));
        }
    }
    if let Ok(entries) = std::fs::read_dir("/usr/lib/postgresql") {
        let mut versions: Vec<(u32, PathBuf)> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let v = e.file_name().to_string_lossy().parse::<u32>().ok()?;
                Some((v, e.path().join("bin")))
            })
            .collect();
        versions.sort_by_key(|v| std::cmp::Reverse(v.0));
        dirs.extend(versions.into_iter().map(|(_, p)| p));
    }
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    dirs
}

/// Major version printed by `<tool> --version` ("pg_dump (PostgreSQL) 15.18 (Debian ...)").
pub fn tool_major(path: &Path) -> Option<(u32, String)> {
    let out = Command::new(path).arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let version = text
        .split_whitespace()
        .find(|w| w.starts_with(|c: char| c.is_ascii_digit()))?;
    let major = version.split(['.', 'b', 'r']).next()?.parse().ok()?;
    Some((major, text))
}

/// The first `tool` whose major version is at least `min_major` (0: any).
pub fn find_tool(
    tool: &str,
    explicit: Option<&Path>,
    min_major: u32,
) -> Result<PathBuf, ToolError> {
    let dirs = candidate_dirs(explicit);
    let mut too_old: Option<String> = None;
    for dir in &dirs {
        let path = dir.join(tool);
        if !path.is_file() {
            continue;
        }
        match tool_major(&path) {
            Some((major, _)) if major >= min_major => return Ok(path),
            Some((_, text)) => {
                too_old.get_or_insert(format!("{} ({text})", path.display()));
            }
            None => {}
        }
    }
    match too_old {
        Some(found) => Err(ToolError::TooOld {
            tool: tool.into(),
            server_major: min_major,
            found,
        }),
        None => Err(ToolError::Missing {
            tool: tool.into(),
            searched: dirs
                .iter()
                .take(6)
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_tool_is_named() {
        let err = find_tool("pg_surely_not_a_tool", None, 0).unwrap_err();
        assert!(
            err.to_string()
                .contains("pg_surely_not_a_tool was not found")
        );
        assert!(err.hint().contains("pg_bin_dir"));
    }

    #[test]
    fn a_too_old_tool_is_refused() {
        // Whatever pg_dump is installed, no release will be major 999.
        if find_tool("pg_dump", None, 0).is_ok() {
            let err = find_tool("pg_dump", None, 999).unwrap_err();
            assert!(matches!(err, ToolError::TooOld { .. }), "{err}");
        }
    }
}
