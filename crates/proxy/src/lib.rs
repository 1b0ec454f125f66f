//! The wasmesh data plane: an Envoy-compatible proxy that runs proxy-wasm filters.
//!
//! It loads an Envoy v3 bootstrap ([`config`]), runs N workers (one current-thread tokio runtime
//! each, like Envoy's workers) that accept on `SO_REUSEPORT` listeners, and drives each request
//! through the HTTP connection manager: the HTTP filter chain ([`filter`]), the router, the
//! cluster's load balancer and connection pool, and back through the response filters. TCP
//! listeners run network filters ([`network_filter`]) in front of `tcp_proxy`. An admin server
//! serves Envoy's `/stats`, `/stats/prometheus`, `/ready`, `/config_dump`, `/clusters`,
//! `/listeners` and `/quitquitquit`.

pub mod access_log;
mod admin;
pub mod cluster;
pub mod config;
pub mod error;
pub mod filter;
mod hcm;
mod header_order;
mod idle;
pub mod listener;
pub mod network_filter;
mod passthrough;
pub mod pb;
pub mod rbac;
pub(crate) mod read_ahead;
pub mod response_flags;
pub mod route;
mod server;
pub mod stats;
mod tcp;
pub mod tls;
pub mod upstream;
pub mod wasm_filter;
mod worker;
pub mod xds;
pub mod xfcc;

pub use config::{BuildOptions, ConfigError, ProxyConfig};
pub use server::{ProxyOptions, RunningProxy, StartError, start, start_with};
