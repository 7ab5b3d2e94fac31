//! Bytes -> JSON -> through a hook that passes everything back (`return;`): the JSON as the
//! alias's `query` and as a row must come back equal (numbers compared as JavaScript holds
//! them, object keys in any order), and `parse_query` must judge the returned query as it
//! judged the original. Any panic, hang or difference is a bug of the sandbox's protocol.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use serde_json::{Value as Json, json};

struct Fixture {
    rt: tokio::runtime::Runtime,
    pool: script::Pool,
    body: std::sync::Arc<str>,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| Fixture {
        rt: tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime"),
        pool: script::Pool::new(1),
        body: script::compile("fuzz.js", "return;", script::Kind::Hook)
            .expect("compiles")
            .into(),
    })
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
    let exec = script::Execution {
        program: script::Program::Hook { body: f.body.clone() },
        name: "Fuzz.postQuery".into(),
        request_id: None,
        session: script::SessionInfo::default(),
        input: json!({"query": input, "rows": [input], "keys": []}),
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
    let out = out.expect("a hook that returns cannot fail");
    let expected = as_js(&input);
    assert_eq!(as_js(&out["query"]), expected, "query came back changed");
    assert_eq!(as_js(&out["rows"][0]), expected, "row came back changed");
    // Numbers JavaScript cannot hold exactly come back as it holds them; judge the rest.
    if expected != input {
        return;
    }
    assert_eq!(
        query::parse_query(&input).is_ok(),
        query::parse_query(&out["query"]).is_ok(),
        "parse_query judged the returned query differently"
    );
});
