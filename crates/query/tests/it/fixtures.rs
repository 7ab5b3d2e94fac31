//! Fixture datasources shared by every test of this binary.

use chrono::NaiveDate;
use query::meta::{WHO_ATTRIBUTES, default_column};
use query::{AttrType, Attribute, CompileOptions, Datasource, Dialect, KeyGeneration, SortDir};

pub const DIALECTS: [Dialect; 3] = [Dialect::Sqlite, Dialect::Postgres, Dialect::Mysql];

/// A fixed "today" (2024 is a leap year: `nextNDays` from here crosses 29 February).
pub fn today() -> NaiveDate {
    NaiveDate::from_ymd_opt(2024, 2, 28).unwrap()
}

pub fn options(dialect: Dialect) -> CompileOptions {
    CompileOptions::new(dialect, today())
}

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

fn with_who(mut attrs: Vec<Attribute>) -> Vec<Attribute> {
    for (code, column, ty) in WHO_ATTRIBUTES {
        attrs.push(Attribute {
            column: column.to_string(),
            updatable: false,
            who: true,
            ..attr(code, ty)
        });
    }
    attrs
}

/// `Employees` (table EMPLOYEES, no schema, primary key `name`): one attribute of every type,
/// a write-only `password` and a non-queryable `internalNote`.
pub fn employees() -> Datasource {
    use AttrType::*;
    Datasource {
        app_uid: "hr".into(),
        name: "Employees".into(),
        schema: None,
        table: "EMPLOYEES".into(),
        attributes: with_who(vec![
            Attribute {
                required: true,
                ..attr("name", String)
            },
            attr("email", Email),
            attr("phone", Phone),
            attr("website", Url),
            attr("managerId", UserId),
            attr("active", Yn),
            attr("salary", Integer),
            attr("bonus", Decimal),
            attr("rating", Double),
            attr("commission", Percent),
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
                ..attr("internalNote", String)
            },
        ]),
        primary_key: vec!["name".into()],
        key_generation: KeyGeneration::None,
        default_sort: vec![],
        default_filter: vec![],
    }
}

/// `Tasks` (table `todo.TASKS`): a composite primary key, a renamed column, a default sort and
/// a default filter that uses a non-queryable attribute and `:params`.
pub fn tasks() -> Datasource {
    use AttrType::*;
    Datasource {
        app_uid: "todo".into(),
        name: "Tasks".into(),
        schema: Some("todo".into()),
        table: "TASKS".into(),
        attributes: with_who(vec![
            attr("projectId", Integer),
            attr("taskNo", Integer),
            Attribute {
                column: "TASK_TITLE".into(),
                ..attr("title", String)
            },
            attr("status", String),
            attr("ownerId", UserId),
            Attribute {
                queryable: false,
                ..attr("orgId", String)
            },
            attr("dueDate", Date),
            attr("done", Boolean),
        ]),
        primary_key: vec!["projectId".into(), "taskNo".into()],
        key_generation: KeyGeneration::None,
        default_sort: vec![("dueDate".into(), SortDir::Desc)],
        default_filter: vec![
            serde_json::json!({"orgId": {"is": ":orgUid"}}).into(),
            serde_json::json!({"or": [
                {"ownerId": {"is": ":user"}},
                {"status": {"in": [":openStatus", "review"]}}
            ]})
            .into(),
        ],
    }
}

pub fn datasource(name: &str) -> Datasource {
    match name {
        "employees" => employees(),
        "tasks" => tasks(),
        other => panic!("no fixture datasource `{other}`"),
    }
}
