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
    /// `%UPSTREAM_CLUSTER%` and `%UPSTREAM_CLUSTER_RAW%` (no `alt_stat_name` here).
    UpstreamCluster,
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
    /// `%REQUESTED_SERVER_NAME%`
    RequestedServerName,
    /// `%CONNECTION_TERMINATION_DETAILS%`: never set here.
    ConnectionTermination,
    /// `%TRAILER(A?B)%` (and its alias `%RESPONSE_TRAILER(A?B)%`).
    Trailer(String, Option<String>),
    /// An address: `%DOWNSTREAM_DIRECT_REMOTE_ADDRESS%`, `%UPSTREAM_REMOTE_PORT%`, ...
    Addr(Addr, AddrForm),
    /// A time from the stream's start: `%REQUEST_DURATION%` and the like.
    Timing(Timing),
    /// `%START_TIME_LOCAL%`, `%EMIT_TIME%`, `%EMIT_TIME_LOCAL%`: (emit time, UTC offset in
    /// seconds if local).
    Time {
        /// The time the line is written instead of the stream's start.
        emit: bool,
        /// The local zone's offset (known when the format is built).
        offset: Option<i32>,
    },
    /// `%UNIQUE_ID%`: a new v4 UUID per line.
    UniqueId,
    /// `%STREAM_ID%`: the request id.
    StreamId,
    /// `%ENVIRONMENT(X)%`: read once, `-` if unset (a string, also in JSON).
    Environment(String),
    /// `%GRPC_STATUS(CAMEL_STRING|SNAKE_STRING|NUMBER)%`, `%GRPC_STATUS_NUMBER%`.
    GrpcStatus(GrpcForm),
    /// `%DYNAMIC_METADATA(NS:KEY...)%`: no filter here writes dynamic metadata, so unset.
    DynamicMetadata,
    /// `%FILTER_STATE(KEY)%` / `%FILTER_STATE(KEY:PLAIN)%` / `(KEY:TYPED)`: Wasm plugins' filter
    /// state (`wasm.<path>`), a bytes value.
    FilterState(Vec<u8>, bool),
    /// `%REQUEST_HEADERS_BYTES%`, `%RESPONSE_HEADERS_BYTES%`, `%RESPONSE_TRAILERS_BYTES%`.
    HeaderBytes(HeaderBytes),
    /// A fact of the downstream TLS connection (`%DOWNSTREAM_TLS_VERSION%`, ...).
    Tls(TlsFact),
}

/// Whose address a command prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Addr {
    /// The client (no PROXY protocol or `x-forwarded-for` rewriting here: also the direct one).
    DownstreamRemote,
    /// The listener's address.
    DownstreamLocal,
    /// The upstream host picked.
    UpstreamHost,
    /// The upstream connection's peer (set once connected).
    UpstreamRemote,
    /// The upstream connection's local address.
    UpstreamLocal,
}

/// How an address prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddrForm {
    /// `1.2.3.4:80`
    WithPort,
    /// `1.2.3.4`
    NoPort,
    /// `80` (a number in JSON).
    Port,
}

/// A duration of the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timing {
    /// To the last request byte from downstream.
    Request,
    /// To the last request byte sent upstream.
    RequestTx,
    /// To the first upstream response byte.
    Response,
    /// From the first upstream response byte to the last byte sent downstream.
    ResponseTx,
}

/// How `%GRPC_STATUS%` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrpcForm {
    /// `Unavailable`
    Camel,
    /// `UNAVAILABLE`
    Snake,
    /// `14` (a number in JSON).
    Number,
}

/// Which headers `%..._BYTES%` measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderBytes {
    /// The request headers.
    Request,
    /// The response headers.
    Response,
    /// The response trailers.
    Trailers,
}

/// A downstream TLS fact.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsFact {
    /// `TLSv1.3`
    Version,
    /// The client certificate's URI SAN (the first: a SPIFFE certificate has one).
    PeerUriSan,
    /// The client certificate's subject.
    PeerSubject,
    /// The client certificate's SHA-256.
    PeerFingerprint256,
    /// The listener certificate's URI SAN (the first).
    LocalUriSan,
    /// The listener certificate's subject.
    LocalSubject,
}

/// Parses a format string, naming `path` in errors. A command is Envoy's
/// `%NAME%`, `%NAME(ARG)%` or either with `:LEN`; the argument may hold `%` but not `)`.
pub fn parse(fmt: &str, path: &str) -> Result<Vec<Part>, ConfigError> {
    let mut parts = Vec::new();
    let mut lit = String::new();
    let mut rest = fmt;
    while let Some(start) = rest.find('%') {
        lit.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        if let Some(stripped) = after.strip_prefix('%') {
            lit.push('%');
            rest = stripped;
            continue;
        }
        let Some(len) = command_len(after) else {
            return Err(ConfigError::invalid(
                path,
                format!(
                    "no valid command at position {start} of {fmt:?} (write a literal % as %%)"
                ),
            ));
        };
        if !lit.is_empty() {
            parts.push(Part::Lit(std::mem::take(&mut lit)));
        }
        parts.push(command(&after[..len], path)?);
        rest = &after[len + 1..];
    }
    lit.push_str(rest);
    if !lit.is_empty() {
        parts.push(Part::Lit(lit));
    }
    Ok(parts)
}

/// The length of `NAME[(ARG)][:LEN]` at the start of `s`, if a `%` follows it.
fn command_len(s: &str) -> Option<usize> {
    let b = s.as_bytes();
    let mut i = b
        .iter()
        .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || **c == b'_')
        .count();
    if i == 0 {
        return None;
    }
    if b.get(i) == Some(&b'(') {
        i += s[i..].find(')')? + 1;
    }
    if b.get(i) == Some(&b':') {
        let digits = b[i + 1..].iter().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 {
            return None;
        }
        i += 1 + digits;
    }
    (b.get(i) == Some(&b'%')).then_some(i)
}

fn command(raw: &str, path: &str) -> Result<Part, ConfigError> {
    // NAME, NAME(ARG), NAME(ARG):LEN, NAME:LEN
    let (body, max) = match raw
        .rsplit_once(':')
        .filter(|(b, _)| !b.contains('(') || b.ends_with(')'))
    {
        Some((b, len)) if !len.is_empty() && len.bytes().all(|c| c.is_ascii_digit()) => (
            b,
            Some(
                len.parse::<usize>()
                    .map_err(|_| ConfigError::invalid(path, format!("bad length in %{raw}%")))?,
            ),
        ),
        _ => (raw, None),
    };
    let (name, arg) = match body.split_once('(') {
        Some((n, a)) => (n, Some(a.strip_suffix(')').unwrap_or(a).to_string())),
        None => (body, None),
    };
    let bad = |why: &str| ConfigError::invalid(path, format!("%{raw}%: {why}"));
    let headers = |a: Option<String>| -> Result<(String, Option<String>), ConfigError> {
        let a = a.ok_or_else(|| bad("needs a header name"))?;
        Ok(match a.split_once('?') {
            Some((x, y)) => (x.to_ascii_lowercase(), Some(y.to_ascii_lowercase())),
            None => (a.to_ascii_lowercase(), None),
        })
    };
    let no_arg = || match arg.as_deref() {
        None | Some("") => Ok(()),
        Some(_) => Err(ConfigError::unsupported(
            path,
            format!("access log command %{raw}% with a time format (only the default is)"),
        )),
    };
    use Addr as A;
    use AddrForm as F;
    let cmd = match name {
        "START_TIME" => {
            no_arg()?;
            Cmd::StartTime
        }
        "START_TIME_LOCAL" | "EMIT_TIME" | "EMIT_TIME_LOCAL" => {
            no_arg()?;
            let offset = if name.ends_with("_LOCAL") {
                Some(local_offset().ok_or_else(|| {
                    ConfigError::unsupported(
                        path,
                        format!(
                            "access log command %{name}% on a host whose local time zone has \
                             daylight saving (use %START_TIME%, UTC, or set TZ=UTC)"
                        ),
                    )
                })?)
            } else {
                None
            };
            Cmd::Time {
                emit: name.starts_with("EMIT"),
                offset,
            }
        }
        "REQ" => {
            let (a, b) = headers(arg)?;
            Cmd::Req(a, b)
        }
        "RESP" => {
            let (a, b) = headers(arg)?;
            Cmd::Resp(a, b)
        }
        "TRAILER" | "RESPONSE_TRAILER" => {
            let (a, b) = headers(arg)?;
            Cmd::Trailer(a, b)
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
        "REQUEST_DURATION" => Cmd::Timing(Timing::Request),
        "REQUEST_TX_DURATION" => Cmd::Timing(Timing::RequestTx),
        "RESPONSE_DURATION" => Cmd::Timing(Timing::Response),
        "RESPONSE_TX_DURATION" => Cmd::Timing(Timing::ResponseTx),
        "UPSTREAM_HOST" => Cmd::Addr(A::UpstreamHost, F::WithPort),
        "UPSTREAM_CLUSTER" | "UPSTREAM_CLUSTER_RAW" => Cmd::UpstreamCluster,
        "UPSTREAM_LOCAL_ADDRESS" => Cmd::Addr(A::UpstreamLocal, F::WithPort),
        "UPSTREAM_LOCAL_ADDRESS_WITHOUT_PORT" => Cmd::Addr(A::UpstreamLocal, F::NoPort),
        "UPSTREAM_LOCAL_PORT" => Cmd::Addr(A::UpstreamLocal, F::Port),
        "UPSTREAM_REMOTE_ADDRESS" => Cmd::Addr(A::UpstreamRemote, F::WithPort),
        "UPSTREAM_REMOTE_ADDRESS_WITHOUT_PORT" => Cmd::Addr(A::UpstreamRemote, F::NoPort),
        "UPSTREAM_REMOTE_PORT" => Cmd::Addr(A::UpstreamRemote, F::Port),
        "UPSTREAM_TRANSPORT_FAILURE_REASON" => Cmd::UpstreamTransportFailureReason,
        "UPSTREAM_REQUEST_ATTEMPT_COUNT" => Cmd::UpstreamRequestAttemptCount,
        "FILTER_CHAIN_NAME" => Cmd::FilterChainName,
        "VIRTUAL_CLUSTER_NAME" => Cmd::VirtualClusterName,
        "HOSTNAME" => Cmd::Hostname(hostname()),
        "ROUTE_NAME" => Cmd::RouteName,
        "DOWNSTREAM_REMOTE_ADDRESS" | "DOWNSTREAM_DIRECT_REMOTE_ADDRESS" => {
            Cmd::Addr(A::DownstreamRemote, F::WithPort)
        }
        "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT"
        | "DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT" => {
            Cmd::Addr(A::DownstreamRemote, F::NoPort)
        }
        "DOWNSTREAM_REMOTE_PORT" | "DOWNSTREAM_DIRECT_REMOTE_PORT" => {
            Cmd::Addr(A::DownstreamRemote, F::Port)
        }
        "DOWNSTREAM_LOCAL_ADDRESS" | "DOWNSTREAM_DIRECT_LOCAL_ADDRESS" => {
            Cmd::Addr(A::DownstreamLocal, F::WithPort)
        }
        "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT"
        | "DOWNSTREAM_DIRECT_LOCAL_ADDRESS_WITHOUT_PORT" => {
            Cmd::Addr(A::DownstreamLocal, F::NoPort)
        }
        "DOWNSTREAM_LOCAL_PORT" | "DOWNSTREAM_DIRECT_LOCAL_PORT" => {
            Cmd::Addr(A::DownstreamLocal, F::Port)
        }
        "REQUESTED_SERVER_NAME" => Cmd::RequestedServerName,
        "CONNECTION_TERMINATION_DETAILS" => Cmd::ConnectionTermination,
        "UNIQUE_ID" => Cmd::UniqueId,
        "STREAM_ID" => Cmd::StreamId,
        "ENVIRONMENT" => {
            let key = arg
                .filter(|a| !a.is_empty())
                .ok_or_else(|| bad("needs a variable name"))?;
            let value = std::env::var(&key).map_or_else(|_| "-".to_string(), |v| truncate(v, max));
            Cmd::Environment(value)
        }
        "GRPC_STATUS" => Cmd::GrpcStatus(match arg.as_deref() {
            None | Some("" | "CAMEL_STRING") => GrpcForm::Camel,
            Some("SNAKE_STRING") => GrpcForm::Snake,
            Some("NUMBER") => GrpcForm::Number,
            Some(_) => {
                return Err(bad(
                    "GRPC_STATUS takes CAMEL_STRING, SNAKE_STRING or NUMBER",
                ));
            }
        }),
        "GRPC_STATUS_NUMBER" => Cmd::GrpcStatus(GrpcForm::Number),
        "DYNAMIC_METADATA" => {
            arg.filter(|a| !a.is_empty())
                .ok_or_else(|| bad("needs a namespace"))?;
            Cmd::DynamicMetadata
        }
        "FILTER_STATE" => {
            let a = arg.unwrap_or_default();
            let (key, how) = a.split_once(':').unwrap_or((a.as_str(), ""));
            if key.is_empty() {
                return Err(bad("the filter state key cannot be empty"));
            }
            let plain = match how {
                "" | "TYPED" => false,
                "PLAIN" => true,
                _ => {
                    return Err(ConfigError::unsupported(
                        path,
                        format!("access log command %{raw}% (PLAIN and TYPED are)"),
                    ));
                }
            };
            Cmd::FilterState(key.as_bytes().to_vec(), plain)
        }
        "REQUEST_HEADERS_BYTES" => Cmd::HeaderBytes(HeaderBytes::Request),
        "RESPONSE_HEADERS_BYTES" => Cmd::HeaderBytes(HeaderBytes::Response),
        "RESPONSE_TRAILERS_BYTES" => Cmd::HeaderBytes(HeaderBytes::Trailers),
        "DOWNSTREAM_TLS_VERSION" => Cmd::Tls(TlsFact::Version),
        "DOWNSTREAM_PEER_URI_SAN" => Cmd::Tls(TlsFact::PeerUriSan),
        "DOWNSTREAM_PEER_SUBJECT" => Cmd::Tls(TlsFact::PeerSubject),
        "DOWNSTREAM_PEER_FINGERPRINT_256" => Cmd::Tls(TlsFact::PeerFingerprint256),
        "DOWNSTREAM_LOCAL_URI_SAN" => Cmd::Tls(TlsFact::LocalUriSan),
        "DOWNSTREAM_LOCAL_SUBJECT" => Cmd::Tls(TlsFact::LocalSubject),
        other => {
            return Err(ConfigError::unsupported(
                path,
                format!("access log command %{other}% (see the README)"),
            ));
        }
    };
    Ok(Part::Cmd(cmd, max))
}

/// The local time zone's UTC offset in seconds, if it has a single one (UTC, or a fixed
/// offset): `TZ`, else `/etc/localtime` (absent: UTC, as in glibc).
fn local_offset() -> Option<i32> {
    match std::env::var("TZ") {
        Ok(tz) => {
            let tz = tz.trim_start_matches(':');
            if matches!(
                tz,
                "" | "UTC" | "UTC0" | "GMT" | "GMT0" | "Etc/UTC" | "Etc/GMT"
            ) {
                return Some(0);
            }
            let file = if tz.starts_with('/') {
                tz.to_string()
            } else {
                format!("/usr/share/zoneinfo/{tz}")
            };
            std::fs::read(file)
                .ok()
                .as_deref()
                .and_then(tzif_fixed_offset)
        }
        Err(_) => match std::fs::read("/etc/localtime") {
            Ok(b) => tzif_fixed_offset(&b),
            Err(_) => Some(0),
        },
    }
}

/// The offset of a TZif zone without transitions (a single local time type).
fn tzif_fixed_offset(b: &[u8]) -> Option<i32> {
    let count = |i: usize| -> Option<usize> {
        let w: [u8; 4] = b.get(20 + 4 * i..24 + 4 * i)?.try_into().ok()?;
        usize::try_from(u32::from_be_bytes(w)).ok()
    };
    if b.get(..4) != Some(b"TZif") || count(3)? != 0 || count(4)? != 1 {
        return None;
    }
    // (no transition times or indices: the one ttinfo follows the header)
    let w: [u8; 4] = b.get(44..48)?.try_into().ok()?;
    Some(i32::from_be_bytes(w))
}

/// What a line is made from.
pub struct LogContext<'a> {
    /// The stream.
    pub info: &'a StreamInfo,
    /// Request method, path and headers as they went upstream.
    pub request: Option<&'a http::request::Parts>,
    /// Response headers as sent downstream.
    pub response: Option<&'a HeaderMap>,
    /// Response trailers, if the response had any.
    pub trailers: Option<&'a HeaderMap>,
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
    match cmd {
        Cmd::StartTime => Some(super::format_start_time(info.start_time)),
        Cmd::Time { emit, offset } => {
            let t = if *emit {
                std::time::SystemTime::now()
            } else {
                info.start_time
            };
            Some(match offset {
                None => super::format_start_time(t),
                Some(o) => local_time(t, *o),
            })
        }
        Cmd::Req(a, b) => cx
            .request
            .and_then(|r| req_header(r, a).or_else(|| b.as_ref().and_then(|b| req_header(r, b)))),
        Cmd::Resp(a, b) => cx
            .response
            .and_then(|r| header(r, a).or_else(|| b.as_ref().and_then(|b| header(r, b)))),
        Cmd::Trailer(a, b) => cx
            .trailers
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
        Cmd::Timing(t) => timing(info, *t).map(|d| d.as_millis().to_string()),
        Cmd::Addr(which, form) => address(info, *which).map(|a| match form {
            AddrForm::WithPort => a.to_string(),
            AddrForm::NoPort => a.ip().to_string(),
            AddrForm::Port => a.port().to_string(),
        }),
        Cmd::UpstreamCluster => non_empty(info.cluster_name.as_deref()),
        Cmd::UpstreamTransportFailureReason => {
            non_empty(info.upstream_transport_failure_reason.as_deref())
                .map(|r| r.replace(' ', "_"))
        }
        Cmd::UpstreamRequestAttemptCount => Some(info.attempt_count.to_string()),
        Cmd::FilterChainName => non_empty(info.filter_chain_name.as_deref()),
        Cmd::VirtualClusterName | Cmd::ConnectionTermination | Cmd::DynamicMetadata => None,
        Cmd::Hostname(h) => h.clone(),
        Cmd::RouteName => non_empty(info.route_name.as_deref()),
        Cmd::RequestedServerName => non_empty(info.requested_server_name.as_deref()),
        Cmd::UniqueId => Some(unique_id()),
        Cmd::StreamId => info.request_id.as_deref().map(str::to_string),
        Cmd::Environment(v) => Some(v.clone()),
        Cmd::GrpcStatus(form) => grpc_status(cx).map(|n| grpc_status_text(n, *form)),
        Cmd::FilterState(key, plain) => {
            let v = filter_state(info, key)?;
            Some(if *plain {
                String::from_utf8_lossy(&v).into_owned()
            } else {
                typed_bytes(&v).to_string()
            })
        }
        Cmd::HeaderBytes(which) => Some(header_bytes(cx, *which).to_string()),
        Cmd::Tls(fact) => tls_fact(info, *fact).filter(|v| !v.is_empty()),
    }
}

/// Envoy's local time format, `2026-11-25T17:40:01.123+0000`.
fn local_time(t: std::time::SystemTime, offset: i32) -> String {
    let shifted = if offset >= 0 {
        t + std::time::Duration::from_secs(u64::from(offset.unsigned_abs()))
    } else {
        t - std::time::Duration::from_secs(u64::from(offset.unsigned_abs()))
    };
    let c = super::CivilTime::utc(shifted);
    let (sign, abs) = (if offset < 0 { '-' } else { '+' }, offset.unsigned_abs());
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}{sign}{:02}{:02}",
        c.year,
        c.month,
        c.day,
        c.hour,
        c.minute,
        c.second,
        c.nanos / 1_000_000,
        abs / 3600,
        (abs % 3600) / 60
    )
}

fn timing(info: &StreamInfo, t: Timing) -> Option<std::time::Duration> {
    match t {
        Timing::Request => info.request_duration,
        Timing::RequestTx => info.request_tx_duration,
        Timing::Response => info.response_duration,
        Timing::ResponseTx => info
            .duration
            .zip(info.response_duration)
            .and_then(|(end, first)| end.checked_sub(first)),
    }
}

fn address(info: &StreamInfo, which: Addr) -> Option<std::net::SocketAddr> {
    match which {
        Addr::DownstreamRemote => Some(info.downstream_remote_addr),
        Addr::DownstreamLocal => Some(info.downstream_local_addr),
        Addr::UpstreamHost => info.upstream_host,
        // (the peer of a connection that was made: none when connecting failed)
        Addr::UpstreamRemote => info.upstream_host.filter(|_| {
            info.upstream_local_addr.is_some()
                || ![
                    ResponseFlags::UPSTREAM_CONNECTION_FAILURE,
                    ResponseFlags::UPSTREAM_OVERFLOW,
                ]
                .into_iter()
                .any(|f| info.response_flags.contains(f))
        }),
        Addr::UpstreamLocal => info.upstream_local_addr,
    }
}

/// A v4 UUID, as Envoy's `%UNIQUE_ID%` (from the worker's fast generator).
fn unique_id() -> String {
    let mut bytes = [0u8; 16];
    for chunk in bytes.chunks_mut(4) {
        chunk.copy_from_slice(&crate::worker::rand_u32().to_le_bytes());
    }
    uuid::Builder::from_random_bytes(bytes)
        .into_uuid()
        .hyphenated()
        .to_string()
}

/// The gRPC status of a gRPC request: the trailers' `grpc-status`, else the headers' (a
/// trailers-only answer), else mapped from the HTTP status (Envoy's `getGrpcStatus`).
fn grpc_status(cx: &LogContext<'_>) -> Option<i64> {
    let req = cx.request?;
    let grpc = header(&req.headers, "content-type").is_some_and(|t| {
        t == "application/grpc"
            || t.starts_with("application/grpc+")
            || t.starts_with("application/grpc;")
    });
    if !grpc {
        return None;
    }
    let parse = |m: Option<&HeaderMap>| {
        m.and_then(|m| m.get("grpc-status"))
            .filter(|v| !v.is_empty())
            .map(|v| {
                std::str::from_utf8(v.as_bytes())
                    .ok()
                    .and_then(|s| s.parse::<u32>().ok())
                    .map_or(-1, i64::from)
            })
    };
    parse(cx.trailers)
        .or_else(|| parse(cx.response))
        .or_else(|| {
            cx.info.response_code.map(|c| match c {
                400 => 13,
                401 => 16,
                403 => 7,
                404 => 12,
                429 | 502 | 503 | 504 => 14,
                _ => 2,
            })
        })
}

/// gRPC status names: Envoy's (`Canceled`) and absl's (`CANCELLED`).
const GRPC_NAMES: [(&str, &str); 17] = [
    ("OK", "OK"),
    ("Canceled", "CANCELLED"),
    ("Unknown", "UNKNOWN"),
    ("InvalidArgument", "INVALID_ARGUMENT"),
    ("DeadlineExceeded", "DEADLINE_EXCEEDED"),
    ("NotFound", "NOT_FOUND"),
    ("AlreadyExists", "ALREADY_EXISTS"),
    ("PermissionDenied", "PERMISSION_DENIED"),
    ("ResourceExhausted", "RESOURCE_EXHAUSTED"),
    ("FailedPrecondition", "FAILED_PRECONDITION"),
    ("Aborted", "ABORTED"),
    ("OutOfRange", "OUT_OF_RANGE"),
    ("Unimplemented", "UNIMPLEMENTED"),
    ("Internal", "INTERNAL"),
    ("Unavailable", "UNAVAILABLE"),
    ("DataLoss", "DATA_LOSS"),
    ("Unauthenticated", "UNAUTHENTICATED"),
];

fn grpc_status_text(n: i64, form: GrpcForm) -> String {
    let names = usize::try_from(n).ok().and_then(|i| GRPC_NAMES.get(i));
    match (form, names) {
        (GrpcForm::Camel, Some((camel, _))) => (*camel).to_string(),
        (GrpcForm::Snake, Some((_, snake))) => (*snake).to_string(),
        _ => n.to_string(),
    }
}

/// A Wasm plugin's filter state value (`key` is `wasm.<path>`).
fn filter_state(info: &StreamInfo, key: &[u8]) -> Option<Vec<u8>> {
    let state = info.wasm_state.as_ref()?.lock().ok()?;
    state
        .iter()
        .find(|(k, _)| k.as_slice() == key)
        .map(|(_, v)| v.clone())
}

/// A bytes filter state object as Envoy serializes it (`TYPED`): an `Any` holding a
/// `google.protobuf.BytesValue`, in proto JSON.
fn typed_bytes(v: &[u8]) -> serde_json::Value {
    use base64::Engine as _;
    serde_json::json!({
        "@type": "type.googleapis.com/google.protobuf.BytesValue",
        "value": base64::engine::general_purpose::STANDARD.encode(v),
    })
}

/// The size of a header map as Envoy counts it: names and values, pseudo-headers included.
fn header_bytes(cx: &LogContext<'_>, which: HeaderBytes) -> usize {
    let sum = |m: &HeaderMap, skip_host: bool| -> usize {
        m.iter()
            .filter(|(k, _)| !(skip_host && *k == http::header::HOST))
            .map(|(k, v)| k.as_str().len() + v.len())
            .sum()
    };
    match which {
        HeaderBytes::Request => cx.request.map_or(0, |r| {
            [":method", ":path", ":authority", ":scheme"]
                .iter()
                .filter_map(|p| req_header(r, p).map(|v| p.len() + v.len()))
                .sum::<usize>()
                + sum(&r.headers, true)
        }),
        HeaderBytes::Response => cx.response.map_or(0, |h| {
            let status = cx.info.response_code.map_or(0, |_| ":status".len() + 3);
            status + sum(h, false)
        }),
        HeaderBytes::Trailers => cx.trailers.map_or(0, |t| sum(t, false)),
    }
}

fn tls_fact(info: &StreamInfo, fact: TlsFact) -> Option<String> {
    let tls = info.tls.as_deref()?;
    let peer = tls.peer.as_ref();
    let local = tls.local.as_deref();
    match fact {
        TlsFact::Version => Some(tls.version.to_string()),
        TlsFact::PeerUriSan => Some(peer.and_then(|c| c.uri_san.clone()).unwrap_or_default()),
        TlsFact::PeerSubject => Some(peer.map(|c| c.subject.clone()).unwrap_or_default()),
        TlsFact::PeerFingerprint256 => Some(peer.map(|c| c.sha256.clone()).unwrap_or_default()),
        TlsFact::LocalUriSan => Some(local.and_then(|c| c.uri_san.clone()).unwrap_or_default()),
        TlsFact::LocalSubject => Some(local.map(|c| c.subject.clone()).unwrap_or_default()),
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
            [Part::Cmd(Cmd::FilterState(key, false), max)] => {
                // (a structured value: Envoy ignores the length limit here)
                let _ = max;
                filter_state(cx.info, key).map_or(serde_json::Value::Null, |v| typed_bytes(&v))
            }
            [Part::Cmd(c, max)] => match value(c, cx) {
                None => serde_json::Value::Null,
                Some(v) => {
                    let numeric = matches!(
                        c,
                        Cmd::ResponseCode
                            | Cmd::BytesReceived
                            | Cmd::BytesSent
                            | Cmd::Duration
                            | Cmd::Timing(_)
                            | Cmd::Addr(_, AddrForm::Port)
                            | Cmd::GrpcStatus(GrpcForm::Number)
                            | Cmd::HeaderBytes(_)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn names(fmt: &str) -> Result<Vec<String>, String> {
        parse(fmt, "f")
            .map(|ps| {
                ps.iter()
                    .map(|p| match p {
                        Part::Lit(l) => format!("lit {l}"),
                        Part::Cmd(c, m) => format!("{c:?} {m:?}"),
                    })
                    .collect()
            })
            .map_err(|e| e.to_string())
    }

    #[test]
    fn commands_with_arguments_lengths_and_percents() {
        let got = names("a %REQ(:PATH):3% 100%% %DYNAMIC_METADATA(a:b)% %BYTES_SENT%").unwrap();
        assert_eq!(
            got,
            [
                "lit a ",
                "Req(\":path\", None) Some(3)",
                "lit  100% ",
                "DynamicMetadata None",
                "lit  ",
                "BytesSent None",
            ]
        );
    }

    #[test]
    fn unknown_commands_and_time_formats_are_refused_by_name() {
        let e = names("%DOWNSTREAM_PEER_ADDRESS%").unwrap_err();
        assert!(e.contains("DOWNSTREAM_PEER_ADDRESS"), "{e}");
        let e = names("%START_TIME(%s)%").unwrap_err();
        assert!(e.contains("START_TIME(%s)"), "{e}");
        let e = names("50% off").unwrap_err();
        assert!(e.contains("position 2"), "{e}");
        assert!(names("%FILTER_STATE(wasm.k:FIELD:x)%").is_err());
    }

    #[test]
    fn grpc_status_names() {
        assert_eq!(grpc_status_text(1, GrpcForm::Camel), "Canceled");
        assert_eq!(grpc_status_text(1, GrpcForm::Snake), "CANCELLED");
        assert_eq!(grpc_status_text(42, GrpcForm::Camel), "42");
    }

    #[test]
    fn fixed_offset_zones_only() {
        let mut utc = b"TZif2".to_vec();
        utc.resize(20, 0);
        for count in [0u32, 0, 0, 0, 1, 4] {
            utc.extend_from_slice(&count.to_be_bytes());
        }
        utc.extend_from_slice(&3600i32.to_be_bytes());
        assert_eq!(tzif_fixed_offset(&utc), Some(3600));
        utc[32..36].copy_from_slice(&5u32.to_be_bytes());
        assert_eq!(tzif_fixed_offset(&utc), None);
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(1_764_092_401_123);
        assert_eq!(local_time(t, -5400), "2025-11-25T16:10:01.123-0130");
    }
}
