//! Filters istiod puts in every listener it generates that wasmesh accepts and leaves out of
//! the chain: each one either changes nothing for the traffic wasmesh serves (an `HTTPFault`
//! or `Cors` with no policy) or only feeds Istio's own telemetry and mTLS machinery, which
//! wasmesh does not implement (`istio.stats`, `istio.metadata_exchange`, `istio.alpn`,
//! `grpc_stats`). Each is logged once per config build, so nothing is ignored silently; any
//! other filter is still refused at start-up.

use crate::config::ConfigError;
use crate::pb::Any;

/// Why a filter is left out of the chain (the log line says it).
struct PassThrough {
    type_url: &'static str,
    /// Only with an empty config (the filter then does nothing in Envoy either).
    only_empty: bool,
    reason: &'static str,
}

const HTTP: &[PassThrough] = &[
    PassThrough {
        type_url: "type.googleapis.com/io.istio.http.peer_metadata.Config",
        only_empty: false,
        reason: "Istio peer metadata exchange (x-envoy-peer-metadata) for Istio telemetry, which wasmesh does not produce",
    },
    PassThrough {
        type_url: "type.googleapis.com/istio.envoy.config.filter.http.alpn.v2alpha1.FilterConfig",
        only_empty: false,
        reason: "ALPN override for Istio mTLS upstreams, which wasmesh does not negotiate",
    },
    PassThrough {
        type_url: "type.googleapis.com/stats.PluginConfig",
        only_empty: false,
        reason: "Istio standard metrics (istio_requests_total, ...), which wasmesh does not produce",
    },
    PassThrough {
        type_url: "type.googleapis.com/envoy.extensions.filters.http.grpc_stats.v3.FilterConfig",
        only_empty: false,
        reason: "gRPC per-method stats, which wasmesh does not produce",
    },
    PassThrough {
        type_url: "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault",
        only_empty: true,
        reason: "no fault configured (a route's fault policy is refused where it is set)",
    },
    PassThrough {
        type_url: "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors",
        only_empty: true,
        reason: "no CORS policy configured (a route's CORS policy is refused where it is set)",
    },
];

const NETWORK: &[PassThrough] = &[
    PassThrough {
        type_url: "type.googleapis.com/stats.PluginConfig",
        only_empty: false,
        reason: "Istio standard TCP metrics, which wasmesh does not produce",
    },
    PassThrough {
        type_url: "type.googleapis.com/envoy.tcp.metadataexchange.config.MetadataExchange",
        only_empty: false,
        reason: "Istio's in-band metadata exchange, which runs only under the ALPN `istio-peer-exchange` of Istio mTLS (never negotiated by wasmesh)",
    },
];

fn find(table: &[PassThrough], name: &str, any: &Any, path: &str) -> Result<bool, ConfigError> {
    let Some(p) = table.iter().find(|p| p.type_url == any.type_url) else {
        return Ok(false);
    };
    if p.only_empty && !any.value.is_empty() {
        return Err(ConfigError::unsupported(
            path,
            format!(
                "{} with a configuration (only the empty form istiod sends is)",
                any.type_url
            ),
        ));
    }
    crate::config::check::check_any(any, path)?;
    if first_time(p.type_url) {
        tracing::info!(
            filter = name,
            path,
            "filter left out of the chain: {}",
            p.reason
        );
    } else {
        tracing::debug!(
            filter = name,
            path,
            "filter left out of the chain: {}",
            p.reason
        );
    }
    Ok(true)
}

/// Whether `what` is said for the first time in this process (istiod repeats the same filters
/// on every listener and cluster: one line each is enough).
pub(crate) fn first_time(what: &'static str) -> bool {
    static SAID: std::sync::Mutex<Vec<&'static str>> = std::sync::Mutex::new(Vec::new());
    let mut said = SAID.lock().unwrap_or_else(|e| e.into_inner());
    if said.contains(&what) {
        return false;
    }
    said.push(what);
    true
}

/// Whether the HTTP filter `name` with `any` (at `path`) is one to leave out of the chain.
pub(crate) fn http(name: &str, any: &Any, path: &str) -> Result<bool, ConfigError> {
    find(HTTP, name, any, path)
}

/// Whether the network (or upstream network) filter `name` with `any` is one to leave out.
pub(crate) fn network(name: &str, any: &Any, path: &str) -> Result<bool, ConfigError> {
    find(NETWORK, name, any, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn any(type_url: &str, value: &[u8]) -> Any {
        Any {
            type_url: type_url.into(),
            value: value.to_vec(),
        }
    }

    #[test]
    fn leaves_out_only_istios_filters_and_empty_fault_and_cors() {
        let fault = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault";
        assert!(http("f", &any(fault, b""), "p").unwrap());
        // (a fault with an abort configured: field 2, empty message)
        let err = http("f", &any(fault, &[0x12, 0x00]), "p").unwrap_err();
        assert!(err.to_string().contains("only the empty form"), "{err}");
        assert!(
            http(
                "s",
                &any("type.googleapis.com/stats.PluginConfig", b""),
                "p"
            )
            .unwrap()
        );
        let wasm = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm";
        assert!(!http("w", &any(wasm, b""), "p").unwrap());
        assert!(!network("s", &any(fault, b""), "p").unwrap());
    }
}
