//! Names of database objects.
//!
//! Every identifier that reaches SQL goes through [`quote_ident`] (or [`TableName`]'s
//! `Display`, which uses it), so a table called `"Order" ; DROP` is just a table. Literals go
//! through [`quote_literal`]. Both rely on `postgres_protocol::escape`, which doubles quotes
//! the way the server's own `quote_ident`/`quote_literal` do.

use std::fmt;

use serde::{Deserialize, Serialize};

/// `"name"`, always quoted (quoting a plain lower-case name is harmless and never wrong).
pub fn quote_ident(name: &str) -> String {
    postgres_protocol::escape::escape_identifier(name)
}

/// `'text'`, or `E'...'` when the text holds a backslash.
pub fn quote_literal(text: &str) -> String {
    postgres_protocol::escape::escape_literal(text)
}

/// A schema-qualified table name, as the catalog spells it (not quoted).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TableName {
    pub schema: String,
    pub name: String,
}

impl TableName {
    pub fn new(schema: impl Into<String>, name: impl Into<String>) -> Self {
        TableName {
            schema: schema.into(),
            name: name.into(),
        }
    }

    /// `schema.name` without quotes, for people (logs, status, errors).
    pub fn display_plain(&self) -> String {
        format!("{}.{}", self.schema, self.name)
    }
}

/// Quoted and qualified, ready for SQL: `"public"."Order Items"`.
impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}.{}",
            quote_ident(&self.schema),
            quote_ident(&self.name)
        )
    }
}

/// An include or exclude pattern from the configuration: `schema.table` where either part may
/// use `*` (any run of characters) and `?` (one character). A pattern without a dot applies
/// to tables of any schema. Matching is exact on case, like quoted SQL identifiers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TablePattern {
    text: String,
    schema: Option<String>,
    table: String,
}

impl TablePattern {
    pub fn parse(text: &str) -> Result<Self, String> {
        let trimmed = text.trim();
        if trimmed.is_empty() {
            return Err("a table pattern is empty".into());
        }
        let (schema, table) = match split_unquoted_dot(trimmed) {
            Some((s, t)) => (Some(unquote(s)?), unquote(t)?),
            None => (None, unquote(trimmed)?),
        };
        if table.is_empty() || schema.as_deref() == Some("") {
            return Err(format!("table pattern {text:?} has an empty part"));
        }
        Ok(TablePattern {
            text: trimmed.to_string(),
            schema,
            table,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn matches(&self, t: &TableName) -> bool {
        self.schema.as_deref().is_none_or(|s| glob(s, &t.schema)) && glob(&self.table, &t.name)
    }
}

/// Split at the first dot that is not inside double quotes.
fn split_unquoted_dot(s: &str) -> Option<(&str, &str)> {
    let mut in_quotes = false;
    for (i, c) in s.char_indices() {
        match c {
            '"' => in_quotes = !in_quotes,
            '.' if !in_quotes => return Some((&s[..i], &s[i + 1..])),
            _ => {}
        }
    }
    None
}

/// `"My Table"` → `My Table` (with `""` → `"`); bare words stay as written.
fn unquote(s: &str) -> Result<String, String> {
    if let Some(inner) = s.strip_prefix('"') {
        let inner = inner
            .strip_suffix('"')
            .ok_or_else(|| format!("unbalanced quote in table pattern part {s:?}"))?;
        Ok(inner.replace("\"\"", "\""))
    } else {
        Ok(s.to_string())
    }
}

/// Glob match with `*` and `?`, iterative (no backtracking blow-up on hostile patterns).
fn glob(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_hostile_names() {
        let t = TableName::new("public", "Robert\"); DROP TABLE students;--");
        assert_eq!(
            t.to_string(),
            "\"public\".\"Robert\"\"); DROP TABLE students;--\""
        );
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(quote_literal("back\\slash"), " E'back\\\\slash'");
    }

    #[test]
    fn patterns_match_like_globs() {
        let t = |s: &str, n: &str| TableName::new(s, n);
        let p = TablePattern::parse("public.*").unwrap();
        assert!(p.matches(&t("public", "orders")));
        assert!(!p.matches(&t("audit", "orders")));
        let p = TablePattern::parse("order?").unwrap();
        assert!(p.matches(&t("sales", "orders")));
        assert!(!p.matches(&t("sales", "order")));
        let p = TablePattern::parse("\"My.Schema\".\"Tab\"\"le\"").unwrap();
        assert!(p.matches(&t("My.Schema", "Tab\"le")));
        let p = TablePattern::parse("*.*_log").unwrap();
        assert!(p.matches(&t("x", "audit_log")));
        assert!(!p.matches(&t("x", "audit_logs")));
        // Case is exact, like quoted identifiers.
        assert!(
            !TablePattern::parse("public.Orders")
                .unwrap()
                .matches(&t("public", "orders"))
        );
    }

    #[test]
    fn bad_patterns_are_refused() {
        for bad in ["", "  ", "public.", ".x", "\"open.x"] {
            assert!(TablePattern::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn glob_is_linear_on_hostile_input() {
        let pattern = "*a".repeat(50);
        let text = "a".repeat(10_000) + "b";
        assert!(!glob(&pattern, &text));
    }
}
