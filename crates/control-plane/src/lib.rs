//! The Istio side of wasmesh: reads the resources users already write (WasmPlugin plus a routing
//! subset), validates them like istiod's webhook and CRD schema, decides which proxies each plugin
//! applies to and in which order, and turns that into per-proxy Envoy xDS snapshots served over
//! ADS by `wasmesh-xds`. Config in, per-proxy resources out: the core is pure functions
//! ([`validate::parse_file`], [`select::plugins_for`], [`generate::generate`]); [`source`] watches
//! a directory (or, with the `kubernetes` feature, the Kubernetes API) and [`push`] keeps every
//! connected proxy's snapshot current.

pub mod config;
pub mod generate;
pub mod model;
pub mod proxy;
pub mod push;
pub mod select;
pub mod serve;
pub mod source;
pub mod status;
pub mod validate;

pub use config::{Config, Plugin};
pub use proxy::{Proxy, ProxyKind};
pub use serve::{ControlPlane, Settings, SourceSettings};
pub use validate::{ValidationError, parse_file};
