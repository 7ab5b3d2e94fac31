//! The HTTP surface of the platform: the route table, authentication and the request guard,
//! handlers, and the wire format (success bodies and the error envelope).
//!
//! Invariants (absences):
//! - no SQL and no database driver here: everything goes through `store`;
//! - no handler builds an error body by hand: every error is an [`error::ApiError`];
//! - no secret (password, hash, JWT secret) is logged or returned.

pub mod api;
pub mod apps;
pub mod appzip;
pub mod auth;
pub mod cache;
pub mod cluster;
pub mod config;
pub mod conn;
pub mod engine;
pub mod error;
pub mod metrics;
pub mod patch;
pub mod request_id;
pub mod router;
pub mod sso;
pub mod startup;
pub mod state;
pub mod workflow;
pub mod workflow_def;

pub use config::{Config, DatabaseUrl, Secret};
pub use startup::{Server, StartError};
pub use state::AppState;
