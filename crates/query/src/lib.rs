//! The datasource query language of `POST /v1/api`: parse a client's JSON query, check it
//! against datasource metadata, and compile it to parameterised SQL for one [`Dialect`].
//!
//! ```text
//! JSON --parse_query--> Query --compile_select(ds, opts)--> Compiled { select, columns, count }
//! ```
//!
//! The language itself (fields, operators, the SQL each becomes per dialect) is documented in
//! `docs/query-language.md`.
//!
//! Invariants (absences):
//! - this crate performs no I/O, spawns nothing, is not async and reads no clock (callers pass
//!   `today` in [`CompileOptions`]);
//! - no client-supplied string is ever written into SQL text: identifiers come from
//!   [`meta::Datasource`] (validated when metadata is loaded), values become [`Value`] binds.
//!   The one client string that reaches SQL text is an aggregate alias, and only after
//!   [`meta::is_identifier`] accepted it;
//! - attribute names from the client only look metadata up; an attribute the client may not
//!   read (not queryable, or write-only) behaves exactly like one that does not exist.

pub mod compile;
pub mod definition;
pub mod error;
mod filter;
pub mod meta;
pub mod parse;
mod sql;
pub mod value;
pub mod write;

pub use compile::{CompileOptions, Compiled, OutputColumn, Statement, compile_select};
pub use definition::{AttributeDef, DatasourceDef};
pub use error::QueryError;
pub use meta::{
    AttrType, Attribute, Datasource, DefaultFilter, Dialect, Family, KeyGeneration, SortDir,
};
pub use parse::{AggFn, Aggregate, Filter, Op, Query, parse_query};
pub use value::Value;
pub use write::{
    RowOp, WriteContext, WriteRow, compile_lookup, compile_reread, compile_write, parse_row,
    returning_columns,
};
