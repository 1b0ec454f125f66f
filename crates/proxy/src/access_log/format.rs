//! Envoy substitution formats for access logs (`log_format.text_format_source`,
//! `json_format`, the deprecated `format`/`text_format`): the commands operators use most.

use std::fmt::Write as _;

use http::HeaderMap;

use crate::config::ConfigError;
use crate::filter::StreamInfo;

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
    /// `%RESPONSE_CODE_DETAILS%`
    ResponseCodeDetails,
    /// `%RESPONSE_FLAGS%`
    ResponseFlags,
    /// `%BYTES_RECEIVED%`
    BytesReceived,
    /// `%BYTES_SENT%`
    BytesSent,
    /// `%DURATION%`
    Duration,
    /// `%UPSTREAM_HOST%`
    UpstreamHost,
    /// `%UPSTREAM_CLUSTER%`
    UpstreamCluster,
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
        "RESPONSE_CODE_DETAILS" => Cmd::ResponseCodeDetails,
        "RESPONSE_FLAGS" => Cmd::ResponseFlags,
        "BYTES_RECEIVED" => Cmd::BytesReceived,
        "BYTES_SENT" => Cmd::BytesSent,
        "DURATION" => Cmd::Duration,
        "UPSTREAM_HOST" => Cmd::UpstreamHost,
        "UPSTREAM_CLUSTER" => Cmd::UpstreamCluster,
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

/// The value of a command; `None` prints as `-` (text) or `null` (JSON).
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
        Cmd::ResponseCodeDetails => info.response_code_details.as_deref().map(str::to_string),
        Cmd::ResponseFlags => Some(info.response_flags.to_string()),
        Cmd::BytesReceived => Some(info.bytes_received.to_string()),
        Cmd::BytesSent => Some(info.bytes_sent.to_string()),
        Cmd::Duration => info.duration.map(|d| d.as_millis().to_string()),
        Cmd::UpstreamHost => info.upstream_host.map(|a| a.to_string()),
        Cmd::UpstreamCluster => info.cluster_name.as_deref().map(str::to_string),
        Cmd::RouteName => info.route_name.as_deref().map(str::to_string),
        Cmd::DownstreamRemote => Some(info.downstream_remote_addr.to_string()),
        Cmd::DownstreamRemoteNoPort => Some(no_port(info.downstream_remote_addr)),
        Cmd::DownstreamLocal => Some(info.downstream_local_addr.to_string()),
        Cmd::DownstreamLocalNoPort => Some(no_port(info.downstream_local_addr)),
        Cmd::RequestedServerName => info.requested_server_name.clone(),
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
                Some(v) if !v.is_empty() => out.push_str(&truncate(v, *max)),
                _ => out.push('-'),
            },
        }
    }
    out
}

/// Renders a JSON format: one key per entry; a value that is a single numeric command is a JSON
/// number, a missing single command is `null` (or omitted with `omit_empty_values`).
pub fn render_json(
    entries: &[(String, Vec<Part>)],
    omit_empty: bool,
    cx: &LogContext<'_>,
) -> String {
    let mut map = serde_json::Map::new();
    for (k, parts) in entries {
        let v = match parts.as_slice() {
            [Part::Cmd(c, max)] => match value(c, cx).filter(|v| !v.is_empty()) {
                None => serde_json::Value::Null,
                Some(v) => {
                    let numeric = matches!(
                        c,
                        Cmd::ResponseCode | Cmd::BytesReceived | Cmd::BytesSent | Cmd::Duration
                    );
                    match v.parse::<u64>() {
                        Ok(n) if numeric => serde_json::Value::from(n),
                        _ => serde_json::Value::String(truncate(v, *max)),
                    }
                }
            },
            _ => serde_json::Value::String(render_text(parts, cx)),
        };
        if omit_empty && v.is_null() {
            continue;
        }
        map.insert(k.clone(), v);
    }
    let mut line = serde_json::Value::Object(map).to_string();
    let _ = writeln!(line);
    line
}
