//! Datasource metadata: what the compiler needs to know about a datasource, and the SQL dialect.
//!
//! Metadata is trusted: every identifier here was checked by [`is_identifier`] when the
//! datasource was loaded, so the compiler may write it into SQL unquoted.

use serde::{Deserialize, Serialize};

use crate::parse::Op;

/// The SQL dialect a statement is rendered for. A value, passed around; never a `cfg`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dialect {
    Sqlite,
    Postgres,
    Mysql,
}

impl Dialect {
    /// The placeholder for the `n`th parameter (1-based).
    pub fn placeholder(self, n: usize) -> String {
        match self {
            Dialect::Postgres => format!("${n}"),
            Dialect::Sqlite | Dialect::Mysql => "?".to_string(),
        }
    }

    /// Quotes an output alias (an attribute code, which is case-sensitive camelCase).
    pub fn quote_alias(self, alias: &str) -> String {
        match self {
            Dialect::Mysql => format!("`{alias}`"),
            Dialect::Sqlite | Dialect::Postgres => format!("\"{alias}\""),
        }
    }
}

/// Attribute types, with the names the product uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AttrType {
    String,
    Email,
    Phone,
    #[serde(rename = "URL")]
    Url,
    #[serde(rename = "UserID")]
    UserId,
    #[serde(rename = "YN")]
    Yn,
    Integer,
    Decimal,
    Double,
    Percent,
    Date,
    DateTime,
    Boolean,
    #[serde(rename = "JSON")]
    Json,
}

/// Which operators an attribute accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    String,
    Number,
    Date,
    Boolean,
    Json,
}

impl Family {
    /// The family's name in documents (`string`, `number`, `date`, `boolean`, `json`).
    pub fn name(self) -> &'static str {
        match self {
            Family::String => "string",
            Family::Number => "number",
            Family::Date => "date",
            Family::Boolean => "boolean",
            Family::Json => "json",
        }
    }

    /// The filter operators an attribute of this family accepts, in the order the
    /// documentation lists them. The compiler's own table (`filter.rs`) is the authority; a
    /// test compiles every operator against every family and checks the two agree.
    pub fn operators(self) -> &'static [Op] {
        use Op::*;
        match self {
            Family::String => &[
                Is, Not, Empty, NotEmpty, Like, Nct, Sw, Ew, In, Nin, HasAll, HasAny, NotAny,
            ],
            Family::Number => &[Eq, Ne, Null, NotNull, Gt, Gte, Lt, Lte, In, Nin, Bn],
            Family::Date => &[
                On, NotOn, Before, After, OnOrBefore, Bn, Null, NotNull, Today, LastNDays,
                NextNDays,
            ],
            Family::Boolean => &[Eq, Ne, Null, NotNull],
            Family::Json => &[Null, NotNull],
        }
    }
}

impl AttrType {
    /// Every type, in the order of the specification's table.
    pub const ALL: [AttrType; 14] = [
        AttrType::String,
        AttrType::Email,
        AttrType::Phone,
        AttrType::Url,
        AttrType::UserId,
        AttrType::Yn,
        AttrType::Integer,
        AttrType::Decimal,
        AttrType::Double,
        AttrType::Percent,
        AttrType::Date,
        AttrType::DateTime,
        AttrType::Boolean,
        AttrType::Json,
    ];

    pub fn family(self) -> Family {
        use AttrType::*;
        match self {
            String | Email | Phone | Url | UserId | Yn => Family::String,
            Integer | Decimal | Double | Percent => Family::Number,
            Date | DateTime => Family::Date,
            Boolean => Family::Boolean,
            Json => Family::Json,
        }
    }

    pub fn name(self) -> &'static str {
        use AttrType::*;
        match self {
            String => "String",
            Email => "Email",
            Phone => "Phone",
            Url => "URL",
            UserId => "UserID",
            Yn => "YN",
            Integer => "Integer",
            Decimal => "Decimal",
            Double => "Double",
            Percent => "Percent",
            Date => "Date",
            DateTime => "DateTime",
            Boolean => "Boolean",
            Json => "JSON",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum KeyGeneration {
    /// The database's identity / auto-increment.
    #[default]
    Auto,
    /// A server-made UUID v4 string.
    Uuid,
    /// The client supplies the key.
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortDir {
    Asc,
    Desc,
}

/// One attribute of a datasource, mapped to one column.
#[derive(Debug, Clone, PartialEq)]
pub struct Attribute {
    /// camelCase code used on the wire.
    pub code: String,
    /// Column name, a checked identifier.
    pub column: String,
    pub ty: AttrType,
    pub required: bool,
    pub updatable: bool,
    /// May be filtered, sorted and returned.
    pub queryable: bool,
    /// Never returned to clients (e.g. a password hash); may still be written.
    pub write_only: bool,
    pub max_length: Option<u32>,
    /// One of the four WHO columns.
    pub who: bool,
}

/// A datasource: a typed view of one table.
#[derive(Debug, Clone, PartialEq)]
pub struct Datasource {
    pub app_uid: String,
    pub name: String,
    /// Schema (PostgreSQL/MySQL) or attached database (SQLite) that holds the table; `None`
    /// for an unqualified table name.
    pub schema: Option<String>,
    pub table: String,
    /// In definition order, WHO attributes last.
    pub attributes: Vec<Attribute>,
    /// Attribute codes of the primary key.
    pub primary_key: Vec<String>,
    pub key_generation: KeyGeneration,
    /// Used when a query has no `sort`; the primary key otherwise.
    pub default_sort: Vec<(String, SortDir)>,
    /// Filter items (the query language's JSON) always ANDed to client filters. In this trusted
    /// filter only, a string value `":name"` refers to `params.name` of the query.
    pub default_filter: Vec<DefaultFilter>,
}

/// One item of a default filter: its JSON, and the parsed filter when it refers to no
/// `:param` (parsed once, when the datasource is loaded, not per request).
#[derive(Debug, Clone, PartialEq)]
pub struct DefaultFilter {
    pub raw: serde_json::Value,
    pub parsed: Option<crate::parse::Filter>,
}

impl From<serde_json::Value> for DefaultFilter {
    fn from(raw: serde_json::Value) -> Self {
        fn has_params(v: &serde_json::Value) -> bool {
            match v {
                serde_json::Value::String(s) => s.starts_with(':'),
                serde_json::Value::Array(a) => a.iter().any(has_params),
                serde_json::Value::Object(m) => m.values().any(has_params),
                _ => false,
            }
        }
        let parsed = if has_params(&raw) {
            None
        } else {
            crate::parse::parse_filter(&raw, 0).ok()
        };
        DefaultFilter { raw, parsed }
    }
}

impl Datasource {
    pub fn attribute(&self, code: &str) -> Option<&Attribute> {
        self.attributes.iter().find(|a| a.code == code)
    }

    /// `schema.TABLE` or `TABLE`.
    pub fn qualified_table(&self) -> String {
        match &self.schema {
            Some(s) => format!("{s}.{}", self.table),
            None => self.table.clone(),
        }
    }
}

/// The four WHO attributes every datasource has: (code, default column, type).
pub const WHO_ATTRIBUTES: [(&str, &str, AttrType); 4] = [
    ("createdBy", "CREATED_BY", AttrType::UserId),
    ("creationDate", "CREATION_DATE", AttrType::DateTime),
    ("lastUpdatedBy", "LAST_UPDATED_BY", AttrType::UserId),
    ("lastUpdateDate", "LAST_UPDATE_DATE", AttrType::DateTime),
];

/// `lastUpdateDate` -> `LAST_UPDATE_DATE`.
pub fn default_column(code: &str) -> String {
    let mut out = String::with_capacity(code.len() + 4);
    for (i, c) in code.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

/// A safe SQL identifier: ASCII letter or `_`, then letters, digits, `_`; at most 63 bytes.
/// Identifiers are emitted unquoted, so they fold the same way as in the app's migrations.
pub fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && s.len() <= 63
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_columns_are_upper_snake_case() {
        assert_eq!(default_column("lastUpdateDate"), "LAST_UPDATE_DATE");
        assert_eq!(default_column("name"), "NAME");
        assert_eq!(default_column("empId"), "EMP_ID");
    }

    #[test]
    fn identifiers_reject_anything_that_could_escape() {
        for ok in ["EMPLOYEES", "_x", "a1_b"] {
            assert!(is_identifier(ok), "{ok}");
        }
        for bad in [
            "",
            "1a",
            "a b",
            "a;",
            "a\"",
            "a`",
            "a-b",
            "é",
            &"a".repeat(64),
        ] {
            assert!(!is_identifier(bad), "{bad}");
        }
    }
}
