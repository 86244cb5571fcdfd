//! The batch buffer: the changes of one target transaction, grouped per table and reduced to
//! their net effect before they are sent.
//!
//! ## Why this is safe
//!
//! A target transaction holds whole source transactions and commits at a source commit
//! boundary, so nothing between two target commits is ever visible on the target: only the
//! state after the batch counts, and that state is what this buffer preserves.
//!
//! * **Per table, order is kept.** Entries of one table are sent in the order they came.
//! * **Tables are independent during the apply.** Under `session_replication_role = replica`
//!   foreign-key triggers do not fire (the source checked those rows already), and unique and
//!   exclusion constraints are checked within one table. So the changes of a batch are sent
//!   table by table (in the order the tables first appeared), which turns pgbench-like
//!   transactions that touch four tables each into four long multi-row statements.
//!   A table with triggers or rules that *do* fire during the apply (`ENABLE ALWAYS` or
//!   `ENABLE REPLICA`) could observe that order, so its changes are never moved past another
//!   table's ([`Buffer::must_flush_before`]).
//! * **Merging.** A plain update of row *k* (its key unchanged) is folded into the most recent
//!   entry for *k* when that is an insert or a plain update of *k*: the merged entry carries
//!   the newest value of every column either of them set. Any other change that touches *k*
//!   (a delete, a key change from or to *k*) ends that, so no entry about *k* ever sits
//!   between the two. Rows updated over and over in one batch (pgbench's branches and
//!   tellers) then cost the target one row version per batch instead of one per update, and
//!   fewer dead versions for later statements to step over. Tables with unique or exclusion
//!   constraints besides the key, without a key (REPLICA IDENTITY FULL), or with triggers that
//!   fire, are never merged: each of their changes reaches the target as the source made it.
//!
//! The buffer is bounded ([`Buffer::full`]): a large source transaction is sent in parts as
//! it arrives, each part still grouped and merged.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;

use super::relation::RelInfo;

/// A row's identity key values, in key-column order.
pub type Key = Vec<Option<Bytes>>;

/// Buffered changes before the buffer is sent…
pub const MAX_CHANGES: usize = 50_000;
/// …and buffered bytes (values plus an estimate of the bookkeeping).
pub const MAX_BYTES: usize = 16 << 20;

/// One change to one table, as the apply received it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// Every column's value.
    Insert(Vec<Option<Bytes>>),
    /// An update through the identity key. `row` has an entry per column; those not in `set`
    /// (unchanged TOAST, identity columns) are ignored. `old_key` is sent when the key changed.
    Update {
        set: Vec<bool>,
        row: Vec<Option<Bytes>>,
        old_key: Option<Key>,
        new_key: Key,
    },
    Delete(Key),
    /// REPLICA IDENTITY FULL: SET values, then the old values of the `old` columns.
    FullUpdate {
        old: Vec<bool>,
        set: Vec<bool>,
        values: Vec<Option<Bytes>>,
    },
    FullDelete {
        old: Vec<bool>,
        values: Vec<Option<Bytes>>,
    },
}

impl Change {
    fn bytes(&self) -> usize {
        let values = |v: &[Option<Bytes>]| -> usize {
            v.iter()
                .map(|x| 32 + x.as_ref().map_or(0, |b| b.len()))
                .sum()
        };
        64 + match self {
            Change::Insert(row) => values(row),
            Change::Update {
                row,
                old_key,
                new_key,
                ..
            } => values(row) + values(new_key) + old_key.as_deref().map_or(0, values),
            Change::Delete(key) => values(key),
            Change::FullUpdate { values: v, .. } | Change::FullDelete { values: v, .. } => {
                values(v)
            }
        }
    }

    /// A plain update: through its key, which it leaves as it was.
    fn keeps_key(&self) -> bool {
        matches!(self, Change::Update { old_key, new_key, .. }
            if old_key.as_ref().is_none_or(|k| k == new_key))
    }
}

/// The changes of one table (one shape of it) in a batch.
struct TableBuf {
    rel: Arc<RelInfo>,
    entries: Vec<Change>,
    /// Rows whose latest entry is an insert or a plain update, by key → that entry.
    latest: HashMap<Key, usize>,
    mergeable: bool,
}

impl TableBuf {
    /// Add a change; returns the bytes it added (0 when merged).
    fn push(&mut self, change: Change) -> usize {
        if !self.mergeable {
            let n = change.bytes();
            self.entries.push(change);
            return n;
        }
        match &change {
            Change::Update {
                set, row, new_key, ..
            } if change.keeps_key() => {
                if let Some(&i) = self.latest.get(new_key) {
                    match &mut self.entries[i] {
                        Change::Insert(into) => {
                            overwrite(into, None, set, row);
                            return 0;
                        }
                        Change::Update {
                            set: into_set,
                            row: into,
                            ..
                        } => {
                            overwrite(into, Some(into_set), set, row);
                            return 0;
                        }
                        _ => {}
                    }
                }
                self.latest.insert(new_key.clone(), self.entries.len());
            }
            Change::Update {
                old_key, new_key, ..
            } => {
                if let Some(old) = old_key {
                    self.latest.remove(old);
                }
                self.latest.remove(new_key);
            }
            Change::Insert(row) => {
                let key: Key = self.rel.key.iter().map(|&i| row[i].clone()).collect();
                self.latest.insert(key, self.entries.len());
            }
            Change::Delete(key) => {
                self.latest.remove(key);
            }
            Change::FullUpdate { .. } | Change::FullDelete { .. } => {}
        }
        let n = change.bytes();
        self.entries.push(change);
        n
    }
}

/// Copy the columns `set` of `row` into `into` (and into its mask, for an update).
fn overwrite(
    into: &mut [Option<Bytes>],
    mut into_set: Option<&mut Vec<bool>>,
    set: &[bool],
    row: &[Option<Bytes>],
) {
    for (i, (&s, v)) in set.iter().zip(row).enumerate() {
        if s {
            into[i] = v.clone();
            if let Some(mask) = into_set.as_deref_mut() {
                mask[i] = true;
            }
        }
    }
}

/// The changes of the open target transaction not sent yet.
#[derive(Default)]
pub struct Buffer {
    tables: Vec<TableBuf>,
    /// (relation id, generation) → position in `tables`.
    index: HashMap<(u32, u64), usize>,
    /// Changes received (merged ones included) and bytes held.
    changes: usize,
    bytes: usize,
    /// Holds changes of a table that must keep its place among the others.
    ordered: bool,
}

impl Buffer {
    pub fn is_empty(&self) -> bool {
        self.tables.is_empty()
    }

    /// Whether the buffer must be sent before a change of `rel` is added: changes of a table
    /// with triggers that fire during the apply are not moved past another table's.
    pub fn must_flush_before(&self, rel: &RelInfo) -> bool {
        (rel.ordered || self.ordered)
            && self
                .tables
                .iter()
                .any(|t| (t.rel.relid, t.rel.generation) != (rel.relid, rel.generation))
    }

    pub fn push(&mut self, rel: &Arc<RelInfo>, change: Change) {
        let at = *self
            .index
            .entry((rel.relid, rel.generation))
            .or_insert_with(|| {
                self.tables.push(TableBuf {
                    rel: rel.clone(),
                    entries: Vec::new(),
                    latest: HashMap::new(),
                    mergeable: !rel.full_identity()
                        && !rel.key.is_empty()
                        && !rel.extra_unique
                        && !rel.ordered,
                });
                self.tables.len() - 1
            });
        self.ordered |= rel.ordered;
        self.changes += 1;
        self.bytes += self.tables[at].push(change);
    }

    /// Big enough to be sent now.
    pub fn full(&self) -> bool {
        self.changes >= MAX_CHANGES || self.bytes >= MAX_BYTES
    }

    /// Everything buffered, table by table, each table's entries in order; the buffer is
    /// empty afterwards.
    pub fn take(&mut self) -> impl Iterator<Item = (Arc<RelInfo>, Change)> + use<> {
        let tables = std::mem::take(&mut self.tables);
        *self = Buffer::default();
        tables
            .into_iter()
            .flat_map(|t| t.entries.into_iter().map(move |c| (t.rel.clone(), c)))
    }

    pub fn clear(&mut self) {
        *self = Buffer::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cdc::relation::ColInfo;
    use crate::pg::{Lsn, TableName};

    fn rel(relid: u32, extra_unique: bool, ordered: bool) -> Arc<RelInfo> {
        let c = |name: &str, key: bool| ColInfo {
            name: name.into(),
            cast: "text".into(),
            key,
            always_identity: false,
        };
        Arc::new(RelInfo {
            relid,
            table: TableName::new("app", format!("t{relid}")),
            identity: b'd',
            columns: vec![c("id", true), c("a", false), c("b", false)],
            key: vec![0],
            skip_before: Lsn(0),
            extra_unique,
            ordered,
            generation: 1,
        })
    }

    fn v(s: &str) -> Option<Bytes> {
        Some(Bytes::copy_from_slice(s.as_bytes()))
    }

    fn upd(id: &str, a: Option<&str>, b: Option<&str>) -> Change {
        Change::Update {
            set: vec![true, a.is_some(), b.is_some()],
            row: vec![v(id), a.and_then(v), b.and_then(v)],
            old_key: None,
            new_key: vec![v(id)],
        }
    }

    fn all(buf: &mut Buffer) -> Vec<(u32, Change)> {
        buf.take().map(|(r, c)| (r.relid, c)).collect()
    }

    #[test]
    fn repeated_updates_of_a_row_become_one_with_the_newest_values() {
        let t = rel(1, false, false);
        let mut buf = Buffer::default();
        buf.push(&t, upd("1", Some("x1"), Some("y1")));
        buf.push(&t, upd("2", Some("p"), Some("q")));
        // `b` unchanged (TOAST) this time: the earlier value stays.
        buf.push(&t, upd("1", Some("x2"), None));
        buf.push(&t, upd("1", Some("x3"), None));
        let out = all(&mut buf);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].1, upd("1", Some("x3"), Some("y1")));
        assert_eq!(out[1].1, upd("2", Some("p"), Some("q")));
        assert!(buf.is_empty());
    }

    #[test]
    fn an_update_folds_into_the_insert_of_its_row() {
        let t = rel(1, false, false);
        let mut buf = Buffer::default();
        buf.push(&t, Change::Insert(vec![v("1"), v("a"), None]));
        buf.push(&t, upd("1", None, Some("b")));
        assert_eq!(
            all(&mut buf),
            vec![(1, Change::Insert(vec![v("1"), v("a"), v("b")]))]
        );
    }

    #[test]
    fn nothing_merges_across_a_delete_or_a_key_change() {
        let t = rel(1, false, false);
        let mut buf = Buffer::default();
        buf.push(&t, upd("1", Some("a"), None));
        buf.push(&t, Change::Delete(vec![v("1")]));
        buf.push(&t, Change::Insert(vec![v("1"), v("b"), None]));
        buf.push(&t, upd("1", Some("c"), None));
        // Row 1 moves to 9, and a new row 1 arrives: neither merges with what came before.
        buf.push(
            &t,
            Change::Update {
                set: vec![true, true, false],
                row: vec![v("9"), v("d"), None],
                old_key: Some(vec![v("1")]),
                new_key: vec![v("9")],
            },
        );
        buf.push(&t, upd("9", Some("e"), None));
        buf.push(&t, upd("1", Some("f"), None));
        let kinds: Vec<String> = all(&mut buf)
            .into_iter()
            .map(|(_, c)| match c {
                Change::Insert(r) => format!("I{:?}", r[1]),
                Change::Update { row, old_key, .. } => {
                    format!("U{}{:?}", if old_key.is_some() { "k" } else { "" }, row[1])
                }
                Change::Delete(_) => "D".into(),
                _ => "?".into(),
            })
            .collect();
        assert_eq!(
            kinds,
            [
                "USome(b\"a\")",
                "D",
                "ISome(b\"c\")",
                "UkSome(b\"d\")",
                "USome(b\"e\")",
                "USome(b\"f\")"
            ]
        );
    }

    #[test]
    fn tables_are_grouped_in_order_of_first_appearance() {
        let (a, b) = (rel(1, false, false), rel(2, false, false));
        let mut buf = Buffer::default();
        for i in 0..3 {
            buf.push(&a, upd(&format!("a{i}"), Some("x"), None));
            buf.push(&b, upd(&format!("b{i}"), Some("x"), None));
        }
        let rels: Vec<u32> = all(&mut buf).into_iter().map(|(r, _)| r).collect();
        assert_eq!(rels, [1, 1, 1, 2, 2, 2]);
    }

    #[test]
    fn tables_with_other_unique_constraints_or_firing_triggers_are_not_merged() {
        for t in [rel(1, true, false), rel(1, false, true)] {
            let mut buf = Buffer::default();
            buf.push(&t, upd("1", Some("a"), None));
            buf.push(&t, upd("1", Some("b"), None));
            assert_eq!(all(&mut buf).len(), 2);
        }
    }

    #[test]
    fn a_table_with_firing_triggers_keeps_its_place_among_the_others() {
        let (plain, trig) = (rel(1, false, false), rel(2, false, true));
        let mut buf = Buffer::default();
        assert!(!buf.must_flush_before(&trig));
        buf.push(&plain, upd("1", Some("a"), None));
        assert!(buf.must_flush_before(&trig));
        all(&mut buf);
        buf.push(&trig, upd("1", Some("a"), None));
        assert!(!buf.must_flush_before(&trig));
        assert!(buf.must_flush_before(&plain));
    }

    #[test]
    fn the_buffer_says_when_it_is_full() {
        let t = rel(1, false, false);
        let mut buf = Buffer::default();
        let big = "x".repeat(1 << 20);
        for i in 0..15 {
            buf.push(&t, upd(&i.to_string(), Some(&big), None));
            assert!(!buf.full());
        }
        buf.push(&t, upd("15", Some(&big), None));
        assert!(buf.full());
        buf.clear();
        for i in 0..MAX_CHANGES {
            // Merged changes count too: a huge transaction is sent in parts however it folds.
            buf.push(&t, upd(if i % 2 == 0 { "1" } else { "2" }, Some("x"), None));
        }
        assert!(buf.full());
    }
}
