//! Bytes -> JSON -> through a hook that passes everything back (`return;`): the JSON as the
//! alias's `query` and as the rows (an array's elements, anything else as the only row) must
//! come back equal (numbers compared as JavaScript holds them, object keys in any order), and
//! `parse_query` must judge the returned query as it judged the original; through a hook that
//! reverses the rows (`rows.reverse();`), the rows must come back reversed. Any panic, hang or
//! difference is a bug of the sandbox's protocol (rows handed back are moved, not read back:
//! each must be paired with its own input).
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use serde_json::{Value as Json, json};

struct Fixture {
    rt: tokio::runtime::Runtime,
    pool: script::Pool,
    /// `return;` and `rows.reverse();`.
    bodies: [std::sync::Arc<str>; 2],
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| Fixture {
        rt: tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime"),
        pool: script::Pool::new(1),
        bodies: ["return;", "rows.reverse();"].map(|body| {
            script::compile("fuzz.js", body, script::Kind::Hook)
                .expect("compiles")
                .into()
        }),
    })
}

/// Runs `body` over `input`; its result.
fn run(f: &Fixture, body: &std::sync::Arc<str>, input: Json) -> Json {
    let exec = script::Execution {
        program: script::Program::Hook { body: body.clone() },
        name: "Fuzz.postQuery".into(),
        request_id: None,
        session: script::SessionInfo::default(),
        input,
        limits: script::Limits::HOOK,
    };
    let out = f.rt.block_on(async {
        let mut running = f.pool.start(exec, false).await.expect("a free worker");
        loop {
            match running.next().await {
                script::Event::Call(call) => call.reply(Err("no host".into())),
                script::Event::Done(out) => break out,
            }
        }
    });
    out.expect("a hook that returns cannot fail")
}

/// JSON as a JavaScript engine holds it: every number a double.
fn as_js(v: &Json) -> Json {
    match v {
        Json::Number(n) => n
            .as_f64()
            .and_then(|f| serde_json::Number::from_f64(if f == 0.0 { 0.0 } else { f }))
            .map_or(Json::Null, Json::Number),
        Json::Array(a) => Json::Array(a.iter().map(as_js).collect()),
        Json::Object(m) => Json::Object(m.iter().map(|(k, v)| (k.clone(), as_js(v))).collect()),
        v => v.clone(),
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(input) = serde_json::from_slice::<Json>(data) else {
        return;
    };
    let f = fixture();
    let rows = match &input {
        Json::Array(rows) => rows.clone(),
        other => vec![other.clone()],
    };
    let out = run(
        f,
        &f.bodies[0],
        json!({"query": input, "rows": rows, "keys": []}),
    );
    let expected = as_js(&input);
    let expected_rows: Vec<Json> = rows.iter().map(as_js).collect();
    assert_eq!(as_js(&out["query"]), expected, "query came back changed");
    let returned_query = out["query"].clone();
    assert_eq!(
        out["rows"]
            .as_array()
            .map(|r| r.iter().map(as_js).collect::<Vec<_>>()),
        Some(expected_rows.clone()),
        "rows came back changed"
    );
    let out = run(
        f,
        &f.bodies[1],
        json!({"query": {}, "rows": rows, "keys": [], "rowsOnly": true}),
    );
    let mut reversed = expected_rows;
    reversed.reverse();
    assert_eq!(
        out["rows"]
            .as_array()
            .map(|r| r.iter().map(as_js).collect::<Vec<_>>()),
        Some(reversed),
        "rows came back other than reversed"
    );
    // Numbers JavaScript cannot hold exactly come back as it holds them; judge the rest.
    if expected != input {
        return;
    }
    assert_eq!(
        query::parse_query(&input).is_ok(),
        query::parse_query(&returned_query).is_ok(),
        "parse_query judged the returned query differently"
    );
});
