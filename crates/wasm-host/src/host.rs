//! The trait through which a plugin reaches the outside world. The proxy implements it per
//! worker; tests implement it with plain collections. No sockets or async runtime here.

use std::sync::Arc;
use std::time::Duration;

use crate::abi::{LogLevel, Status};
use crate::headers::HeaderMap;
use crate::shared::QueueNotifier;

/// An HTTP callout a plugin asked for (`proxy_http_call`). The host performs it and later
/// hands the answer to [`crate::PluginVm::on_http_call_response`] with the same token.
#[derive(Debug, Clone)]
pub struct HttpCall {
    /// Unique per VM while outstanding.
    pub token: u32,
    /// The root context that owns the call (the callback goes there).
    pub root_context_id: u32,
    /// The context that was current/effective when the call was made.
    pub origin_context_id: u32,
    /// Cluster name (not a URL).
    pub upstream: String,
    /// Request headers, including `:method`, `:path`, `:authority`.
    pub headers: HeaderMap,
    pub body: Vec<u8>,
    pub trailers: HeaderMap,
    /// `None` when the plugin passed 0.
    pub timeout: Option<Duration>,
}

/// The answer to an [`HttpCall`].
#[derive(Debug, Clone, Default)]
pub struct HttpCallResponse {
    pub headers: HeaderMap,
    pub body: Vec<u8>,
    pub trailers: HeaderMap,
}

/// A gRPC unary call a plugin asked for (`proxy_grpc_call`).
#[derive(Debug, Clone)]
pub struct GrpcCall {
    pub token: u32,
    pub root_context_id: u32,
    /// Cluster name, or a serialized `envoy.config.core.v3.GrpcService`.
    pub upstream: Vec<u8>,
    pub service: String,
    pub method: String,
    pub initial_metadata: HeaderMap,
    pub message: Vec<u8>,
    pub timeout: Option<Duration>,
}

/// A plugin's log line as Envoy writes it, `wasm log <prefix>: <message>`, under the `wasm`
/// tracing target at the plugin's level (critical as error, with the field `critical`).
pub fn log_plugin_line(prefix: &str, level: LogLevel, message: &str) {
    match level {
        LogLevel::Trace => tracing::trace!(target: "wasm", "wasm log{prefix}: {message}"),
        LogLevel::Debug => tracing::debug!(target: "wasm", "wasm log{prefix}: {message}"),
        LogLevel::Info => tracing::info!(target: "wasm", "wasm log{prefix}: {message}"),
        LogLevel::Warn => tracing::warn!(target: "wasm", "wasm log{prefix}: {message}"),
        LogLevel::Error => tracing::error!(target: "wasm", "wasm log{prefix}: {message}"),
        LogLevel::Critical => {
            tracing::error!(target: "wasm", critical = true, "wasm log{prefix}: {message}")
        }
    }
}

/// What the host does for a plugin. Every method has a safe default so a host implements
/// only what it offers.
pub trait Host {
    /// A log line from the plugin (`proxy_log`, or WASI stdout/stderr). `prefix` is the
    /// plugin's [`PluginConfig::log_prefix`](crate::PluginConfig::log_prefix); by default the
    /// line reads as Envoy's, `wasm log <prefix>: <message>`, under the `wasm` target.
    fn log(&mut self, prefix: &str, level: LogLevel, message: &str) {
        log_plugin_line(prefix, level, message);
    }

    /// The level `proxy_get_log_level` reports.
    fn log_level(&self) -> LogLevel {
        LogLevel::Info
    }

    /// Start an HTTP callout. `Err(BadArgument)` for an unknown cluster (as Envoy),
    /// `Err(InternalFailure)` if it cannot be sent.
    fn dispatch_http_call(&mut self, call: HttpCall) -> Result<(), Status> {
        let _ = call;
        Err(Status::BadArgument)
    }

    /// Start a gRPC unary call. `Err(ParseFailure)` for an unknown cluster (as Envoy).
    fn dispatch_grpc_call(&mut self, call: GrpcCall) -> Result<(), Status> {
        let _ = call;
        Err(Status::ParseFailure)
    }

    /// Cancel an outstanding gRPC call or stream.
    fn cancel_grpc(&mut self, token: u32) -> Result<(), Status> {
        let _ = token;
        Err(Status::NotFound)
    }

    /// A host-specific function (`proxy_call_foreign_function`) the Wasm host itself does not
    /// answer. `None` means unknown (the plugin sees NotFound, as in Envoy).
    fn foreign_function(&mut self, name: &str, args: &[u8]) -> Option<Result<Vec<u8>, Status>> {
        let _ = (name, args);
        None
    }

    /// Where `proxy_on_queue_ready` notifications for this VM go. `None`: queues registered by
    /// this VM are never signalled (items can still be dequeued).
    fn queue_notifier(&self) -> Option<Arc<dyn QueueNotifier>> {
        None
    }
}

/// A host that offers nothing beyond logging through `tracing`.
#[derive(Debug, Default, Clone, Copy)]
pub struct NullHost;

impl Host for NullHost {}
