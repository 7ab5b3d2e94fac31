//! Property: whatever the rows (objects with the same keys or not, other values among them)
//! and however a hook hands them back (as they are, reordered, some twice, some dropped, one
//! changed), each row of the result is what `JSON.stringify` makes of the row the script put
//! there. The sandbox moves unchanged input rows into the result instead of reading them back,
//! so every row must stay paired with its own input.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use proptest::prelude::*;
use script::{Event, Execution, Kind, Limits, Pool, Program, SessionInfo, compile};
use serde_json::{Map, Value as Json, json};

fn leaf() -> impl Strategy<Value = Json> {
    prop_oneof![
        Just(Json::Null),
        any::<bool>().prop_map(Json::Bool),
        (-1000i64..1000).prop_map(Json::from),
        prop::sample::select(vec!["", "x", "Y", "admin", "2026-11-29T09:00:00.000Z", "é"])
            .prop_map(Json::from),
        (0u32..5).prop_map(|n| Json::from(format!("t{n}"))),
    ]
}

/// A field's value: mostly leaves, sometimes an array or object of leaves.
fn value() -> impl Strategy<Value = Json> {
    prop_oneof![
        4 => leaf(),
        1 => prop::collection::vec(leaf(), 0..3).prop_map(Json::Array),
        1 => prop::collection::vec(("[ab]", leaf()), 0..3)
            .prop_map(|kv| Json::Object(kv.into_iter().collect())),
    ]
}

/// Rows: usually objects with the same keys (as a query gives them), sometimes not.
fn rows() -> impl Strategy<Value = Vec<Json>> {
    let keys = prop::sample::subsequence(vec!["empId", "name", "active", "_rs", "toString"], 1..5);
    (keys, 0usize..7, any::<bool>()).prop_flat_map(|(keys, n, mixed)| {
        let row = prop::collection::vec(value(), keys.len()).prop_map(move |values| {
            let m: Map<String, Json> = keys.iter().map(|k| k.to_string()).zip(values).collect();
            Json::Object(m)
        });
        let any_row = if mixed {
            prop_oneof![3 => row, 1 => leaf(), 1 => value()].boxed()
        } else {
            row.boxed()
        };
        prop::collection::vec(any_row, n)
    })
}

/// How the hook hands rows back.
const BODIES: [&str; 7] = [
    "// handed back as they are",
    "rows.reverse();",
    "rows.push(rows[0]);",
    "rows.splice(1, 1);",
    "const r = rows[rows.length - 1]; if (r && typeof r === 'object') r.name = 'changed';",
    "rows.sort(() => 0); rows.unshift(rows.pop());",
    "rows = rows.map((r, i) => i % 2 ? r : (r && typeof r === 'object' && !Array.isArray(r) ? { ...r } : r));",
];

fn execution(body: &str, rows: &[Json]) -> Execution {
    let hook = format!("{body}\nrows.push({{ expected: JSON.stringify(rows) }});");
    Execution {
        program: Program::Hook {
            body: compile("p.js", &hook, Kind::Hook).unwrap().into(),
        },
        name: "P.postQuery".into(),
        request_id: None,
        session: SessionInfo::default(),
        input: json!({"query": {}, "rows": rows, "keys": [], "rowsOnly": true}),
        limits: Limits::HOOK,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]
    #[test]
    fn rows_handed_back_are_the_rows_the_script_put_there(
        rows in rows(),
        body in prop::sample::select(BODIES.to_vec()),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let pool = Pool::new(1);
        let out = rt.block_on(async {
            let mut running = pool.start(execution(body, &rows), false).await.unwrap();
            match running.next().await {
                Event::Done(out) => out.unwrap(),
                Event::Call(_) => panic!("no db call was made"),
            }
        });
        let mut got = out["rows"].as_array().cloned().unwrap_or_default();
        let last = got.pop().unwrap_or_default();
        let Some(expected) = last["expected"].as_str() else {
            return Err(TestCaseError::fail(format!("no `expected` in {out}")));
        };
        prop_assert_eq!(serde_json::to_string(&got).unwrap(), expected);
    }
}
