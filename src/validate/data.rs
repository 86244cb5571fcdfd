//! Comparing the rows of one table on both sides: counts, digests, then where they differ.
//!
//! 1. One pass per side, run at the same time: `count(*)` and the sum of row digests
//!    ([`super::digest`]). Equal on both: done. PostgreSQL may run it as a parallel scan.
//! 2. Different, and the table has a key: the source's key quantiles cut the first key column
//!    into up to [`RANGES`] ranges, and one grouped pass per side gives each range's count and
//!    digest sum, which locates the differing ranges.
//! 3. In the differing ranges (in key order) both sides stream `(row digest, key)` ordered by
//!    digest, and a merge finds the rows only one side has: a key on both lists is a changed
//!    row, on one list a missing or extra row. A table without a key is a multiset: both sides
//!    stream `(row digest, count)` and the merge names the digests whose counts differ. Memory
//!    stays bounded (streams, and at most `max_diffs` differences kept).
//!
//! Sampled mode replaces steps 1–2 for keyed tables: the key ranges come from a
//! `TABLESAMPLE` of the source, and only a random `pct` of them are compared (with index range
//! scans), so most of the table is never read.

use std::collections::BTreeMap;

use futures_util::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use tokio_postgres::Client;
use tokio_postgres::types::ToSql;

use super::digest::{DigestColumn, TextBytes, row_hash};
use crate::pg::{SqlContext, SqlError, TableName, quote_ident};

/// At most this many key ranges per table, to locate a difference.
pub const RANGES: usize = 64;
/// Ranges in sampled mode (the sample picks among them).
pub const SAMPLE_RANGES: usize = 100;

/// What to compare for one table, with each side's columns in the same (source) order.
#[derive(Clone, Debug)]
pub struct TablePlan {
    pub table: TableName,
    pub source_columns: Vec<DigestColumn>,
    pub target_columns: Vec<DigestColumn>,
    /// Key column names (empty: compared as a multiset).
    pub key: Vec<String>,
    /// SQL type of the first key column on the source (`integer`, `uuid`, ...).
    pub key_type: String,
    /// The first key column is text-like: ranges use the `"C"` collation on both sides, so
    /// two databases with different default collations cut them alike.
    pub key_collatable: bool,
    pub estimate: f64,
    /// How characters are hashed (UTF-8 when the two servers' encodings differ).
    pub text_bytes: TextBytes,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum DiffKind {
    /// Same key, different values.
    Changed,
    MissingOnTarget,
    ExtraOnTarget,
    /// A row of a keyless table occurs a different number of times.
    CountDiffers,
}

/// One differing row. No column value other than the key is ever shown.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct RowDiff {
    pub kind: DiffKind,
    /// The key as PostgreSQL prints it (`42`, `(7,abc)`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The row digest, for keyless tables (find the row with the query in the message).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub digest: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_count: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_count: Option<i64>,
}

/// The data comparison of one table.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct DataResult {
    /// Rows compared (shown in the table's report, not repeated here).
    #[serde(skip)]
    pub source_rows: Option<i64>,
    #[serde(skip)]
    pub target_rows: Option<i64>,
    /// The digests of the compared rows are equal.
    pub equal: bool,
    /// Key ranges compared (1 for a whole table compared in one piece).
    pub ranges_compared: usize,
    pub ranges_total: usize,
    /// The differing key ranges, as conditions (`"id" >= 100 AND "id" < 200`).
    pub differing_ranges: Vec<String>,
    /// First differing rows, bounded.
    pub differences: Vec<RowDiff>,
    /// More differing rows exist than are listed.
    pub more_differences: bool,
}

/// A table digest over some rows: (count, sum of row digests as text).
type Digest = (i64, String);

/// One key range: SQL condition on `t.<first key column>` with its text parameters.
#[derive(Clone, Debug)]
struct Range {
    sql: String,
    params: Vec<String>,
    human: String,
}

impl TablePlan {
    fn hash(&self, target: bool) -> String {
        row_hash(
            if target {
                &self.target_columns
            } else {
                &self.source_columns
            },
            "t.",
            self.text_bytes,
        )
    }

    fn key_text(&self) -> String {
        match self.key.as_slice() {
            [one] => format!("t.{}::text", quote_ident(one)),
            many => format!(
                "ROW({})::text",
                many.iter()
                    .map(|k| format!("t.{}", quote_ident(k)))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }

    /// The first key column as ranges and quantiles use it.
    fn range_key(&self) -> String {
        let c = if self.key_collatable {
            " COLLATE \"C\""
        } else {
            ""
        };
        format!("t.{}{c}", quote_ident(&self.key[0]))
    }

    /// The ranges cut by `bounds` (sorted, distinct): `k < b0`, `b0 <= k < b1`, …, `k >= bn`.
    fn ranges(&self, bounds: &[String]) -> Vec<Range> {
        let k = quote_ident(&self.key[0]);
        let e = self.range_key();
        let ty = &self.key_type;
        if bounds.is_empty() {
            return vec![Range {
                sql: "true".into(),
                params: vec![],
                human: "all rows".into(),
            }];
        }
        let mut out = Vec::with_capacity(bounds.len() + 1);
        out.push(Range {
            sql: format!("{e} < $1::text::{ty}"),
            params: vec![bounds[0].clone()],
            human: format!("{k} < {}", bounds[0]),
        });
        for w in bounds.windows(2) {
            out.push(Range {
                sql: format!("{e} >= $1::text::{ty} AND {e} < $2::text::{ty}"),
                params: vec![w[0].clone(), w[1].clone()],
                human: format!("{k} >= {} AND {k} < {}", w[0], w[1]),
            });
        }
        let last = &bounds[bounds.len() - 1];
        out.push(Range {
            sql: format!("{e} >= $1::text::{ty}"),
            params: vec![last.clone()],
            human: format!("{k} >= {last}"),
        });
        out
    }
}

fn params(p: &[String]) -> impl ExactSizeIterator<Item = &(dyn ToSql + Sync)> {
    p.iter().map(|s| s as &(dyn ToSql + Sync))
}

async fn digest(
    c: &Client,
    plan: &TablePlan,
    target: bool,
    range: Option<&Range>,
) -> Result<Digest, SqlError> {
    let cond = range.map_or("true", |r| r.sql.as_str());
    let sql = format!(
        "SELECT count(*), coalesce(sum({}), 0)::text FROM ONLY {} AS t WHERE {cond}",
        plan.hash(target),
        plan.table
    );
    let none = Vec::new();
    let p = range.map_or(&none, |r| &r.params);
    let row = c
        .query_one(&sql, &params(p).collect::<Vec<_>>())
        .await
        .ctx(|| format!("digest of {}", plan.table.display_plain()))?;
    Ok((row.get(0), row.get(1)))
}

/// Distinct key quantiles of the source's first key column, cutting it into `n` ranges;
/// from a `TABLESAMPLE SYSTEM (pct)` when given.
async fn bounds(
    src: &Client,
    plan: &TablePlan,
    n: usize,
    sample_pct: Option<f64>,
) -> Result<Vec<String>, SqlError> {
    if n <= 1 {
        return Ok(vec![]);
    }
    let fractions: Vec<f64> = (1..n).map(|i| i as f64 / n as f64).collect();
    let sample = sample_pct.map_or(String::new(), |p| format!(" TABLESAMPLE SYSTEM ({p})"));
    let sql = format!(
        "SELECT percentile_disc($1::float8[]) WITHIN GROUP (ORDER BY {})::text[] \
           FROM ONLY {} AS t{sample}",
        plan.range_key(),
        plan.table
    );
    let row = src
        .query_one(&sql, &[&fractions])
        .await
        .ctx(|| format!("key ranges of {}", plan.table.display_plain()))?;
    let values: Option<Vec<Option<String>>> = row.get(0);
    let mut out: Vec<String> = values.unwrap_or_default().into_iter().flatten().collect();
    out.dedup();
    Ok(out)
}

/// Each range's digest, in one grouped pass (`width_bucket` numbers ranges like [`TablePlan::ranges`]).
async fn range_digests(
    c: &Client,
    plan: &TablePlan,
    target: bool,
    bounds: &[String],
) -> Result<BTreeMap<i32, Digest>, SqlError> {
    let sql = format!(
        "SELECT width_bucket({}, $1::text[]::{}[]), count(*), coalesce(sum({}), 0)::text \
           FROM ONLY {} AS t GROUP BY 1",
        plan.range_key(),
        plan.key_type,
        plan.hash(target),
        plan.table
    );
    let rows = c
        .query(&sql, &[&bounds])
        .await
        .ctx(|| format!("range digests of {}", plan.table.display_plain()))?;
    Ok(rows
        .iter()
        .map(|r| (r.get::<_, i32>(0), (r.get(1), r.get(2))))
        .collect())
}

/// Exact row counts only (`--full` without checksums), both sides at once.
pub async fn count(src: &Client, tgt: &Client, plan: &TablePlan) -> Result<DataResult, SqlError> {
    let sql = format!("SELECT count(*) FROM ONLY {}", plan.table);
    let ctx = || format!("counting {}", plan.table.display_plain());
    let (s, t) = tokio::try_join!(src.query_one(&sql, &[]), tgt.query_one(&sql, &[])).ctx(ctx)?;
    let (s, t): (i64, i64) = (s.get(0), t.get(0));
    Ok(DataResult {
        source_rows: Some(s),
        target_rows: Some(t),
        equal: s == t,
        ..Default::default()
    })
}

/// Full comparison of one table.
pub async fn compare(
    src: &Client,
    tgt: &Client,
    plan: &TablePlan,
    max_diffs: usize,
) -> Result<DataResult, SqlError> {
    let (s, t) = tokio::try_join!(
        digest(src, plan, false, None),
        digest(tgt, plan, true, None)
    )?;
    let mut out = DataResult {
        source_rows: Some(s.0),
        target_rows: Some(t.0),
        equal: s == t,
        ranges_compared: 1,
        ranges_total: 1,
        ..Default::default()
    };
    if out.equal {
        return Ok(out);
    }
    if plan.key.is_empty() {
        out.differing_ranges.push("all rows".into());
        locate_keyless(src, tgt, plan, max_diffs, &mut out).await?;
        return Ok(out);
    }
    let n = ((s.0.max(t.0) / 1_000) as usize).clamp(1, RANGES);
    let b = bounds(src, plan, n, None).await?;
    let ranges = plan.ranges(&b);
    let (sd, td) = tokio::try_join!(
        range_digests(src, plan, false, &b),
        range_digests(tgt, plan, true, &b)
    )?;
    out.ranges_compared = ranges.len();
    out.ranges_total = ranges.len();
    let differing: Vec<&Range> = ranges
        .iter()
        .enumerate()
        .filter(|(i, _)| sd.get(&(*i as i32)) != td.get(&(*i as i32)))
        .map(|(_, r)| r)
        .collect();
    for r in &differing {
        out.differing_ranges.push(r.human.clone());
    }
    for r in differing {
        locate_keyed(src, tgt, plan, r, max_diffs, &mut out).await?;
    }
    Ok(out)
}

/// Sampled comparison of a keyed table: `pct` % of [`SAMPLE_RANGES`] key ranges.
pub async fn compare_sampled(
    src: &Client,
    tgt: &Client,
    plan: &TablePlan,
    pct: f64,
    seed: u64,
    max_diffs: usize,
) -> Result<DataResult, SqlError> {
    // Enough sampled rows for the quantiles without reading the table.
    let sample = (plan.estimate > 200_000.0).then(|| (20_000_000.0 / plan.estimate).min(100.0));
    let b = bounds(src, plan, SAMPLE_RANGES, sample).await?;
    let ranges = plan.ranges(&b);
    let want = ((ranges.len() as f64 * pct / 100.0).ceil() as usize).clamp(1, ranges.len());
    let picked = pick(ranges.len(), want, seed);
    let mut out = DataResult {
        equal: true,
        ranges_compared: picked.len(),
        ranges_total: ranges.len(),
        ..Default::default()
    };
    let (mut sr, mut tr) = (0, 0);
    for i in picked {
        let r = &ranges[i];
        let (s, t) = tokio::try_join!(
            digest(src, plan, false, Some(r)),
            digest(tgt, plan, true, Some(r))
        )?;
        sr += s.0;
        tr += t.0;
        if s != t {
            out.equal = false;
            out.differing_ranges.push(r.human.clone());
            locate_keyed(src, tgt, plan, r, max_diffs, &mut out).await?;
        }
    }
    out.source_rows = Some(sr);
    out.target_rows = Some(tr);
    Ok(out)
}

/// `want` distinct indexes out of `0..n`, in order, from a seeded xorshift.
fn pick(n: usize, want: usize, seed: u64) -> Vec<usize> {
    let mut all: Vec<usize> = (0..n).collect();
    let mut x = seed | 1;
    for i in 0..want.min(n) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let j = i + (x % (n - i) as u64) as usize;
        all.swap(i, j);
    }
    let mut out = all[..want.min(n)].to_vec();
    out.sort_unstable();
    out
}

fn push_diff(out: &mut DataResult, d: RowDiff, max: usize) {
    if out.differences.len() < max {
        out.differences.push(d);
    } else {
        out.more_differences = true;
    }
}

/// Rows that differ inside one key range.
async fn locate_keyed(
    src: &Client,
    tgt: &Client,
    plan: &TablePlan,
    range: &Range,
    max_diffs: usize,
    out: &mut DataResult,
) -> Result<(), SqlError> {
    if out.differences.len() >= max_diffs {
        out.more_differences = true;
        return Ok(());
    }
    let sql = |target: bool| {
        format!(
            "SELECT {} AS h, ({}) COLLATE \"C\" AS k FROM ONLY {} AS t WHERE {} ORDER BY 1, 2",
            plan.hash(target),
            plan.key_text(),
            plan.table,
            range.sql
        )
    };
    let ctx = || {
        format!(
            "rows of {} where {}",
            plan.table.display_plain(),
            range.human
        )
    };
    let (ssql, tsql) = (sql(false), sql(true));
    let (s, t) = tokio::try_join!(
        src.query_raw(&ssql, params(&range.params)),
        tgt.query_raw(&tsql, params(&range.params))
    )
    .ctx(ctx)?;
    let row = |r: tokio_postgres::Row| (r.get::<_, i64>(0), r.get::<_, String>(1));
    let (mut s, mut t) = (s.map_ok(row).boxed(), t.map_ok(row).boxed());
    // Keys seen on one side only (bounded), then classified.
    let cap = max_diffs.saturating_mul(2).max(2);
    let mut only_src: BTreeMap<String, ()> = BTreeMap::new();
    let mut only_tgt: BTreeMap<String, ()> = BTreeMap::new();
    let (mut a, mut b) = (s.try_next().await.ctx(ctx)?, t.try_next().await.ctx(ctx)?);
    while only_src.len() + only_tgt.len() < cap {
        match (&a, &b) {
            (None, None) => break,
            (Some(x), Some(y)) if x == y => {
                a = s.try_next().await.ctx(ctx)?;
                b = t.try_next().await.ctx(ctx)?;
            }
            (Some(x), Some(y)) if x < y => {
                only_src.insert(x.1.clone(), ());
                a = s.try_next().await.ctx(ctx)?;
            }
            (Some(x), None) => {
                only_src.insert(x.1.clone(), ());
                a = s.try_next().await.ctx(ctx)?;
            }
            (_, Some(y)) => {
                only_tgt.insert(y.1.clone(), ());
                b = t.try_next().await.ctx(ctx)?;
            }
        }
    }
    let truncated = a.is_some() || b.is_some();
    let mut keys: BTreeMap<String, DiffKind> = BTreeMap::new();
    for k in only_src.into_keys() {
        keys.insert(k, DiffKind::MissingOnTarget);
    }
    for k in only_tgt.into_keys() {
        let kind = match keys.get(&k) {
            Some(_) => DiffKind::Changed,
            None => DiffKind::ExtraOnTarget,
        };
        keys.insert(k, kind);
    }
    for (k, kind) in keys {
        push_diff(
            out,
            RowDiff {
                kind,
                key: Some(k),
                digest: None,
                source_count: None,
                target_count: None,
            },
            max_diffs,
        );
    }
    if truncated {
        out.more_differences = true;
    }
    Ok(())
}

/// Row digests whose number of occurrences differs, for a table without a key.
async fn locate_keyless(
    src: &Client,
    tgt: &Client,
    plan: &TablePlan,
    max_diffs: usize,
    out: &mut DataResult,
) -> Result<(), SqlError> {
    let sql = |target: bool| {
        format!(
            "SELECT h, count(*) FROM (SELECT {} AS h FROM ONLY {} AS t) AS d GROUP BY h ORDER BY h",
            plan.hash(target),
            plan.table
        )
    };
    let ctx = || format!("row digests of {}", plan.table.display_plain());
    let (ssql, tsql) = (sql(false), sql(true));
    let none: [String; 0] = [];
    let (s, t) = tokio::try_join!(
        src.query_raw(&ssql, params(&none)),
        tgt.query_raw(&tsql, params(&none))
    )
    .ctx(ctx)?;
    let row = |r: tokio_postgres::Row| (r.get::<_, i64>(0), r.get::<_, i64>(1));
    let (mut s, mut t) = (s.map_ok(row).boxed(), t.map_ok(row).boxed());
    let (mut a, mut b) = (s.try_next().await.ctx(ctx)?, t.try_next().await.ctx(ctx)?);
    loop {
        let (h, sc, tc) = match (a, b) {
            (None, None) => break,
            (Some(x), Some(y)) if x.0 == y.0 => {
                a = s.try_next().await.ctx(ctx)?;
                b = t.try_next().await.ctx(ctx)?;
                (x.0, x.1, y.1)
            }
            (Some(x), Some(y)) if x.0 < y.0 => {
                a = s.try_next().await.ctx(ctx)?;
                (x.0, x.1, 0)
            }
            (Some(x), None) => {
                a = s.try_next().await.ctx(ctx)?;
                (x.0, x.1, 0)
            }
            (_, Some(y)) => {
                b = t.try_next().await.ctx(ctx)?;
                (y.0, 0, y.1)
            }
        };
        if sc != tc {
            if out.differences.len() >= max_diffs {
                out.more_differences = true;
                break;
            }
            out.differences.push(RowDiff {
                kind: DiffKind::CountDiffers,
                key: None,
                digest: Some(h),
                source_count: Some(sc),
                target_count: Some(tc),
            });
        }
    }
    Ok(())
}

/// The query that finds a keyless table's row by its digest, for the report.
pub fn find_by_digest_sql(plan: &TablePlan, target: bool, digest: i64) -> String {
    format!(
        "SELECT * FROM ONLY {} AS t WHERE ({}) = {digest}",
        plan.table,
        plan.hash(target)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> TablePlan {
        TablePlan {
            table: TableName::new("public", "t"),
            source_columns: vec![],
            target_columns: vec![],
            key: vec!["id".into()],
            key_type: "integer".into(),
            key_collatable: false,
            estimate: 0.0,
            text_bytes: TextBytes::Server,
        }
    }

    #[test]
    fn ranges_cover_the_key_space_like_width_bucket() {
        let r = plan().ranges(&["10".into(), "20".into()]);
        assert_eq!(r.len(), 3);
        assert_eq!(r[0].human, "\"id\" < 10");
        assert_eq!(r[1].human, "\"id\" >= 10 AND \"id\" < 20");
        assert_eq!(r[2].human, "\"id\" >= 20");
        assert_eq!(r[1].params, vec!["10".to_string(), "20".to_string()]);
        assert_eq!(plan().ranges(&[]).len(), 1);
    }

    #[test]
    fn pick_is_distinct_sorted_and_bounded() {
        for seed in 0..50 {
            let p = pick(100, 7, seed);
            assert_eq!(p.len(), 7);
            assert!(p.windows(2).all(|w| w[0] < w[1]));
            assert!(p.iter().all(|&i| i < 100));
        }
        assert_eq!(pick(3, 10, 1), vec![0, 1, 2]);
    }

    #[test]
    fn composite_keys_print_as_rows() {
        let mut p = plan();
        p.key = vec!["a".into(), "b c".into()];
        assert_eq!(p.key_text(), "ROW(t.\"a\", t.\"b c\")::text");
    }
}
