//! Stream properties plugins read (`source.address`, `response.code`, `xds.route_name`...),
//! answered from a snapshot of the stream info the filter refreshes before each callback.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use wasm_host::{HeaderMap, MapType, PropertyValue, StreamProperties};

use crate::filter::StreamInfo;

/// What the plugin may ask about its stream; cheap to refresh.
#[derive(Debug, Clone, Default)]
pub(crate) struct Facts {
    /// The [`StreamInfo::version`] copied last (`None`: never).
    version: Option<u64>,
    pub(crate) local: Option<std::net::SocketAddr>,
    pub(crate) remote: Option<std::net::SocketAddr>,
    pub(crate) protocol: Option<http::Version>,
    pub(crate) tls: bool,
    pub(crate) sni: Option<String>,
    pub(crate) request_id: Option<Arc<str>>,
    pub(crate) start_ns: i64,
    pub(crate) route_name: Option<Arc<str>>,
    pub(crate) virtual_host_name: Option<Arc<str>>,
    pub(crate) cluster_name: Option<Arc<str>>,
    pub(crate) upstream: Option<std::net::SocketAddr>,
    pub(crate) upstream_local: Option<std::net::SocketAddr>,
    pub(crate) transport_failure: Option<Arc<str>>,
    pub(crate) response_code: Option<u16>,
    pub(crate) details: Option<Arc<str>>,
    pub(crate) bytes_received: u64,
    pub(crate) bytes_sent: u64,
    pub(crate) duration_ns: Option<i64>,
    pub(crate) listener_name: Arc<str>,
    /// Envoy's legacy response flag bits.
    pub(crate) response_flags: u64,
    pub(crate) attempt_count: u32,
    pub(crate) filter_chain_name: Option<Arc<str>>,
    pub(crate) route_metadata: Option<Arc<crate::route::MetadataProp>>,
    pub(crate) virtual_host_metadata: Option<Arc<crate::route::MetadataProp>>,
    pub(crate) cluster_metadata: Option<Arc<crate::route::MetadataProp>>,
    pub(crate) listener_direction: i64,
    pub(crate) listener_metadata: Option<Arc<crate::route::MetadataProp>>,
    /// The final request and response headers, for `on_log` maps built on demand.
    pub(crate) request: Option<Arc<http::request::Parts>>,
    pub(crate) response: Option<Arc<http::HeaderMap>>,
    /// The downstream TLS connection (`connection.*`).
    pub(crate) tls_facts: Option<Arc<crate::xfcc::TlsFacts>>,
    /// The stream's filter state (`proxy_set_property`), shared by its plugins.
    pub(crate) wasm_state: Option<crate::filter::WasmState>,
}

impl Facts {
    /// Copies what changed since the last refresh (nothing when the stream info was not
    /// written to since; names are shared, so a copy is a reference count).
    pub(crate) fn refresh(&mut self, info: &StreamInfo) {
        if self.version == Some(info.version) {
            return;
        }
        self.version = Some(info.version);
        self.local = Some(info.downstream_local_addr);
        self.remote = Some(info.downstream_remote_addr);
        self.protocol = Some(info.protocol);
        self.tls = info.downstream_tls;
        self.tls_facts.clone_from(&info.tls);
        if self.sni != info.requested_server_name {
            self.sni.clone_from(&info.requested_server_name);
        }
        self.request_id.clone_from(&info.request_id);
        // Whole microseconds, as Envoy's system clock counts them.
        self.start_ns = info
            .start_time
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as i64 * 1000)
            .unwrap_or(0);
        self.route_name.clone_from(&info.route_name);
        self.virtual_host_name.clone_from(&info.virtual_host_name);
        self.cluster_name.clone_from(&info.cluster_name);
        self.upstream = info.upstream_host;
        self.upstream_local = info.upstream_local_addr;
        self.transport_failure
            .clone_from(&info.upstream_transport_failure_reason);
        self.response_code = info.response_code;
        self.details.clone_from(&info.response_code_details);
        self.bytes_received = info.bytes_received;
        self.bytes_sent = info.bytes_sent;
        self.duration_ns = info.duration.map(|d| d.as_nanos() as i64);
        self.listener_name = Arc::clone(&info.listener_name);
        self.response_flags = info.response_flags.envoy_bits();
        self.attempt_count = info.attempt_count;
        self.filter_chain_name.clone_from(&info.filter_chain_name);
        self.route_metadata.clone_from(&info.route_metadata);
        self.virtual_host_metadata
            .clone_from(&info.virtual_host_metadata);
        self.cluster_metadata.clone_from(&info.cluster_metadata);
        self.listener_direction = info.listener_direction;
        self.listener_metadata.clone_from(&info.listener_metadata);
        self.request.clone_from(&info.request_headers);
        self.response.clone_from(&info.response_headers);
    }
}

/// The [`StreamProperties`] handed to the Wasm host for one stream.
pub(crate) struct StreamProps(pub(crate) Rc<RefCell<Facts>>);

fn s(v: &Option<Arc<str>>) -> Option<PropertyValue> {
    v.as_deref().map(PropertyValue::string)
}

fn protocol(v: http::Version) -> &'static str {
    match v {
        http::Version::HTTP_09 => "HTTP/0.9",
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_2 => "HTTP/2",
        http::Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/1.1",
    }
}

impl StreamProperties for StreamProps {
    fn get(&self, path: &[&[u8]]) -> Option<PropertyValue> {
        let f = self.0.borrow();
        match path {
            [b"source", b"address"] => f.remote.map(|a| PropertyValue::string(a.to_string())),
            [b"source", b"port"] => f.remote.map(|a| PropertyValue::Int(a.port() as i64)),
            [b"destination", b"address"] => f.local.map(|a| PropertyValue::string(a.to_string())),
            [b"destination", b"port"] => f.local.map(|a| PropertyValue::Int(a.port() as i64)),
            [b"request", b"protocol"] => f.protocol.map(|p| PropertyValue::string(protocol(p))),
            [b"request", b"id"] => s(&f.request_id),
            [b"request", b"time"] => Some(PropertyValue::Timestamp(f.start_ns)),
            [b"request", b"duration"] => f.duration_ns.map(PropertyValue::Duration),
            [b"request", b"size"] => Some(PropertyValue::Int(f.bytes_received as i64)),
            [b"response", b"code"] => f.response_code.map(|c| PropertyValue::Int(c as i64)),
            [b"response", b"code_details"] => s(&f.details),
            [b"response", b"size"] => Some(PropertyValue::Int(f.bytes_sent as i64)),
            [b"connection", b"mtls"] => Some(PropertyValue::Bool(
                f.tls_facts.as_ref().is_some_and(|t| t.peer.is_some()),
            )),
            [b"connection", b"tls_version"] => f
                .tls_facts
                .as_ref()
                .filter(|t| !t.version.is_empty())
                .map(|t| PropertyValue::string(t.version)),
            [b"connection", b"requested_server_name"] => {
                f.sni.as_deref().map(PropertyValue::string)
            }
            [b"connection", attr] => {
                let t = f.tls_facts.as_ref()?;
                let (peer, local) = (t.peer.as_ref(), t.local.as_deref());
                let v = match *attr {
                    b"subject_peer_certificate" => peer.map(|c| c.subject.clone()),
                    b"subject_local_certificate" => local.map(|c| c.subject.clone()),
                    b"uri_san_peer_certificate" => peer.and_then(|c| c.uri_san.clone()),
                    b"uri_san_local_certificate" => local.and_then(|c| c.uri_san.clone()),
                    b"dns_san_peer_certificate" => peer.and_then(|c| c.dns_san.clone()),
                    b"dns_san_local_certificate" => local.and_then(|c| c.dns_san.clone()),
                    b"sha256_peer_certificate_digest" => peer.map(|c| c.sha256.clone()),
                    _ => None,
                };
                v.map(PropertyValue::string)
            }
            [b"upstream", b"address"] => f.upstream.map(|a| PropertyValue::string(a.to_string())),
            [b"upstream", b"local_address"] => f
                .upstream_local
                .map(|a| PropertyValue::string(a.to_string())),
            [b"upstream", b"port"] => f.upstream.map(|a| PropertyValue::Int(a.port() as i64)),
            [b"upstream", b"transport_failure_reason"] => s(&f.transport_failure),
            // Envoy 1.40 answers only the `xds.` spellings (the legacy top-level `cluster_name`,
            // `route_name`... are NotFound).
            [b"xds", b"cluster_name"] => s(&f.cluster_name),
            [b"xds", b"route_name"] => s(&f.route_name),
            [b"xds", b"filter_chain_name"] => s(&f.filter_chain_name),
            [b"xds", b"route_metadata"] => f
                .route_metadata
                .as_ref()
                .map(|m| PropertyValue::Raw(m.proto.clone())),
            [b"xds", b"route_metadata", rest @ ..] => {
                f.route_metadata.as_ref().and_then(|m| m.value.lookup(rest))
            }
            [b"xds", b"virtual_host_metadata"] => f
                .virtual_host_metadata
                .as_ref()
                .map(|m| PropertyValue::Raw(m.proto.clone())),
            [b"xds", b"virtual_host_metadata", rest @ ..] => f
                .virtual_host_metadata
                .as_ref()
                .and_then(|m| m.value.lookup(rest)),
            [b"xds", b"cluster_metadata"] => f
                .cluster_metadata
                .as_ref()
                .map(|m| PropertyValue::Raw(m.proto.clone())),
            [b"xds", b"cluster_metadata", rest @ ..] => f
                .cluster_metadata
                .as_ref()
                .and_then(|m| m.value.lookup(rest)),
            [b"xds", b"listener_direction"] => Some(PropertyValue::Int(f.listener_direction)),
            [b"xds", b"listener_metadata"] => f
                .listener_metadata
                .as_ref()
                .map(|m| PropertyValue::Raw(m.proto.clone())),
            [b"xds", b"listener_metadata", rest @ ..] => f
                .listener_metadata
                .as_ref()
                .and_then(|m| m.value.lookup(rest)),
            // Envoy: SerializationFailure once there is an upstream host (ours carry no
            // metadata), NotFound before.
            [b"xds", b"upstream_host_metadata"] => {
                f.upstream.map(|_| PropertyValue::Unserializable)
            }
            [b"response", b"flags"] => Some(PropertyValue::Int(f.response_flags as i64)),
            [b"upstream", b"request_attempt_count"] => {
                Some(PropertyValue::Int(i64::from(f.attempt_count)))
            }
            [b"xds", b"virtual_host_name"] => s(&f.virtual_host_name),
            [b"xds", b"listener_name"] => Some(PropertyValue::string(&*f.listener_name)),
            _ => None,
        }
    }

    fn filter_state(&self, key: &[u8]) -> Option<Vec<u8>> {
        let f = self.0.borrow();
        let state = f.wasm_state.as_ref()?.lock().ok()?;
        state
            .iter()
            .find(|(k, _)| k.as_slice() == key)
            .map(|(_, v)| v.clone())
    }

    fn set_filter_state(&self, key: Vec<u8>, value: Vec<u8>) -> bool {
        let f = self.0.borrow();
        let Some(Ok(mut state)) = f.wasm_state.as_ref().map(|s| s.lock()) else {
            return false;
        };
        match state.iter_mut().find(|(k, _)| *k == key) {
            Some((_, v)) => *v = value,
            None => state.push((key, value)),
        }
        true
    }

    fn headers(&self, map: MapType) -> Option<HeaderMap> {
        let f = self.0.borrow();
        match map {
            MapType::RequestHeaders => f
                .request
                .as_deref()
                .map(|r| super::convert::request_map_on(r, f.tls)),
            MapType::ResponseHeaders => f.response.as_deref().map(|h| {
                let code = f
                    .response_code
                    .and_then(|c| http::StatusCode::from_u16(c).ok());
                super::convert::response_with_code(code, h)
            }),
            _ => None,
        }
    }
}
