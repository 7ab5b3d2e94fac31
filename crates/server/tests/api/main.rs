//! API tests: one binary, every test on SQLite and on PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod helpers;

mod apikeys;
mod apps;
mod auth;
mod budget;
mod connections;
mod crossdb;
mod errors;
mod guard;
mod health;
mod lifecycle;
mod patches;
mod playground;
mod post;
mod query;
mod query_errors;
mod query_scope;
mod query_shape;
mod rate_limit;
mod scripts;
mod sso;
mod workflows;
