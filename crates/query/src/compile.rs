//! [`Query`] + [`Datasource`] -> parameterised `SELECT` (and optional `COUNT`) for a dialect.

use chrono::NaiveDate;
use serde_json::{Map, Value as Json};

use crate::error::{QueryError, bail};
use crate::filter::{FilterCompiler, Source, readable};
use crate::meta::{AttrType, Attribute, Datasource, Dialect, Family, SortDir, is_identifier};
use crate::parse::{AggFn, Query, parse_filter};
use crate::sql::Sql;
use crate::value::Value;

pub use crate::sql::Statement;

/// The most bind parameters one statement may carry.
pub const MAX_PARAMS: usize = 32_000;

/// Everything the compiler needs besides the query and the datasource.
#[derive(Debug, Clone, PartialEq)]
pub struct CompileOptions {
    pub dialect: Dialect,
    /// The date `today`, `lastNDays` and `nextNDays` are relative to (UTC). The crate reads no
    /// clock.
    pub today: NaiveDate,
    /// `limit` when the query has none.
    pub default_limit: u64,
    /// The largest `limit` accepted.
    pub max_limit: u64,
    /// The deepest filter nesting accepted (see [`crate::parse::Filter::depth`]).
    pub max_depth: usize,
}

impl CompileOptions {
    /// The platform defaults: limit 100, at most 10,000, nesting at most 32.
    pub fn new(dialect: Dialect, today: NaiveDate) -> Self {
        CompileOptions {
            dialect,
            today,
            default_limit: 100,
            max_limit: 10_000,
            max_depth: 32,
        }
    }
}

/// One column of the result, in select-list order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputColumn {
    /// The attribute code or aggregate alias: the key in the returned rows.
    pub name: String,
    /// How the store should decode the cell.
    pub ty: AttrType,
}

/// A compiled query.
#[derive(Debug, Clone, PartialEq)]
pub struct Compiled {
    pub select: Statement,
    pub columns: Vec<OutputColumn>,
    /// The row count ignoring offset and limit; only when the query asked with `count: true`.
    pub count: Option<Statement>,
}

/// One item of the select list.
struct Output {
    name: String,
    /// SQL expression over metadata identifiers.
    expr: String,
    /// What ORDER BY uses for it.
    order_expr: String,
    ty: AttrType,
}

/// What to select, how to group and order.
struct Shape {
    distinct: bool,
    outputs: Vec<Output>,
    group_by: Vec<String>,
    order: Vec<(String, SortDir)>,
}

/// Compiles `q` against `ds`. Fails with a client-facing [`QueryError`] on anything the
/// datasource does not allow.
pub fn compile_select(
    ds: &Datasource,
    q: &Query,
    opts: &CompileOptions,
) -> Result<Compiled, QueryError> {
    let limit = q.limit.unwrap_or(opts.default_limit);
    if limit > opts.max_limit {
        bail!("`limit` must be between 0 and {}", opts.max_limit);
    }
    let limit = i64::try_from(limit).map_err(|_| limit_error(opts))?;
    let Ok(offset) = i64::try_from(q.offset.unwrap_or(0)) else {
        bail!("`offset` must be between 0 and {}", i64::MAX);
    };

    let filter = where_items(ds, q, opts)?;
    let grouped = !q.group_by.is_empty() || !q.aggregates.is_empty();
    let shape = if grouped {
        grouped_shape(ds, q)?
    } else {
        plain_shape(ds, q)?
    };

    // SELECT list, then `FROM ... WHERE ... GROUP BY ...`, shared with the count.
    let mut list = Sql::new();
    list.push(if shape.distinct {
        "SELECT DISTINCT "
    } else {
        "SELECT "
    });
    for (i, o) in shape.outputs.iter().enumerate() {
        if i > 0 {
            list.push(", ");
        }
        list.push(&o.expr)
            .push(" ")
            .push(&opts.dialect.quote_alias(&o.name));
    }
    let mut body = Sql::new();
    body.push(" FROM ").push(&ds.qualified_table()).push(" x");
    if !filter.is_empty() {
        body.push(" WHERE (");
        for (i, item) in filter.iter().enumerate() {
            if i > 0 {
                body.push(" AND ");
            }
            body.append(item);
        }
        body.push(")");
    }
    if !shape.group_by.is_empty() {
        body.push(" GROUP BY ").push(&shape.group_by.join(", "));
    }

    let mut select = Sql::new();
    select.append(&list).append(&body);
    if !shape.order.is_empty() {
        // Key and required attributes hold no NULLs: no NULL placement for them, so that a plain
        // index on the column can serve the order (PostgreSQL cannot use an `ASC` index for
        // `ASC NULLS FIRST`).
        let not_null: Vec<String> = ds
            .attributes
            .iter()
            .filter(|a| a.required || ds.primary_key.contains(&a.code))
            .map(|a| format!("x.{}", a.column))
            .collect();
        select.push(" ORDER BY ");
        for (i, (expr, dir)) in shape.order.iter().enumerate() {
            if i > 0 {
                select.push(", ");
            }
            let suffix = if not_null.contains(expr) {
                order_suffix(Dialect::Sqlite, *dir)
            } else {
                order_suffix(opts.dialect, *dir)
            };
            select.push(expr).push(suffix);
        }
    }
    select.push(" LIMIT ").bind(Value::Int(limit));
    select.push(" OFFSET ").bind(Value::Int(offset));

    let count = q.count.then(|| {
        let mut c = Sql::new();
        if shape.distinct || grouped {
            c.push("SELECT COUNT(*) FROM (")
                .append(&list)
                .append(&body)
                .push(") t");
        } else {
            c.push("SELECT COUNT(*)").append(&body);
        }
        c.finish(opts.dialect)
    });

    let select = select.finish(opts.dialect);
    // The smallest limit among the databases (SQLite: 32,766 variables; PostgreSQL: 65,535).
    if select.params.len() > MAX_PARAMS {
        bail!(
            "the query needs {} values; at most {MAX_PARAMS} are allowed in one query",
            select.params.len()
        );
    }
    Ok(Compiled {
        select,
        columns: shape
            .outputs
            .into_iter()
            .map(|o| OutputColumn {
                name: o.name,
                ty: o.ty,
            })
            .collect(),
        count,
    })
}

fn limit_error(opts: &CompileOptions) -> QueryError {
    QueryError::new(format!("`limit` must be between 0 and {}", opts.max_limit))
}

/// NULLs first ascending and last descending, in every dialect: SQLite and MySQL do that on
/// their own, PostgreSQL is told (for attributes that may hold NULLs).
fn order_suffix(d: Dialect, dir: SortDir) -> &'static str {
    match (d, dir) {
        (Dialect::Postgres, SortDir::Asc) => " ASC NULLS FIRST",
        (Dialect::Postgres, SortDir::Desc) => " DESC NULLS LAST",
        (_, SortDir::Asc) => " ASC",
        (_, SortDir::Desc) => " DESC",
    }
}

/// The default filter's items (with `:param`s replaced), then the client's.
fn where_items(ds: &Datasource, q: &Query, opts: &CompileOptions) -> Result<Vec<Sql>, QueryError> {
    let check_depth = |f: &crate::parse::Filter| {
        if f.depth() > opts.max_depth {
            bail!("filter is nested deeper than {} levels", opts.max_depth);
        }
        Ok(())
    };
    let mut items = Vec::new();
    let trusted = FilterCompiler {
        ds,
        opts,
        source: Source::Default,
    };
    for item in &ds.default_filter {
        let substituted;
        let f = match &item.parsed {
            Some(f) => f,
            None => {
                substituted = parse_filter(&substitute(&item.raw, &q.params)?, 0)?;
                &substituted
            }
        };
        check_depth(f)?;
        let mut sql = Sql::new();
        trusted.compile(f, &mut sql)?;
        items.push(sql);
    }
    let client = FilterCompiler {
        ds,
        opts,
        source: Source::Client,
    };
    for f in &q.filter {
        check_depth(f)?;
        let mut sql = Sql::new();
        client.compile(f, &mut sql)?;
        items.push(sql);
    }
    Ok(items)
}

/// Replaces every string `":ident"` in a default-filter item by `params[ident]`.
fn substitute(v: &Json, params: &Map<String, Json>) -> Result<Json, QueryError> {
    Ok(match v {
        Json::String(s) => match s.strip_prefix(':').filter(|n| is_identifier(n)) {
            Some(name) => match params.get(name) {
                Some(p) => p.clone(),
                None => bail!("missing param `{name}`"),
            },
            None => v.clone(),
        },
        Json::Array(items) => Json::Array(
            items
                .iter()
                .map(|i| substitute(i, params))
                .collect::<Result<_, _>>()?,
        ),
        Json::Object(m) => Json::Object(
            m.iter()
                .map(|(k, i)| Ok((k.clone(), substitute(i, params)?)))
                .collect::<Result<_, QueryError>>()?,
        ),
        _ => v.clone(),
    })
}

/// A readable attribute named by the client; anything else is "unknown" (a write-only
/// attribute is not revealed).
fn client_attr<'a>(
    ds: &'a Datasource,
    code: &str,
    field: &str,
) -> Result<&'a Attribute, QueryError> {
    match ds.attribute(code) {
        Some(a) if readable(a) => Ok(a),
        _ => bail!("unknown attribute `{code}` in {field}"),
    }
}

/// An attribute named by metadata (default sort, primary key).
fn meta_attr<'a>(ds: &'a Datasource, code: &str) -> Result<&'a Attribute, QueryError> {
    match ds.attribute(code) {
        Some(a) => Ok(a),
        None => bail!(
            "datasource `{}` refers to unknown attribute `{code}` in its metadata",
            ds.name
        ),
    }
}

fn sortable(a: &Attribute, what: &str) -> Result<(), QueryError> {
    if a.ty == AttrType::Json {
        bail!("cannot {what} JSON attribute `{}`", a.code);
    }
    Ok(())
}

/// A plain or `fetchDistinct` query.
fn plain_shape(ds: &Datasource, q: &Query) -> Result<Shape, QueryError> {
    let projected: Vec<&Attribute> = match &q.projection {
        Some(codes) if !codes.is_empty() => codes
            .iter()
            .map(|c| client_attr(ds, c, "projection"))
            .collect::<Result<_, _>>()?,
        _ => ds.attributes.iter().filter(|a| readable(a)).collect(),
    };
    if projected.is_empty() {
        bail!("datasource `{}` has no readable attributes", ds.name);
    }
    let distinct = q.fetch_distinct;
    let in_projection = |a: &Attribute| projected.iter().any(|p| p.code == a.code);

    let mut order: Vec<(&Attribute, SortDir)> = Vec::new();
    match &q.sort {
        Some(sort) => {
            for (code, dir) in sort {
                let a = client_attr(ds, code, "sort")?;
                sortable(a, "sort by")?;
                if distinct && !in_projection(a) {
                    bail!("sort attribute `{code}` must be projected when `fetchDistinct` is true");
                }
                order.push((a, *dir));
            }
        }
        None => {
            let defaults: Vec<(&str, SortDir)> = if ds.default_sort.is_empty() {
                ds.primary_key
                    .iter()
                    .map(|c| (c.as_str(), SortDir::Asc))
                    .collect()
            } else {
                ds.default_sort
                    .iter()
                    .map(|(c, d)| (c.as_str(), *d))
                    .collect()
            };
            for (code, dir) in defaults {
                let a = meta_attr(ds, code)?;
                if !distinct || in_projection(a) {
                    order.push((a, dir));
                }
            }
        }
    }
    // Tie-break for stable pages: the primary key. Under DISTINCT only projected attributes
    // may be ordered, so when the key is not wholly projected the tie-break is every projected
    // attribute instead: the distinct rows are unique over exactly those.
    let key = ds
        .primary_key
        .iter()
        .map(|code| meta_attr(ds, code))
        .collect::<Result<Vec<_>, _>>()?;
    let tie: Vec<&Attribute> = if !distinct || key.iter().all(|a| in_projection(a)) {
        key
    } else {
        projected
            .iter()
            .copied()
            .filter(|a| a.ty != AttrType::Json)
            .collect()
    };
    for a in tie {
        if !order.iter().any(|(o, _)| o.code == a.code) {
            order.push((a, SortDir::Asc));
        }
    }

    Ok(Shape {
        distinct,
        outputs: projected
            .iter()
            .map(|a| Output {
                name: a.code.clone(),
                expr: a.column.clone(),
                order_expr: format!("x.{}", a.column),
                ty: a.ty,
            })
            .collect(),
        group_by: Vec::new(),
        order: order
            .into_iter()
            .map(|(a, d)| (format!("x.{}", a.column), d))
            .collect(),
    })
}

/// A query with `groupByAttributeCodeList` and/or `aggregateList`.
fn grouped_shape(ds: &Datasource, q: &Query) -> Result<Shape, QueryError> {
    if q.projection.is_some() {
        bail!(
            "`projection`/`selectAttributeCodeList` cannot be combined with \
             `groupByAttributeCodeList` or `aggregateList`: a grouped query returns its group \
             keys and aggregates"
        );
    }
    if q.fetch_distinct {
        bail!(
            "`fetchDistinct` cannot be combined with `groupByAttributeCodeList` or `aggregateList`"
        );
    }
    let mut outputs = Vec::new();
    let mut group_by = Vec::new();
    for code in &q.group_by {
        let a = client_attr(ds, code, "groupByAttributeCodeList")?;
        sortable(a, "group by")?;
        group_by.push(a.column.clone());
        outputs.push(Output {
            name: a.code.clone(),
            expr: a.column.clone(),
            order_expr: format!("x.{}", a.column),
            ty: a.ty,
        });
    }
    let keys = outputs.len();
    for agg in &q.aggregates {
        let alias = &agg.alias;
        if !is_identifier(alias) || alias.starts_with('_') {
            bail!(
                "aggregate alias `{alias}` must be an identifier: a letter, then letters, digits \
                 or `_`, at most 63 characters"
            );
        }
        if outputs.iter().any(|o| &o.name == alias) {
            bail!("aggregate alias `{alias}` clashes with another output column");
        }
        let attr = match &agg.attribute {
            Some(code) => Some(client_attr(ds, code, "aggregateList")?),
            None => None,
        };
        let (expr, ty) = match (agg.func, attr) {
            (AggFn::Count, None) => ("COUNT(*)".to_string(), AttrType::Integer),
            (AggFn::Count, Some(a)) => (format!("COUNT({})", a.column), AttrType::Integer),
            (f @ (AggFn::Sum | AggFn::Avg), Some(a)) => {
                if a.ty.family() != Family::Number {
                    bail!(
                        "`{}` needs a number attribute, but `{}` is {}",
                        f.name(),
                        a.code,
                        a.ty.name()
                    );
                }
                let ty = if f == AggFn::Avg {
                    AttrType::Double
                } else {
                    a.ty
                };
                (format!("{}({})", f.name().to_uppercase(), a.column), ty)
            }
            (f @ (AggFn::Min | AggFn::Max), Some(a)) => {
                if !matches!(
                    a.ty.family(),
                    Family::String | Family::Number | Family::Date
                ) {
                    bail!(
                        "`{}` is not valid for {} attribute `{}`",
                        f.name(),
                        a.ty.name(),
                        a.code
                    );
                }
                (format!("{}({})", f.name().to_uppercase(), a.column), a.ty)
            }
            (f, None) => bail!("`{}` needs `attributeCode`", f.name()),
        };
        outputs.push(Output {
            name: alias.clone(),
            order_expr: expr.clone(),
            expr,
            ty,
        });
    }

    let mut order: Vec<(String, SortDir)> = Vec::new();
    let mut ordered: Vec<&str> = Vec::new();
    for (code, dir) in q.sort.iter().flatten() {
        let Some(o) = outputs.iter().find(|o| &o.name == code) else {
            bail!(
                "cannot sort a grouped query by `{code}`: only group keys and aggregate aliases \
                 can be sorted"
            );
        };
        order.push((o.order_expr.clone(), *dir));
        ordered.push(&o.name);
    }
    for o in &outputs[..keys] {
        if !ordered.contains(&o.name.as_str()) {
            order.push((o.order_expr.clone(), SortDir::Asc));
        }
    }

    Ok(Shape {
        distinct: false,
        outputs,
        group_by,
        order,
    })
}
