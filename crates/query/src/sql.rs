//! The one SQL builder: text and bind parameters pushed in order, rendered for a dialect at
//! the end so that PostgreSQL's `$n` numbering always matches the parameter list.

use crate::meta::Dialect;
use crate::value::Value;

/// A parameterised SQL statement ready for the store.
#[derive(Debug, Clone, PartialEq)]
pub struct Statement {
    pub sql: String,
    pub params: Vec<Value>,
}

#[derive(Debug, Clone, PartialEq)]
enum Part {
    Text(String),
    Param(Value),
}

/// SQL under construction. Text pushed here must come from metadata or from this crate's own
/// literals; every client value goes through [`Sql::bind`].
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Sql {
    parts: Vec<Part>,
}

impl Sql {
    pub fn new() -> Self {
        Sql::default()
    }

    pub fn push(&mut self, text: &str) -> &mut Self {
        match self.parts.last_mut() {
            Some(Part::Text(t)) => t.push_str(text),
            _ => self.parts.push(Part::Text(text.to_string())),
        }
        self
    }

    pub fn bind(&mut self, v: Value) -> &mut Self {
        self.parts.push(Part::Param(v));
        self
    }

    /// Appends another fragment (its parameters keep their relative order).
    pub fn append(&mut self, other: &Sql) -> &mut Self {
        for p in &other.parts {
            match p {
                Part::Text(t) => {
                    self.push(t);
                }
                Part::Param(v) => {
                    self.bind(v.clone());
                }
            }
        }
        self
    }

    pub fn finish(&self, dialect: Dialect) -> Statement {
        let mut sql = String::new();
        let mut params = Vec::new();
        for p in &self.parts {
            match p {
                Part::Text(t) => sql.push_str(t),
                Part::Param(v) => {
                    params.push(v.clone());
                    sql.push_str(&dialect.placeholder(params.len()));
                }
            }
        }
        Statement { sql, params }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn postgres_numbers_placeholders_in_order_across_appends() {
        let mut a = Sql::new();
        a.push("A = ").bind(Value::Int(1));
        let mut b = Sql::new();
        b.push("SELECT 1 WHERE ")
            .append(&a)
            .push(" AND B = ")
            .bind(Value::Int(2));
        let st = b.finish(Dialect::Postgres);
        assert_eq!(st.sql, "SELECT 1 WHERE A = $1 AND B = $2");
        assert_eq!(st.params, [Value::Int(1), Value::Int(2)]);
        assert_eq!(
            b.finish(Dialect::Mysql).sql,
            "SELECT 1 WHERE A = ? AND B = ?"
        );
    }
}
