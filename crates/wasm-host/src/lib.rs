//! The proxy-wasm host: runs plugins built with any proxy-wasm SDK (ABI 0.2.1, 0.2.0 and 0.1.0)
//! on wasmtime, with Envoy's semantics for every host call and callback.
//!
//! Shape: one [`Runtime`] per process compiles each module once ([`CompiledModule`], cached by
//! sha256 in memory and precompiled on disk). A [`Plugin`] binds a module to its configuration;
//! each worker makes its own [`PluginVm`] from it. The proxy drives a VM by putting a stream's
//! headers and bodies in ([`PluginVm::set_map`], [`PluginVm::set_buffer`]), calling the
//! callbacks, reading the mapped action, then taking the data back out and carrying out queued
//! [`Effect`]s (resume, local reply, close). Anything outside the VM (logs, callouts, queue
//! notifications, stream properties) goes through the [`Host`] and [`StreamProperties`] traits:
//! this crate has no sockets and no async runtime.
//!
//! Safety: every guest pointer is bounds-checked; memory is capped per VM; each callback has a
//! CPU deadline (epoch interruption), so a looping plugin is stopped; a trap marks the VM failed
//! and the caller applies the plugin's [`FailurePolicy`].

mod abi;
mod circllhist;
mod compiler;
mod error;
mod expr;
mod headers;
mod host;
mod imports;
mod metrics;
pub mod pairs;
mod plugin;
mod properties;
mod runtime;
mod shared;
mod state;
pub mod trial;
mod vm;

pub use abi::{
    AbiVersion, BufferType, DataAction, FilterAction, HeadersAction, LogLevel, MapType, MetricType,
    PeerType, Status, StreamType,
};
pub use circllhist::{QUANTILE_LABELS, QUANTILES};
pub use compiler::{Compiler, compile_worker};
pub use error::{Error, TrapKind};
pub use headers::{Change, HeaderMap};
pub use host::{GrpcCall, Host, HttpCall, HttpCallResponse, NullHost, log_plugin_line};
pub use metrics::{FlushedHistogram, HISTOGRAM_BUCKETS, Metric, MetricValue, Metrics};
pub use plugin::{Backoff, FailurePolicy, Limits, Plugin, PluginConfig, PluginStats};
pub use properties::{NoProperties, NodeInfo, PropertyValue, StreamProperties};
pub use runtime::{CompiledModule, Origin, Runtime, RuntimeConfig};
pub use shared::{QueueNotifier, Shared, SharedLimits};
pub use state::{Effect, LocalReply, VmState};
pub use vm::PluginVm;
