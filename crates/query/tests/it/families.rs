//! `Family::operators()` (what documents and the playground offer) agrees with the compiler:
//! every listed operator compiles for every type of its family, every other one is refused as
//! "not valid" for it.

use query::{AttrType, Datasource, KeyGeneration, Op, parse_query};
use serde_json::{Value, json};

use crate::fixtures::{DIALECTS, attr, options};

fn one_attribute(ty: AttrType) -> Datasource {
    Datasource {
        app_uid: "t".into(),
        name: "T".into(),
        schema: None,
        table: "T".into(),
        attributes: vec![attr("id", AttrType::Integer), attr("x", ty)],
        primary_key: vec!["id".into()],
        key_generation: KeyGeneration::Auto,
        default_sort: Vec::new(),
        default_filter: Vec::new(),
    }
}

/// A value of the right shape for `op` on an attribute of type `ty`.
fn sample(ty: AttrType, op: Op) -> Value {
    let scalar = match ty {
        AttrType::Integer => json!(7),
        AttrType::Decimal | AttrType::Double | AttrType::Percent => json!(1.5),
        AttrType::Date => json!("2024-02-01"),
        AttrType::DateTime => json!("2024-02-01T10:00:00Z"),
        AttrType::Boolean => json!(true),
        AttrType::Yn => json!("Y"),
        _ => json!("abc"),
    };
    match op {
        Op::In | Op::Nin | Op::HasAll | Op::HasAny | Op::NotAny => json!([scalar]),
        Op::Bn => json!([scalar.clone(), scalar]),
        Op::LastNDays | Op::NextNDays => json!(3),
        Op::Empty => json!(""),
        Op::Null | Op::NotNull | Op::NotEmpty | Op::Today => json!(true),
        _ => scalar,
    }
}

#[test]
fn listed_operators_are_exactly_the_compilers() {
    for ty in AttrType::ALL {
        let ds = one_attribute(ty);
        let listed = ty.family().operators();
        for &op in Op::ALL {
            let q = parse_query(&json!({"filter": [{"x": {op.name(): sample(ty, op)}}]}))
                .unwrap_or_else(|e| panic!("{op:?}: {e}"));
            for d in DIALECTS {
                let out = query::compile_select(&ds, &q, &options(d));
                if listed.contains(&op) {
                    assert!(out.is_ok(), "{ty:?} {op:?} {d:?}: {:?}", out.err());
                } else {
                    let err = out.expect_err(&format!("{ty:?} {op:?} should be refused"));
                    assert!(
                        err.to_string().contains("is not valid for"),
                        "{ty:?} {op:?}: {err}"
                    );
                }
            }
        }
    }
}
