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
//!
//! [`Writeset`] (the rows a batch writes) lives here too: it decides whether two batches may
//! run at once on two target sessions (see `super::apply`).
//!
//! Both are checked against a model of the target (`tests.rs`): thousands of random
//! sequences of inserts, updates with unchanged columns, key changes and deletes, buffered
//! and sent in parts, leave it as the changes applied one by one would, and two batches
//! whose writesets do not conflict leave it the same in either order.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, BuildHasherDefault, Hash, Hasher};
use std::sync::{Arc, LazyLock};

use bytes::Bytes;

use super::relation::RelInfo;

/// A row's identity key values, in key-column order. A key of one column (the usual case)
/// is held in place: no allocation per change.
pub type Key = smallvec::SmallVec<[Option<Bytes>; 1]>;

/// Which columns of a table a change names (the columns it sets, or the old values it
/// matches on), one flag per column in column order; held in place up to 16 columns.
pub type Mask = smallvec::SmallVec<[bool; 16]>;

/// The hasher for keys: fast (the daemon hashes the key of every change it receives),
/// and seeded at random per process, so that keys chosen to collide cannot be built ahead.
type KeyHasher = foldhash::fast::RandomState;

/// A key's hash, the same for every caller in the process. Maps and sets of the apply hold
/// these rather than the keys (no copies): where two keys share a hash, the worst outcome is
/// a merge not made or a run ended early.
pub fn key_hash<'a>(relid: u32, key: impl ExactSizeIterator<Item = &'a Option<Bytes>>) -> u64 {
    static SEED: LazyLock<KeyHasher> = LazyLock::new(KeyHasher::default);
    let mut h = SEED.build_hasher();
    relid.hash(&mut h);
    key.len().hash(&mut h);
    for v in key {
        v.hash(&mut h);
    }
    h.finish()
}

/// A set of [`key_hash`]es.
pub type KeySet = HashSet<u64, BuildHasherDefault<Prehashed>>;

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
        set: Mask,
        row: Vec<Option<Bytes>>,
        old_key: Option<Key>,
        new_key: Key,
    },
    Delete(Key),
    /// REPLICA IDENTITY FULL: SET values, then the old values of the `old` columns.
    FullUpdate {
        old: Mask,
        set: Mask,
        values: Vec<Option<Bytes>>,
    },
    FullDelete {
        old: Mask,
        values: Vec<Option<Bytes>>,
    },
}

/// The [`key_hash`]es of the rows a change writes: its key (the new one for an update), and
/// the old key of an update that sent one. None for a change found by its old values
/// (REPLICA IDENTITY FULL) and for an insert into a table without a key. Computed once as a
/// change enters the buffer, then used by the merge, the [`Writeset`] and the apply's runs.
pub type RowKeys = [Option<u64>; 2];

impl Change {
    fn row_keys(&self, rel: &RelInfo) -> RowKeys {
        match self {
            Change::Insert(row) if !rel.key.is_empty() => [
                Some(key_hash(rel.relid, rel.key.iter().map(|&i| &row[i]))),
                None,
            ],
            Change::Update {
                old_key, new_key, ..
            } => [
                Some(key_hash(rel.relid, new_key.iter())),
                old_key.as_ref().map(|k| key_hash(rel.relid, k.iter())),
            ],
            Change::Delete(key) => [Some(key_hash(rel.relid, key.iter())), None],
            _ => [None, None],
        }
    }

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
    entries: Entries,
    /// Rows whose latest entry is an insert or a plain update, by [`key_hash`] → that entry
    /// (which is checked to have the key: hashes may collide).
    latest: Latest,
    mergeable: bool,
}

impl TableBuf {
    /// Add a change; returns the bytes it added (0 when merged).
    fn push(&mut self, change: Change) -> usize {
        let keys = change.row_keys(&self.rel);
        if !self.mergeable {
            let n = change.bytes();
            self.entries.push((change, keys));
            return n;
        }
        match (&change, keys) {
            (
                Change::Update {
                    set, row, new_key, ..
                },
                [Some(h), _],
            ) if change.keeps_key() => {
                if let Some(&i) = self.latest.get(&h) {
                    let key_cols = &self.rel.key;
                    match &mut self.entries[i].0 {
                        Change::Insert(into)
                            if key_cols.iter().map(|&c| &into[c]).eq(new_key.iter()) =>
                        {
                            overwrite(into, None, set, row);
                            return 0;
                        }
                        Change::Update {
                            set: into_set,
                            row: into,
                            new_key: into_key,
                            ..
                        } if into_key == new_key => {
                            overwrite(into, Some(into_set), set, row);
                            return 0;
                        }
                        _ => {}
                    }
                }
                self.latest.insert(h, self.entries.len());
            }
            (Change::Insert(_), [Some(h), _]) => {
                self.latest.insert(h, self.entries.len());
            }
            // Whatever entry a removed hash pointed to, it can no longer be merged into:
            // safe even when that was another key's. (An update changing its key, a delete.)
            (Change::Update { .. } | Change::Delete(_), _) => {
                for h in keys.into_iter().flatten() {
                    self.latest.remove(&h);
                }
            }
            _ => {}
        }
        let n = change.bytes();
        self.entries.push((change, keys));
        n
    }
}

/// Copy the columns `set` of `row` into `into` (and into its mask, for an update).
fn overwrite(
    into: &mut [Option<Bytes>],
    mut into_set: Option<&mut Mask>,
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

/// A table's buffered changes, in order, each with its [`RowKeys`].
pub type TableChanges = (Arc<RelInfo>, Entries);

/// Changes, each with its [`RowKeys`].
pub type Entries = Vec<(Change, RowKeys)>;

/// The longest list of changes kept for reuse (a batch's worth, under 2 MB).
const SPARE_ENTRIES_MAX: usize = 8192;

/// Which rows of a table may take a merge: see [`TableBuf::latest`].
type Latest = HashMap<u64, usize, BuildHasherDefault<Prehashed>>;

/// The changes of the open target transaction not sent yet.
#[derive(Default)]
pub struct Buffer {
    tables: Vec<TableBuf>,
    /// (relation id, generation) → position in `tables`.
    index: HashMap<(u32, u64), usize, foldhash::fast::RandomState>,
    /// Maps of earlier batches' tables, emptied, with the room they grew to: the next
    /// batches take them rather than grow new ones from nothing, change by change.
    spare: Vec<Latest>,
    /// The same for the tables' lists of changes, handed back by the apply once sent
    /// ([`Buffer::recycle`]): growing a list of a few thousand changes of some 200 bytes
    /// each, batch after batch, took 3 % of the daemon's instructions in a bulk catch-up.
    spare_entries: Vec<Entries>,
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
                    entries: self.spare_entries.pop().unwrap_or_default(),
                    latest: self.spare.pop().unwrap_or_default(),
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
    pub fn take(&mut self) -> Vec<TableChanges> {
        let tables = std::mem::take(&mut self.tables);
        self.clear();
        tables
            .into_iter()
            .map(|mut t| {
                self.keep_spare(std::mem::take(&mut t.latest));
                (t.rel, t.entries)
            })
            .collect()
    }

    pub fn clear(&mut self) {
        let spare = std::mem::take(&mut self.spare);
        let spare_entries = std::mem::take(&mut self.spare_entries);
        let tables = std::mem::take(&mut self.tables);
        *self = Buffer {
            spare,
            spare_entries,
            ..Buffer::default()
        };
        for t in tables {
            self.keep_spare(t.latest);
        }
    }

    /// Take back a list of changes [`Buffer::take`] gave out, once its changes are sent, for
    /// a later table; a few, of bounded size.
    pub fn recycle(&mut self, mut entries: Entries) {
        if self.spare_entries.len() < 8 && entries.capacity() <= SPARE_ENTRIES_MAX {
            entries.clear();
            self.spare_entries.push(entries);
        }
    }

    /// Keep an emptied map for a later table; a few, of bounded size, for the busiest tables.
    fn keep_spare(&mut self, mut latest: Latest) {
        if self.spare.len() < 8 && latest.capacity() <= 2 * MAX_CHANGES {
            latest.clear();
            self.spare.push(latest);
        }
    }
}

/// The rows a batch writes, to tell whether two batches may run at once on two target
/// sessions: they may when neither can wait for a row lock or an index entry of the other.
/// Rows are told apart by their table and identity key. A table whose rows cannot be judged
/// that way (no key, REPLICA IDENTITY FULL, other unique or exclusion constraints, triggers
/// that fire, a TRUNCATE) makes the batch conflict with every other.
#[derive(Debug, Default)]
pub struct Writeset {
    /// [`key_hash`]es. A collision only makes two batches wait for each other.
    keys: KeySet,
    all: bool,
}

/// Most keys a writeset remembers; past that it stands for every row.
const MAX_WRITESET: usize = 250_000;

impl Writeset {
    /// A writeset that conflicts with every other.
    pub fn everything() -> Writeset {
        Writeset {
            keys: HashSet::default(),
            all: true,
        }
    }

    /// Add the rows of a change (`keys` from the buffer, see [`RowKeys`]).
    pub fn add(&mut self, rel: &RelInfo, change: &Change, keys: RowKeys) {
        if self.all {
            return;
        }
        if rel.full_identity()
            || rel.key.is_empty()
            || rel.extra_unique
            || rel.ordered
            || matches!(
                change,
                Change::FullUpdate { .. } | Change::FullDelete { .. }
            )
        {
            *self = Writeset::everything();
            return;
        }
        for h in keys.into_iter().flatten() {
            self.insert(h);
        }
    }

    /// An empty writeset with room for `n` keys.
    pub fn with_capacity(n: usize) -> Writeset {
        Writeset {
            keys: KeySet::with_capacity_and_hasher(n.min(MAX_WRITESET), Default::default()),
            all: false,
        }
    }

    fn insert(&mut self, hash: u64) {
        self.keys.insert(hash);
        if self.keys.len() > MAX_WRITESET {
            *self = Writeset::everything();
        }
    }

    /// Add another writeset's rows (taking it whole when this one is empty: a batch is
    /// usually sent in one part, and its keys are then not hashed into a second set).
    pub fn extend(&mut self, other: Writeset) {
        if other.all {
            *self = Writeset::everything();
        } else if !self.all && self.keys.is_empty() {
            self.keys = other.keys;
        } else if !self.all {
            self.keys.extend(other.keys);
            if self.keys.len() > MAX_WRITESET {
                *self = Writeset::everything();
            }
        }
    }

    pub fn conflicts(&self, other: &Writeset) -> bool {
        if self.all || other.all {
            return true;
        }
        let (small, big) = if self.keys.len() <= other.keys.len() {
            (&self.keys, &other.keys)
        } else {
            (&other.keys, &self.keys)
        };
        small.iter().any(|k| big.contains(k))
    }
}

/// A hasher for values that are hashes already.
#[derive(Default)]
pub struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

#[cfg(test)]
mod tests;
