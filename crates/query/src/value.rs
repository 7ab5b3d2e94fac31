//! A bind parameter or a fetched cell, independent of the database driver.

use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};

/// One SQL value. The store binds it per dialect (e.g. `Date` as TEXT on SQLite, as `date` on
/// PostgreSQL) and decodes fetched cells back into it.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(String),
    Date(NaiveDate),
    DateTime(DateTime<Utc>),
    Json(serde_json::Value),
}

impl Value {
    /// The wire form: dates as `YYYY-MM-DD`, date-times as ISO-8601 UTC with six fraction
    /// digits and `Z`.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match self {
            Value::Null => J::Null,
            Value::Bool(b) => J::Bool(*b),
            Value::Int(i) => J::from(*i),
            Value::Float(f) => serde_json::Number::from_f64(*f).map_or(J::Null, J::Number),
            Value::Text(s) => J::String(s.clone()),
            Value::Date(d) => J::String(d.format("%Y-%m-%d").to_string()),
            Value::DateTime(t) => J::String(format_datetime(t)),
            Value::Json(j) => j.clone(),
        }
    }
}

/// `2021-05-30T04:19:41.483732Z`: always six fraction digits, so text order is time order.
pub fn format_datetime(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// Parses ISO-8601 with any offset (normalised to UTC) or a bare `YYYY-MM-DDTHH:MM:SS[.f]`
/// taken as UTC. Precision beyond microseconds is truncated.
pub fn parse_datetime(s: &str) -> Option<DateTime<Utc>> {
    let t = if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        t.with_timezone(&Utc)
    } else {
        let naive = chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f")
            .or_else(|_| chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f"))
            .ok()?;
        naive.and_utc()
    };
    truncate_micros(t)
}

/// Drops sub-microsecond precision (the platform stores microseconds everywhere).
pub fn truncate_micros(t: DateTime<Utc>) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp_micros(t.timestamp_micros())
}

pub fn parse_date(s: &str) -> Option<NaiveDate> {
    NaiveDate::parse_from_str(s, "%Y-%m-%d").ok()
}
