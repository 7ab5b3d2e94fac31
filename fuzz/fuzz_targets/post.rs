//! Bytes -> JSON -> posted rows: `parse_row` for each element, then `compile_write` (and the
//! lookup) for SQLite and PostgreSQL against the fixture datasource. Any panic is a bug; so is a
//! statement whose placeholders do not match its parameters, or an input that takes over 100 ms.
#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use query::{Dialect, RowOp, WriteContext, compile_lookup, compile_write, parse_row};

#[path = "common.rs"]
mod common;
use common::{check_placeholders, datasource};

fuzz_target!(|data: &[u8]| {
    let started = Instant::now();
    let Ok(serde_json::Value::Array(rows)) = serde_json::from_slice::<serde_json::Value>(data)
    else {
        return;
    };
    let ds = datasource();
    let now = chrono::DateTime::from_timestamp(1_700_000_000, 123_456_000).unwrap_or_default();
    for (i, row) in rows.iter().enumerate() {
        let Ok(row) = parse_row(&ds, row, i) else {
            continue;
        };
        for d in [Dialect::Sqlite, Dialect::Postgres] {
            let ctx = WriteContext {
                dialect: d,
                user: "fuzz",
                now,
            };
            if let Ok(st) = compile_write(&ds, &row, &ctx) {
                check_placeholders(d, &st.sql, st.params.len());
            }
            if row.op != RowOp::Insert
                && let Ok(st) = compile_lookup(&ds, &row.key, d)
            {
                check_placeholders(d, &st.sql, st.params.len());
            }
        }
    }
    assert!(
        started.elapsed() < Duration::from_millis(100),
        "slow input: {:?}",
        started.elapsed()
    );
});
