//! Property tests: hostile values never reach SQL text, placeholders always match parameters,
//! unknown attributes are always refused, and no input makes the compiler panic.

use proptest::prelude::*;
use query::{compile_select, parse_query};
use serde_json::{Map, Value as Json, json};

use crate::cases::assert_placeholders;
use crate::fixtures::{DIALECTS, employees, options};

/// Characters the compiler never writes into SQL text. Every hostile string carries one, so a
/// value that leaked into the SQL would be found.
const GUARDS: &[char] = &[';', '\\', '\0', 'é', '😀', '\n', '#', '~', '\u{202e}'];

fn hostile() -> impl Strategy<Value = String> {
    let piece = prop::sample::select(vec![
        "",
        "'",
        "''",
        "\\",
        "\\'",
        "%",
        "_",
        "!",
        "!%",
        "'; DROP TABLE x; --",
        "\"",
        "`",
        "$1",
        "?",
        "日本語",
        "--",
        "/*",
        "*/",
        ")",
        "NAME",
        "x.NAME",
        "1=1) OR (1=1",
        ":deptId",
    ]);
    (piece.clone(), prop::sample::select(GUARDS), ".{0,8}", piece)
        .prop_map(|(a, g, s, b)| format!("{a}{g}{s}{b}"))
}

/// A generated filter plus what the property needs to know about it.
#[derive(Debug, Clone)]
struct Gen {
    json: Json,
    /// Every client string in it.
    strings: Vec<String>,
    /// Whether it names an attribute that does not exist.
    unknown_attr: bool,
}

fn cond(attr: &str, op: &str, value: Json, strings: Vec<String>) -> Gen {
    Gen {
        json: json!({ attr: { op: value } }),
        strings,
        unknown_attr: false,
    }
}

fn leaf() -> impl Strategy<Value = Gen> {
    let string_attr = prop::sample::select(vec![
        "name",
        "email",
        "phone",
        "website",
        "managerId",
        "active",
    ]);
    let string_op = prop::sample::select(vec![
        "is", "not", "like", "nct", "sw", "ew", "empty", "notEmpty",
    ]);
    let list_op = prop::sample::select(vec!["in", "nin", "hasAll", "hasAny", "notAny"]);
    let number_op = prop::sample::select(vec![
        "eq", "ne", "gt", "gte", "lt", "lte", "null", "notNull",
    ]);
    let date_op = prop::sample::select(vec!["on", "notOn", "before", "after", "onOrBefore"]);
    let day =
        (1i32..=9999, 1u32..=12, 1u32..=28).prop_map(|(y, m, d)| format!("{y:04}-{m:02}-{d:02}"));
    prop_oneof![
        (string_attr.clone(), string_op, hostile()).prop_map(|(a, op, s)| cond(
            a,
            op,
            json!(s),
            vec![s]
        )),
        (
            string_attr.clone(),
            list_op.clone(),
            prop::collection::vec(hostile(), 0..4)
        )
            .prop_map(|(a, op, v)| cond(a, op, json!(v), v)),
        (
            string_attr,
            prop::sample::select(vec!["hasAll", "hasAny", "notAny"]),
            hostile()
        )
            .prop_map(|(a, op, s)| {
                // A part without a guard character may well be SQL text ("NAME"): only
                // parts that carry one can be looked for.
                let parts = s
                    .split_whitespace()
                    .filter(|p| p.contains(GUARDS))
                    .map(str::to_string)
                    .collect();
                cond(a, op, json!(s), parts)
            }),
        (number_op.clone(), any::<i64>()).prop_map(|(op, n)| cond("salary", op, json!(n), vec![])),
        (number_op, -1e12f64..1e12).prop_map(|(op, n)| cond("bonus", op, json!(n), vec![])),
        (
            prop::sample::select(vec!["in", "nin"]),
            prop::collection::vec(any::<i64>(), 0..5)
        )
            .prop_map(|(op, v)| cond("deptId", op, json!(v), vec![])),
        (any::<i64>(), any::<i64>()).prop_map(|(a, b)| cond("salary", "bn", json!([a, b]), vec![])),
        (date_op.clone(), day.clone()).prop_map(|(op, d)| cond("hireDate", op, json!(d), vec![])),
        (date_op, day).prop_map(|(op, d)| cond(
            "creationDate",
            op,
            json!(format!("{d}T12:34:56.5+02:00")),
            vec![]
        )),
        (
            prop::sample::select(vec!["today", "lastNDays", "nextNDays"]),
            0u64..5000
        )
            .prop_map(|(op, n)| cond("lastUpdateDate", op, json!(n), vec![])),
        any::<bool>().prop_map(|b| cond("remote", "eq", json!(b), vec![])),
        (prop::sample::select(vec!["null", "notNull"]), hostile()).prop_map(|(op, s)| cond(
            "profile",
            op,
            json!(s),
            vec![s]
        )),
        // An attribute name that does not exist, or that the client may not read.
        (hostile(), hostile()).prop_map(|(a, s)| Gen {
            json: json!({ a.clone(): { "is": s.clone() } }),
            strings: vec![a, s],
            unknown_attr: true,
        }),
        hostile().prop_map(|s| Gen {
            json: json!({"password": {"is": s.clone()}}),
            strings: vec![s],
            unknown_attr: true,
        }),
    ]
}

fn tree() -> impl Strategy<Value = Gen> {
    leaf().prop_recursive(5, 48, 4, |inner| {
        prop_oneof![
            (
                prop::sample::select(vec!["and", "or"]),
                prop::collection::vec(inner.clone(), 0..4)
            )
                .prop_map(|(kw, items)| Gen {
                    json: json!({ kw: items.iter().map(|g| g.json.clone()).collect::<Vec<_>>() }),
                    strings: items.iter().flat_map(|g| g.strings.clone()).collect(),
                    unknown_attr: items.iter().any(|g| g.unknown_attr),
                }),
            inner.clone().prop_map(|g| Gen {
                json: json!({ "not": g.json }),
                ..g
            }),
            // Two filter objects merged into one (an implicit AND), when their keys differ.
            (inner.clone(), inner).prop_map(|(a, b)| {
                let (Some(x), Some(y)) = (a.json.as_object(), b.json.as_object()) else {
                    return a;
                };
                if y.keys().any(|k| x.contains_key(k)) {
                    return a;
                }
                let mut merged = x.clone();
                merged.extend(y.clone());
                Gen {
                    json: Json::Object(merged),
                    strings: a.strings.into_iter().chain(b.strings).collect(),
                    unknown_attr: a.unknown_attr || b.unknown_attr,
                }
            }),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn hostile_filters_never_reach_sql_text(items in prop::collection::vec(tree(), 0..4)) {
        let unknown = items.iter().any(|g| g.unknown_attr);
        let strings: Vec<&String> = items.iter().flat_map(|g| &g.strings).collect();
        let query = json!({
            "filter": items.iter().map(|g| g.json.clone()).collect::<Vec<_>>(),
            "projection": {"name": 1},
            "count": true,
        });
        let q = parse_query(&query).expect("generated queries are well-formed");
        for d in DIALECTS {
            match compile_select(&employees(), &q, &options(d)) {
                Ok(c) => {
                    prop_assert!(!unknown, "unknown attribute accepted: {query}");
                    let count = c.count.expect("count was asked for");
                    for st in [&c.select, &count] {
                        assert_placeholders(d, &st.sql, st.params.len());
                        prop_assert!(!st.sql.contains(GUARDS), "value in SQL: {}", st.sql);
                        for s in &strings {
                            prop_assert!(s.len() < 3 || !st.sql.contains(s.as_str()), "{s:?} in {}", st.sql);
                        }
                    }
                }
                // NUL is refused in string values on every dialect.
                Err(e) if e.message.contains("without NUL characters") => {
                    prop_assert!(strings.iter().any(|s| s.contains('\0')), "{e}");
                }
                Err(e) => {
                    prop_assert!(unknown, "refused {query}: {e}");
                    prop_assert!(e.message.starts_with("unknown attribute `"), "{e}");
                    prop_assert!(e.message.ends_with("` in filter"), "{e}");
                }
            }
        }
    }

    #[test]
    fn hostile_names_are_unknown_everywhere(name in hostile()) {
        for (query, field) in [
            (json!({"projection": { name.clone(): 1 }}), "projection"),
            (json!({"selectAttributeCodeList": [name.clone()]}), "projection"),
            (json!({"sort": { name.clone(): -1 }}), "sort"),
            (json!({"groupByAttributeCodeList": [name.clone()]}), "groupByAttributeCodeList"),
            (json!({"aggregateList": [{"fn": "max", "attributeCode": name.clone(), "alias": "m"}]}), "aggregateList"),
        ] {
            let q = parse_query(&query).expect("well-formed");
            let e = compile_select(&employees(), &q, &options(query::Dialect::Postgres)).unwrap_err();
            prop_assert_eq!(e.message, format!("unknown attribute `{name}` in {field}"));
        }
        let alias = json!({"aggregateList": [{"fn": "count", "alias": name.clone()}]});
        let q = parse_query(&alias).expect("well-formed");
        prop_assert!(compile_select(&employees(), &q, &options(query::Dialect::Mysql)).is_err());
    }

    #[test]
    fn arbitrary_json_never_panics(query in arbitrary_query()) {
        if let Ok(q) = parse_query(&query) {
            for d in DIALECTS {
                if let Ok(c) = compile_select(&employees(), &q, &options(d)) {
                    assert_placeholders(d, &c.select.sql, c.select.params.len());
                }
            }
        }
    }
}

/// Names the parser and compiler react to, so random trees reach deep code paths.
fn key() -> impl Strategy<Value = String> {
    let known: Vec<String> = [
        "filter",
        "sort",
        "projection",
        "selectAttributeCodeList",
        "limit",
        "offset",
        "fetchDistinct",
        "groupByAttributeCodeList",
        "aggregateList",
        "count",
        "params",
        "data",
        "and",
        "or",
        "not",
        "fn",
        "attributeCode",
        "alias",
        "name",
        "salary",
        "bonus",
        "hireDate",
        "creationDate",
        "remote",
        "profile",
        "active",
        "password",
        "deptId",
        "sum",
        "count",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain(query::Op::ALL.iter().map(|op| op.name().to_string()))
    .collect();
    prop_oneof![4 => prop::sample::select(known), 1 => ".{0,6}"]
}

fn arbitrary_json() -> impl Strategy<Value = Json> {
    let leaf = prop_oneof![
        Just(Json::Null),
        any::<bool>().prop_map(Json::from),
        any::<i64>().prop_map(Json::from),
        any::<u64>().prop_map(Json::from),
        (-3i64..3).prop_map(Json::from),
        any::<f64>().prop_map(Json::from),
        key().prop_map(Json::from),
        "[0-9]{4}-[0-9]{2}-[0-9]{2}(T[0-9]{2}:[0-9]{2}:[0-9]{2}Z)?".prop_map(Json::from),
        any::<String>().prop_map(Json::from),
    ];
    leaf.prop_recursive(6, 64, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Json::Array),
            prop::collection::vec((key(), inner), 0..5)
                .prop_map(|kv| Json::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

fn arbitrary_query() -> impl Strategy<Value = Json> {
    prop_oneof![
        1 => arbitrary_json(),
        4 => prop::collection::vec((key(), arbitrary_json()), 0..6)
            .prop_map(|kv| Json::Object(kv.into_iter().collect::<Map<_, _>>())),
    ]
}
