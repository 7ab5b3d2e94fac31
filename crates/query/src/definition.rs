//! The datasource file (`datasources/<Name>.json`) and its checks. Pure: the caller checks
//! that tables and columns exist.

use serde::{Deserialize, Serialize};

use crate::meta::{
    AttrType, Attribute, Datasource, KeyGeneration, SortDir, WHO_ATTRIBUTES, default_column,
    is_identifier,
};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DatasourceDef {
    pub name: String,
    pub table: String,
    pub primary_key: Vec<String>,
    #[serde(default)]
    pub key_generation: KeyGeneration,
    pub attributes: Vec<AttributeDef>,
    /// `{"attr": 1 | -1}` in order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_sort: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub default_filter: Vec<serde_json::Value>,
    /// Column names of the WHO attributes when they differ from the defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub who_columns: Option<serde_json::Map<String, serde_json::Value>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AttributeDef {
    pub code: String,
    #[serde(rename = "type")]
    pub ty: AttrType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub column: Option<String>,
    #[serde(default)]
    pub required: bool,
    #[serde(default = "yes")]
    pub updatable: bool,
    #[serde(default = "yes")]
    pub queryable: bool,
    /// Never returned to clients (e.g. a password hash).
    #[serde(default)]
    pub write_only: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_length: Option<u32>,
}

fn yes() -> bool {
    true
}

fn is_code(s: &str) -> bool {
    is_identifier(s) && s.chars().next().is_some_and(|c| c.is_ascii_lowercase())
}

impl DatasourceDef {
    /// Parses a file's text; the error names the file and the field serde stopped at.
    pub fn parse(file: &str, text: &str) -> Result<DatasourceDef, Vec<String>> {
        serde_json::from_str(text).map_err(|e| vec![format!("{file}: {e}")])
    }

    /// Checks everything that can be checked without a database and builds the datasource.
    /// Every problem is reported, each naming the file and the field.
    pub fn resolve(
        &self,
        file: &str,
        app_uid: &str,
        schema: Option<&str>,
    ) -> Result<Datasource, Vec<String>> {
        let mut problems = Vec::new();
        let mut p = |msg: String| problems.push(format!("{file}: {msg}"));
        if !is_identifier(&self.name) {
            p(format!(
                "`name`: `{}` is not a valid datasource name",
                self.name
            ));
        }
        if !is_identifier(&self.table) {
            p(format!(
                "`table`: `{}` is not a valid table name",
                self.table
            ));
        }
        let mut attributes: Vec<Attribute> = Vec::new();
        for (i, a) in self.attributes.iter().enumerate() {
            if !is_code(&a.code) {
                p(format!(
                    "`attributes[{i}].code`: `{}` must be camelCase letters and digits",
                    a.code
                ));
            }
            if attributes.iter().any(|b| b.code == a.code) {
                p(format!(
                    "`attributes[{i}].code`: duplicate attribute `{}`",
                    a.code
                ));
            }
            if WHO_ATTRIBUTES.iter().any(|(code, _, _)| *code == a.code) {
                p(format!(
                    "`attributes[{i}].code`: `{}` is a WHO attribute and is implicit",
                    a.code
                ));
            }
            let column = a.column.clone().unwrap_or_else(|| default_column(&a.code));
            if !is_identifier(&column) {
                p(format!(
                    "`attributes[{i}].column`: `{column}` is not a valid column name"
                ));
            }
            attributes.push(Attribute {
                code: a.code.clone(),
                column,
                ty: a.ty,
                required: a.required,
                updatable: a.updatable,
                queryable: a.queryable && !a.write_only,
                write_only: a.write_only,
                max_length: a.max_length,
                who: false,
            });
        }
        for (code, default, ty) in WHO_ATTRIBUTES {
            let column = match self.who_columns.as_ref().and_then(|m| m.get(code)) {
                None => default.to_string(),
                Some(serde_json::Value::String(c)) if is_identifier(c) => c.clone(),
                Some(v) => {
                    p(format!(
                        "`whoColumns.{code}`: `{v}` is not a valid column name"
                    ));
                    default.to_string()
                }
            };
            attributes.push(Attribute {
                code: code.to_string(),
                column,
                ty,
                required: false,
                updatable: false,
                queryable: true,
                write_only: false,
                max_length: None,
                who: true,
            });
        }
        if let Some(m) = &self.who_columns {
            for k in m.keys() {
                if !WHO_ATTRIBUTES.iter().any(|(code, _, _)| code == k) {
                    p(format!("`whoColumns.{k}`: not a WHO attribute"));
                }
            }
        }
        if self.primary_key.is_empty() {
            p("`primaryKey`: a datasource needs a primary key".into());
        }
        for k in &self.primary_key {
            match attributes.iter().find(|a| &a.code == k) {
                None => p(format!("`primaryKey`: unknown attribute `{k}`")),
                Some(a) if a.who => p(format!("`primaryKey`: `{k}` is a WHO attribute")),
                Some(_) => {}
            }
        }
        if self.key_generation == KeyGeneration::Auto
            && (self.primary_key.len() != 1
                || attributes
                    .iter()
                    .find(|a| Some(&a.code) == self.primary_key.first())
                    .is_some_and(|a| a.ty != AttrType::Integer))
        {
            p("`keyGeneration`: `auto` needs a single Integer primary key".into());
        }
        if self.key_generation == KeyGeneration::Uuid
            && (self.primary_key.len() != 1
                || attributes
                    .iter()
                    .find(|a| Some(&a.code) == self.primary_key.first())
                    .is_some_and(|a| a.ty.family() != crate::meta::Family::String))
        {
            p("`keyGeneration`: `uuid` needs a single String primary key".into());
        }
        let mut default_sort = Vec::new();
        for (k, v) in self.default_sort.iter().flatten() {
            let dir = match v.as_i64() {
                Some(1) => SortDir::Asc,
                Some(-1) => SortDir::Desc,
                _ => {
                    p(format!("`defaultSort.{k}`: must be 1 or -1"));
                    continue;
                }
            };
            if !attributes.iter().any(|a| &a.code == k && a.queryable) {
                p(format!("`defaultSort.{k}`: unknown attribute"));
            }
            default_sort.push((k.clone(), dir));
        }
        for (i, f) in self.default_filter.iter().enumerate() {
            if let Err(e) = crate::parse::parse_filter(f, 1) {
                p(format!("`defaultFilter[{i}]`: {e}"));
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Datasource {
            app_uid: app_uid.to_string(),
            name: self.name.clone(),
            schema: schema.map(str::to_string),
            table: self.table.clone(),
            attributes,
            primary_key: self.primary_key.clone(),
            key_generation: self.key_generation,
            default_sort,
            default_filter: self
                .default_filter
                .iter()
                .cloned()
                .map(Into::into)
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spec_example_resolves_with_who_attributes() {
        let text = r#"{"name": "Employees", "table": "EMPLOYEES", "primaryKey": ["empId"],
          "keyGeneration": "auto",
          "attributes": [
            {"code": "empId", "type": "Integer"},
            {"code": "name", "type": "String", "required": true},
            {"code": "salary", "type": "Decimal"},
            {"code": "email", "type": "Email", "column": "EMAIL_ADDRESS"},
            {"code": "badge", "type": "String", "updatable": false}],
          "defaultSort": {"name": 1}}"#;
        let ds = DatasourceDef::parse("Employees.json", text)
            .unwrap()
            .resolve("Employees.json", "demo", Some("demo"))
            .unwrap();
        assert_eq!(ds.attribute("email").unwrap().column, "EMAIL_ADDRESS");
        assert_eq!(ds.attribute("salary").unwrap().column, "SALARY");
        assert_eq!(
            ds.attribute("lastUpdateDate").unwrap().column,
            "LAST_UPDATE_DATE"
        );
        assert!(!ds.attribute("badge").unwrap().updatable);
        assert_eq!(ds.attributes.len(), 9);
        assert_eq!(ds.default_sort, vec![("name".to_string(), SortDir::Asc)]);
    }

    #[test]
    fn every_problem_is_reported_with_file_and_field() {
        let text = r#"{"name": "Bad", "table": "T; DROP", "primaryKey": ["nope"],
          "attributes": [
            {"code": "a", "type": "String"},
            {"code": "a", "type": "String"},
            {"code": "b", "type": "String", "column": "x y"}],
          "defaultSort": {"zzz": 1}}"#;
        let problems = DatasourceDef::parse("Bad.json", text)
            .unwrap()
            .resolve("Bad.json", "app", None)
            .unwrap_err();
        let all = problems.join("\n");
        for needle in [
            "`table`",
            "duplicate attribute `a`",
            "`attributes[2].column`",
            "unknown attribute `nope`",
            "`defaultSort.zzz`",
        ] {
            assert!(all.contains(needle), "missing {needle} in:\n{all}");
        }
        assert!(problems.iter().all(|p| p.starts_with("Bad.json: ")));
    }

    #[test]
    fn unknown_types_and_fields_name_the_file() {
        let e = DatasourceDef::parse("X.json", r#"{"name":"X","table":"X","primaryKey":["a"],"attributes":[{"code":"a","type":"Strang"}]}"#)
            .unwrap_err();
        assert!(
            e[0].starts_with("X.json: ") && e[0].contains("Strang"),
            "{e:?}"
        );
    }
}
