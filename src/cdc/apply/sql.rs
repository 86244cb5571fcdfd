//! The statements of the apply: a buffered change as a statement's kind and parameters, the
//! SQL for each kind (one row, or many rows through array parameters), and the parameters'
//! wire forms (text arrays, or binary integer arrays where both sides' column types allow).
//! Pure functions of a table's shape and the values, unit-tested below; the sessions that
//! send them are in `lane.rs`.

use bytes::{Bytes, BytesMut};
use tokio_postgres::types::{IsNull, ToSql, Type, to_sql_checked};

use super::{ApplyError, bad_value};
use crate::cdc::coalesce::{Change, Mask, RowKeys};
use crate::cdc::relation::{RelInfo, Wire};
use crate::pg::{quote_ident, quote_literal};

/// A text value (or NULL) as an SQL literal.
pub(super) fn literal(rel: &RelInfo, v: &Option<Bytes>) -> Result<String, ApplyError> {
    match v {
        None => Ok("NULL".into()),
        Some(b) => Ok(quote_literal(utf8(rel, b)?)),
    }
}

/// A column of a run, bound to an array parameter in binary form: `text[]` with the values
/// as they came, or an integer array (see [`Wire`]). Each value is encoded as it joins the
/// run (so the change it came from is let go of at once, and sending is one copy); the
/// array's header is written when the statement is sent.
///
/// The body is a plain `Vec<u8>` sized up front from the first value (see
/// [`ArrayParam::new`]): appending a few fixed-size bytes to a `Vec` compiles to a store,
/// where `BytesMut` went through a `memcpy` call for each, and a run no longer grows its
/// arrays by reallocating (the daemon's instruction count for a million-row catch-up had
/// 6 % in those two; BENCHMARKS.md, session 33).
#[derive(Debug)]
pub(super) struct ArrayParam {
    wire: Wire,
    /// The elements so far, in the array's binary form: a length (-1 for NULL), then the
    /// value.
    body: Vec<u8>,
    len: i32,
    has_null: bool,
}

impl ArrayParam {
    /// An empty array, with room for `rows` elements like `sample` (the first value the run
    /// has for it; text values vary, so room for a quarter more).
    pub(super) fn new(wire: Wire, rows: usize, sample: Option<&[u8]>) -> ArrayParam {
        let per_row = 4 + match wire {
            Wire::Text => sample.map_or(12, |b| b.len() + b.len() / 4),
            Wire::Int2 => 2,
            Wire::Int4 => 4,
            Wire::Int8 => 8,
        };
        ArrayParam {
            wire,
            body: Vec::with_capacity(rows.saturating_mul(per_row).min(MAX_ARRAY_ROOM)),
            len: 0,
            has_null: false,
        }
    }

    /// Add a value (the text the stream sent, or NULL).
    pub(super) fn push(
        &mut self,
        v: Option<&[u8]>,
    ) -> Result<(), Box<dyn std::error::Error + Sync + Send>> {
        let Some(b) = v else {
            self.body.extend_from_slice(&(-1i32).to_be_bytes());
            self.has_null = true;
            self.len += 1;
            return Ok(());
        };
        match self.wire {
            Wire::Text => {
                self.body
                    .extend_from_slice(&i32::try_from(b.len())?.to_be_bytes());
                self.body.extend_from_slice(b);
            }
            Wire::Int2 => {
                self.body.extend_from_slice(&2i32.to_be_bytes());
                self.body
                    .extend_from_slice(&parse_int::<i16>(b)?.to_be_bytes());
            }
            Wire::Int4 => {
                self.body.extend_from_slice(&4i32.to_be_bytes());
                self.body
                    .extend_from_slice(&parse_int::<i32>(b)?.to_be_bytes());
            }
            Wire::Int8 => {
                self.body.extend_from_slice(&8i32.to_be_bytes());
                self.body
                    .extend_from_slice(&parse_int::<i64>(b)?.to_be_bytes());
            }
        }
        self.len = self
            .len
            .checked_add(1)
            .ok_or("too many rows in one array")?;
        Ok(())
    }

    fn element(&self) -> Type {
        match self.wire {
            Wire::Text => Type::TEXT,
            Wire::Int2 => Type::INT2,
            Wire::Int4 => Type::INT4,
            Wire::Int8 => Type::INT8,
        }
    }
}

/// The most room an array takes up front (a run of large values grows past it as needed).
const MAX_ARRAY_ROOM: usize = 4 << 20;

/// An integer's canonical text (what PostgreSQL's output function writes) as `T`: an
/// optional sign and decimal digits, nothing else. Read straight from the bytes (no UTF-8
/// check, no `str` parsing): the daemon does this for every integer value it applies.
pub(super) fn parse_int<T: TryFrom<i64>>(
    b: &[u8],
) -> Result<T, Box<dyn std::error::Error + Sync + Send>> {
    let bad = || -> Box<dyn std::error::Error + Sync + Send> {
        format!(
            "the stream sent {:?} for an integer column",
            String::from_utf8_lossy(&b[..b.len().min(40)])
        )
        .into()
    };
    let (negative, digits) = match b {
        [b'-', rest @ ..] => (true, rest),
        [b'+', rest @ ..] => (false, rest),
        _ => (false, b),
    };
    if digits.is_empty() {
        return Err(bad());
    }
    // Accumulated as a negative number, which also holds i64::MIN.
    let mut n: i64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return Err(bad());
        }
        n = n
            .checked_mul(10)
            .and_then(|n| n.checked_sub(i64::from(d - b'0')))
            .ok_or_else(bad)?;
    }
    let n = if negative {
        n
    } else {
        n.checked_neg().ok_or_else(bad)?
    };
    T::try_from(n).map_err(|_| bad())
}

impl ToSql for ArrayParam {
    /// PostgreSQL's binary array: dimensions (one), whether it holds NULLs, the element
    /// type, the dimension's length and lower bound (1), then the elements.
    fn to_sql(
        &self,
        _: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        use bytes::BufMut;
        out.reserve(20 + self.body.len());
        out.put_i32(1);
        out.put_i32(i32::from(self.has_null));
        out.put_u32(self.element().oid());
        out.put_i32(self.len);
        out.put_i32(1);
        out.extend_from_slice(&self.body);
        Ok(IsNull::No)
    }
    fn accepts(ty: &Type) -> bool {
        [
            Type::TEXT_ARRAY,
            Type::INT2_ARRAY,
            Type::INT4_ARRAY,
            Type::INT8_ARRAY,
        ]
        .contains(ty)
    }
    to_sql_checked!();
}

pub(super) fn utf8<'a>(rel: &RelInfo, b: &'a Bytes) -> Result<&'a str, ApplyError> {
    std::str::from_utf8(b).map_err(|_| bad_value(rel, "a value is not valid UTF-8"))
}

/// What a statement does, for one table shape. Masks say which columns take part.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) enum Kind {
    Insert,
    /// Identity key; `set` excludes unchanged TOAST columns.
    Update {
        set: Mask,
    },
    Delete,
    /// REPLICA IDENTITY FULL: match the first row equal on the `old` columns and NULL in
    /// the `nulls` ones (their old values, so an index can find the row: see [`full_match`]).
    FullUpdate {
        old: Mask,
        nulls: Mask,
        set: Mask,
    },
    FullDelete {
        old: Mask,
        nulls: Mask,
    },
}

/// How a statement takes its rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) enum Form {
    /// One row, its values as text parameters (run by name in scripts).
    Row,
    /// Many rows through array parameters, each found by its key (an index lookup per row).
    Rows,
    /// Many rows whose integer keys lie close together (see [`range_key`]): the same arrays,
    /// and the table read once over the keys' range, joined to the rows by hashing.
    Range,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) struct StmtKey {
    pub(super) relid: u32,
    pub(super) generation: u64,
    pub(super) kind: Kind,
    pub(super) form: Form,
}

/// Runs of fewer rows never take [`Form::Range`]: an index lookup each costs next to nothing.
pub(super) const RANGE_MIN_ROWS: usize = 32;

/// The position of the key's value among a run's values (its last) when runs of `kind` on
/// `rel` may take [`Form::Range`]: a key of one integer column sent as an integer array,
/// updates that leave it unchanged or deletes, and a table whose rows may be changed in any
/// order within a statement. The range form changes rows in the table's order rather than
/// the run's; that is the same result only where no unique or exclusion constraint besides
/// the key is checked row by row (updates of such tables do not even make runs) and no
/// trigger fires during the apply.
pub(super) fn range_key(rel: &RelInfo, kind: &Kind, values: usize) -> Option<usize> {
    let &[k] = rel.key.as_slice() else {
        return None;
    };
    let unchanged = match kind {
        Kind::Update { set } => !set.get(k).copied().unwrap_or(true),
        Kind::Delete => true,
        _ => false,
    };
    (unchanged
        && !rel.extra_unique
        && !rel.ordered
        && rel.columns[k].wire != Wire::Text
        && values > 0)
        .then(|| values - 1)
}

/// The [`super::super::coalesce::key_hash`]es of the keys an update touches (a run must not touch a key twice).
pub(super) type Touched = [Option<u64>; 2];

/// A buffered change as one statement's kind and parameters (SET or inserted values, then
/// the key or old values), and the keys it touches.
pub(super) fn statement_of(change: Change, keys: RowKeys) -> (Kind, Vec<Option<Bytes>>, Touched) {
    match change {
        Change::Insert(row) => (Kind::Insert, row, [None; 2]),
        Change::Update {
            set,
            mut row,
            old_key,
            new_key,
        } => {
            let where_key = old_key.unwrap_or(new_key);
            // The SET values, in place, then the key.
            let mut at = 0;
            row.retain(|_| {
                at += 1;
                set[at - 1]
            });
            row.extend(where_key);
            (Kind::Update { set }, row, keys)
        }
        Change::Delete(key) => (Kind::Delete, key.into_vec(), [None; 2]),
        Change::FullUpdate {
            old,
            set,
            mut values,
        } => {
            let from = set.iter().filter(|&&s| s).count();
            let (old, nulls) = split_nulls(old, &mut values, from);
            (Kind::FullUpdate { old, nulls, set }, values, [None; 2])
        }
        Change::FullDelete { old, mut values } => {
            let (old, nulls) = split_nulls(old, &mut values, 0);
            (Kind::FullDelete { old, nulls }, values, [None; 2])
        }
    }
}

/// The old values of a REPLICA IDENTITY FULL change (in `values` from `from` on, one per
/// `old` column) without their NULLs, which are matched by `IS NULL` instead: the columns
/// matched by value, and those matched as NULL.
fn split_nulls(mut old: Mask, values: &mut Vec<Option<Bytes>>, from: usize) -> (Mask, Mask) {
    let mut nulls: Mask = smallvec::smallvec![false; old.len()];
    let mut at = from;
    for i in 0..old.len() {
        if !old[i] {
            continue;
        }
        if values.get(at).is_some_and(Option::is_none) {
            values.remove(at);
            old[i] = false;
            nulls[i] = true;
        } else {
            at += 1;
        }
    }
    (old, nulls)
}

/// The column each parameter of a multi-row statement carries, in order (see
/// [`statement_of`] for the values and [`statement_sql`] for the statement).
pub(super) fn param_columns(rel: &RelInfo, kind: &Kind) -> Vec<usize> {
    match kind {
        Kind::Insert => (0..rel.columns.len()).collect(),
        Kind::Update { set } => (0..rel.columns.len())
            .filter(|&i| set[i])
            .chain(rel.key.iter().copied())
            .collect(),
        Kind::Delete => rel.key.clone(),
        // Changed one row at a time, never in a multi-row statement.
        Kind::FullUpdate { .. } | Kind::FullDelete { .. } => Vec::new(),
    }
}

/// The SQL of one statement. Parameters are text (`$n::text`) or arrays, in this order:
/// SET or inserted columns, then key or old-row columns; for [`Form::Range`], then the
/// lowest and the highest key (`int8`).
pub(super) fn statement_sql(rel: &RelInfo, kind: &Kind, form: Form) -> String {
    let t = rel.table.to_string();
    let all: Vec<usize> = (0..rel.columns.len()).collect();
    let picked =
        |mask: &[bool]| -> Vec<usize> { all.iter().copied().filter(|&i| mask[i]).collect() };
    let col = |i: usize| quote_ident(&rel.columns[i].name);
    let cast = |i: usize| rel.columns[i].cast.as_str();
    let array = |i: usize| rel.columns[i].wire.array_type();
    let mut n = 0;
    let mut param = || {
        n += 1;
        n
    };
    // How a multi-row statement matches the table's rows to the run's, by key. In the range
    // form, `+ 0` keeps the planner from looking up each row through the index by the key
    // (a nested loop): it reads the index over the keys' range once and joins by hashing.
    let range = form == Form::Range;
    let key_conds = |param: &mut dyn FnMut() -> usize| -> String {
        let mut conds: Vec<String> = rel
            .key
            .iter()
            .map(|&i| match range {
                false => format!("t.{} = v.k{i}::{}", col(i), cast(i)),
                true => format!("(t.{} + 0) = (v.k{i}::{} + 0)", col(i), cast(i)),
            })
            .collect();
        if range {
            for &i in &rel.key {
                let (lo, hi) = (param(), param());
                conds.push(format!("t.{} BETWEEN ${lo}::int8 AND ${hi}::int8", col(i)));
            }
        }
        conds.join(" AND ")
    };
    let multi = form != Form::Row;
    match (kind, multi) {
        (Kind::Insert, false) => {
            let cols: Vec<String> = all.iter().map(|&i| col(i)).collect();
            let vals: Vec<String> = all
                .iter()
                .map(|&i| format!("${}::text::{}", param(), cast(i)))
                .collect();
            format!(
                "INSERT INTO {t} ({}){} VALUES ({})",
                cols.join(", "),
                overriding(rel),
                vals.join(", ")
            )
        }
        (Kind::Insert, true) => {
            let cols: Vec<String> = all.iter().map(|&i| col(i)).collect();
            let arrays: Vec<String> = all
                .iter()
                .map(|&i| format!("${}::{}", param(), array(i)))
                .collect();
            let names: Vec<String> = all.iter().map(|i| format!("p{i}")).collect();
            let vals: Vec<String> = all
                .iter()
                .map(|&i| format!("v.p{i}::{}", cast(i)))
                .collect();
            format!(
                "INSERT INTO {t} ({}){} SELECT {} FROM {}",
                cols.join(", "),
                overriding(rel),
                vals.join(", "),
                unnested(&arrays, &names)
            )
        }
        (Kind::Update { set }, false) => {
            let sets: Vec<String> = picked(set)
                .into_iter()
                .map(|i| format!("{} = ${}::text::{}", col(i), param(), cast(i)))
                .collect();
            let conds: Vec<String> = rel
                .key
                .iter()
                .map(|&i| format!("{} = ${}::text::{}", col(i), param(), cast(i)))
                .collect();
            format!(
                "UPDATE ONLY {t} SET {} WHERE {}",
                sets.join(", "),
                conds.join(" AND ")
            )
        }
        (Kind::Update { set }, true) => {
            let set_cols = picked(set);
            let mut arrays = Vec::new();
            let mut names = Vec::new();
            for &i in &set_cols {
                arrays.push(format!("${}::{}", param(), array(i)));
                names.push(format!("p{i}"));
            }
            for &i in &rel.key {
                arrays.push(format!("${}::{}", param(), array(i)));
                names.push(format!("k{i}"));
            }
            let sets: Vec<String> = set_cols
                .iter()
                .map(|&i| format!("{} = v.p{i}::{}", col(i), cast(i)))
                .collect();
            format!(
                "UPDATE ONLY {t} AS t SET {} FROM {} WHERE {}",
                sets.join(", "),
                unnested(&arrays, &names),
                key_conds(&mut param)
            )
        }
        (Kind::Delete, false) => {
            let conds: Vec<String> = rel
                .key
                .iter()
                .map(|&i| format!("{} = ${}::text::{}", col(i), param(), cast(i)))
                .collect();
            format!("DELETE FROM ONLY {t} WHERE {}", conds.join(" AND "))
        }
        (Kind::Delete, true) => {
            let arrays: Vec<String> = rel
                .key
                .iter()
                .map(|&i| format!("${}::{}", param(), array(i)))
                .collect();
            let names: Vec<String> = rel.key.iter().map(|i| format!("k{i}")).collect();
            format!(
                "DELETE FROM ONLY {t} AS t USING {} WHERE {}",
                unnested(&arrays, &names),
                key_conds(&mut param)
            )
        }
        (Kind::FullUpdate { old, nulls, set }, _) => {
            let sets: Vec<String> = picked(set)
                .into_iter()
                .map(|i| format!("{} = ${}::text::{}", col(i), param(), cast(i)))
                .collect();
            let matched = full_match(rel, &picked(old), &picked(nulls), &mut param);
            format!(
                "UPDATE ONLY {t} SET {} WHERE ctid = {matched}",
                sets.join(", ")
            )
        }
        (Kind::FullDelete { old, nulls }, _) => {
            let matched = full_match(rel, &picked(old), &picked(nulls), &mut param);
            format!("DELETE FROM ONLY {t} WHERE ctid = {matched}")
        }
    }
}

/// The rows of a run: its array parameters side by side, as the relation `v` with a column
/// per array. Written as `unnest()`s in a subquery's select list rather than as
/// `unnest(a, b, ...)` in FROM: there each array is first copied into a tuplestore of its
/// own and the rows read back from them, while the select list hands the rows on as they are
/// made (the same rows in the same order, the arrays being of one length; the join plan is
/// the same). Measured on the target: 4–9 % less CPU for updates in 1000-row runs (see
/// BENCHMARKS.md, session 16).
fn unnested(arrays: &[String], names: &[String]) -> String {
    let cols: Vec<String> = arrays
        .iter()
        .zip(names)
        .map(|(a, n)| format!("unnest({a}) AS {n}"))
        .collect();
    format!("(SELECT {}) AS v", cols.join(", "))
}

pub(super) fn overriding(rel: &RelInfo) -> &'static str {
    if rel.columns.iter().any(|c| c.always_identity) {
        " OVERRIDING SYSTEM VALUE"
    } else {
        ""
    }
}

/// `(SELECT ctid ... LIMIT 1)` of the first row equal to the old values (`cols`, one
/// parameter each) and NULL in `nulls`. Values are compared in the target type's text form,
/// so types without an equality operator (json, point, xml) match too, and exactly (`1.0`
/// is not `1.00`). A column of a built-in type with a btree equality is compared with `=`
/// as well, and NULLs with `IS NULL`, both of which an index on the column can serve: a
/// table without a key then costs an index lookup per change rather than a scan of the
/// whole table (PostgreSQL 16's own apply looks for such an index too). Text-equal values
/// are `=`-equal for those types, so this never misses the row the text comparison finds.
pub(super) fn full_match(
    rel: &RelInfo,
    cols: &[usize],
    nulls: &[usize],
    param: &mut impl FnMut() -> usize,
) -> String {
    let t = rel.table.to_string();
    let conds: Vec<String> = cols
        .iter()
        .map(|&i| {
            let c = &rel.columns[i];
            let (name, v) = (
                quote_ident(&c.name),
                format!("(${}::text::{})", param(), c.cast),
            );
            let exact = format!("s.{name}::text = {v}::text");
            if c.indexable {
                format!("s.{name} = {v} AND {exact}")
            } else {
                exact
            }
        })
        .chain(
            nulls
                .iter()
                .map(|&i| format!("s.{} IS NULL", quote_ident(&rel.columns[i].name))),
        )
        .collect();
    let conds = if conds.is_empty() {
        "true".to_string()
    } else {
        conds.join(" AND ")
    };
    format!("(SELECT s.ctid FROM ONLY {t} AS s WHERE {conds} LIMIT 1)")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cdc::relation::ColInfo;
    use crate::pg::{Lsn, TableName};
    use fallible_iterator::FallibleIterator;
    use smallvec::smallvec;

    fn rel(identity: u8) -> RelInfo {
        let c = |name: &str, cast: &str, key: bool| ColInfo {
            name: name.into(),
            cast: cast.into(),
            key,
            always_identity: false,
            wire: Wire::Text,
            indexable: false,
        };
        RelInfo {
            relid: 1,
            table: TableName::new("app", "Odd \"name\""),
            identity,
            columns: vec![
                c("id", "integer", true),
                c("note", "text", false),
                c("doc", "jsonb", false),
            ],
            key: vec![0],
            skip_before: Lsn(0),
            extra_unique: false,
            ordered: false,
            generation: 1,
        }
    }

    #[test]
    fn statements_quote_names_and_number_parameters_in_order() {
        let r = rel(b'd');
        assert_eq!(
            statement_sql(&r, &Kind::Insert, Form::Row),
            "INSERT INTO \"app\".\"Odd \"\"name\"\"\" (\"id\", \"note\", \"doc\") VALUES ($1::text::integer, \
             $2::text::text, $3::text::jsonb)"
        );
        let upd = Kind::Update {
            set: smallvec![true, false, true],
        };
        assert_eq!(
            statement_sql(&r, &upd, Form::Row),
            "UPDATE ONLY \"app\".\"Odd \"\"name\"\"\" SET \"id\" = $1::text::integer, \"doc\" = \
             $2::text::jsonb WHERE \"id\" = $3::text::integer"
        );
        assert_eq!(
            statement_sql(&r, &upd, Form::Rows),
            "UPDATE ONLY \"app\".\"Odd \"\"name\"\"\" AS t SET \"id\" = v.p0::integer, \"doc\" = \
             v.p2::jsonb FROM (SELECT unnest($1::text[]) AS p0, unnest($2::text[]) AS p2, \
             unnest($3::text[]) AS k0) AS v WHERE t.\"id\" = v.k0::integer"
        );
        assert_eq!(
            statement_sql(&r, &Kind::Delete, Form::Rows),
            "DELETE FROM ONLY \"app\".\"Odd \"\"name\"\"\" AS t USING (SELECT unnest($1::text[]) AS k0) \
             AS v WHERE t.\"id\" = v.k0::integer"
        );
        assert_eq!(
            statement_sql(&r, &Kind::Insert, Form::Rows),
            "INSERT INTO \"app\".\"Odd \"\"name\"\"\" (\"id\", \"note\", \"doc\") SELECT v.p0::integer, \
             v.p1::text, v.p2::jsonb FROM (SELECT unnest($1::text[]) AS p0, unnest($2::text[]) AS p1, \
             unnest($3::text[]) AS p2) AS v"
        );
        // Integer columns of the same built-in type on both sides travel as integer arrays.
        let mut typed = rel(b'd');
        typed.columns[0].wire = Wire::Int4;
        assert_eq!(
            statement_sql(&typed, &upd, Form::Rows),
            "UPDATE ONLY \"app\".\"Odd \"\"name\"\"\" AS t SET \"id\" = v.p0::integer, \"doc\" = \
             v.p2::jsonb FROM (SELECT unnest($1::int4[]) AS p0, unnest($2::text[]) AS p2, \
             unnest($3::int4[]) AS k0) AS v WHERE t.\"id\" = v.k0::integer"
        );
        assert_eq!(param_columns(&typed, &upd), vec![0, 2, 0]);
        // Dense integer keys: the table read over their range, joined by hashing; the bounds
        // come after the arrays.
        let keep_key = Kind::Update {
            set: smallvec![false, true, true],
        };
        assert_eq!(
            statement_sql(&typed, &keep_key, Form::Range),
            "UPDATE ONLY \"app\".\"Odd \"\"name\"\"\" AS t SET \"note\" = v.p1::text, \"doc\" = \
             v.p2::jsonb FROM (SELECT unnest($1::text[]) AS p1, unnest($2::text[]) AS p2, \
             unnest($3::int4[]) AS k0) AS v WHERE (t.\"id\" + 0) = (v.k0::integer + 0) AND \
             t.\"id\" BETWEEN $4::int8 AND $5::int8"
        );
        assert_eq!(
            statement_sql(&typed, &Kind::Delete, Form::Range),
            "DELETE FROM ONLY \"app\".\"Odd \"\"name\"\"\" AS t USING (SELECT unnest($1::int4[]) AS k0) \
             AS v WHERE (t.\"id\" + 0) = (v.k0::integer + 0) AND t.\"id\" BETWEEN $2::int8 AND $3::int8"
        );
        // REPLICA IDENTITY FULL: NULL old values are matched by IS NULL and take no
        // parameter; a built-in type with a btree equality is compared with `=` as well.
        let mut full_rel = rel(b'f');
        full_rel.columns[0].indexable = true;
        let v = |s: &str| Some(Bytes::copy_from_slice(s.as_bytes()));
        let (kind, values, _) = statement_of(
            Change::FullDelete {
                old: smallvec![true, true, true],
                values: vec![v("7"), None, v("{}")],
            },
            [None; 2],
        );
        assert_eq!(
            kind,
            Kind::FullDelete {
                old: smallvec![true, false, true],
                nulls: smallvec![false, true, false],
            }
        );
        assert_eq!(values, vec![v("7"), v("{}")]);
        assert_eq!(
            statement_sql(&full_rel, &kind, Form::Row),
            "DELETE FROM ONLY \"app\".\"Odd \"\"name\"\"\" WHERE ctid = (SELECT s.ctid FROM ONLY \
             \"app\".\"Odd \"\"name\"\"\" AS s WHERE s.\"id\" = ($1::text::integer) AND \
             s.\"id\"::text = ($1::text::integer)::text AND s.\"doc\"::text = \
             ($2::text::jsonb)::text AND s.\"note\" IS NULL LIMIT 1)"
        );
        // An update: its SET values come first, and only the old values are split.
        let (kind, values, _) = statement_of(
            Change::FullUpdate {
                old: smallvec![true, true, false],
                set: smallvec![false, true, false],
                values: vec![None, v("1"), None],
            },
            [None; 2],
        );
        assert_eq!(
            kind,
            Kind::FullUpdate {
                old: smallvec![true, false, false],
                nulls: smallvec![false, true, false],
                set: smallvec![false, true, false],
            }
        );
        assert_eq!(values, vec![None, v("1")]);
        assert_eq!(
            statement_sql(&full_rel, &kind, Form::Row),
            "UPDATE ONLY \"app\".\"Odd \"\"name\"\"\" SET \"note\" = $1::text::text WHERE ctid = \
             (SELECT s.ctid FROM ONLY \"app\".\"Odd \"\"name\"\"\" AS s WHERE s.\"id\" = \
             ($2::text::integer) AND s.\"id\"::text = ($2::text::integer)::text AND \
             s.\"note\" IS NULL LIMIT 1)"
        );
    }

    /// Which runs may read the table over their keys' range: a single integer key that the
    /// run does not change, on a table whose rows may change in any order.
    #[test]
    fn only_runs_on_an_unchanged_integer_key_of_an_order_free_table_take_the_range_form() {
        let int8 = || {
            let mut r = rel(b'd');
            r.columns[0].wire = Wire::Int8;
            r
        };
        let typed = int8();
        let keep_key = Kind::Update {
            set: smallvec![false, true, false],
        };
        let change_key = Kind::Update {
            set: smallvec![true, true, false],
        };
        assert_eq!(range_key(&typed, &keep_key, 2), Some(1));
        assert_eq!(range_key(&typed, &Kind::Delete, 1), Some(0));
        assert_eq!(range_key(&typed, &change_key, 3), None);
        assert_eq!(range_key(&typed, &Kind::Insert, 3), None);
        // A text key, two key columns, another unique constraint, triggers that fire.
        assert_eq!(range_key(&rel(b'd'), &Kind::Delete, 1), None);
        let mut two = rel(b'd');
        two.columns[0].wire = Wire::Int4;
        two.key = vec![0, 1];
        assert_eq!(range_key(&two, &Kind::Delete, 2), None);
        let mut unique = int8();
        unique.extra_unique = true;
        assert_eq!(range_key(&unique, &Kind::Delete, 1), None);
        let mut ordered = int8();
        ordered.ordered = true;
        assert_eq!(range_key(&ordered, &keep_key, 2), None);
    }

    /// The elements of a one-dimensional binary array: (element type, each value's bytes).
    fn elements(buf: &[u8]) -> (u32, Vec<Option<Vec<u8>>>) {
        let int = |at: usize| i32::from_be_bytes(buf[at..at + 4].try_into().unwrap());
        assert_eq!(int(0), 1, "one dimension");
        let (elem, len) = (int(8) as u32, int(12) as usize);
        let mut at = 20;
        let mut out = Vec::new();
        for _ in 0..len {
            let n = int(at);
            at += 4;
            if n < 0 {
                out.push(None);
            } else {
                out.push(Some(buf[at..at + n as usize].to_vec()));
                at += n as usize;
            }
        }
        (elem, out)
    }

    #[test]
    fn an_array_has_room_for_its_run_from_the_start() {
        let filler = [b'x'; 84];
        for (wire, value) in [(Wire::Text, &filler[..]), (Wire::Int8, b"-9000000000")] {
            let mut array = ArrayParam::new(wire, 1000, Some(value));
            let room = array.body.capacity();
            for _ in 0..1000 {
                array.push(Some(value)).unwrap();
            }
            assert_eq!(array.body.capacity(), room, "{wire:?} grew");
        }
        // Values longer than the first only make it grow.
        let mut array = ArrayParam::new(Wire::Text, 10, Some(b"a"));
        for _ in 0..10 {
            array.push(Some(&filler)).unwrap();
        }
        assert_eq!(array.len, 10);
    }

    #[test]
    fn integer_arrays_are_sent_in_binary_and_refuse_what_is_not_an_integer() {
        let encode = |wire: Wire, v: &[Option<&str>]| {
            let mut array = ArrayParam::new(
                wire,
                v.len(),
                v.first().copied().flatten().map(str::as_bytes),
            );
            for x in v {
                array.push(x.map(str::as_bytes))?;
            }
            let mut out = BytesMut::new();
            array.to_sql(&Type::TEXT_ARRAY, &mut out)?;
            // postgres-protocol's own reader of binary arrays agrees with ours.
            let parsed = postgres_protocol::types::array_from_sql(&out)?;
            let dims: Vec<_> = parsed.dimensions().collect()?;
            assert_eq!(dims.len(), 1);
            assert_eq!((dims[0].len, dims[0].lower_bound), (v.len() as i32, 1));
            assert_eq!(parsed.has_nulls(), v.contains(&None));
            let values: Vec<Option<Vec<u8>>> = parsed
                .values()
                .map(|x| Ok(x.map(<[u8]>::to_vec)))
                .collect()?;
            let (elem, ours) = elements(&out);
            assert_eq!((elem, &ours), (parsed.element_type(), &values));
            Ok::<_, Box<dyn std::error::Error + Sync + Send>>((elem, ours))
        };
        let (elem, got) = encode(Wire::Int4, &[Some("42"), None, Some("-2147483648")]).unwrap();
        assert_eq!(elem, Type::INT4.oid());
        assert_eq!(
            got,
            vec![
                Some(42i32.to_be_bytes().to_vec()),
                None,
                Some(i32::MIN.to_be_bytes().to_vec())
            ]
        );
        let (elem, got) = encode(Wire::Int8, &[Some("9223372036854775807")]).unwrap();
        assert_eq!(elem, Type::INT8.oid());
        assert_eq!(got, vec![Some(i64::MAX.to_be_bytes().to_vec())]);
        let (elem, got) = encode(Wire::Int2, &[Some("-7")]).unwrap();
        assert_eq!(elem, Type::INT2.oid());
        assert_eq!(got, vec![Some((-7i16).to_be_bytes().to_vec())]);
        // Text goes as it came, NULL stays NULL and '' stays ''.
        let (elem, got) = encode(Wire::Text, &[Some(""), None, Some("x")]).unwrap();
        assert_eq!(elem, Type::TEXT.oid());
        assert_eq!(got, vec![Some(vec![]), None, Some(b"x".to_vec())]);

        for bad in ["1.5", "", "99999999999", "abc", " 1"] {
            let err = encode(Wire::Int4, &[Some(bad)]).expect_err(bad);
            assert!(err.to_string().contains("integer column"), "{bad}: {err}");
        }
    }

    #[test]
    fn integers_are_read_from_their_bytes_as_the_standard_library_reads_them() {
        fn same<T>(text: &str)
        where
            T: TryFrom<i64> + std::str::FromStr + PartialEq + std::fmt::Debug,
        {
            let ours = parse_int::<T>(text.as_bytes()).ok();
            assert_eq!(ours, text.parse::<T>().ok(), "{text:?}");
        }
        let mut texts: Vec<String> = [
            "0",
            "-0",
            "+0",
            "7",
            "-7",
            "+7",
            "007",
            "-",
            "+",
            "",
            "--1",
            "+-1",
            "1-",
            "1 ",
            "0x10",
            "1e3",
            "١",
            "32767",
            "32768",
            "-32768",
            "-32769",
            "2147483647",
            "2147483648",
            "-2147483648",
            "-2147483649",
            "9223372036854775807",
            "9223372036854775808",
            "-9223372036854775808",
            "-9223372036854775809",
            "99999999999999999999999",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..2000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            texts.push(((x as i64) >> (x % 64)).to_string());
        }
        for t in &texts {
            same::<i16>(t);
            same::<i32>(t);
            same::<i64>(t);
        }
    }
}
