//! Credentials: header parsing, password hashing, JWTs, and the request guard.

pub mod guard;
pub mod header;
pub mod jwt;
pub mod password;
