//! The preflight's pure checks.

use super::*;

#[test]
fn encodings_that_may_lose_characters_are_pointed_out() {
    for (s, t) in [
        ("UTF8", "UTF8"),
        ("LATIN1", "UTF8"),
        ("WIN1252", "UTF8"),
        ("LATIN1", "LATIN1"),
    ] {
        assert_eq!(encoding_warning(s, t), None, "{s} -> {t}");
    }
    let w = encoding_warning("SQL_ASCII", "UTF8").unwrap();
    assert!(
        w.contains("SQL_ASCII") && w.contains("not valid UTF8"),
        "{w}"
    );
    let w = encoding_warning("UTF8", "LATIN1").unwrap();
    assert!(w.contains("cannot hold every character UTF8 can"), "{w}");
    assert!(encoding_warning("LATIN1", "SQL_ASCII").is_some());
}

fn col(name: &str, ty: &str) -> Column {
    Column {
        name: name.into(),
        type_name: ty.into(),
        generated: false,
        not_null: false,
        binary_safe: true,
    }
}

#[test]
fn differences_are_precise() {
    let src = [
        col("id", "integer"),
        col("name", "text"),
        col("gone", "date"),
    ];
    let mut gen_col = col("name", "text");
    gen_col.generated = true;
    let tgt = [col("id", "bigint"), gen_col, col("extra", "text")];
    let d = column_differences(&src, &tgt);
    assert_eq!(
        d,
        [
            "column \"id\" is bigint on the target but integer on the source",
            "column \"name\" is generated on the target but not generated on the source",
            "column \"gone\" is missing",
            "column \"extra\" exists only on the target",
        ]
    );
    assert!(column_differences(&src, &src).is_empty());
}

#[test]
fn sources_older_than_14_are_refused() {
    for old in [9, 12, 13] {
        let p = version_problem(old).expect("refused");
        assert!(
            p.error.contains(&format!("PostgreSQL {old}")),
            "{}",
            p.error
        );
        assert!(p.error.contains("14 or newer"), "{}", p.error);
    }
    assert!(version_problem(14).is_none() && version_problem(18).is_none());
}

#[test]
fn older_targets_are_refused_when_the_schema_is_copied() {
    assert!(target_version_problem(15, 15, true).is_none());
    assert!(target_version_problem(15, 17, true).is_none());
    let p = target_version_problem(16, 15, true).expect("refused");
    assert!(
        p.error
            .contains("PostgreSQL 15, older than the source's 16"),
        "{}",
        p.error
    );
    assert!(p.hint.contains("copy_schema = false"), "{}", p.hint);
    assert!(target_version_problem(16, 15, false).is_none());
    assert!(target_version_problem(15, 11, false).is_some());
}

#[test]
fn long_name_lists_are_shortened() {
    let names: Vec<TableName> = (0..8)
        .map(|i| TableName::new("s", format!("t{i}")))
        .collect();
    assert_eq!(
        some_names(names.iter()),
        "s.t0, s.t1, s.t2, s.t3, s.t4 and 3 more"
    );
}
