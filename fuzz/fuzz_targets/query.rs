//! Bytes -> JSON -> `parse_query` -> `compile_select` for every dialect, against a fixture
//! datasource with one attribute of every type. Any panic is a bug; so is a compiled statement
//! whose placeholders do not match its parameters, or an input that takes over 100 ms.
#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use query::{CompileOptions, Dialect, compile_select, parse_query};

#[path = "common.rs"]
mod common;
use common::{check_placeholders, datasource};

fuzz_target!(|data: &[u8]| {
    let started = Instant::now();
    let Ok(json) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let Ok(q) = parse_query(&json) else {
        return;
    };
    let ds = datasource();
    let today = chrono::NaiveDate::from_ymd_opt(2024, 2, 28).unwrap_or_default();
    for d in [Dialect::Sqlite, Dialect::Postgres, Dialect::Mysql] {
        if let Ok(c) = compile_select(&ds, &q, &CompileOptions::new(d, today)) {
            check_placeholders(d, &c.select.sql, c.select.params.len());
            if let Some(count) = &c.count {
                check_placeholders(d, &count.sql, count.params.len());
            }
        }
    }
    assert!(
        started.elapsed() < Duration::from_millis(100),
        "slow input: {:?}",
        started.elapsed()
    );
});
