//! The query crate's one integration-test binary: data-driven snapshot cases, error cases and
//! property tests, all against the fixture datasources in `fixtures`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod cases;
mod families;
mod fixtures;
mod props;
