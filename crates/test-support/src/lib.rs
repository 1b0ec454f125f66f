//! Test helpers shared across crates.
