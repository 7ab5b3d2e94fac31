//! Filter trees -> SQL boolean expressions. Columns come from metadata, values become binds.

use chrono::{DateTime, Days, NaiveDate, NaiveTime, Utc};
use serde_json::Value as Json;

use crate::compile::CompileOptions;
use crate::error::{QueryError, bail, show};
use crate::meta::{AttrType, Attribute, Datasource, Dialect, Family};
use crate::parse::{Filter, MAX_LIST_LEN, Op};
use crate::sql::Sql;
use crate::value::{Value, parse_date, parse_datetime};

/// The escape character of every `LIKE` pattern: it needs no escaping in any dialect's string
/// literal (a backslash does in MySQL).
const ESC: char = '!';

/// The longest value of `like`, `nct`, `sw`, `ew` and of each `has*` part, in characters.
/// Escaped and wrapped in `%`, even four-byte characters stay under SQLite's limit of 50,000
/// bytes per pattern (past it, SQLite fails the whole statement).
pub const MAX_PATTERN_CHARS: usize = 10_000;

/// Whose filter is being compiled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    /// The client's: only readable attributes exist.
    Client,
    /// The datasource's default filter: trusted metadata, may use any attribute.
    Default,
}

pub(crate) struct FilterCompiler<'a> {
    pub ds: &'a Datasource,
    pub opts: &'a CompileOptions,
    pub source: Source,
}

impl FilterCompiler<'_> {
    fn dialect(&self) -> Dialect {
        self.opts.dialect
    }

    pub fn compile(&self, f: &Filter, sql: &mut Sql) -> Result<(), QueryError> {
        match f {
            Filter::And(items) => self.junction(items, " AND ", "1=1", sql),
            Filter::Or(items) => self.junction(items, " OR ", "1=0", sql),
            Filter::Not(inner) => {
                // NOT of an unknown (NULL) comparison would drop the row; `not` means "every
                // row the inner filter does not match", so NULL counts as false first.
                sql.push("NOT COALESCE((");
                self.compile(inner, sql)?;
                sql.push("), ")
                    .push(false_literal(self.dialect()))
                    .push(")");
                Ok(())
            }
            Filter::Cond { attr, op, value } => {
                let a = self.attribute(attr)?;
                self.condition(a, *op, value, sql)
            }
        }
    }

    fn junction(
        &self,
        items: &[Filter],
        sep: &str,
        empty: &str,
        sql: &mut Sql,
    ) -> Result<(), QueryError> {
        if items.is_empty() {
            sql.push(empty);
            return Ok(());
        }
        sql.push("(");
        for (i, item) in items.iter().enumerate() {
            if i > 0 {
                sql.push(sep);
            }
            self.compile(item, sql)?;
        }
        sql.push(")");
        Ok(())
    }

    fn attribute(&self, code: &str) -> Result<&Attribute, QueryError> {
        match (self.ds.attribute(code), self.source) {
            (Some(a), Source::Default) => Ok(a),
            (Some(a), Source::Client) if readable(a) => Ok(a),
            (_, Source::Client) => bail!("unknown attribute `{code}` in filter"),
            (None, Source::Default) => bail!(
                "the default filter of datasource `{}` refers to unknown attribute `{code}`",
                self.ds.name
            ),
        }
    }

    fn condition(&self, a: &Attribute, op: Op, v: &Json, sql: &mut Sql) -> Result<(), QueryError> {
        let col = a.column.as_str();
        let family = a.ty.family();
        let c = Cond { a, op };
        use Op::*;
        match (family, op) {
            // The value of these operators is ignored.
            (Family::String, Empty) => {
                sql.push(col).push(" IS NULL");
            }
            (Family::String, NotEmpty) => {
                sql.push(col).push(" IS NOT NULL");
            }
            (Family::Number | Family::Boolean | Family::Date | Family::Json, Null) => {
                sql.push(col).push(" IS NULL");
            }
            (Family::Number | Family::Boolean | Family::Date | Family::Json, NotNull) => {
                sql.push(col).push(" IS NOT NULL");
            }

            (Family::String, Is) => cmp(sql, col, "=", Value::Text(c.text(v)?)),
            (Family::String, Not) => cmp_or_null(sql, col, Value::Text(c.text(v)?)),
            (Family::String, Like | Nct | Sw | Ew) => {
                let s = escape_like(&c.pattern(v)?);
                let pattern = match op {
                    Sw => format!("{s}%"),
                    Ew => format!("%{s}"),
                    _ => format!("%{s}%"),
                };
                if op == Nct {
                    sql.push("(");
                    self.like(sql, col, true, pattern);
                    sql.push(" OR ").push(col).push(" IS NULL)");
                } else {
                    self.like(sql, col, false, pattern);
                }
            }
            (Family::String, In | Nin) => {
                let values = c
                    .list(v)?
                    .iter()
                    .map(|x| c.text(x).map(Value::Text))
                    .collect::<Result<Vec<_>, _>>()?;
                in_list(sql, col, op == Nin, values);
            }
            (Family::String, HasAll | HasAny | NotAny) => {
                let parts: Vec<String> = match v {
                    Json::String(_) => c
                        .pattern(v)?
                        .split_whitespace()
                        .map(str::to_string)
                        .collect(),
                    _ => c
                        .list(v)?
                        .iter()
                        .map(|x| c.pattern(x))
                        .collect::<Result<_, _>>()?,
                };
                self.has(sql, col, op, &parts);
            }

            (Family::Number | Family::Boolean, Eq) => cmp(sql, col, "=", c.scalar(v)?),
            (Family::Number | Family::Boolean, Ne) => cmp_or_null(sql, col, c.scalar(v)?),
            (Family::Number, Gt) => cmp(sql, col, ">", c.scalar(v)?),
            (Family::Number, Gte) => cmp(sql, col, ">=", c.scalar(v)?),
            (Family::Number, Lt) => cmp(sql, col, "<", c.scalar(v)?),
            (Family::Number, Lte) => cmp(sql, col, "<=", c.scalar(v)?),
            (Family::Number, In | Nin) => {
                let values = c
                    .list(v)?
                    .iter()
                    .map(|x| c.scalar(x))
                    .collect::<Result<Vec<_>, _>>()?;
                in_list(sql, col, op == Nin, values);
            }
            (Family::Number, Bn) => {
                let (from, to) = c.pair(v)?;
                between(sql, col, c.scalar(from)?, c.scalar(to)?);
            }

            (Family::Date, On) => cmp(sql, col, "=", c.instant(v, false)?),
            (Family::Date, NotOn) => cmp_or_null(sql, col, c.instant(v, false)?),
            (Family::Date, Before) => cmp(sql, col, "<", c.instant(v, true)?),
            (Family::Date, After) => cmp(sql, col, ">=", c.instant(v, true)?),
            (Family::Date, OnOrBefore) => cmp(sql, col, "<=", c.instant(v, true)?),
            (Family::Date, Bn) => {
                let (from, to) = c.pair(v)?;
                between(sql, col, c.instant(from, true)?, c.instant(to, true)?);
            }
            (Family::Date, Today) => self.days(sql, a, 0, 0)?,
            (Family::Date, LastNDays) => self.days(sql, a, c.days(v)?, 0)?,
            (Family::Date, NextNDays) => self.days(sql, a, 0, c.days(v)?)?,

            _ => bail!(
                "operator `{}` is not valid for {} attribute `{}`",
                op.name(),
                a.ty.name(),
                a.code
            ),
        }
        Ok(())
    }

    /// `col LIKE ? ESCAPE '!'` (`ILIKE` on PostgreSQL; both sides lower-cased on MySQL, so the
    /// match ignores case whatever the column's collation), optionally negated.
    fn like(&self, sql: &mut Sql, col: &str, negated: bool, pattern: String) {
        let kw = match (self.dialect(), negated) {
            (Dialect::Postgres, false) => " ILIKE ",
            (Dialect::Postgres, true) => " NOT ILIKE ",
            (_, false) => " LIKE ",
            (_, true) => " NOT LIKE ",
        };
        if self.dialect() == Dialect::Mysql {
            sql.push("LOWER(")
                .push(col)
                .push(")")
                .push(kw)
                .push("LOWER(");
            sql.bind(Value::Text(pattern)).push(")");
        } else {
            sql.push(col).push(kw).bind(Value::Text(pattern));
        }
        sql.push(" ESCAPE '")
            .push(ESC.encode_utf8(&mut [0; 4]))
            .push("'");
    }

    /// `hasAll`: every part contained; `hasAny`: at least one; `notAny`: none (NULL included).
    fn has(&self, sql: &mut Sql, col: &str, op: Op, parts: &[String]) {
        let (sep, empty) = match op {
            Op::HasAll => (" AND ", "1=1"),
            Op::HasAny => (" OR ", "1=0"),
            _ => (" AND ", "1=1"),
        };
        if parts.is_empty() {
            sql.push(empty);
            return;
        }
        let negated = op == Op::NotAny;
        sql.push("(");
        if negated {
            sql.push("(");
        }
        for (i, p) in parts.iter().enumerate() {
            if i > 0 {
                sql.push(sep);
            }
            self.like(sql, col, negated, format!("%{}%", escape_like(p)));
        }
        sql.push(")");
        if negated {
            sql.push(" OR ").push(col).push(" IS NULL)");
        }
    }

    /// The days from `today - back` through `today + ahead`, inclusive.
    fn days(&self, sql: &mut Sql, a: &Attribute, back: u64, ahead: u64) -> Result<(), QueryError> {
        let today = self.opts.today;
        let out_of_range =
            || QueryError::new(format!("day count for `{}` is out of range", a.code));
        let first = today
            .checked_sub_days(Days::new(back))
            .ok_or_else(out_of_range)?;
        let last = today
            .checked_add_days(Days::new(ahead))
            .ok_or_else(out_of_range)?;
        if a.ty == AttrType::Date {
            if first == last {
                cmp(sql, a.column.as_str(), "=", Value::Date(first));
            } else {
                between(sql, &a.column, Value::Date(first), Value::Date(last));
            }
        } else {
            let end = last.succ_opt().ok_or_else(out_of_range)?;
            sql.push("(").push(&a.column).push(" >= ");
            sql.bind(Value::DateTime(midnight(first)));
            sql.push(" AND ").push(&a.column).push(" < ");
            sql.bind(Value::DateTime(midnight(end))).push(")");
        }
        Ok(())
    }
}

/// Attributes a client may filter, sort, group and read.
pub(crate) fn readable(a: &Attribute) -> bool {
    a.queryable && !a.write_only
}

pub(crate) fn false_literal(d: Dialect) -> &'static str {
    match d {
        Dialect::Sqlite => "0",
        Dialect::Postgres | Dialect::Mysql => "FALSE",
    }
}

fn midnight(d: NaiveDate) -> DateTime<Utc> {
    d.and_time(NaiveTime::MIN).and_utc()
}

/// `!` -> `!!`, `%` -> `!%`, `_` -> `!_`: the value then matches literally.
pub(crate) fn escape_like(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    for ch in s.chars() {
        if ch == ESC || ch == '%' || ch == '_' {
            out.push(ESC);
        }
        out.push(ch);
    }
    out
}

fn cmp(sql: &mut Sql, col: &str, op: &str, v: Value) {
    sql.push(col).push(" ").push(op).push(" ").bind(v);
}

/// `(col <> ? OR col IS NULL)`: negative operators include rows where the column is NULL.
fn cmp_or_null(sql: &mut Sql, col: &str, v: Value) {
    sql.push("(").push(col).push(" <> ").bind(v);
    sql.push(" OR ").push(col).push(" IS NULL)");
}

fn between(sql: &mut Sql, col: &str, from: Value, to: Value) {
    sql.push("(").push(col).push(" BETWEEN ").bind(from);
    sql.push(" AND ").bind(to).push(")");
}

/// `col IN (?, ?)`; `nin`: `(col NOT IN (?, ?) OR col IS NULL)`. Empty lists: `in` matches
/// nothing, `nin` everything.
fn in_list(sql: &mut Sql, col: &str, negated: bool, values: Vec<Value>) {
    if values.is_empty() {
        sql.push(if negated { "1=1" } else { "1=0" });
        return;
    }
    if negated {
        sql.push("(").push(col).push(" NOT IN (");
    } else {
        sql.push(col).push(" IN (");
    }
    for (i, v) in values.into_iter().enumerate() {
        if i > 0 {
            sql.push(", ");
        }
        sql.bind(v);
    }
    sql.push(")");
    if negated {
        sql.push(" OR ").push(col).push(" IS NULL)");
    }
}

/// One condition being compiled: knows how to read its value.
struct Cond<'a> {
    a: &'a Attribute,
    op: Op,
}

impl Cond<'_> {
    fn bad(&self, expected: &str, got: &Json) -> QueryError {
        QueryError::new(format!(
            "operator `{}` on `{}` expects {expected}, got {}",
            self.op.name(),
            self.a.code,
            show(got)
        ))
    }

    fn text(&self, v: &Json) -> Result<String, QueryError> {
        match v {
            // NUL is refused everywhere: PostgreSQL rejects it in text, and SQLite's LIKE would
            // read the pattern as a C string cut at the NUL.
            Json::String(s) if s.contains('\0') => {
                Err(self.bad("a string without NUL characters", v))
            }
            Json::String(s) => Ok(s.clone()),
            _ => Err(self.bad("a string", v)),
        }
    }

    /// A string for a `LIKE` pattern: at most [`MAX_PATTERN_CHARS`] characters.
    fn pattern(&self, v: &Json) -> Result<String, QueryError> {
        let s = self.text(v)?;
        if s.chars().count() > MAX_PATTERN_CHARS {
            return Err(self.bad(
                &format!("a string of at most {MAX_PATTERN_CHARS} characters"),
                v,
            ));
        }
        Ok(s)
    }

    fn list<'v>(&self, v: &'v Json) -> Result<&'v Vec<Json>, QueryError> {
        let Json::Array(items) = v else {
            return Err(self.bad("an array", v));
        };
        if items.len() > MAX_LIST_LEN {
            bail!(
                "operator `{}` on `{}` accepts at most {MAX_LIST_LEN} values, got {}",
                self.op.name(),
                self.a.code,
                items.len()
            );
        }
        Ok(items)
    }

    fn pair<'v>(&self, v: &'v Json) -> Result<(&'v Json, &'v Json), QueryError> {
        match v {
            Json::Array(items) if items.len() == 2 => Ok((&items[0], &items[1])),
            _ => Err(self.bad("an array [from, to]", v)),
        }
    }

    /// A number (Integer: an i64; other number types: any number) or a boolean.
    fn scalar(&self, v: &Json) -> Result<Value, QueryError> {
        match self.a.ty {
            AttrType::Boolean => v
                .as_bool()
                .map(Value::Bool)
                .ok_or_else(|| self.bad("true or false", v)),
            AttrType::Integer => v
                .as_i64()
                .map(Value::Int)
                .ok_or_else(|| self.bad("an integer", v)),
            _ => v
                .as_f64()
                .filter(|_| v.is_number())
                .map(Value::Float)
                .ok_or_else(|| self.bad("a number", v)),
        }
    }

    /// A `Date` (`YYYY-MM-DD`) or `DateTime` (ISO-8601, any offset; with `date_ok`, also a
    /// bare date meaning midnight UTC).
    fn instant(&self, v: &Json, date_ok: bool) -> Result<Value, QueryError> {
        let s = v.as_str();
        if self.a.ty == AttrType::Date {
            return s
                .and_then(parse_date)
                .map(Value::Date)
                .ok_or_else(|| self.bad("a date \"YYYY-MM-DD\"", v));
        }
        let t = s.and_then(|s| {
            parse_datetime(s).or_else(|| date_ok.then(|| parse_date(s).map(midnight)).flatten())
        });
        match t {
            Some(t) => Ok(Value::DateTime(t)),
            None if date_ok => Err(self.bad("an ISO-8601 date-time or a date \"YYYY-MM-DD\"", v)),
            None => Err(self.bad("an ISO-8601 date-time", v)),
        }
    }

    fn days(&self, v: &Json) -> Result<u64, QueryError> {
        v.as_u64()
            .ok_or_else(|| self.bad("a non-negative integer", v))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn like_escaping_makes_wildcards_literal() {
        assert_eq!(escape_like("a%b_c!d"), "a!%b!_c!!d");
        assert_eq!(escape_like("plain é"), "plain é");
    }
}
