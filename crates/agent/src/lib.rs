//! The wasmesh agent: istio-agent's Wasm role. It sits between a proxy (Envoy or ours) and
//! the control plane, proxies the ADS stream both ways and intercepts ECDS: remote Wasm code
//! (`oci://`, `http(s)://`) is fetched, verified against its sha256, cached on disk and the
//! config rewritten to the local file before the proxy sees it. A fetch failure becomes an
//! RBAC filter of the same name (allow-all for FAIL_OPEN, deny-all otherwise), and the fetch
//! is retried in the background until the real plugin can be sent.

pub mod agent;
pub mod cache;
pub mod convert;
pub mod fetch;
pub mod metrics;
pub mod pull;
pub mod push;
pub mod xds_proxy;

#[cfg(test)]
mod testutil;

pub use agent::{Agent, AgentConfig, AgentError, ListenAddr};
pub use cache::{CacheOptions, ModuleCache, PullPolicy};
pub use convert::Converter;
pub use metrics::Metrics;
