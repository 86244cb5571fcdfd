//! The buffer and the writesets: examples, then properties against a model of the target.

use super::*;
use crate::cdc::relation::ColInfo;
use crate::pg::{Lsn, TableName};
use smallvec::smallvec;

fn rel(relid: u32, extra_unique: bool, ordered: bool) -> Arc<RelInfo> {
    let c = |name: &str, key: bool| ColInfo {
        name: name.into(),
        cast: "text".into(),
        key,
        always_identity: false,
        wire: crate::cdc::relation::Wire::Text,
        indexable: false,
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
        set: smallvec![true, a.is_some(), b.is_some()],
        row: vec![v(id), a.and_then(v), b.and_then(v)],
        old_key: None,
        new_key: smallvec![v(id)],
    }
}

fn all(buf: &mut Buffer) -> Vec<(u32, Change)> {
    buf.take()
        .into_iter()
        .flat_map(|(r, changes)| changes.into_iter().map(move |(c, _)| (r.relid, c)))
        .collect()
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
    buf.push(&t, Change::Delete(smallvec![v("1")]));
    buf.push(&t, Change::Insert(vec![v("1"), v("b"), None]));
    buf.push(&t, upd("1", Some("c"), None));
    // Row 1 moves to 9, and a new row 1 arrives: neither merges with what came before.
    buf.push(
        &t,
        Change::Update {
            set: smallvec![true, true, false],
            row: vec![v("9"), v("d"), None],
            old_key: Some(smallvec![v("1")]),
            new_key: smallvec![v("9")],
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
fn a_recycled_list_of_changes_comes_back_empty_and_is_reused() {
    let t = rel(1, false, false);
    let mut buf = Buffer::default();
    buf.push(&t, upd("1", Some("x"), Some("y")));
    buf.push(&t, upd("2", Some("p"), Some("q")));
    let (_, entries) = buf.take().pop().unwrap();
    let room = entries.as_ptr();
    buf.recycle(entries);
    buf.push(&t, upd("3", Some("r"), Some("s")));
    let (_, entries) = buf.take().pop().unwrap();
    // The same allocation, holding only what came after it was recycled.
    assert_eq!(entries.as_ptr(), room);
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].0, upd("3", Some("r"), Some("s")));
    // A list too long to keep is let go of.
    buf.recycle(Vec::with_capacity(SPARE_ENTRIES_MAX + 1));
    assert!(buf.spare_entries.is_empty());
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
fn writesets_conflict_on_a_shared_row_or_on_tables_they_cannot_judge() {
    let (a, b) = (rel(1, false, false), rel(2, false, false));
    let set = |changes: &[(&Arc<RelInfo>, Change)]| {
        let mut w = Writeset::default();
        for (r, c) in changes {
            w.add(r, c, c.row_keys(r));
        }
        w
    };
    let one = set(&[
        (&a, upd("1", Some("x"), None)),
        (&b, upd("7", Some("x"), None)),
    ]);
    let other_rows = set(&[
        (&a, upd("2", Some("x"), None)),
        (&b, upd("1", Some("x"), None)),
    ]);
    assert!(!one.conflicts(&other_rows) && !other_rows.conflicts(&one));
    // The same key in the same table, whatever the change.
    for c in [
        upd("1", None, Some("y")),
        Change::Delete(smallvec![v("1")]),
        Change::Insert(vec![v("1"), None, None]),
        Change::Update {
            set: smallvec![true, false, false],
            row: vec![v("5"), None, None],
            old_key: Some(smallvec![v("1")]),
            new_key: smallvec![v("5")],
        },
    ] {
        assert!(one.conflicts(&set(&[(&a, c)])));
    }
    // Tables judged by something other than their key conflict with everything.
    for r in [rel(3, true, false), rel(3, false, true)] {
        assert!(one.conflicts(&set(&[(&r, upd("99", Some("x"), None))])));
    }
    assert!(Writeset::everything().conflicts(&Writeset::default()));
    let mut grown = Writeset::default();
    grown.extend(other_rows);
    assert!(!grown.conflicts(&one));
    grown.extend(set(&[(&b, upd("7", None, None))]));
    assert!(grown.conflicts(&one));
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

/// Tables as a model of the target: key value → row, per relation id.
type Model = HashMap<u32, HashMap<Option<Bytes>, Vec<Option<Bytes>>>>;

/// Apply one change to the model the way the target's apply does, refusing what the
/// target would refuse or silently miss (an insert of a row already there, an update or
/// delete of a row not there).
fn apply_to(model: &mut Model, relid: u32, change: &Change) -> Result<(), String> {
    let rows = model.entry(relid).or_default();
    match change {
        Change::Insert(row) => {
            if rows.insert(row[0].clone(), row.clone()).is_some() {
                return Err(format!("t{relid}: insert of {:?}, already there", row[0]));
            }
        }
        Change::Update {
            set,
            row,
            old_key,
            new_key,
        } => {
            let by = old_key.as_ref().unwrap_or(new_key);
            let mut current = rows
                .remove(&by[0])
                .ok_or_else(|| format!("t{relid}: update of {:?}, not there", by[0]))?;
            for (i, v) in row.iter().enumerate() {
                if set[i] {
                    current[i] = v.clone();
                }
            }
            if rows.insert(current[0].clone(), current).is_some() {
                return Err(format!("t{relid}: key change onto {:?}", new_key[0]));
            }
        }
        Change::Delete(key) => {
            rows.remove(&key[0])
                .ok_or_else(|| format!("t{relid}: delete of {:?}, not there", key[0]))?;
        }
        Change::FullUpdate { .. } | Change::FullDelete { .. } => unreachable!(),
    }
    Ok(())
}

fn apply_taken(model: &mut Model, taken: Vec<TableChanges>) -> Result<(), String> {
    for (rel, entries) in taken {
        for (c, _) in &entries {
            apply_to(model, rel.relid, c)?;
        }
    }
    Ok(())
}

/// A deterministic generator (xorshift64*), so that a failing case can be replayed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

/// A random change the source could have made to `rows` (the source's current state of
/// one table): inserts of absent keys, updates with columns left out (unchanged TOAST),
/// key changes (sending the old key, sometimes equal to the new), deletes; NULL and ''.
fn random_change(r: &mut Rng, rows: &HashMap<Option<Bytes>, Vec<Option<Bytes>>>) -> Change {
    let value = |r: &mut Rng| match r.below(5) {
        0 => None,
        1 => v(""),
        n => v(&format!("v{}", n * 100 + r.below(100))),
    };
    let key = |r: &mut Rng| v(&r.below(12).to_string());
    let k = key(r);
    if !rows.contains_key(&k) {
        return Change::Insert(vec![k, value(r), value(r)]);
    }
    match r.below(10) {
        0..=5 => {
            let set = smallvec![true, r.below(3) > 0, r.below(3) > 0];
            let row = vec![k.clone(), value(r), value(r)];
            Change::Update {
                set,
                row,
                old_key: (r.below(6) == 0).then(|| smallvec![k.clone()]),
                new_key: smallvec![k],
            }
        }
        6 | 7 => {
            let to = key(r);
            if rows.contains_key(&to) && to != k {
                return Change::Delete(smallvec![k]);
            }
            Change::Update {
                set: smallvec![true, r.below(2) == 0, false],
                row: vec![to.clone(), value(r), None],
                old_key: Some(smallvec![k]),
                new_key: smallvec![to],
            }
        }
        _ => Change::Delete(smallvec![k]),
    }
}

/// Random source transactions over three tables (two mergeable, one with another unique
/// constraint), buffered and sent in parts at random points: the target ends the same as
/// after every change applied one by one, and never meets a change it would refuse or
/// miss. The buffer's merging and grouping against a model of the target, 2 000 cases.
#[test]
fn the_buffer_keeps_the_net_effect_of_any_sequence_of_changes() {
    let tables = [
        rel(1, false, false),
        rel(2, false, false),
        rel(3, true, false),
    ];
    for case in 0..2_000u64 {
        let mut r = Rng(0x9e37_79b9_7f4a_7c15 ^ (case + 1).wrapping_mul(0xff51_afd7_ed55_8ccd));
        let (mut source, mut target) = (Model::new(), Model::new());
        let mut buf = Buffer::default();
        let mut log = Vec::new();
        for _ in 0..r.below(60) + 1 {
            let t = &tables[r.below(3) as usize];
            let change = random_change(&mut r, source.entry(t.relid).or_default());
            apply_to(&mut source, t.relid, &change).unwrap();
            log.push((t.relid, change.clone()));
            buf.push(t, change);
            if r.below(25) == 0 {
                apply_taken(&mut target, buf.take())
                    .unwrap_or_else(|e| panic!("case {case}: {e}; changes {log:#?}"));
            }
        }
        apply_taken(&mut target, buf.take())
            .unwrap_or_else(|e| panic!("case {case}: {e}; changes {log:#?}"));
        source.retain(|_, rows| !rows.is_empty());
        target.retain(|_, rows| !rows.is_empty());
        assert_eq!(source, target, "case {case}: changes {log:#?}");
    }
}

/// Two consecutive batches whose writesets do not conflict may run side by side: applied
/// in either order (or interleaved table by table) they leave the target the same, and
/// neither meets a row the other has not written yet. 2 000 random pairs of batches,
/// from a shared starting state.
#[test]
fn batches_whose_writesets_do_not_conflict_commute() {
    let tables = [rel(1, false, false), rel(2, false, false)];
    let mut independent = 0;
    for case in 0..2_000u64 {
        let mut r = Rng(0x2545_f491_4f6c_dd1d ^ (case + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let mut source = Model::new();
        for _ in 0..r.below(20) {
            let t = &tables[r.below(2) as usize];
            let change = random_change(&mut r, source.entry(t.relid).or_default());
            apply_to(&mut source, t.relid, &change).unwrap();
        }
        let start = source.clone();
        let mut batch = || {
            let mut buf = Buffer::default();
            for _ in 0..r.below(6) + 1 {
                let t = &tables[r.below(2) as usize];
                let change = random_change(&mut r, source.entry(t.relid).or_default());
                apply_to(&mut source, t.relid, &change).unwrap();
                buf.push(t, change);
            }
            let taken = buf.take();
            let mut w = Writeset::default();
            for (rel, entries) in &taken {
                for (c, keys) in entries {
                    w.add(rel, c, *keys);
                }
            }
            (taken, w)
        };
        let (first, w1) = batch();
        let (second, w2) = batch();
        if w1.conflicts(&w2) {
            continue;
        }
        independent += 1;
        let mut target = start;
        apply_taken(&mut target, second)
            .and_then(|()| apply_taken(&mut target, first))
            .unwrap_or_else(|e| panic!("case {case}: {e}"));
        source.retain(|_, rows| !rows.is_empty());
        target.retain(|_, rows| !rows.is_empty());
        assert_eq!(source, target, "case {case}");
    }
    assert!(independent > 200, "only {independent} independent pairs");
}
