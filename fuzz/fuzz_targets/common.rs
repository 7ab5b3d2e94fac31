//! The fixture shared by the fuzz targets: a datasource with one attribute of every type.

use query::meta::{WHO_ATTRIBUTES, default_column};
use query::{AttrType, Attribute, Datasource, Dialect, KeyGeneration, SortDir};

pub fn attr(code: &str, ty: AttrType) -> Attribute {
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

pub fn datasource() -> Datasource {
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
        default_filter: vec![serde_json::json!({"orgId": {"is": ":org"}}).into()],
    }
}

pub fn check_placeholders(d: Dialect, sql: &str, params: usize) {
    let found = match d {
        Dialect::Postgres => sql.matches('$').count(),
        Dialect::Sqlite | Dialect::Mysql => sql.matches('?').count(),
    };
    assert_eq!(found, params, "{sql}");
}
