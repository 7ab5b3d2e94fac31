//! Data-driven tests: `tests/cases/*.json` rendered for every dialect and compared with the
//! snapshots in `tests/cases/snapshots/`, and `tests/errors.json` checked against expected
//! messages.
//!
//! A case file is `{"ds": "employees" | "tasks", "base": {query fields}, "cases": {name:
//! query}}`; `base` fields are added to every query that does not set them. To accept changed
//! output, run `INSTA_UPDATE=always cargo test -p query` and read the `.snap` diff.

use std::fmt::Write;
use std::path::Path;

use query::{Compiled, Datasource, Dialect, compile_select, parse_query};
use serde_json::{Value as Json, json};

use crate::fixtures::{DIALECTS, datasource, employees, options};

const CASES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/cases");
const ERRORS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/errors.json");

/// Asserts the placeholders of `sql` are exactly one per parameter, numbered in order on
/// PostgreSQL.
pub fn assert_placeholders(dialect: Dialect, sql: &str, params: usize) {
    match dialect {
        Dialect::Postgres => {
            let numbers: Vec<usize> = sql
                .split('$')
                .skip(1)
                .map(|rest| {
                    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
                    digits
                        .parse()
                        .unwrap_or_else(|_| panic!("bare `$` in {sql}"))
                })
                .collect();
            assert_eq!(numbers, (1..=params).collect::<Vec<_>>(), "{sql}");
            assert!(!sql.contains('?'), "{sql}");
        }
        Dialect::Sqlite | Dialect::Mysql => {
            assert_eq!(sql.matches('?').count(), params, "{sql}");
            assert!(!sql.contains('$'), "{sql}");
        }
    }
}

fn check_placeholders(dialect: Dialect, c: &Compiled) {
    assert_placeholders(dialect, &c.select.sql, c.select.params.len());
    if let Some(count) = &c.count {
        assert_placeholders(dialect, &count.sql, count.params.len());
    }
}

/// The query, its output columns, and per dialect the SQL and parameters (or the error).
fn render(ds: &Datasource, query: &Json) -> String {
    let mut out = String::new();
    writeln!(out, "query: {query}").unwrap();
    let parsed = match parse_query(query) {
        Ok(q) => q,
        Err(e) => {
            writeln!(out, "parse error: {e}").unwrap();
            return out;
        }
    };
    let mut columns = None;
    for d in DIALECTS {
        let name = format!("{d:?}").to_lowercase();
        match compile_select(ds, &parsed, &options(d)) {
            Ok(c) => {
                check_placeholders(d, &c);
                let cols: Vec<String> = c
                    .columns
                    .iter()
                    .map(|o| format!("{} {}", o.name, o.ty.name()))
                    .collect();
                if columns.is_none() {
                    writeln!(out, "columns: {}", cols.join(", ")).unwrap();
                    columns = Some(cols);
                } else {
                    assert_eq!(columns.as_ref(), Some(&cols), "columns differ by dialect");
                }
                writeln!(out, "{name}: {}", c.select.sql).unwrap();
                writeln!(out, "  params: {:?}", c.select.params).unwrap();
                if let Some(count) = &c.count {
                    writeln!(out, "  count: {}", count.sql).unwrap();
                    writeln!(out, "  count params: {:?}", count.params).unwrap();
                }
            }
            Err(e) => writeln!(out, "{name} error: {e}").unwrap(),
        }
    }
    out
}

/// Renders one case file; its snapshot is named after the file.
fn check(path: &Path) {
    let file: Json = serde_json::from_str(&std::fs::read_to_string(path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let ds = datasource(file["ds"].as_str().unwrap_or("employees"));
    let base = file["base"].as_object().cloned().unwrap_or_default();
    let cases = file["cases"]
        .as_object()
        .unwrap_or_else(|| panic!("{}: no `cases` object", path.display()));
    let mut text = String::new();
    for (name, q) in cases {
        let mut q = q.clone();
        let obj = q.as_object_mut().expect("a case is a query object");
        for (k, v) in &base {
            if !obj.contains_key(k) {
                obj.insert(k.clone(), v.clone());
            }
        }
        writeln!(text, "## {name}").unwrap();
        text.push_str(&render(&ds, &q));
        text.push('\n');
    }
    let stem = path.file_stem().unwrap().to_string_lossy().to_string();
    insta::with_settings!({
        snapshot_path => "../cases/snapshots",
        prepend_module_to_snapshot => false,
        omit_expression => true,
    }, {
        insta::assert_snapshot!(stem, text);
    });
}

#[test]
fn snapshot_cases() {
    let mut paths: Vec<_> = std::fs::read_dir(CASES)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    paths.sort();
    assert!(paths.len() >= 10, "case files missing from {CASES}");
    for p in &paths {
        check(p);
    }
}

#[test]
fn error_cases() {
    let cases: Vec<Json> = serde_json::from_str(&std::fs::read_to_string(ERRORS).unwrap()).unwrap();
    assert!(cases.len() > 40);
    let mut failures = Vec::new();
    for case in &cases {
        let ds = datasource(case["ds"].as_str().unwrap_or("employees"));
        let expected = case["error"].as_str().expect("each error case has `error`");
        for d in DIALECTS {
            let got =
                parse_query(&case["query"]).and_then(|q| compile_select(&ds, &q, &options(d)));
            match got {
                Err(e) if e.message.contains(expected) => {}
                other => failures.push(format!(
                    "{d:?} {}\n  expected error containing {expected:?}\n  got {other:?}",
                    case["query"]
                )),
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The product documentation's own example, exactly.
#[test]
fn documented_mysql_example() {
    let q = parse_query(&json!({
        "filter": [{"name": {"is": "Steve"}}, {"salary": {"eq": 12345}},
                   {"lastUpdateDate": {"after": "2020-11-30T23:59:59.999Z"}}],
        "projection": {"name": 1},
        "sort": {"name": 1, "lastUpdateDate": -1},
        "offset": 0, "limit": 10
    }))
    .unwrap();
    let c = compile_select(&employees(), &q, &options(Dialect::Mysql)).unwrap();
    assert_eq!(
        c.select.sql,
        "SELECT NAME `name` FROM EMPLOYEES x WHERE (NAME = ? AND SALARY = ? AND \
         LAST_UPDATE_DATE >= ?) ORDER BY x.NAME ASC, x.LAST_UPDATE_DATE DESC LIMIT ? OFFSET ?"
    );
    let instant = query::value::parse_datetime("2020-11-30T23:59:59.999Z").unwrap();
    assert_eq!(
        c.select.params,
        [
            query::Value::Text("Steve".into()),
            query::Value::Int(12345),
            query::Value::DateTime(instant),
            query::Value::Int(10),
            query::Value::Int(0),
        ]
    );
    assert_eq!(c.columns.len(), 1);
    assert!(c.count.is_none(), "counting is never done unless asked");
}

fn compile_err(query: Json) -> String {
    let q = parse_query(&query).unwrap();
    compile_select(&employees(), &q, &options(Dialect::Sqlite))
        .unwrap_err()
        .message
}

#[test]
fn nesting_is_capped_by_max_depth() {
    let nest = |n: usize| {
        let mut f = json!({"name": {"is": "x"}});
        for i in 0..n {
            f = if i % 2 == 0 {
                json!({"not": f})
            } else {
                json!({"or": [f]})
            };
        }
        json!({"filter": [f]})
    };
    let ok = parse_query(&nest(32)).unwrap();
    let c = compile_select(&employees(), &ok, &options(Dialect::Postgres)).unwrap();
    assert_eq!(c.select.sql.matches("NOT COALESCE").count(), 16);
    assert!(compile_err(nest(33)).contains("nested deeper than 32 levels"));

    let mut opts = options(Dialect::Sqlite);
    opts.max_depth = 2;
    let q = parse_query(&nest(3)).unwrap();
    assert!(compile_select(&employees(), &q, &opts).is_err());
    // The parser's own ceiling guards recursion whatever the options say.
    assert!(
        parse_query(&nest(200))
            .unwrap_err()
            .message
            .contains("nested deeper")
    );
}

#[test]
fn lists_are_capped_at_1000_values() {
    let values: Vec<i64> = (0..1000).collect();
    let q = parse_query(&json!({"filter": [{"salary": {"in": values}}]})).unwrap();
    let c = compile_select(&employees(), &q, &options(Dialect::Postgres)).unwrap();
    assert_eq!(c.select.params.len(), 1002);
    assert!(c.select.sql.contains("$999, $1000)) ORDER BY"));

    let values: Vec<String> = (0..1001).map(|i| format!("v{i}")).collect();
    for op in ["in", "nin", "hasAll", "hasAny", "notAny"] {
        let msg = compile_err(json!({"filter": [{"name": {op: values}}]}));
        assert!(msg.contains("at most 1000 values"), "{op}: {msg}");
    }
}

#[test]
fn limits_follow_the_options() {
    let mut opts = options(Dialect::Sqlite);
    opts.default_limit = 25;
    opts.max_limit = 50;
    let ds = employees();
    let default = compile_select(&ds, &parse_query(&json!({})).unwrap(), &opts).unwrap();
    assert_eq!(
        default.select.params,
        [query::Value::Int(25), query::Value::Int(0)]
    );
    let at_max = parse_query(&json!({"limit": 50, "offset": 7})).unwrap();
    let c = compile_select(&ds, &at_max, &opts).unwrap();
    assert_eq!(
        c.select.params,
        [query::Value::Int(50), query::Value::Int(7)]
    );
    let over = parse_query(&json!({"limit": 51})).unwrap();
    assert_eq!(
        compile_select(&ds, &over, &opts).unwrap_err().to_string(),
        "`limit` must be between 0 and 50"
    );
    let huge_offset = parse_query(&json!({"offset": u64::MAX})).unwrap();
    assert!(compile_select(&ds, &huge_offset, &opts).is_err());
}

#[test]
fn write_only_and_hidden_attributes_look_unknown() {
    for (attr, field, query) in [
        (
            "password",
            "filter",
            json!({"filter": [{"password": {"is": "x"}}]}),
        ),
        (
            "internalNote",
            "filter",
            json!({"filter": [{"internalNote": {"empty": 1}}]}),
        ),
        ("nope", "filter", json!({"filter": [{"nope": {"is": "x"}}]})),
        ("password", "sort", json!({"sort": {"password": 1}})),
        (
            "password",
            "projection",
            json!({"projection": {"password": 1}}),
        ),
    ] {
        assert_eq!(
            compile_err(query),
            format!("unknown attribute `{attr}` in {field}")
        );
    }
    let all = compile_select(
        &employees(),
        &parse_query(&json!({})).unwrap(),
        &options(Dialect::Sqlite),
    )
    .unwrap();
    assert!(
        all.columns
            .iter()
            .all(|c| c.name != "password" && c.name != "internalNote")
    );
    assert!(!all.select.sql.contains("PASSWORD") && !all.select.sql.contains("INTERNAL_NOTE"));
}
