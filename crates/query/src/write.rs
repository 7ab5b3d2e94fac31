//! Posted rows (`_rs` `I`/`U`/`D`) checked against a datasource and compiled to `INSERT`,
//! `UPDATE` and `DELETE` statements with `RETURNING` (SQLite, PostgreSQL).
//!
//! Rules (spec section 5): an attribute the datasource does not define rejects the row; WHO
//! attributes, the primary key on update and attributes with `updatable: false` on update are
//! ignored; a missing required attribute on insert is an error; values are checked against
//! their type, never coerced silently; an empty string is NULL. `U` and `D` rows carry the whole
//! primary key and `lastUpdateDate`, which becomes part of the `WHERE` (optimistic locking).

use chrono::{DateTime, Utc};
use serde_json::{Map, Value as Json};

use crate::compile::OutputColumn;
use crate::error::{QueryError, bail, show};
use crate::filter::readable;
use crate::meta::{AttrType, Attribute, Datasource, Dialect, KeyGeneration};
use crate::sql::{Sql, Statement};
use crate::value::{Value, parse_date, parse_datetime};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowOp {
    Insert,
    Update,
    Delete,
}

impl RowOp {
    pub fn code(self) -> &'static str {
        match self {
            RowOp::Insert => "I",
            RowOp::Update => "U",
            RowOp::Delete => "D",
        }
    }
}

/// A posted row, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct WriteRow {
    pub op: RowOp,
    /// Attribute code and value to write (insert: every given column; update: the updatable ones).
    pub values: Vec<(String, Value)>,
    /// Primary key (update, delete; insert with `keyGeneration: none`).
    pub key: Vec<(String, Value)>,
    /// The `lastUpdateDate` the client saw (update, delete). `Value::Null` matches a NULL.
    pub lock: Option<Value>,
}

/// Who writes and when: the WHO values.
#[derive(Debug, Clone)]
pub struct WriteContext<'a> {
    pub dialect: Dialect,
    pub user: &'a str,
    pub now: DateTime<Utc>,
}

const LAST_UPDATE_DATE: &str = "lastUpdateDate";

/// Converts a client's JSON value for `a`, checking its type. `null` and `""` are NULL.
pub fn value_for(a: &Attribute, v: &Json) -> Result<Value, QueryError> {
    use AttrType as T;
    let code = &a.code;
    let wrong = |expected: &str| {
        QueryError::new(format!(
            "attribute `{code}`: expected {expected}, got {}",
            show(v)
        ))
    };
    if v.is_null() || v.as_str() == Some("") {
        return Ok(Value::Null);
    }
    if v.as_str().is_some_and(|s| s.contains('\0')) {
        return Err(wrong("a string without NUL characters"));
    }
    let text = || v.as_str().map(str::to_string);
    Ok(match a.ty {
        T::String | T::UserId => {
            let s = text().ok_or_else(|| wrong("a string"))?;
            if let Some(max) = a.max_length
                && s.chars().count() > max as usize
            {
                bail!("attribute `{code}`: longer than {max} characters");
            }
            Value::Text(s)
        }
        T::Email => {
            let s = text().ok_or_else(|| wrong("an email address"))?;
            if !is_email(&s) {
                return Err(wrong("an email address"));
            }
            Value::Text(s)
        }
        T::Phone => {
            let s = text().ok_or_else(|| wrong("a phone number"))?;
            if !is_phone(&s) {
                return Err(wrong("a phone number"));
            }
            Value::Text(s)
        }
        T::Url => {
            let s = text().ok_or_else(|| wrong("an http(s) URL"))?;
            if !is_url(&s) {
                return Err(wrong("an http(s) URL"));
            }
            Value::Text(s)
        }
        T::Yn => match v.as_str() {
            Some(s @ ("Y" | "N")) => Value::Text(s.to_string()),
            _ => return Err(wrong("\"Y\" or \"N\"")),
        },
        T::Integer => Value::Int(
            v.as_i64()
                .ok_or_else(|| wrong("an integer in the 64-bit range"))?,
        ),
        T::Decimal | T::Double | T::Percent => Value::Float(
            v.as_f64()
                .filter(|f| f.is_finite())
                .ok_or_else(|| wrong("a number"))?,
        ),
        T::Boolean => Value::Bool(v.as_bool().ok_or_else(|| wrong("true or false"))?),
        T::Date => Value::Date(
            v.as_str()
                .and_then(parse_date)
                .ok_or_else(|| wrong("a date YYYY-MM-DD"))?,
        ),
        T::DateTime => Value::DateTime(
            v.as_str()
                .and_then(parse_datetime)
                .ok_or_else(|| wrong("an ISO-8601 date-time"))?,
        ),
        T::Json => Value::Json(v.clone()),
    })
}

fn is_email(s: &str) -> bool {
    let Some((local, domain)) = s.split_once('@') else {
        return false;
    };
    !local.is_empty()
        && local.len() <= 64
        && s.len() <= 254
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !domain.contains('@')
        && !s.chars().any(|c| c.is_whitespace() || c.is_control())
}

fn is_phone(s: &str) -> bool {
    let digits = s.chars().filter(char::is_ascii_digit).count();
    (4..=20).contains(&digits)
        && s.len() <= 40
        && s.chars()
            .all(|c| c.is_ascii_digit() || " +-().".contains(c))
}

fn is_url(s: &str) -> bool {
    let rest = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"));
    rest.is_some_and(|r| {
        let host = r.split(['/', '?', '#']).next().unwrap_or("");
        !host.is_empty() && !s.chars().any(|c| c.is_whitespace() || c.is_control())
    })
}

/// Checks one posted row. `index` is the row's position, for messages.
pub fn parse_row(ds: &Datasource, row: &Json, index: usize) -> Result<WriteRow, QueryError> {
    let Json::Object(obj) = row else {
        bail!("row {index}: must be an object");
    };
    let op = match obj.get("_rs").and_then(Json::as_str) {
        Some("I") => RowOp::Insert,
        Some("U") => RowOp::Update,
        Some("D") => RowOp::Delete,
        Some(other) => bail!("row {index}: `_rs` must be \"I\", \"U\" or \"D\", not {other:?}"),
        None => bail!("row {index}: `_rs` (\"I\", \"U\" or \"D\") is required"),
    };
    parse_fields(ds, obj, op).map_err(|e| QueryError::new(format!("row {index}: {e}")))
}

fn parse_fields(
    ds: &Datasource,
    obj: &Map<String, Json>,
    op: RowOp,
) -> Result<WriteRow, QueryError> {
    // Unknown attributes reject the row whatever the operation; a read-only client view of a
    // write-only attribute does not exist, but writing it is allowed.
    for k in obj.keys() {
        if k != "_rs" && ds.attribute(k).is_none() {
            bail!("unknown attribute `{k}`");
        }
    }
    let is_key = |a: &Attribute| ds.primary_key.iter().any(|k| k == &a.code);
    let mut row = WriteRow {
        op,
        values: Vec::new(),
        key: Vec::new(),
        lock: None,
    };
    if op != RowOp::Insert {
        for k in &ds.primary_key {
            let a = ds
                .attribute(k)
                .ok_or_else(|| QueryError::new(format!("bad key `{k}`")))?;
            match obj.get(k).map(|v| value_for(a, v)).transpose()? {
                Some(Value::Null) | None => {
                    bail!(
                        "`{}` rows must carry the whole primary key; `{k}` is missing",
                        op.code()
                    )
                }
                Some(v) => row.key.push((k.clone(), v)),
            }
        }
        let a = ds
            .attribute(LAST_UPDATE_DATE)
            .ok_or_else(|| QueryError::new("no lastUpdateDate"))?;
        match obj.get(LAST_UPDATE_DATE) {
            None => bail!("`{}` rows must carry `lastUpdateDate`", op.code()),
            Some(v) => row.lock = Some(value_for(a, v)?),
        }
    }
    if op == RowOp::Delete {
        return Ok(row);
    }
    for a in &ds.attributes {
        if a.who {
            continue;
        }
        let given = obj.get(&a.code);
        match op {
            RowOp::Insert => {
                if is_key(a) && ds.key_generation != KeyGeneration::None {
                    continue; // made by the database or the server
                }
                let v = given
                    .map(|v| value_for(a, v))
                    .transpose()?
                    .unwrap_or(Value::Null);
                if v == Value::Null && (a.required || is_key(a)) {
                    bail!("attribute `{}` is required", a.code);
                }
                if given.is_some() {
                    row.values.push((a.code.clone(), v));
                }
            }
            RowOp::Update => {
                let Some(given) = given else { continue };
                if is_key(a) || !a.updatable {
                    continue;
                }
                let v = value_for(a, given)?;
                if v == Value::Null && a.required {
                    bail!("attribute `{}` is required", a.code);
                }
                row.values.push((a.code.clone(), v));
            }
            RowOp::Delete => {}
        }
    }
    Ok(row)
}

/// What `RETURNING` yields: every readable attribute, in definition order.
pub fn returning_columns(ds: &Datasource) -> Vec<OutputColumn> {
    ds.attributes
        .iter()
        .filter(|a| readable(a))
        .map(|a| OutputColumn {
            name: a.code.clone(),
            ty: a.ty,
        })
        .collect()
}

fn column<'a>(ds: &'a Datasource, code: &str) -> Result<&'a Attribute, QueryError> {
    ds.attribute(code)
        .ok_or_else(|| QueryError::new(format!("unknown attribute `{code}`")))
}

fn push_returning(sql: &mut Sql, ds: &Datasource) {
    sql.push(" RETURNING ");
    let cols: Vec<&str> = ds
        .attributes
        .iter()
        .filter(|a| readable(a))
        .map(|a| a.column.as_str())
        .collect();
    sql.push(&cols.join(", "));
}

fn push_key_lock(sql: &mut Sql, ds: &Datasource, row: &WriteRow) -> Result<(), QueryError> {
    sql.push(" WHERE ");
    for (i, (code, v)) in row.key.iter().enumerate() {
        if i > 0 {
            sql.push(" AND ");
        }
        sql.push(&column(ds, code)?.column)
            .push(" = ")
            .bind(v.clone());
    }
    let lock = column(ds, LAST_UPDATE_DATE)?;
    match &row.lock {
        Some(Value::Null) => {
            sql.push(" AND ").push(&lock.column).push(" IS NULL");
        }
        Some(v) => {
            sql.push(" AND ")
                .push(&lock.column)
                .push(" = ")
                .bind(v.clone());
        }
        None => bail!("missing lastUpdateDate"),
    }
    Ok(())
}

fn who(ds: &Datasource, code: &str) -> Result<String, QueryError> {
    Ok(column(ds, code)?.column.clone())
}

/// The statement for one row; it returns the row as it now stands (deleted: as it was).
pub fn compile_write(
    ds: &Datasource,
    row: &WriteRow,
    ctx: &WriteContext<'_>,
) -> Result<Statement, QueryError> {
    let now = Value::DateTime(crate::value::truncate_micros(ctx.now).unwrap_or(ctx.now));
    let user = Value::Text(ctx.user.to_string());
    let table = ds.qualified_table();
    let mut sql = Sql::new();
    match row.op {
        RowOp::Insert => {
            let mut cols = Vec::new();
            let mut vals = Vec::new();
            for (code, v) in &row.values {
                cols.push(column(ds, code)?.column.clone());
                vals.push(v.clone());
            }
            for (code, v) in [
                ("createdBy", &user),
                ("creationDate", &now),
                ("lastUpdatedBy", &user),
                ("lastUpdateDate", &now),
            ] {
                cols.push(who(ds, code)?);
                vals.push(v.clone());
            }
            sql.push("INSERT INTO ")
                .push(&table)
                .push(" (")
                .push(&cols.join(", "))
                .push(") VALUES (");
            for (i, v) in vals.into_iter().enumerate() {
                if i > 0 {
                    sql.push(", ");
                }
                sql.bind(v);
            }
            sql.push(")");
        }
        RowOp::Update => {
            sql.push("UPDATE ").push(&table).push(" SET ");
            for (code, v) in &row.values {
                sql.push(&column(ds, code)?.column)
                    .push(" = ")
                    .bind(v.clone())
                    .push(", ");
            }
            sql.push(&who(ds, "lastUpdatedBy")?).push(" = ").bind(user);
            sql.push(", ")
                .push(&who(ds, "lastUpdateDate")?)
                .push(" = ")
                .bind(now);
            push_key_lock(&mut sql, ds, row)?;
        }
        RowOp::Delete => {
            sql.push("DELETE FROM ").push(&table);
            push_key_lock(&mut sql, ds, row)?;
        }
    }
    // MySQL has no `RETURNING`: the caller reads the row back ([`compile_reread`]).
    if ctx.dialect != Dialect::Mysql {
        push_returning(&mut sql, ds);
    }
    Ok(sql.finish(ctx.dialect))
}

/// `SELECT <the columns a write returns> FROM t WHERE <key>` (with `FOR UPDATE` when asked):
/// on MySQL, which has no `RETURNING`, the row a write made (or is about to delete).
pub fn compile_reread(
    ds: &Datasource,
    key: &[(String, Value)],
    dialect: Dialect,
    for_update: bool,
) -> Result<Statement, QueryError> {
    let cols: Vec<&str> = ds
        .attributes
        .iter()
        .filter(|a| readable(a))
        .map(|a| a.column.as_str())
        .collect();
    let mut sql = Sql::new();
    sql.push("SELECT ")
        .push(&cols.join(", "))
        .push(" FROM ")
        .push(&ds.qualified_table())
        .push(" WHERE ");
    for (i, (code, v)) in key.iter().enumerate() {
        if i > 0 {
            sql.push(" AND ");
        }
        sql.push(&column(ds, code)?.column)
            .push(" = ")
            .bind(v.clone());
    }
    if for_update {
        sql.push(" FOR UPDATE");
    }
    Ok(sql.finish(dialect))
}

/// `SELECT lastUpdateDate FROM t WHERE <key>`: tells a missing row (404) from a stale one (409).
pub fn compile_lookup(
    ds: &Datasource,
    key: &[(String, Value)],
    dialect: Dialect,
) -> Result<Statement, QueryError> {
    let mut sql = Sql::new();
    sql.push("SELECT ")
        .push(&who(ds, LAST_UPDATE_DATE)?)
        .push(" FROM ")
        .push(&ds.qualified_table())
        .push(" WHERE ");
    for (i, (code, v)) in key.iter().enumerate() {
        if i > 0 {
            sql.push(" AND ");
        }
        sql.push(&column(ds, code)?.column)
            .push(" = ")
            .bind(v.clone());
    }
    Ok(sql.finish(dialect))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::definition::DatasourceDef;
    use serde_json::json;

    fn employees() -> Datasource {
        let text = r#"{"name": "Employees", "table": "EMPLOYEES", "primaryKey": ["empId"],
          "keyGeneration": "auto",
          "attributes": [
            {"code": "empId", "type": "Integer"},
            {"code": "name", "type": "String", "required": true, "maxLength": 5},
            {"code": "salary", "type": "Decimal"},
            {"code": "active", "type": "YN"},
            {"code": "email", "type": "Email", "column": "EMAIL_ADDRESS"},
            {"code": "badge", "type": "String", "updatable": false},
            {"code": "secret", "type": "String", "writeOnly": true}]}"#;
        DatasourceDef::parse("E", text)
            .unwrap()
            .resolve("E", "demo", Some("demo"))
            .unwrap()
    }

    fn ctx(d: Dialect) -> WriteContext<'static> {
        WriteContext {
            dialect: d,
            user: "steve",
            now: DateTime::from_timestamp(1_600_000_000, 123_456_789).unwrap(),
        }
    }

    #[test]
    fn insert_sets_who_and_ignores_client_who_and_generated_key() {
        let ds = employees();
        let row = parse_row(
            &ds,
            &json!({"_rs": "I", "empId": 5, "name": "Steve", "createdBy": "evil", "secret": "x"}),
            0,
        )
        .unwrap();
        let st = compile_write(&ds, &row, &ctx(Dialect::Postgres)).unwrap();
        assert_eq!(
            st.sql,
            "INSERT INTO demo.EMPLOYEES (NAME, SECRET, CREATED_BY, CREATION_DATE, LAST_UPDATED_BY, LAST_UPDATE_DATE) \
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING EMP_ID, NAME, SALARY, ACTIVE, EMAIL_ADDRESS, BADGE, \
             CREATED_BY, CREATION_DATE, LAST_UPDATED_BY, LAST_UPDATE_DATE"
        );
        assert_eq!(st.params[2], Value::Text("steve".into()));
        assert!(!st.params.contains(&Value::Text("evil".into())));
    }

    #[test]
    fn update_ignores_key_and_read_only_and_locks_on_last_update_date() {
        let ds = employees();
        let row = parse_row(
            &ds,
            &json!({"_rs": "U", "empId": 9, "badge": "B", "salary": 2, "lastUpdateDate": "2020-11-30T23:59:59.999Z"}),
            3,
        )
        .unwrap();
        let st = compile_write(&ds, &row, &ctx(Dialect::Sqlite)).unwrap();
        assert!(st.sql.starts_with("UPDATE demo.EMPLOYEES SET SALARY = ?, LAST_UPDATED_BY = ?, LAST_UPDATE_DATE = ? WHERE EMP_ID = ? AND LAST_UPDATE_DATE = ? RETURNING"), "{}", st.sql);
        assert_eq!(st.params[3], Value::Int(9));
        assert_eq!(
            st.params[4],
            Value::DateTime(parse_datetime("2020-11-30T23:59:59.999Z").unwrap())
        );
    }

    #[test]
    fn bad_rows_name_the_row_and_attribute() {
        let ds = employees();
        let cases = [
            (json!({"name": "x"}), "row 2: `_rs`"),
            (json!({"_rs": "X"}), "row 2: `_rs` must be"),
            (json!({"_rs": "I"}), "row 2: attribute `name` is required"),
            (
                json!({"_rs": "I", "name": "x", "bogus": 1}),
                "row 2: unknown attribute `bogus`",
            ),
            (
                json!({"_rs": "I", "name": "toolong"}),
                "`name`: longer than 5",
            ),
            (
                json!({"_rs": "I", "name": "x", "salary": "12"}),
                "`salary`: expected a number",
            ),
            (
                json!({"_rs": "I", "name": "x", "active": "yes"}),
                "`active`: expected \"Y\" or \"N\"",
            ),
            (
                json!({"_rs": "I", "name": "x", "email": "nope"}),
                "`email`: expected an email",
            ),
            (json!({"_rs": "I", "name": 5}), "`name`: expected a string"),
            (
                json!({"_rs": "U", "name": "x", "lastUpdateDate": null}),
                "whole primary key",
            ),
            (
                json!({"_rs": "U", "empId": 1}),
                "must carry `lastUpdateDate`",
            ),
            (
                json!({"_rs": "D", "empId": 1, "lastUpdateDate": "yesterday"}),
                "`lastUpdateDate`: expected an ISO-8601",
            ),
            (
                json!({"_rs": "U", "empId": 1, "name": "", "lastUpdateDate": null}),
                "`name` is required",
            ),
        ];
        for (row, needle) in cases {
            let e = parse_row(&ds, &row, 2).unwrap_err().message;
            assert!(e.contains(needle), "{row}: {e}");
        }
        assert!(
            value_for(ds.attribute("empId").unwrap(), &json!(1.5))
                .unwrap_err()
                .message
                .contains("integer")
        );
        assert!(value_for(ds.attribute("empId").unwrap(), &json!(u64::MAX)).is_err());
    }

    #[test]
    fn delete_and_lookup() {
        let ds = employees();
        let row = parse_row(
            &ds,
            &json!({"_rs": "D", "empId": 1, "lastUpdateDate": null, "name": "ignored"}),
            0,
        )
        .unwrap();
        let st = compile_write(&ds, &row, &ctx(Dialect::Postgres)).unwrap();
        assert!(st.sql.starts_with("DELETE FROM demo.EMPLOYEES WHERE EMP_ID = $1 AND LAST_UPDATE_DATE IS NULL RETURNING"), "{}", st.sql);
        let l = compile_lookup(&ds, &row.key, Dialect::Postgres).unwrap();
        assert_eq!(
            l.sql,
            "SELECT LAST_UPDATE_DATE FROM demo.EMPLOYEES WHERE EMP_ID = $1"
        );
    }

    #[test]
    fn validators() {
        assert!(
            is_email("a.b@example.com")
                && !is_email("a@b")
                && !is_email("a b@c.de")
                && !is_email("@x.y")
        );
        assert!(is_phone("+1 (555) 123-4567") && !is_phone("12") && !is_phone("call me"));
        assert!(is_url("https://x.io/a?b") && !is_url("ftp://x") && !is_url("https://"));
    }
}
