//! Bytes -> JSON -> `parse_query` -> `compile_select` for every dialect, against a fixture
//! datasource with one attribute of every type. Any panic is a bug; so is a compiled statement
//! whose placeholders do not match its parameters.
#![no_main]

use libfuzzer_sys::fuzz_target;
use query::meta::{WHO_ATTRIBUTES, default_column};
use query::{
    AttrType, Attribute, CompileOptions, Datasource, Dialect, KeyGeneration, SortDir,
    compile_select, parse_query,
};

fn attr(code: &str, ty: AttrType) -> Attribute {
    Attribute {
        code: code.to_string(),
        column: default_column(code),
        ty,
        required: false,
        updatable: true,
        queryable: true,
        write_only: false,
        max_length: None,
        who: false,
    }
}

fn datasource() -> Datasource {
    use AttrType::*;
    let mut attributes = vec![
        attr("name", String),
        attr("email", Email),
        attr("active", Yn),
        attr("salary", Integer),
        attr("bonus", Decimal),
        attr("rating", Double),
        attr("hireDate", Date),
        attr("remote", Boolean),
        attr("profile", Json),
        attr("deptId", Integer),
        Attribute {
            write_only: true,
            ..attr("password", String)
        },
        Attribute {
            queryable: false,
            ..attr("orgId", String)
        },
    ];
    for (code, column, ty) in WHO_ATTRIBUTES {
        attributes.push(Attribute {
            column: column.to_string(),
            who: true,
            ..attr(code, ty)
        });
    }
    Datasource {
        app_uid: "hr".into(),
        name: "Employees".into(),
        schema: Some("hr".into()),
        table: "EMPLOYEES".into(),
        attributes,
        primary_key: vec!["name".into(), "deptId".into()],
        key_generation: KeyGeneration::None,
        default_sort: vec![("hireDate".into(), SortDir::Desc)],
        default_filter: vec![serde_json::json!({"orgId": {"is": ":org"}})],
    }
}

fn check_placeholders(d: Dialect, sql: &str, params: usize) {
    let found = match d {
        Dialect::Postgres => sql.matches('$').count(),
        Dialect::Sqlite | Dialect::Mysql => sql.matches('?').count(),
    };
    assert_eq!(found, params, "{sql}");
}

fuzz_target!(|data: &[u8]| {
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
});
