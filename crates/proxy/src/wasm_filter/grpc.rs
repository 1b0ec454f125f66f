//! Unary gRPC calls plugins make (`proxy_grpc_call`), as Envoy's async gRPC client makes them:
//! an HTTP/2 POST to `/<service>/<method>` on the cluster, the message in one length-prefixed
//! frame, the answer's status from `grpc-status` (trailers, or the headers of a trailers-only
//! answer), else from the HTTP status.

use std::time::Duration;

use bytes::Bytes;
use prost::Message;
use wasm_host::GrpcCall;

use crate::filter::{CalloutError, CalloutTrailers};

/// gRPC status codes used here.
const UNKNOWN: u32 = 2;
const DEADLINE_EXCEEDED: u32 = 4;
const INTERNAL: u32 = 13;
const UNAVAILABLE: u32 = 14;

/// The cluster a call goes to: `upstream` is a cluster name, or a serialized
/// `envoy.config.core.v3.GrpcService` naming one (`envoy_grpc.cluster_name`).
pub(crate) fn cluster(upstream: &[u8]) -> Option<String> {
    use envoy_types::pb::envoy::config::core::v3::GrpcService;
    use envoy_types::pb::envoy::config::core::v3::grpc_service::TargetSpecifier;
    if let Ok(svc) = GrpcService::decode(upstream)
        && let Some(TargetSpecifier::EnvoyGrpc(g)) = svc.target_specifier
        && !g.cluster_name.is_empty()
    {
        return Some(g.cluster_name);
    }
    std::str::from_utf8(upstream)
        .ok()
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// The HTTP/2 request for `call`.
pub(crate) fn request(call: &GrpcCall, cluster: &str) -> Option<http::Request<Bytes>> {
    let mut b = http::Request::builder()
        .method(http::Method::POST)
        .uri(format!("/{}/{}", call.service, call.method))
        .header(http::header::HOST, cluster)
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header(http::header::TE, "trailers")
        .extension(crate::filter::UnsizedBody);
    if let Some(t) = call.timeout {
        b = b.header("grpc-timeout", format!("{}m", t.as_millis()));
    }
    for (k, v) in call.initial_metadata.iter() {
        b = b.header(k, v);
    }
    let mut body = Vec::with_capacity(5 + call.message.len());
    body.push(0);
    body.extend_from_slice(&(call.message.len() as u32).to_be_bytes());
    body.extend_from_slice(&call.message);
    b.body(Bytes::from(body)).ok()
}

fn header_status(h: &http::HeaderMap) -> Option<(u32, String)> {
    let code = h.get("grpc-status")?.to_str().ok()?.trim().parse().ok()?;
    let message = h
        .get("grpc-message")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    Some((code, message))
}

/// The details Envoy appends to a failure's message when the upstream answered.
const VIA_UPSTREAM: &str = "via_upstream";

/// What the plugin is told: the response message, or (status, message).
pub(crate) fn outcome(
    answer: Result<http::Response<Bytes>, CalloutError>,
) -> Result<Vec<u8>, (u32, String)> {
    let resp = match answer {
        Ok(r) => r,
        Err(CalloutError::Timeout) => return Err((DEADLINE_EXCEEDED, "timeout".into())),
        // (the router's gRPC local reply: the HTTP status mapped, the text as grpc-message)
        Err(CalloutError::Local { status, body }) => {
            return Err((crate::hcm::http_to_grpc(status), body));
        }
        Err(e) => return Err((UNAVAILABLE, e.to_string())),
    };
    let (parts, body) = resp.into_parts();
    if parts.status != http::StatusCode::OK {
        return Err((
            crate::hcm::http_to_grpc(parts.status.as_u16()),
            String::new(),
        ));
    }
    let status = parts
        .extensions
        .get::<CalloutTrailers>()
        .and_then(|t| header_status(&t.0))
        .or_else(|| header_status(&parts.headers));
    match status {
        Some((0, _)) => {}
        // Envoy's message for a failure the upstream sent: its `grpc-message`, then the
        // stream's details (`via_upstream`).
        Some((code, message)) if message.is_empty() => return Err((code, VIA_UPSTREAM.into())),
        Some((code, message)) => return Err((code, format!("{message}{{{VIA_UPSTREAM}}}"))),
        None => return Err((UNKNOWN, "no grpc-status".into())),
    }
    // One length-prefixed, uncompressed message.
    if body.len() < 5 || body[0] != 0 {
        return Err((INTERNAL, VIA_UPSTREAM.into()));
    }
    let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
    body.get(5..5 + len)
        .map(<[u8]>::to_vec)
        .ok_or_else(|| (INTERNAL, "truncated gRPC response".into()))
}

/// The timeout the call is given (Envoy: none when the plugin passes 0).
pub(crate) fn timeout(call: &GrpcCall) -> Option<Duration> {
    call.timeout.filter(|t| !t.is_zero())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(
        headers: &[(&'static str, &str)],
        trailers: &[(&'static str, &str)],
        body: &[u8],
    ) -> http::Response<Bytes> {
        let mut r = http::Response::new(Bytes::copy_from_slice(body));
        for (k, v) in headers {
            r.headers_mut().insert(*k, v.parse().expect("value"));
        }
        if !trailers.is_empty() {
            let mut t = http::HeaderMap::new();
            for (k, v) in trailers {
                t.insert(*k, v.parse().expect("value"));
            }
            r.extensions_mut().insert(CalloutTrailers(t));
        }
        r
    }

    #[test]
    fn statuses_and_messages_like_envoys_client() {
        let ok = answer(&[], &[("grpc-status", "0")], b"\0\0\0\0\x02hi");
        assert_eq!(outcome(Ok(ok)), Ok(b"hi".to_vec()));
        let failed = answer(&[("grpc-status", "7"), ("grpc-message", "no")], &[], b"");
        // (Envoy 1.40: the upstream's message, then the details)
        assert_eq!(outcome(Ok(failed)), Err((7, "no{via_upstream}".into())));
        let bare = answer(&[("grpc-status", "14")], &[], b"");
        assert_eq!(outcome(Ok(bare)), Err((14, "via_upstream".into())));
        let not_grpc = answer(&[], &[("grpc-status", "0")], b"plain");
        assert_eq!(outcome(Ok(not_grpc)), Err((13, "via_upstream".into())));
        let mut not_found = answer(&[], &[], b"");
        *not_found.status_mut() = http::StatusCode::NOT_FOUND;
        assert_eq!(outcome(Ok(not_found)), Err((12, String::new())));
        assert_eq!(
            outcome(Err(CalloutError::Timeout)).err().map(|e| e.0),
            Some(DEADLINE_EXCEEDED)
        );
        let cut = answer(&[], &[("grpc-status", "0")], b"\0\0\0\0\x09hi");
        assert_eq!(outcome(Ok(cut)).err().map(|e| e.0), Some(INTERNAL));
    }

    #[test]
    fn the_cluster_is_a_name_or_a_grpc_service() {
        use envoy_types::pb::envoy::config::core::v3::GrpcService;
        use envoy_types::pb::envoy::config::core::v3::grpc_service::{EnvoyGrpc, TargetSpecifier};
        assert_eq!(cluster(b"authz").as_deref(), Some("authz"));
        let svc = GrpcService {
            target_specifier: Some(TargetSpecifier::EnvoyGrpc(EnvoyGrpc {
                cluster_name: "grpc_up".into(),
                ..Default::default()
            })),
            ..Default::default()
        }
        .encode_to_vec();
        assert_eq!(cluster(&svc).as_deref(), Some("grpc_up"));
        assert_eq!(cluster(b""), None);
    }
}
