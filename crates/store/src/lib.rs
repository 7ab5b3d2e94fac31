//! Storage: pools, transactions, the platform's tables and the migration runner.
//!
//! Invariants (absences):
//! - no other crate talks to a database driver; no other crate writes SQL for platform tables;
//! - no client input becomes SQL text here: identifiers are constants or checked metadata, every
//!   value is bound;
//! - driver errors are translated into [`StoreError`] in one place (`error.rs`).

pub mod apikeys;
pub mod attach;
pub mod cluster;
pub mod db;
pub mod error;
pub mod health;
pub mod metadata;
pub mod migrate;
pub mod patch;
pub mod platform;
pub mod sso;
pub mod workflow;
pub mod writer;

/// The built-in app that holds the platform's own tables and datasources.
pub const PLATFORM_APP: &str = "cloudio";

pub use apikeys::{ApiKey, NewApiKey};
pub use db::{Conn, Db, DbTarget, Exec, Raw, Tx, WriteTurn, portable, redact_url};
pub use error::{Result, StoreError};
pub use metadata::{AppMetadata, RoleGrants, StoredApp, StoredMetadata};
pub use platform::{LiveSession, NewUser, Reservation, Session, Store, User, check_user_name};
pub use writer::{WriteConn, Writer, finish_now};
