//! Splitting the load into units of work (pure; no I/O).
//!
//! A table up to `split_bytes` is one unit, copied with `TRUNCATE` + `COPY ... FREEZE` in one
//! transaction (the rows land frozen, so the target never has to rewrite them for vacuum).
//! A larger table is cut into block ranges of its heap (`ctid >= '(a,0)' AND ctid < '(b,0)'`,
//! a TID range scan since PostgreSQL 14) so that several workers share it; the last range is
//! open-ended, so rows on blocks added after planning are not lost. Units are handed out
//! largest first, which keeps the tail of the load short.

use std::fmt;

use crate::pg::TableName;

/// Heap blocks `[start, end)`; `end = None` runs to the end of the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockRange {
    pub start: u64,
    pub end: Option<u64>,
}

impl fmt::Display for BlockRange {
    /// The SQL condition selecting the range.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ctid >= '({},0)'::tid", self.start)?;
        if let Some(end) = self.end {
            write!(f, " AND ctid < '({end},0)'::tid")?;
        }
        Ok(())
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkItem {
    /// Index of the table in the caller's list.
    pub table: usize,
    pub name: TableName,
    pub chunk: i32,
    pub chunks: i32,
    /// `None`: the whole table.
    pub range: Option<BlockRange>,
    pub est_bytes: u64,
}

impl WorkItem {
    pub fn whole_table(&self) -> bool {
        self.range.is_none()
    }
}

#[derive(Clone, Copy, Debug)]
pub struct PlanOptions {
    pub workers: usize,
    /// Split tables larger than this; 0 never splits.
    pub split_bytes: u64,
    /// Ranges are read with TID range scans (PostgreSQL 14, the oldest source accepted).
    pub block_size: u64,
}

/// Chunks for one table of `bytes` bytes.
pub fn chunk_count(bytes: u64, o: &PlanOptions) -> u64 {
    if o.split_bytes == 0 || bytes <= o.split_bytes {
        return 1;
    }
    let by_size = bytes.div_ceil(o.split_bytes);
    let blocks = (bytes / o.block_size.max(1)).max(1);
    by_size.max(o.workers as u64).min(blocks).clamp(1, 1024)
}

pub fn plan(tables: &[(TableName, u64)], o: &PlanOptions) -> Vec<WorkItem> {
    let mut items = Vec::new();
    for (i, (name, bytes)) in tables.iter().enumerate() {
        let n = chunk_count(*bytes, o);
        if n == 1 {
            items.push(WorkItem {
                table: i,
                name: name.clone(),
                chunk: 0,
                chunks: 1,
                range: None,
                est_bytes: *bytes,
            });
            continue;
        }
        let blocks = bytes / o.block_size.max(1);
        for c in 0..n {
            let start = blocks * c / n;
            let end = (c + 1 < n).then(|| blocks * (c + 1) / n);
            items.push(WorkItem {
                table: i,
                name: name.clone(),
                chunk: c as i32,
                chunks: n as i32,
                range: Some(BlockRange { start, end }),
                est_bytes: bytes / n,
            });
        }
    }
    // Largest first; stable, so chunks of one table stay in order among equals.
    items.sort_by_key(|i| std::cmp::Reverse(i.est_bytes));
    items
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: u64 = 1 << 20;

    fn opts(workers: usize, split: u64) -> PlanOptions {
        PlanOptions {
            workers,
            split_bytes: split,
            block_size: 8192,
        }
    }

    #[test]
    fn small_tables_are_whole_and_largest_go_first() {
        let t = |n: &str, b| (TableName::new("public", n), b);
        let items = plan(
            &[t("a", 10 * MB), t("b", 300 * MB), t("c", 0)],
            &opts(4, 1024 * MB),
        );
        let names: Vec<_> = items.iter().map(|i| i.name.name.as_str()).collect();
        assert_eq!(names, ["b", "a", "c"]);
        assert!(items.iter().all(WorkItem::whole_table));
    }

    #[test]
    fn big_tables_cover_every_block_exactly_once() {
        let bytes = 2500 * MB + 12345;
        let items = plan(&[(TableName::new("s", "big"), bytes)], &opts(2, 1024 * MB));
        assert_eq!(items.len(), 3);
        let mut ranges: Vec<_> = items.iter().map(|i| i.range.unwrap()).collect();
        ranges.sort_by_key(|r| r.start);
        assert_eq!(ranges[0].start, 0);
        for w in ranges.windows(2) {
            assert_eq!(w[0].end, Some(w[1].start), "gap or overlap");
        }
        assert_eq!(
            ranges.last().unwrap().end,
            None,
            "last range must be open-ended"
        );
        assert!(items.iter().all(|i| i.chunks == 3));
    }

    #[test]
    fn one_big_table_uses_every_worker() {
        assert_eq!(chunk_count(1100 * MB, &opts(8, 1024 * MB)), 8);
        assert_eq!(chunk_count(1100 * MB, &opts(1, 1024 * MB)), 2);
    }

    #[test]
    fn splitting_can_be_turned_off() {
        assert_eq!(chunk_count(100_000 * MB, &opts(8, 0)), 1);
        assert!(chunk_count(100_000 * MB, &opts(8, MB)) > 1);
    }

    #[test]
    fn range_sql() {
        let r = BlockRange {
            start: 5,
            end: Some(9),
        };
        assert_eq!(
            r.to_string(),
            "ctid >= '(5,0)'::tid AND ctid < '(9,0)'::tid"
        );
        let r = BlockRange {
            start: 9,
            end: None,
        };
        assert_eq!(r.to_string(), "ctid >= '(9,0)'::tid");
    }
}
