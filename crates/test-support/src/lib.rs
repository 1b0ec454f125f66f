//! Test helpers shared across crates.

pub mod fake_ads;
