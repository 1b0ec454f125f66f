//! Test helpers shared across crates.

pub mod echo;
pub mod fake_ads;
pub mod proxy_peers;
pub mod registry;
