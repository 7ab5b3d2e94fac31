//! JSON -> [`Query`]: checks the shape of a client's query object. Knows nothing about the
//! datasource; attribute names are checked against metadata by the compiler.

use serde_json::{Map, Value as Json};

use crate::error::{QueryError, bail, show};
use crate::meta::SortDir;

/// Filters nested deeper than this are refused while parsing, whatever
/// `CompileOptions::max_depth` says: it bounds the recursion of the parser and compiler.
pub const PARSE_MAX_DEPTH: usize = 128;

/// Most values an `in`/`nin`/`hasAll`/`hasAny`/`notAny` list may hold.
pub const MAX_LIST_LEN: usize = 1000;

/// A parsed query object. Attribute codes are as the client sent them, not yet checked.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Query {
    /// Top-level filter items, ANDed.
    pub filter: Vec<Filter>,
    /// `projection` and `selectAttributeCodeList`, merged in order of appearance; `None` when
    /// neither was given (or both were empty): all readable attributes.
    pub projection: Option<Vec<String>>,
    /// `sort` in key order; `None` when absent or empty.
    pub sort: Option<Vec<(String, SortDir)>>,
    pub offset: Option<u64>,
    pub limit: Option<u64>,
    pub fetch_distinct: bool,
    pub group_by: Vec<String>,
    pub aggregates: Vec<Aggregate>,
    /// Also count the rows, ignoring offset and limit.
    pub count: bool,
    /// Values for the `:name` references of the datasource's default filter.
    pub params: Map<String, Json>,
    /// The current parent record, context for scripts; the compiler ignores it.
    pub data: Option<Json>,
}

/// One node of a filter tree.
#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    And(Vec<Filter>),
    Or(Vec<Filter>),
    Not(Box<Filter>),
    /// `{attr: {op: value}}`; the value's shape is checked by the compiler, which knows the
    /// attribute's type.
    Cond {
        attr: String,
        op: Op,
        value: Json,
    },
}

impl Filter {
    /// Nesting depth: 0 for a condition, one more for each `and`/`or`/`not` (and for each
    /// filter object holding several conditions, which is an implicit `and`).
    pub fn depth(&self) -> usize {
        match self {
            Filter::Cond { .. } => 0,
            Filter::Not(f) => 1 + f.depth(),
            Filter::And(fs) | Filter::Or(fs) => 1 + fs.iter().map(Filter::depth).max().unwrap_or(0),
        }
    }
}

macro_rules! ops {
    ($($variant:ident = $name:literal,)*) => {
        /// Every filter operator of every family.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Op { $($variant,)* }

        impl Op {
            pub const ALL: &[Op] = &[$(Op::$variant,)*];

            pub fn from_name(name: &str) -> Option<Op> {
                match name {
                    $($name => Some(Op::$variant),)*
                    _ => None,
                }
            }

            /// The name on the wire.
            pub fn name(self) -> &'static str {
                match self { $(Op::$variant => $name,)* }
            }
        }
    };
}

ops! {
    Is = "is", Not = "not", Empty = "empty", NotEmpty = "notEmpty", Like = "like", Nct = "nct",
    Sw = "sw", Ew = "ew", In = "in", Nin = "nin", HasAll = "hasAll", HasAny = "hasAny",
    NotAny = "notAny",
    Eq = "eq", Ne = "ne", Null = "null", NotNull = "notNull", Gt = "gt", Gte = "gte", Lt = "lt",
    Lte = "lte", Bn = "bn",
    On = "on", NotOn = "notOn", Before = "before", After = "after", OnOrBefore = "onOrBefore",
    Today = "today", LastNDays = "lastNDays", NextNDays = "nextNDays",
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AggFn {
    Count,
    Sum,
    Avg,
    Min,
    Max,
}

impl AggFn {
    pub fn name(self) -> &'static str {
        match self {
            AggFn::Count => "count",
            AggFn::Sum => "sum",
            AggFn::Avg => "avg",
            AggFn::Min => "min",
            AggFn::Max => "max",
        }
    }
}

/// `{"fn": "sum", "attributeCode": "salary", "alias": "totalSalary"}`.
#[derive(Debug, Clone, PartialEq)]
pub struct Aggregate {
    pub func: AggFn,
    /// `None` only for `count`: `COUNT(*)`.
    pub attribute: Option<String>,
    pub alias: String,
}

/// Parses a query object. JSON `null` for a field means the field is absent.
pub fn parse_query(v: &Json) -> Result<Query, QueryError> {
    let Some(obj) = v.as_object() else {
        bail!("the query must be a JSON object, got {}", show(v));
    };
    let mut q = Query::default();
    for (key, val) in obj {
        let known = matches!(
            key.as_str(),
            "aggregateList"
                | "data"
                | "fetchDistinct"
                | "filter"
                | "groupByAttributeCodeList"
                | "limit"
                | "offset"
                | "params"
                | "projection"
                | "selectAttributeCodeList"
                | "sort"
                | "count"
        );
        if !known {
            bail!(
                "unknown query field `{key}`; expected one of aggregateList, count, data, \
                 fetchDistinct, filter, groupByAttributeCodeList, limit, offset, params, \
                 projection, selectAttributeCodeList, sort"
            );
        }
        if val.is_null() {
            continue;
        }
        match key.as_str() {
            "filter" => q.filter = parse_filter_list(val, "filter", 0)?,
            "projection" => {
                let Some(m) = val.as_object() else {
                    bail!(
                        "`projection` must be an object like {{\"name\": 1}}, got {}",
                        show(val)
                    );
                };
                for (attr, flag) in m {
                    if !(flag == &Json::from(1) || flag == &Json::Bool(true)) {
                        bail!(
                            "`projection` of `{attr}` must be 1 or true, got {}",
                            show(flag)
                        );
                    }
                    add_projected(&mut q, attr);
                }
            }
            "selectAttributeCodeList" => {
                for attr in string_list(val, "selectAttributeCodeList")? {
                    add_projected(&mut q, attr);
                }
            }
            "sort" => {
                let Some(m) = val.as_object() else {
                    bail!(
                        "`sort` must be an object like {{\"name\": 1}}, got {}",
                        show(val)
                    );
                };
                let mut sort = Vec::with_capacity(m.len());
                for (attr, dir) in m {
                    let dir = match dir.as_i64() {
                        Some(1) => SortDir::Asc,
                        Some(-1) => SortDir::Desc,
                        _ => bail!("`sort` of `{attr}` must be 1 or -1, got {}", show(dir)),
                    };
                    sort.push((attr.clone(), dir));
                }
                q.sort = (!sort.is_empty()).then_some(sort);
            }
            "offset" => q.offset = Some(non_negative(val, "offset")?),
            "limit" => q.limit = Some(non_negative(val, "limit")?),
            "fetchDistinct" => q.fetch_distinct = boolean(val, "fetchDistinct")?,
            "count" => q.count = boolean(val, "count")?,
            "groupByAttributeCodeList" => {
                for attr in string_list(val, "groupByAttributeCodeList")? {
                    if !q.group_by.iter().any(|g| g == attr) {
                        q.group_by.push(attr.to_string());
                    }
                }
            }
            "aggregateList" => {
                let Some(items) = val.as_array() else {
                    bail!("`aggregateList` must be an array, got {}", show(val));
                };
                q.aggregates = items
                    .iter()
                    .enumerate()
                    .map(|(i, a)| parse_aggregate(i, a))
                    .collect::<Result<_, _>>()?;
            }
            "params" => {
                let Some(m) = val.as_object() else {
                    bail!("`params` must be an object, got {}", show(val));
                };
                q.params = m.clone();
            }
            "data" => q.data = Some(val.clone()),
            _ => {}
        }
    }
    Ok(q)
}

fn add_projected(q: &mut Query, attr: &str) {
    let list = q.projection.get_or_insert_with(Vec::new);
    if !list.iter().any(|a| a == attr) {
        list.push(attr.to_string());
    }
}

fn string_list<'a>(v: &'a Json, field: &str) -> Result<Vec<&'a str>, QueryError> {
    let Some(items) = v.as_array() else {
        bail!(
            "`{field}` must be an array of attribute codes, got {}",
            show(v)
        );
    };
    items
        .iter()
        .map(|i| match i.as_str() {
            Some(s) => Ok(s),
            None => bail!("`{field}` must hold strings, got {}", show(i)),
        })
        .collect()
}

fn non_negative(v: &Json, field: &str) -> Result<u64, QueryError> {
    match v.as_u64() {
        Some(n) => Ok(n),
        None => bail!("`{field}` must be a non-negative integer, got {}", show(v)),
    }
}

fn boolean(v: &Json, field: &str) -> Result<bool, QueryError> {
    match v.as_bool() {
        Some(b) => Ok(b),
        None => bail!("`{field}` must be true or false, got {}", show(v)),
    }
}

fn parse_aggregate(i: usize, v: &Json) -> Result<Aggregate, QueryError> {
    let Some(m) = v.as_object() else {
        bail!(
            "`aggregateList` item {i} must be an object, got {}",
            show(v)
        );
    };
    let (mut func, mut attribute, mut alias) = (None, None, None);
    for (key, val) in m {
        let text = || match val.as_str() {
            Some(s) => Ok(s.to_string()),
            None => bail!(
                "`{key}` of `aggregateList` item {i} must be a string, got {}",
                show(val)
            ),
        };
        match key.as_str() {
            "fn" => {
                func = Some(match text()?.as_str() {
                    "count" => AggFn::Count,
                    "sum" => AggFn::Sum,
                    "avg" => AggFn::Avg,
                    "min" => AggFn::Min,
                    "max" => AggFn::Max,
                    other => bail!(
                        "unknown aggregate function `{other}` in `aggregateList` item {i}; \
                         expected count, sum, avg, min or max"
                    ),
                })
            }
            "attributeCode" if val.is_null() => {}
            "attributeCode" => attribute = Some(text()?),
            "alias" => alias = Some(text()?),
            other => bail!(
                "unknown field `{other}` in `aggregateList` item {i}; expected fn, attributeCode, alias"
            ),
        }
    }
    let Some(func) = func else {
        bail!("`aggregateList` item {i} needs `fn`");
    };
    if attribute.is_none() && func != AggFn::Count {
        bail!(
            "`aggregateList` item {i}: `{}` needs `attributeCode`",
            func.name()
        );
    }
    let Some(alias) = alias else {
        bail!("`aggregateList` item {i} needs `alias`");
    };
    Ok(Aggregate {
        func,
        attribute,
        alias,
    })
}

/// A list of filter items (the value of `filter`, `and` or `or`).
fn parse_filter_list(v: &Json, field: &str, depth: usize) -> Result<Vec<Filter>, QueryError> {
    let Some(items) = v.as_array() else {
        bail!(
            "`{field}` must be an array of filter objects, got {}",
            show(v)
        );
    };
    items.iter().map(|i| parse_filter(i, depth)).collect()
}

/// One filter item: `{attr: {op: value, ...}, ...}`, `{"and": [...]}`, `{"or": [...]}`,
/// `{"not": item}`. Several entries in one object are ANDed. `and`, `or` and `not` are
/// therefore reserved: they cannot name attributes in a filter.
pub fn parse_filter(v: &Json, depth: usize) -> Result<Filter, QueryError> {
    if depth > PARSE_MAX_DEPTH {
        bail!("filter is nested deeper than {PARSE_MAX_DEPTH} levels");
    }
    let Some(obj) = v.as_object() else {
        bail!(
            "a filter item must be an object like {{\"name\": {{\"is\": \"x\"}}}}, got {}",
            show(v)
        );
    };
    if obj.is_empty() {
        bail!("a filter item must not be empty");
    }
    let mut parts = Vec::new();
    for (key, val) in obj {
        match key.as_str() {
            "and" => parts.push(Filter::And(parse_filter_list(val, "and", depth + 1)?)),
            "or" => parts.push(Filter::Or(parse_filter_list(val, "or", depth + 1)?)),
            "not" => parts.push(Filter::Not(Box::new(parse_filter(val, depth + 1)?))),
            attr => {
                let Some(ops) = val.as_object().filter(|o| !o.is_empty()) else {
                    bail!(
                        "filter on `{attr}` must be an object of operators like {{\"is\": \"x\"}}, got {}",
                        show(val)
                    );
                };
                for (op, value) in ops {
                    let Some(op) = Op::from_name(op) else {
                        bail!("unknown operator `{op}` for attribute `{attr}`");
                    };
                    parts.push(Filter::Cond {
                        attr: attr.to_string(),
                        op,
                        value: value.clone(),
                    });
                }
            }
        }
    }
    Ok(if parts.len() == 1 {
        parts.remove(0)
    } else {
        Filter::And(parts)
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn projection_and_select_list_merge_in_order() {
        let q = parse_query(&json!({
            "projection": {"b": 1, "a": true},
            "selectAttributeCodeList": ["a", "c"]
        }))
        .unwrap();
        assert_eq!(q.projection.unwrap(), ["b", "a", "c"]);
    }

    #[test]
    fn sort_keeps_key_order() {
        let q = parse_query(&json!({"sort": {"z": 1, "a": -1, "m": 1}})).unwrap();
        let s = q.sort.unwrap();
        assert_eq!(
            s.iter().map(|(a, d)| (a.as_str(), *d)).collect::<Vec<_>>(),
            [
                ("z", SortDir::Asc),
                ("a", SortDir::Desc),
                ("m", SortDir::Asc)
            ]
        );
    }

    #[test]
    fn several_entries_in_one_item_are_anded() {
        let f = parse_filter(&json!({"a": {"is": "x", "like": "y"}, "b": {"eq": 1}}), 0).unwrap();
        let Filter::And(parts) = f else {
            panic!("{f:?}")
        };
        assert_eq!(parts.len(), 3);
    }

    #[test]
    fn nulls_mean_absent_and_op_names_round_trip() {
        let q = parse_query(&json!({"filter": null, "limit": null, "sort": {}})).unwrap();
        assert_eq!(q, Query::default());
        for op in Op::ALL {
            assert_eq!(Op::from_name(op.name()), Some(*op));
        }
    }

    #[test]
    fn depth_counts_combinators() {
        let f = parse_filter(&json!({"not": {"or": [{"a": {"is": "x"}}]}}), 0).unwrap();
        assert_eq!(f.depth(), 2);
        let mut v = json!({"a": {"is": "x"}});
        for _ in 0..=PARSE_MAX_DEPTH {
            v = json!({ "not": v });
        }
        assert!(parse_filter(&v, 0).is_err());
    }
}
