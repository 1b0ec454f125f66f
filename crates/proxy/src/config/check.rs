//! Rejects every bootstrap field we do not implement, naming its path: walks the set fields of
//! the message (through Envoy's descriptors) against a table of supported fields per message
//! type. Messages not in the table are leaves we take whole (Duration, Struct, ...).

use prost_reflect::{DynamicMessage, MapKey, ReflectMessage, Value};

use super::ConfigError;
use crate::pb::Any;

/// Fields wasmesh implements, per message (`"*"`: the whole message is accepted as is).
const SUPPORTED: &[(&str, &[&str])] = &[
    (
        "envoy.config.bootstrap.v3.Bootstrap",
        &[
            "node",
            "admin",
            "static_resources",
            "layered_runtime",
            "bootstrap_extensions",
            "stats_config",
            "stats_flush_interval",
            // (istio-agent's bootstrap: the log line format, connection limits it leaves
            // unlimited, outlier event logs and deferred stats; none changes what is served)
            "application_log_config",
            "overload_manager",
            "cluster_manager",
            "deferred_stat_options",
        ],
    ),
    (
        "envoy.config.bootstrap.v3.Bootstrap.ApplicationLogConfig",
        &["log_format"],
    ),
    (
        "envoy.config.bootstrap.v3.ClusterManager",
        &["outlier_detection", "enable_deferred_cluster_creation"],
    ),
    (
        "envoy.config.metrics.v3.StatsConfig",
        &["stats_tags", "use_all_default_tags", "stats_matcher"],
    ),
    ("envoy.config.metrics.v3.StatsMatcher", &["*"]),
    (
        "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager.SetCurrentClientCertDetails",
        &["*"],
    ),
    ("envoy.config.metrics.v3.TagSpecifier", &["*"]),
    ("envoy.config.bootstrap.v3.LayeredRuntime", &["*"]),
    (
        "envoy.config.core.v3.TypedExtensionConfig",
        &["name", "typed_config"],
    ),
    (
        "envoy.config.core.v3.Node",
        &["id", "cluster", "metadata", "locality", "user_agent_name"],
    ),
    (
        "envoy.config.bootstrap.v3.Admin",
        &["address", "access_log_path", "access_log", "profile_path"],
    ),
    (
        "envoy.config.bootstrap.v3.Bootstrap.StaticResources",
        &["listeners", "clusters"],
    ),
    // (`pipe`: istio-agent's ADS and SDS Unix sockets; an HTTP cluster leaves such endpoints
    // out with a warning)
    ("envoy.config.core.v3.Address", &["socket_address", "pipe"]),
    (
        "envoy.config.core.v3.SocketAddress",
        &["address", "port_value", "protocol", "ipv4_compat"],
    ),
    (
        "envoy.config.listener.v3.Listener",
        &[
            "name",
            "address",
            "filter_chains",
            "per_connection_buffer_limit_bytes",
            "traffic_direction",
            "listener_filters",
            "stat_prefix",
            "default_filter_chain",
            "metadata",
            // (istiod: no timeout for listener filters; tls_inspector is the only one here)
            "listener_filters_timeout",
            "continue_on_listener_filters_timeout",
        ],
    ),
    (
        "envoy.config.listener.v3.ListenerFilter",
        &["name", "typed_config"],
    ),
    (
        "envoy.config.listener.v3.FilterChain",
        &[
            "filters",
            "transport_socket",
            "name",
            "filter_chain_match",
            "metadata",
        ],
    ),
    (
        "envoy.config.listener.v3.FilterChainMatch",
        &[
            "destination_port",
            "prefix_ranges",
            "server_names",
            "transport_protocol",
            "application_protocols",
        ],
    ),
    (
        "envoy.config.core.v3.CidrRange",
        &["address_prefix", "prefix_len"],
    ),
    ("envoy.config.listener.v3.Filter", &["name", "typed_config"]),
    (
        "envoy.config.core.v3.TransportSocket",
        &["name", "typed_config"],
    ),
    (
        "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
        &["common_tls_context", "require_client_certificate"],
    ),
    (
        "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
        &["common_tls_context", "sni"],
    ),
    (
        "envoy.extensions.transport_sockets.tls.v3.CommonTlsContext",
        &["tls_certificates", "validation_context", "alpn_protocols"],
    ),
    (
        "envoy.extensions.transport_sockets.tls.v3.TlsCertificate",
        &["certificate_chain", "private_key"],
    ),
    (
        "envoy.extensions.transport_sockets.tls.v3.CertificateValidationContext",
        &["trusted_ca"],
    ),
    (
        "envoy.config.core.v3.DataSource",
        &["filename", "inline_string", "inline_bytes"],
    ),
    (
        "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        &[
            "codec_type",
            "stat_prefix",
            "route_config",
            "http_filters",
            "access_log",
            "generate_request_id",
            "preserve_external_request_id",
            "always_set_request_id_in_response",
            "server_name",
            "use_remote_address",
            "forward_client_cert_details",
            "set_current_client_cert_details",
            // istiod sets these on every connection manager
            "normalize_path",
            "path_with_escaped_slashes_action",
            "stream_idle_timeout",
            "request_id_extension",
            "tracing",
            "http_protocol_options",
            "upgrade_configs",
        ],
    ),
    (
        "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager.Tracing",
        &[
            "client_sampling",
            "random_sampling",
            "overall_sampling",
            "custom_tags",
            "max_path_tag_length",
            "verbose",
        ],
    ),
    (
        "envoy.extensions.request_id.uuid.v3.UuidRequestIdConfig",
        &["pack_trace_reason", "use_request_id_for_trace_sampling"],
    ),
    (
        "envoy.extensions.filters.network.http_connection_manager.v3.HttpFilter",
        &["name", "typed_config"],
    ),
    (
        "envoy.config.route.v3.RouteConfiguration",
        &[
            "name",
            "virtual_hosts",
            "request_headers_to_add",
            "request_headers_to_remove",
            "response_headers_to_add",
            "response_headers_to_remove",
            "validate_clusters",
            "ignore_port_in_host_matching",
            "max_direct_response_body_size_bytes",
        ],
    ),
    (
        "envoy.config.route.v3.VirtualHost",
        &[
            "name",
            "metadata",
            "include_request_attempt_count",
            "domains",
            "routes",
            "request_headers_to_add",
            "request_headers_to_remove",
            "response_headers_to_add",
            "response_headers_to_remove",
        ],
    ),
    (
        "envoy.config.route.v3.Route",
        &[
            "name",
            "match",
            "route",
            "direct_response",
            "request_headers_to_add",
            "request_headers_to_remove",
            "response_headers_to_add",
            "response_headers_to_remove",
            "redirect",
            "metadata",
            // (tracing only: the span's operation name)
            "decorator",
        ],
    ),
    ("envoy.config.core.v3.Metadata", &["filter_metadata"]),
    (
        "envoy.config.route.v3.RedirectAction",
        &[
            "https_redirect",
            "scheme_redirect",
            "host_redirect",
            "port_redirect",
            "path_redirect",
            "prefix_rewrite",
            "response_code",
            "strip_query",
        ],
    ),
    (
        "envoy.config.core.v3.HeaderValueOption",
        &["header", "append", "append_action", "keep_empty_value"],
    ),
    ("envoy.config.core.v3.HeaderValue", &["key", "value"]),
    (
        "envoy.config.route.v3.RouteMatch",
        &["prefix", "path", "safe_regex", "headers", "case_sensitive"],
    ),
    (
        "envoy.type.matcher.v3.RegexMatcher",
        &["regex", "google_re2"],
    ),
    ("envoy.type.matcher.v3.RegexMatcher.GoogleRE2", &["*"]),
    (
        "envoy.config.route.v3.HeaderMatcher",
        &[
            "name",
            "string_match",
            "present_match",
            "invert_match",
            "exact_match",
            "prefix_match",
            "suffix_match",
            "contains_match",
            "safe_regex_match",
        ],
    ),
    (
        "envoy.type.matcher.v3.StringMatcher",
        &[
            "exact",
            "prefix",
            "suffix",
            "contains",
            "safe_regex",
            "ignore_case",
        ],
    ),
    (
        "envoy.config.route.v3.RouteAction",
        &[
            "cluster",
            "weighted_clusters",
            "prefix_rewrite",
            "host_rewrite_literal",
            "timeout",
            "retry_policy",
            "max_grpc_timeout",
        ],
    ),
    (
        "envoy.config.route.v3.WeightedCluster",
        &["clusters", "total_weight"],
    ),
    (
        "envoy.config.route.v3.WeightedCluster.ClusterWeight",
        &[
            "name",
            "weight",
            "request_headers_to_add",
            "request_headers_to_remove",
        ],
    ),
    (
        "envoy.config.route.v3.RetryPolicy",
        &[
            "retry_on",
            "num_retries",
            "per_try_timeout",
            "retriable_status_codes",
            "retry_host_predicate",
            "host_selection_retry_max_attempts",
        ],
    ),
    (
        "envoy.config.route.v3.DirectResponseAction",
        &["status", "body"],
    ),
    (
        "envoy.config.accesslog.v3.AccessLog",
        &["name", "typed_config"],
    ),
    (
        "envoy.extensions.access_loggers.file.v3.FileAccessLog",
        &["path", "log_format", "format", "json_format"],
    ),
    (
        "envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
        &["log_format"],
    ),
    (
        "envoy.extensions.access_loggers.stream.v3.StderrAccessLog",
        &["log_format"],
    ),
    (
        "envoy.config.core.v3.SubstitutionFormatString",
        &[
            "text_format",
            "text_format_source",
            "json_format",
            "omit_empty_values",
        ],
    ),
    ("envoy.extensions.filters.http.router.v3.Router", &[]),
    (
        "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
        &["stat_prefix", "cluster", "access_log"],
    ),
    (
        "envoy.config.cluster.v3.Cluster",
        &[
            "name",
            "type",
            "connect_timeout",
            "lb_policy",
            "load_assignment",
            "typed_extension_protocol_options",
            "transport_socket",
            "dns_lookup_family",
            "dns_refresh_rate",
            "http2_protocol_options",
            "per_connection_buffer_limit_bytes",
            "metadata",
            "circuit_breakers",
            "common_lb_config",
            "filters",
            "transport_socket_matches",
            "upstream_connection_options",
            // (istio-agent's `xds-grpc` cluster; a warning where a cluster with hosts sets it)
            "max_requests_per_connection",
        ],
    ),
    (
        "envoy.config.cluster.v3.Cluster.CommonLbConfig",
        &["locality_weighted_lb_config"],
    ),
    (
        "envoy.config.endpoint.v3.ClusterLoadAssignment",
        &["cluster_name", "endpoints"],
    ),
    (
        "envoy.config.endpoint.v3.LocalityLbEndpoints",
        &["lb_endpoints", "locality"],
    ),
    ("envoy.config.endpoint.v3.LbEndpoint", &["endpoint"]),
    (
        "envoy.config.endpoint.v3.Endpoint",
        &["address", "hostname"],
    ),
    (
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        &[
            "explicit_http_config",
            "use_downstream_protocol_config",
            "common_http_protocol_options",
        ],
    ),
    (
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions.UseDownstreamHttpConfig",
        &["http_protocol_options", "http2_protocol_options"],
    ),
    (
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions.ExplicitHttpConfig",
        &["http_protocol_options", "http2_protocol_options"],
    ),
    ("envoy.config.core.v3.Http1ProtocolOptions", &[]),
    (
        "envoy.config.core.v3.HttpProtocolOptions",
        &["idle_timeout"],
    ),
    (
        "envoy.config.core.v3.Http2ProtocolOptions",
        &[
            "max_concurrent_streams",
            "initial_stream_window_size",
            "initial_connection_window_size",
        ],
    ),
];

fn supported(type_name: &str) -> Option<&'static [&'static str]> {
    SUPPORTED
        .iter()
        .find(|(n, _)| *n == type_name)
        .map(|(_, f)| *f)
}

/// Checks `msg` (a message of the Envoy API) at `path`; `Any` fields are left to whoever
/// decodes them (see [`check_any`]).
pub fn check_message<M: prost::Message>(
    msg: &M,
    type_name: &str,
    path: &str,
) -> Result<(), ConfigError> {
    let desc = wasmesh_xds::descriptor_pool()
        .get_message_by_name(type_name)
        .ok_or_else(|| ConfigError::invalid(path, format!("unknown message type {type_name}")))?;
    let dynamic = DynamicMessage::decode(desc, msg.encode_to_vec().as_slice())
        .map_err(|e| ConfigError::invalid(path, e))?;
    walk(&dynamic, path)
}

/// Checks the message inside an `Any` at `path` (e.g. `...filters[0].typed_config`).
pub fn check_any(any: &Any, path: &str) -> Result<(), ConfigError> {
    let type_name = any.type_url.rsplit('/').next().unwrap_or_default();
    let desc = wasmesh_xds::descriptor_pool()
        .get_message_by_name(type_name)
        .ok_or_else(|| ConfigError::invalid(path, format!("unknown type {:?}", any.type_url)))?;
    let dynamic = DynamicMessage::decode(desc, any.value.as_slice())
        .map_err(|e| ConfigError::invalid(path, e))?;
    walk(&dynamic, path)
}

fn walk(msg: &DynamicMessage, path: &str) -> Result<(), ConfigError> {
    let desc = msg.descriptor();
    let name = desc.full_name();
    if name == "google.protobuf.Any" {
        return Ok(());
    }
    let Some(allowed) = supported(name) else {
        return Ok(());
    };
    if allowed.contains(&"*") {
        return Ok(());
    }
    for (field, value) in msg.fields() {
        let fpath = if path.is_empty() {
            field.name().to_string()
        } else {
            format!("{path}.{}", field.name())
        };
        if !allowed.contains(&field.name()) {
            return Err(ConfigError::unsupported(
                fpath,
                format!("field of {name} not implemented by wasmesh"),
            ));
        }
        walk_value(value, &fpath)?;
    }
    Ok(())
}

fn walk_value(value: &Value, path: &str) -> Result<(), ConfigError> {
    match value {
        Value::Message(m) => walk(m, path),
        Value::List(items) => {
            for (i, v) in items.iter().enumerate() {
                walk_value(v, &format!("{path}[{i}]"))?;
            }
            Ok(())
        }
        Value::Map(map) => {
            for (k, v) in map {
                let key = match k {
                    MapKey::String(s) => s.clone(),
                    other => format!("{other:?}"),
                };
                walk_value(v, &format!("{path}[{key:?}]"))?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::bootstrap::parse;

    #[test]
    fn names_the_unsupported_field() {
        let b = parse(
            r#"
static_resources:
  clusters:
  - name: c
    type: STATIC
    outlier_detection: {}
"#,
        )
        .unwrap();
        let err = check_message(&b, "envoy.config.bootstrap.v3.Bootstrap", "")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("static_resources.clusters[0].outlier_detection"),
            "{err}"
        );
    }
}
