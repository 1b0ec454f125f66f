//! Envoy substitution formats for access logs (`log_format.text_format_source`,
//! `json_format`, the deprecated `format`/`text_format`): the commands operators use most.

use std::fmt::Write as _;

use http::HeaderMap;

use crate::config::ConfigError;
use crate::filter::StreamInfo;
use crate::response_flags::ResponseFlags;

/// One piece of a format string.
#[derive(Debug, Clone)]
pub enum Part {
    /// Literal text.
    Lit(String),
    /// A `%COMMAND%`, with an optional `:N` length limit.
    Cmd(Cmd, Option<usize>),
}

/// A supported command.
#[derive(Debug, Clone)]
pub enum Cmd {
    /// `%START_TIME%`
    StartTime,
    /// `%REQ(A?B)%` (pseudo-headers `:method`, `:path`, `:authority`, `:scheme` included).
    Req(String, Option<String>),
    /// `%RESP(A?B)%`
    Resp(String, Option<String>),
    /// `%PROTOCOL%`
    Protocol,
    /// `%RESPONSE_CODE%`
    ResponseCode,
    /// `%RESPONSE_CODE_DETAILS%` (whitespace as `_`), or with `(ALLOW_WHITESPACES)` as is.
    ResponseCodeDetails {
        /// `ALLOW_WHITESPACES`.
        allow_whitespace: bool,
    },
    /// `%RESPONSE_FLAGS%`
    ResponseFlags,
    /// `%RESPONSE_FLAGS_LONG%`: `NoHealthyUpstream,UpstreamRetryLimitExceeded`.
    ResponseFlagsLong,
    /// `%BYTES_RECEIVED%`
    BytesReceived,
    /// `%BYTES_SENT%`
    BytesSent,
    /// `%DURATION%`
    Duration,
    /// `%UPSTREAM_HOST%`
    UpstreamHost,
    /// `%UPSTREAM_CLUSTER%` and `%UPSTREAM_CLUSTER_RAW%` (no `alt_stat_name` here).
    UpstreamCluster,
    /// `%UPSTREAM_LOCAL_ADDRESS%`
    UpstreamLocal,
    /// `%UPSTREAM_LOCAL_ADDRESS_WITHOUT_PORT%`
    UpstreamLocalNoPort,
    /// `%UPSTREAM_TRANSPORT_FAILURE_REASON%` (spaces as `_`).
    UpstreamTransportFailureReason,
    /// `%UPSTREAM_REQUEST_ATTEMPT_COUNT%`
    UpstreamRequestAttemptCount,
    /// `%FILTER_CHAIN_NAME%`
    FilterChainName,
    /// `%VIRTUAL_CLUSTER_NAME%`: never set (no virtual clusters here).
    VirtualClusterName,
    /// `%HOSTNAME%`: the host's name, read once when the format is built.
    Hostname(Option<String>),
    /// `%ROUTE_NAME%`
    RouteName,
    /// `%DOWNSTREAM_REMOTE_ADDRESS%`
    DownstreamRemote,
    /// `%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%`
    DownstreamRemoteNoPort,
    /// `%DOWNSTREAM_LOCAL_ADDRESS%`
    DownstreamLocal,
    /// `%DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT%`
    DownstreamLocalNoPort,
    /// `%REQUESTED_SERVER_NAME%`
    RequestedServerName,
    /// `%UPSTREAM_SERVICE_TIME%`-like `%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%` is covered by RESP.
    ConnectionTermination,
}

/// Parses a format string, naming `path` in errors.
pub fn parse(fmt: &str, path: &str) -> Result<Vec<Part>, ConfigError> {
    let mut parts = Vec::new();
    let mut rest = fmt;
    while let Some(start) = rest.find('%') {
        let (lit, after) = rest.split_at(start);
        if !lit.is_empty() {
            parts.push(Part::Lit(lit.to_string()));
        }
        let after = after.get(1..).unwrap_or_default();
        if let Some(stripped) = after.strip_prefix('%') {
            parts.push(Part::Lit("%".into()));
            rest = stripped;
            continue;
        }
        let end = after.find('%').ok_or_else(|| {
            ConfigError::invalid(path, format!("unterminated command in {fmt:?}"))
        })?;
        let (cmd, tail) = after.split_at(end);
        parts.push(command(cmd, path)?);
        rest = tail.get(1..).unwrap_or_default();
    }
    if !rest.is_empty() {
        parts.push(Part::Lit(rest.to_string()));
    }
    Ok(parts)
}

fn command(raw: &str, path: &str) -> Result<Part, ConfigError> {
    // NAME, NAME(ARG), NAME(ARG):LEN
    let (body, max) = match raw.rsplit_once("):") {
        Some((b, len)) => (
            format!("{b})"),
            Some(
                len.parse::<usize>()
                    .map_err(|_| ConfigError::invalid(path, format!("bad length in %{raw}%")))?,
            ),
        ),
        None => (raw.to_string(), None),
    };
    let (name, arg) = match body.split_once('(') {
        Some((n, a)) => (n.to_string(), Some(a.trim_end_matches(')').to_string())),
        None => (body.clone(), None),
    };
    let headers = |a: Option<String>| -> Result<(String, Option<String>), ConfigError> {
        let a =
            a.ok_or_else(|| ConfigError::invalid(path, format!("%{raw}% needs a header name")))?;
        Ok(match a.split_once('?') {
            Some((x, y)) => (x.to_ascii_lowercase(), Some(y.to_ascii_lowercase())),
            None => (a.to_ascii_lowercase(), None),
        })
    };
    let cmd = match name.as_str() {
        "START_TIME" => Cmd::StartTime,
        "REQ" => {
            let (a, b) = headers(arg)?;
            Cmd::Req(a, b)
        }
        "RESP" => {
            let (a, b) = headers(arg)?;
            Cmd::Resp(a, b)
        }
        "PROTOCOL" => Cmd::Protocol,
        "RESPONSE_CODE" => Cmd::ResponseCode,
        "RESPONSE_CODE_DETAILS" => Cmd::ResponseCodeDetails {
            allow_whitespace: arg.as_deref() == Some("ALLOW_WHITESPACES"),
        },
        "RESPONSE_FLAGS" => Cmd::ResponseFlags,
        "RESPONSE_FLAGS_LONG" => Cmd::ResponseFlagsLong,
        "BYTES_RECEIVED" => Cmd::BytesReceived,
        "BYTES_SENT" => Cmd::BytesSent,
        "DURATION" => Cmd::Duration,
        "UPSTREAM_HOST" => Cmd::UpstreamHost,
        "UPSTREAM_CLUSTER" | "UPSTREAM_CLUSTER_RAW" => Cmd::UpstreamCluster,
        "UPSTREAM_LOCAL_ADDRESS" => Cmd::UpstreamLocal,
        "UPSTREAM_LOCAL_ADDRESS_WITHOUT_PORT" => Cmd::UpstreamLocalNoPort,
        "UPSTREAM_TRANSPORT_FAILURE_REASON" => Cmd::UpstreamTransportFailureReason,
        "UPSTREAM_REQUEST_ATTEMPT_COUNT" => Cmd::UpstreamRequestAttemptCount,
        "FILTER_CHAIN_NAME" => Cmd::FilterChainName,
        "VIRTUAL_CLUSTER_NAME" => Cmd::VirtualClusterName,
        "HOSTNAME" => Cmd::Hostname(hostname()),
        "ROUTE_NAME" => Cmd::RouteName,
        "DOWNSTREAM_REMOTE_ADDRESS" => Cmd::DownstreamRemote,
        "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT" => Cmd::DownstreamRemoteNoPort,
        "DOWNSTREAM_LOCAL_ADDRESS" => Cmd::DownstreamLocal,
        "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT" => Cmd::DownstreamLocalNoPort,
        "REQUESTED_SERVER_NAME" => Cmd::RequestedServerName,
        "CONNECTION_TERMINATION_DETAILS" => Cmd::ConnectionTermination,
        other => {
            return Err(ConfigError::unsupported(
                path,
                format!("access log command %{other}% (see the README)"),
            ));
        }
    };
    Ok(Part::Cmd(cmd, max))
}

/// What a line is made from.
pub struct LogContext<'a> {
    /// The stream.
    pub info: &'a StreamInfo,
    /// Request method, path and headers as they went upstream.
    pub request: Option<&'a http::request::Parts>,
    /// Response headers as sent downstream.
    pub response: Option<&'a HeaderMap>,
    /// A TCP proxy's connection (no HTTP protocol).
    pub tcp: bool,
}

fn header(map: &HeaderMap, name: &str) -> Option<String> {
    map.get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

fn req_header(req: &http::request::Parts, name: &str) -> Option<String> {
    match name {
        ":method" => Some(req.method.to_string()),
        ":path" => req.uri.path_and_query().map(|p| p.to_string()),
        ":authority" => {
            header(&req.headers, "host").or_else(|| req.uri.authority().map(|a| a.to_string()))
        }
        ":scheme" => req
            .uri
            .scheme_str()
            .map(str::to_string)
            .or(Some("http".into())),
        n => header(&req.headers, n),
    }
}

/// The host's name (Envoy's `gethostname`), for `%HOSTNAME%`.
fn hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
}

/// Envoy's long response flag names (`ResponseFlagUtils`), in the order it prints them.
const LONG_FLAGS: [(ResponseFlags, &str); 16] = [
    (
        ResponseFlags::FAILED_LOCAL_HEALTH_CHECK,
        "FailedLocalHealthCheck",
    ),
    (ResponseFlags::NO_HEALTHY_UPSTREAM, "NoHealthyUpstream"),
    (
        ResponseFlags::UPSTREAM_REQUEST_TIMEOUT,
        "UpstreamRequestTimeout",
    ),
    (ResponseFlags::LOCAL_RESET, "LocalReset"),
    (ResponseFlags::UPSTREAM_REMOTE_RESET, "UpstreamRemoteReset"),
    (
        ResponseFlags::UPSTREAM_CONNECTION_FAILURE,
        "UpstreamConnectionFailure",
    ),
    (
        ResponseFlags::UPSTREAM_CONNECTION_TERMINATION,
        "UpstreamConnectionTermination",
    ),
    (ResponseFlags::UPSTREAM_OVERFLOW, "UpstreamOverflow"),
    (ResponseFlags::NO_ROUTE_FOUND, "NoRouteFound"),
    (ResponseFlags::RATE_LIMITED, "RateLimited"),
    (
        ResponseFlags::DOWNSTREAM_CONNECTION_TERMINATION,
        "DownstreamConnectionTermination",
    ),
    (
        ResponseFlags::UPSTREAM_RETRY_LIMIT_EXCEEDED,
        "UpstreamRetryLimitExceeded",
    ),
    (ResponseFlags::STREAM_IDLE_TIMEOUT, "StreamIdleTimeout"),
    (
        ResponseFlags::DOWNSTREAM_PROTOCOL_ERROR,
        "DownstreamProtocolError",
    ),
    (
        ResponseFlags::UPSTREAM_PROTOCOL_ERROR,
        "UpstreamProtocolError",
    ),
    (ResponseFlags::NO_CLUSTER_FOUND, "NoClusterFound"),
];

/// `%RESPONSE_FLAGS_LONG%`: the long names joined with `,`, or `-` without flags.
pub fn long_flags(flags: ResponseFlags) -> String {
    let names: Vec<&str> = LONG_FLAGS
        .iter()
        .filter(|(f, _)| flags.contains(*f))
        .map(|(_, n)| *n)
        .collect();
    if names.is_empty() {
        "-".to_string()
    } else {
        names.join(",")
    }
}

/// A string that Envoy treats as unset when empty.
fn non_empty(v: Option<&str>) -> Option<String> {
    v.filter(|s| !s.is_empty()).map(str::to_string)
}

/// The value of a command. `None` is unset and prints as `-` (text) or `null` (JSON); a set
/// value prints as it is, even empty, as in Envoy (a header present with an empty value, a
/// plugin's local reply with empty details).
pub fn value(cmd: &Cmd, cx: &LogContext<'_>) -> Option<String> {
    let info = cx.info;
    let no_port = |a: std::net::SocketAddr| a.ip().to_string();
    match cmd {
        Cmd::StartTime => Some(super::format_start_time(info.start_time)),
        Cmd::Req(a, b) => cx
            .request
            .and_then(|r| req_header(r, a).or_else(|| b.as_ref().and_then(|b| req_header(r, b)))),
        Cmd::Resp(a, b) => cx
            .response
            .and_then(|r| header(r, a).or_else(|| b.as_ref().and_then(|b| header(r, b)))),
        Cmd::Protocol if cx.tcp => None,
        Cmd::Protocol => Some(super::protocol(info.protocol).to_string()),
        Cmd::ResponseCode => Some(info.response_code.unwrap_or(0).to_string()),
        Cmd::ResponseCodeDetails { allow_whitespace } => {
            info.response_code_details.as_deref().map(|d| {
                if *allow_whitespace {
                    d.to_string()
                } else {
                    d.replace(char::is_whitespace, "_")
                }
            })
        }
        Cmd::ResponseFlags => Some(info.response_flags.to_string()),
        Cmd::ResponseFlagsLong => Some(long_flags(info.response_flags)),
        Cmd::BytesReceived => Some(info.bytes_received.to_string()),
        Cmd::BytesSent => Some(info.bytes_sent.to_string()),
        Cmd::Duration => info.duration.map(|d| d.as_millis().to_string()),
        Cmd::UpstreamHost => info.upstream_host.map(|a| a.to_string()),
        Cmd::UpstreamCluster => non_empty(info.cluster_name.as_deref()),
        Cmd::UpstreamLocal => info.upstream_local_addr.map(|a| a.to_string()),
        Cmd::UpstreamLocalNoPort => info.upstream_local_addr.map(no_port),
        Cmd::UpstreamTransportFailureReason => {
            non_empty(info.upstream_transport_failure_reason.as_deref())
                .map(|r| r.replace(' ', "_"))
        }
        Cmd::UpstreamRequestAttemptCount => Some(info.attempt_count.to_string()),
        Cmd::FilterChainName => non_empty(info.filter_chain_name.as_deref()),
        Cmd::VirtualClusterName => None,
        Cmd::Hostname(h) => h.clone(),
        Cmd::RouteName => non_empty(info.route_name.as_deref()),
        Cmd::DownstreamRemote => Some(info.downstream_remote_addr.to_string()),
        Cmd::DownstreamRemoteNoPort => Some(no_port(info.downstream_remote_addr)),
        Cmd::DownstreamLocal => Some(info.downstream_local_addr.to_string()),
        Cmd::DownstreamLocalNoPort => Some(no_port(info.downstream_local_addr)),
        Cmd::RequestedServerName => non_empty(info.requested_server_name.as_deref()),
        Cmd::ConnectionTermination => None,
    }
}

fn truncate(mut s: String, max: Option<usize>) -> String {
    if let Some(m) = max
        && s.len() > m
    {
        let mut cut = m;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

/// Renders text parts (`-` for missing values).
pub fn render_text(parts: &[Part], cx: &LogContext<'_>) -> String {
    let mut out = String::new();
    for p in parts {
        match p {
            Part::Lit(l) => out.push_str(l),
            Part::Cmd(c, max) => match value(c, cx) {
                Some(v) => out.push_str(&truncate(v, *max)),
                None => out.push('-'),
            },
        }
    }
    out
}

/// A `json_format` value: a format string, a literal (number, bool, null), or a nested
/// struct or list of them.
#[derive(Debug, Clone)]
pub enum JsonTemplate {
    /// A string: substitution format.
    Format(Vec<Part>),
    /// A number, bool or null: printed as it is.
    Literal(serde_json::Value),
    /// A nested struct (keys sorted, as Envoy prints them).
    Object(Vec<(String, JsonTemplate)>),
    /// A list.
    List(Vec<JsonTemplate>),
}

/// Builds a `json_format` struct, naming `path` in errors.
pub fn json_template(
    st: &envoy_types::pb::google::protobuf::Struct,
    path: &str,
) -> Result<Vec<(String, JsonTemplate)>, ConfigError> {
    let mut keys: Vec<&String> = st.fields.keys().collect();
    keys.sort();
    keys.into_iter()
        .map(|k| {
            let v = json_value(st.fields.get(k), &format!("{path}.{k}"))?;
            Ok((k.clone(), v))
        })
        .collect()
}

fn json_value(
    v: Option<&envoy_types::pb::google::protobuf::Value>,
    path: &str,
) -> Result<JsonTemplate, ConfigError> {
    use envoy_types::pb::google::protobuf::value::Kind;
    Ok(match v.and_then(|v| v.kind.as_ref()) {
        Some(Kind::StringValue(s)) => JsonTemplate::Format(parse(s, path)?),
        Some(Kind::NumberValue(n)) => JsonTemplate::Literal(number(*n)),
        Some(Kind::BoolValue(b)) => JsonTemplate::Literal(serde_json::Value::Bool(*b)),
        Some(Kind::NullValue(_)) | None => JsonTemplate::Literal(serde_json::Value::Null),
        Some(Kind::StructValue(st)) => JsonTemplate::Object(json_template(st, path)?),
        Some(Kind::ListValue(l)) => JsonTemplate::List(
            l.values
                .iter()
                .enumerate()
                .map(|(i, v)| json_value(Some(v), &format!("{path}[{i}]")))
                .collect::<Result<_, _>>()?,
        ),
    })
}

/// A protobuf number as JSON: integral values without a fraction, as Envoy prints them.
fn number(n: f64) -> serde_json::Value {
    const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53
    if n.fract() == 0.0 && n.abs() < EXACT {
        // In range and integral: the conversion is exact.
        #[allow(
            clippy::cast_possible_truncation,
            reason = "checked integral and in range"
        )]
        serde_json::Value::from(n as i64)
    } else {
        serde_json::Number::from_f64(n).map_or(serde_json::Value::Null, serde_json::Value::Number)
    }
}

fn render_value(t: &JsonTemplate, omit_empty: bool, cx: &LogContext<'_>) -> serde_json::Value {
    match t {
        JsonTemplate::Format(parts) => match parts.as_slice() {
            [Part::Cmd(c, max)] => match value(c, cx) {
                None => serde_json::Value::Null,
                Some(v) => {
                    let numeric = matches!(
                        c,
                        Cmd::ResponseCode
                            | Cmd::BytesReceived
                            | Cmd::BytesSent
                            | Cmd::Duration
                            | Cmd::UpstreamRequestAttemptCount
                    );
                    match v.parse::<u64>() {
                        Ok(n) if numeric => serde_json::Value::from(n),
                        _ => serde_json::Value::String(truncate(v, *max)),
                    }
                }
            },
            _ => serde_json::Value::String(render_text(parts, cx)),
        },
        JsonTemplate::Literal(v) => v.clone(),
        JsonTemplate::Object(entries) => render_object(entries, omit_empty, cx),
        JsonTemplate::List(items) => serde_json::Value::Array(
            items
                .iter()
                .map(|t| render_value(t, omit_empty, cx))
                .collect(),
        ),
    }
}

fn render_object(
    entries: &[(String, JsonTemplate)],
    omit_empty: bool,
    cx: &LogContext<'_>,
) -> serde_json::Value {
    let mut map = serde_json::Map::new();
    for (k, t) in entries {
        let v = render_value(t, omit_empty, cx);
        if omit_empty && v.is_null() {
            continue;
        }
        map.insert(k.clone(), v);
    }
    serde_json::Value::Object(map)
}

/// Renders a JSON format: one key per entry; a value that is a single numeric command is a JSON
/// number, an unset single command is `null` (or omitted with `omit_empty_values`), literals
/// pass through and nested structs and lists are rendered alike.
pub fn render_json(
    entries: &[(String, JsonTemplate)],
    omit_empty: bool,
    cx: &LogContext<'_>,
) -> String {
    let mut line = render_object(entries, omit_empty, cx).to_string();
    let _ = writeln!(line);
    line
}
