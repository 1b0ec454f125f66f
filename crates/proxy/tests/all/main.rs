//! Integration tests of the data plane: our proxy in-process on 127.0.0.1 ports, real upstreams,
//! hyper and curl clients, and differential tests against real Envoy 1.40.

mod admin;
mod body_chunks;
mod callout;
mod config_errors;
mod conformance;
mod differential;
mod early_reply;
mod errors;
mod filter_chains;
mod filters;
mod grpc_replies;
mod header_order;
mod histograms;
mod http1_codec;
mod istio_stats;
mod late_failure;
mod listeners;
mod local_replies;
mod properties;
mod remote_code;
mod routing;
mod sdk_configs;
mod stats_tags;
mod support;
mod tcp;
mod tcp_wasm;
mod ticks;
mod tls;
mod tls_properties;
mod trailers;
mod vm_share;
mod wasm_access_log;
mod wasm_differential;
mod wasm_reload;
mod xfcc;
