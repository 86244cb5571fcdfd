//! From a decoded row change to the [`Change`] the batch buffer takes: which columns an
//! update may set, which key finds the row, and what the target cannot do. Pure functions of
//! a table's shape and the values, unit-tested below; [`super::Applier`] buffers what they
//! return.
//!
//! * An unchanged TOAST value is left out of the SET list, so the target keeps its copy; one
//!   where a value is needed (an insert, a key) is refused.
//! * A `GENERATED ALWAYS` identity column is never SET (PostgreSQL refuses it); a source that
//!   changed one (only `SET col = DEFAULT` can) is refused with what to do, rather than have
//!   the change lost.
//! * A key that did not change is not SET again: the WHERE clause already matches it, and
//!   setting it costs the target a cast per row. It is kept when nothing else is set, so the
//!   row is still updated, as on the source.
//! * REPLICA IDENTITY FULL: the old values of every column but unchanged TOAST find the row.
//! * NULL stays `None` and '' stays `Some("")`.

use bytes::Bytes;

use super::{ApplyError, bad_value};
use crate::cdc::coalesce::{Change, Key, Mask};
use crate::cdc::decode::{OldKind, Tuple, Value};
use crate::cdc::relation::RelInfo;

pub(super) fn insert(rel: &RelInfo, new: Tuple) -> Result<Change, ApplyError> {
    if new.len() != rel.columns.len() {
        return Err(bad_value(rel, "insert has the wrong number of columns"));
    }
    let mut values = Vec::with_capacity(new.len());
    for v in new {
        values.push(text_of(rel, v)?);
    }
    Ok(Change::Insert(values))
}

/// `None` when there is nothing the target can or must change (only kept TOAST values and
/// identity columns were sent).
pub(super) fn update(
    rel: &RelInfo,
    old: Option<(OldKind, Tuple)>,
    new: Tuple,
) -> Result<Option<Change>, ApplyError> {
    if new.len() != rel.columns.len() {
        return Err(bad_value(rel, "update has the wrong number of columns"));
    }
    let mut set = Mask::new();
    for (v, c) in new.iter().zip(&rel.columns) {
        set.push(!matches!(v, Value::UnchangedToast) && !c.always_identity);
    }
    if !set.contains(&true) {
        return Ok(None);
    }
    if rel.full_identity() {
        let mut set_values = Vec::with_capacity(new.len());
        for (v, s) in new.iter().zip(&set) {
            if *s {
                set_values.push(text_of(rel, v.clone())?);
            }
        }
        let Some((_, old)) = old else {
            return Err(bad_value(
                rel,
                "update of a REPLICA IDENTITY FULL table without its old row",
            ));
        };
        let (old_mask, old_values) = full_old(rel, old)?;
        check_identity_unchanged(rel, &old_mask, &old_values, &new)?;
        set_values.extend(old_values);
        return Ok(Some(Change::FullUpdate {
            old: old_mask,
            set,
            values: set_values,
        }));
    }
    if rel.key.is_empty() {
        return Err(bad_value(
            rel,
            "update of a table without replica identity columns",
        ));
    }
    let old_key = match &old {
        Some((_, old)) if old.len() == new.len() => Some(key_of(rel, old)?),
        Some(_) => return Err(bad_value(rel, "old key has the wrong number of columns")),
        None => None,
    };
    let new_key = match key_of(rel, &new) {
        Ok(k) => k,
        // A key column sent as unchanged TOAST did not change; the old key says it.
        Err(_) => old_key
            .clone()
            .ok_or_else(|| bad_value(rel, "update without a usable key"))?,
    };
    if let Some(k) = &old_key {
        let key_mask: Mask = (0..rel.columns.len())
            .map(|i| rel.key.contains(&i))
            .collect();
        check_identity_unchanged(rel, &key_mask, k, &new)?;
    }
    let key_kept = old_key.as_ref().is_none_or(|k| *k == new_key);
    if key_kept && (0..set.len()).any(|i| set[i] && !rel.columns[i].key) {
        for &i in &rel.key {
            set[i] = false;
        }
    }
    // Room for the key too: the statement's parameters are built in this vector.
    let mut row = Vec::with_capacity(new.len() + rel.key.len());
    for (v, s) in new.into_iter().zip(&set) {
        row.push(if *s { text_of(rel, v)? } else { None });
    }
    Ok(Some(Change::Update {
        set,
        row,
        old_key: old_key.filter(|k| *k != new_key),
        new_key,
    }))
}

/// `old`: the key columns (identity default or index; the others are NULL) or the whole old
/// row (identity full).
pub(super) fn delete(rel: &RelInfo, old: Tuple) -> Result<Change, ApplyError> {
    if old.len() != rel.columns.len() {
        return Err(bad_value(rel, "delete has the wrong number of columns"));
    }
    if rel.full_identity() {
        let (old, values) = full_old(rel, old)?;
        return Ok(Change::FullDelete { old, values });
    }
    if rel.key.is_empty() {
        return Err(bad_value(
            rel,
            "delete from a table without replica identity columns",
        ));
    }
    Ok(Change::Delete(key_of(rel, &old)?))
}

fn text_of(rel: &RelInfo, v: Value) -> Result<Option<Bytes>, ApplyError> {
    match v {
        Value::Null => Ok(None),
        Value::Text(b) => Ok(Some(b)),
        Value::UnchangedToast => Err(bad_value(
            rel,
            "unchanged TOAST value where a value is needed",
        )),
        Value::Binary(_) => Err(bad_value(rel, "binary value in a text-mode stream")),
    }
}

/// An identity column (GENERATED ALWAYS) cannot be changed by UPDATE on the target; the
/// source changes one only through `SET col = DEFAULT`. Say so rather than lose the change.
/// `mask`/`old` are the old columns present and their values, in column order.
fn check_identity_unchanged(
    rel: &RelInfo,
    mask: &[bool],
    old: &[Option<Bytes>],
    new: &Tuple,
) -> Result<(), ApplyError> {
    let mut old_values = old.iter();
    for (i, present) in mask.iter().enumerate() {
        if !present {
            continue;
        }
        let before = old_values.next();
        let c = &rel.columns[i];
        if c.always_identity
            && let (Some(before), Value::Text(after)) = (before, &new[i])
            && before.as_ref() != Some(after)
        {
            return Err(bad_value(
                rel,
                &format!(
                    "the source changed identity column {} (GENERATED ALWAYS), which UPDATE \
                     cannot do on the target; make it GENERATED BY DEFAULT on the target",
                    c.name
                ),
            ));
        }
    }
    Ok(())
}

/// Built by hand rather than collected through a `Result`: the daemon does this for every
/// change, and the generic collect into a `SmallVec` cost it some 190 instructions a key.
fn key_of(rel: &RelInfo, tuple: &Tuple) -> Result<Key, ApplyError> {
    let mut key = Key::new();
    for &i in &rel.key {
        key.push(match &tuple[i] {
            Value::Null => None,
            Value::Text(b) => Some(b.clone()),
            other => text_of(rel, other.clone())?,
        });
    }
    Ok(key)
}

/// Which old columns to match on (all but unchanged TOAST) and their values.
fn full_old(rel: &RelInfo, old: Tuple) -> Result<(Mask, Vec<Option<Bytes>>), ApplyError> {
    if old.len() != rel.columns.len() {
        return Err(bad_value(rel, "old row has the wrong number of columns"));
    }
    let mask: Mask = old.iter().map(|v| *v != Value::UnchangedToast).collect();
    let mut values = Vec::with_capacity(old.len());
    for v in old.into_iter().filter(|v| *v != Value::UnchangedToast) {
        values.push(text_of(rel, v)?);
    }
    Ok((mask, values))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cdc::relation::{ColInfo, Wire};
    use crate::pg::{Lsn, TableName};
    use smallvec::smallvec;

    /// `id` (key), `ref` (GENERATED ALWAYS AS IDENTITY), `note`, `doc`.
    fn rel(identity: u8) -> RelInfo {
        let c = |name: &str, key: bool, always_identity: bool| ColInfo {
            name: name.into(),
            cast: "text".into(),
            key,
            always_identity,
            wire: Wire::Text,
            indexable: false,
        };
        RelInfo {
            relid: 7,
            table: TableName::new("public", "t"),
            identity,
            columns: vec![
                c("id", identity != b'f', false),
                c("ref", false, true),
                c("note", false, false),
                c("doc", false, false),
            ],
            key: if identity == b'f' { vec![] } else { vec![0] },
            skip_before: Lsn(0),
            extra_unique: false,
            ordered: false,
            generation: 1,
        }
    }

    fn t(s: &str) -> Value {
        Value::Text(Bytes::copy_from_slice(s.as_bytes()))
    }

    fn b(s: &str) -> Option<Bytes> {
        Some(Bytes::copy_from_slice(s.as_bytes()))
    }

    fn message(e: ApplyError) -> String {
        e.to_string()
    }

    #[test]
    fn an_insert_keeps_null_and_empty_apart_and_needs_every_value() {
        let r = rel(b'd');
        let got = insert(&r, vec![t("1"), t("9"), Value::Null, t("")]).unwrap();
        assert_eq!(got, Change::Insert(vec![b("1"), b("9"), None, b("")]));
        let e = insert(&r, vec![t("1"), t("9"), Value::UnchangedToast, t("")]).unwrap_err();
        assert!(message(e).contains("unchanged TOAST"));
        let e = insert(&r, vec![t("1")]).unwrap_err();
        assert!(message(e).contains("wrong number of columns"));
        let e = insert(&r, vec![t("1"), t("9"), Value::Binary(Bytes::new()), t("")]).unwrap_err();
        assert!(message(e).contains("binary value"));
    }

    #[test]
    fn an_update_sets_neither_kept_toast_nor_identity_nor_an_unchanged_key() {
        let r = rel(b'd');
        let got = update(
            &r,
            None,
            vec![t("1"), t("9"), Value::UnchangedToast, t("x")],
        )
        .unwrap();
        assert_eq!(
            got,
            Some(Change::Update {
                set: smallvec![false, false, false, true],
                row: vec![None, None, None, b("x")],
                old_key: None,
                new_key: smallvec![b("1")],
            })
        );
        // Only kept TOAST values and the identity column: nothing to do.
        let kept = Value::UnchangedToast;
        let got = update(&r, None, vec![kept.clone(), t("9"), kept.clone(), kept]);
        assert_eq!(got.unwrap(), None);
    }

    #[test]
    fn a_changed_key_is_set_and_the_old_one_finds_the_row() {
        let r = rel(b'd');
        let old = Some((
            OldKind::Key,
            vec![t("1"), Value::Null, Value::Null, Value::Null],
        ));
        let got = update(&r, old, vec![t("2"), t("9"), t("n"), t("d")]).unwrap();
        assert_eq!(
            got,
            Some(Change::Update {
                set: smallvec![true, false, true, true],
                row: vec![b("2"), None, b("n"), b("d")],
                old_key: Some(smallvec![b("1")]),
                new_key: smallvec![b("2")],
            })
        );
        // An old key equal to the new one is no key change.
        let old = Some((
            OldKind::Key,
            vec![t("2"), Value::Null, Value::Null, Value::Null],
        ));
        let Some(Change::Update { set, old_key, .. }) =
            update(&r, old, vec![t("2"), t("9"), t("n"), t("d")]).unwrap()
        else {
            panic!("an update");
        };
        assert_eq!(
            (set.to_vec(), old_key),
            (vec![false, false, true, true], None)
        );
        // A key column sent as unchanged TOAST: the old key is the key.
        let old = Some((
            OldKind::Key,
            vec![t("3"), Value::Null, Value::Null, Value::Null],
        ));
        let Some(Change::Update { new_key, .. }) =
            update(&r, old, vec![Value::UnchangedToast, t("9"), t("n"), t("d")]).unwrap()
        else {
            panic!("an update");
        };
        assert_eq!(new_key.to_vec(), vec![b("3")]);
        let e = update(
            &r,
            None,
            vec![Value::UnchangedToast, t("9"), t("n"), t("d")],
        );
        assert!(message(e.unwrap_err()).contains("without a usable key"));
    }

    #[test]
    fn only_the_key_changing_still_updates_the_row() {
        let r = rel(b'd');
        let row = vec![t("5"), t("9"), Value::UnchangedToast, Value::UnchangedToast];
        let old = Some((
            OldKind::Key,
            vec![t("4"), Value::Null, Value::Null, Value::Null],
        ));
        let Some(Change::Update { set, .. }) = update(&r, old, row.clone()).unwrap() else {
            panic!("an update");
        };
        assert_eq!(set.to_vec(), vec![true, false, false, false]);
        // Same key, nothing else to set: the key is set to itself, as the source did.
        let Some(Change::Update { set, .. }) = update(&r, None, row).unwrap() else {
            panic!("an update");
        };
        assert_eq!(set.to_vec(), vec![true, false, false, false]);
    }

    #[test]
    fn a_changed_generated_always_identity_is_refused_with_what_to_do() {
        let r = rel(b'f');
        let old = Some((OldKind::Full, vec![t("1"), t("9"), t("n"), t("d")]));
        let e = update(&r, old, vec![t("1"), t("10"), t("n"), t("e")]).unwrap_err();
        let m = message(e);
        assert!(
            m.contains("identity column ref") && m.contains("GENERATED BY DEFAULT"),
            "{m}"
        );
        // Unchanged, it is simply not set.
        let old = Some((OldKind::Full, vec![t("1"), t("9"), t("n"), t("d")]));
        let got = update(&r, old, vec![t("1"), t("9"), t("n"), t("e")]).unwrap();
        assert!(
            matches!(got, Some(Change::FullUpdate { ref set, .. }) if set[..] == [true, false, true, true])
        );
    }

    #[test]
    fn replica_identity_full_matches_on_every_old_value_but_kept_toast() {
        let r = rel(b'f');
        let old = Some((
            OldKind::Full,
            vec![t("1"), t("9"), Value::UnchangedToast, Value::Null],
        ));
        let got = update(&r, old, vec![t("1"), t("9"), Value::UnchangedToast, t("")]).unwrap();
        assert_eq!(
            got,
            Some(Change::FullUpdate {
                old: smallvec![true, true, false, true],
                set: smallvec![true, false, false, true],
                // The SET values, then the old values to match.
                values: vec![b("1"), b(""), b("1"), b("9"), None],
            })
        );
        let e = update(&r, None, vec![t("1"), t("9"), t("n"), t("d")]).unwrap_err();
        assert!(message(e).contains("without its old row"));
        let got = delete(&r, vec![t("1"), t("9"), Value::UnchangedToast, Value::Null]).unwrap();
        assert_eq!(
            got,
            Change::FullDelete {
                old: smallvec![true, true, false, true],
                values: vec![b("1"), b("9"), None],
            }
        );
    }

    #[test]
    fn a_delete_is_found_by_its_key_and_a_keyless_table_is_refused() {
        let r = rel(b'd');
        let got = delete(&r, vec![t("1"), Value::Null, Value::Null, Value::Null]).unwrap();
        assert_eq!(got, Change::Delete(smallvec![b("1")]));
        let mut keyless = rel(b'n');
        keyless.key.clear();
        let e = delete(
            &keyless,
            vec![t("1"), Value::Null, Value::Null, Value::Null],
        );
        assert!(message(e.unwrap_err()).contains("without replica identity columns"));
        let e = update(&keyless, None, vec![t("1"), t("9"), t("n"), t("d")]);
        assert!(message(e.unwrap_err()).contains("without replica identity columns"));
        let e = delete(&r, vec![t("1")]);
        assert!(message(e.unwrap_err()).contains("wrong number of columns"));
    }
}
