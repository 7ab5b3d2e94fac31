//! Tests of the real `cloudio` binary: started, signalled and administered as an operator would,
//! every database-touching test on SQLite and on PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod helpers;

mod admin;
mod apikeys;
mod cluster;
mod config;
mod crash;
mod link;
mod patches;
mod playground;
mod seed_sample;
mod serve;
mod workflows;
