//! The HTTP connection manager: one hyper server connection per downstream connection (HTTP/1.1
//! with keep-alive and pipelining, h2 prior knowledge, ALPN under TLS), and per stream the
//! filter chain, routing, the router's upstream request and the response back through the
//! filters, then access logs, `on_log` and stats.

mod chain;
mod codec_error;
mod linger;
mod local_lock;
mod normalize;
mod prefixed;
mod router;
mod trailers;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, HOST, SERVER};
use http::{HeaderValue, Request, Response};
use http_body::{Body as _, Frame};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::access_log::RequestSummary;
use crate::filter::{FilterCx, HttpFilter, LocalReply, StreamInfo};
use crate::listener::{Codec, HcmConfig};
use crate::upstream::{Body, BoxError, LocalExec};
use crate::worker::Worker;

pub(crate) use chain::Stream;

/// One downstream connection as the connection manager sees it.
pub(crate) struct Conn {
    pub(crate) hcm: Arc<HcmConfig>,
    pub(crate) worker: Rc<Worker>,
    pub(crate) listener: Arc<str>,
    /// The filter chain's [`crate::listener::FilterChain::index`].
    pub(crate) chain: usize,
    /// Its name, and the listener's `traffic_direction` (plugins read both).
    pub(crate) chain_name: Arc<str>,
    pub(crate) direction: i64,
    /// The listener's `metadata` (`xds.listener_metadata`).
    pub(crate) listener_metadata: Option<Arc<crate::route::MetadataProp>>,
    pub(crate) local: SocketAddr,
    pub(crate) remote: SocketAddr,
    pub(crate) tls: bool,
    pub(crate) sni: Option<String>,
    /// The certificate chain the client presented (mTLS): `FORWARD_ONLY` keeps its
    /// `x-forwarded-client-cert`, `APPEND_FORWARD` and `SANITIZE_SET` describe it there.
    pub(crate) peer_cert: Option<Arc<Vec<Vec<u8>>>>,
    /// What plugins see of the TLS connection (`connection.*`).
    pub(crate) tls_facts: Option<Arc<crate::xfcc::TlsFacts>>,
    /// What the connection's reads tell request bodies ([`crate::read_ahead::ReadAhead`]).
    pub(crate) read_ahead: Arc<crate::read_ahead::ReadState>,
}

/// A downstream connection: plain TCP or TLS.
pub(crate) enum ServerIo {
    Plain(tokio::net::TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>),
}

impl ServerIo {
    /// The negotiated TLS version as Envoy names it (`TLSv1.3`).
    pub(crate) fn tls_version(&self) -> Option<&'static str> {
        match self {
            ServerIo::Plain(_) => None,
            ServerIo::Tls(s) => match s.get_ref().1.protocol_version()? {
                rustls::ProtocolVersion::TLSv1_3 => Some("TLSv1.3"),
                rustls::ProtocolVersion::TLSv1_2 => Some("TLSv1.2"),
                _ => None,
            },
        }
    }
}

impl AsyncRead for ServerIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            ServerIo::Plain(s) => Pin::new(s).poll_read(cx, buf),
            ServerIo::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ServerIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            ServerIo::Plain(s) => Pin::new(s).poll_write(cx, buf),
            ServerIo::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            ServerIo::Plain(s) => Pin::new(s).poll_flush(cx),
            ServerIo::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            ServerIo::Plain(s) => Pin::new(s).poll_shutdown(cx),
            ServerIo::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            ServerIo::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            ServerIo::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }
    fn is_write_vectored(&self) -> bool {
        match self {
            ServerIo::Plain(s) => s.is_write_vectored(),
            ServerIo::Tls(s) => s.is_write_vectored(),
        }
    }
}

/// Serves one connection until it closes or the drain signal fires (then gracefully).
pub(crate) async fn serve<IO>(
    io: IO,
    conn: Rc<Conn>,
    alpn_h2: Option<bool>,
    mut drain: tokio::sync::watch::Receiver<bool>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + 'static,
{
    let stats = conn.hcm.stats.clone();
    let opened = Instant::now();
    stats.cx_total.inc();
    stats.cx_active.inc();
    let codec = conn.hcm.codec;
    let svc_conn = Rc::clone(&conn);
    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
        let c = Rc::clone(&svc_conn);
        async move { Ok::<_, Infallible>(handle(c, req).await) }
    });
    let mut builder = hyper_util::server::conn::auto::Builder::new(LocalExec);
    builder
        .http1()
        .timer(TokioTimer::new())
        // Room above Envoy's 60 KiB header limit, which the router checks (431 with Envoy's
        // body); hyper's own 431 (no body) only past this.
        .max_buf_size(256 * 1024)
        .preserve_header_case(false);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(64 * 1024)
        .max_concurrent_streams(1024);
    let builder = match (codec, alpn_h2) {
        (Codec::Http1, _) | (Codec::Auto, Some(false)) => builder.http1_only(),
        (Codec::Http2, _) | (Codec::Auto, Some(true)) => builder.http2_only(),
        (Codec::Auto, None) => builder,
    };
    let io =
        crate::read_ahead::ReadAhead::new(io, conn.hcm.buffer_limit, Arc::clone(&conn.read_ahead));
    let codec_state = Rc::new(codec_error::CodecState::default());
    let io =
        codec_error::CodecReplies::new(io, Rc::clone(&codec_state), conn.hcm.server_name.clone());
    let fut = builder.serve_connection(TokioIo::new(linger::Linger::new(io)), svc);
    tokio::pin!(fut);
    let mut draining = *drain.borrow();
    if draining {
        fut.as_mut().graceful_shutdown();
    }
    loop {
        tokio::select! {
            r = fut.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "downstream connection error");
                }
                break;
            }
            changed = drain.changed(), if !draining => {
                if changed.is_err() || *drain.borrow() {
                    draining = true;
                    fut.as_mut().graceful_shutdown();
                }
            }
        }
    }
    if let Some(caught) = codec_state.take() {
        log_codec_error(&conn, caught);
    }
    stats.cx_active.dec();
    stats.cx_length_ms.record_ms(opened.elapsed());
}

/// Counts and logs a request the HTTP/1 codec refused, as Envoy's connection manager does for
/// the stream its codec opened: no filter ran (no `on_log`), the access logs print `DPE`.
fn log_codec_error(conn: &Rc<Conn>, caught: codec_error::Caught) {
    let hcm = &conn.hcm;
    hcm.stats.rq_total.inc();
    hcm.stats.rq_http1_total.inc();
    hcm.stats.rq_active.inc();
    hcm.stats.cx_protocol_error.inc();
    let node = Arc::clone(&conn.worker.config.load().node);
    let mut info = StreamInfo::new(
        Arc::clone(&conn.listener),
        conn.local,
        conn.remote,
        http::Version::HTTP_11,
        node,
    );
    info.downstream_tls = conn.tls;
    info.filter_chain_name = Some(Arc::clone(&conn.chain_name));
    info.listener_direction = conn.direction;
    info.requested_server_name = conn.sni.clone();
    info.response_code = Some(caught.status.as_u16());
    info.response_code_details = Some(Arc::from(caught.details));
    info.response_flags
        .insert(crate::response_flags::ResponseFlags::DOWNSTREAM_PROTOCOL_ERROR);
    let stream = Rc::new(local_lock::LocalLock::new(Stream {
        cx: FilterCx::new(info, conn.worker.ctx.clone()),
        filters: Vec::new(),
    }));
    Finisher::new(Rc::clone(conn), stream, Instant::now()).finish(caught.body_len, true);
}

/// A client's claim to be internal, which the proxy removes (a constant: no name parse per
/// request).
const X_ENVOY_INTERNAL: http::HeaderName = http::HeaderName::from_static("x-envoy-internal");
/// Client `x-envoy-*` headers Envoy 1.40 removes before the filters (checked against it in
/// `tests/all/http1_codec.rs`); other `x-envoy-*` headers pass.
const ROUTER_CONTROLS: &[&str] = &[
    "x-envoy-expected-rq-timeout-ms",
    "x-envoy-force-trace",
    "x-envoy-hedge-on-per-try-timeout",
    "x-envoy-ip-tags",
    "x-envoy-max-retries",
    "x-envoy-retry-grpc-on",
    "x-envoy-retry-on",
    "x-envoy-upstream-alt-stat-name",
    "x-envoy-upstream-rq-per-try-timeout-ms",
    "x-envoy-upstream-rq-timeout-ms",
    "x-envoy-upstream-stream-duration-ms",
];

const X_FORWARDED_CLIENT_CERT: http::HeaderName =
    http::HeaderName::from_static("x-forwarded-client-cert");

/// Adds or keeps `x-request-id` like Envoy's HCM.
fn request_id(hcm: &HcmConfig, headers: &mut http::HeaderMap) -> Option<Arc<str>> {
    let existing = headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(Arc::from);
    // Envoy treats requests as internal unless use_remote_address says the peer is external,
    // and keeps an internal request's id.
    let keep = existing.is_some() && (!hcm.use_remote_address || hcm.preserve_external_request_id);
    if keep {
        return existing;
    }
    if !hcm.generate_request_id {
        return existing;
    }
    // A v4 UUID from the worker's fast generator (Envoy's ids are not cryptographic either);
    // `Uuid::new_v4` would make a getrandom syscall per request.
    let mut bytes = [0u8; 16];
    for chunk in bytes.chunks_mut(4) {
        chunk.copy_from_slice(&crate::worker::rand_u32().to_le_bytes());
    }
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    let id: &str = uuid::Builder::from_random_bytes(bytes)
        .into_uuid()
        .hyphenated()
        .encode_lower(&mut buf);
    if let Ok(v) = HeaderValue::from_str(id) {
        headers.insert("x-request-id", v);
    }
    Some(Arc::from(id))
}

/// The connection with the listener's current HTTP connection manager config: a config swapped
/// in by xDS (new routes, a new or changed Wasm filter) applies to new streams on existing
/// connections too, as Envoy's RDS and ECDS updates do.
fn current(conn: Rc<Conn>) -> Rc<Conn> {
    let config = conn.worker.config.load();
    let latest = config
        .listeners
        .iter()
        .find(|l| l.name == conn.listener)
        .and_then(|l| l.chain(conn.chain))
        .and_then(|c| match &c.terminal {
            crate::listener::Terminal::Http(h) => Some(h),
            crate::listener::Terminal::Tcp(_) => None,
        });
    match latest {
        Some(h) if !Arc::ptr_eq(h, &conn.hcm) => Rc::new(Conn {
            hcm: Arc::clone(h),
            worker: Rc::clone(&conn.worker),
            listener: Arc::clone(&conn.listener),
            chain: conn.chain,
            chain_name: Arc::clone(&conn.chain_name),
            direction: conn.direction,
            listener_metadata: conn.listener_metadata.clone(),
            local: conn.local,
            remote: conn.remote,
            tls: conn.tls,
            sni: conn.sni.clone(),
            peer_cert: conn.peer_cert.clone(),
            tls_facts: conn.tls_facts.clone(),
            read_ahead: Arc::clone(&conn.read_ahead),
        }),
        _ => conn,
    }
}

/// h2 sends each cookie as its own `cookie` field; Envoy's codec joins them with `; ` into one
/// header (RFC 9113 8.2.3), which plugins and the upstream then see. It adds that header when
/// the header block is complete, so an h2 client's `cookie` (even a single one) comes after
/// its other headers.
fn join_cookies(headers: &mut http::HeaderMap) {
    let mut all = headers.get_all(http::header::COOKIE).iter();
    let Some(first) = all.next() else {
        return;
    };
    let joined = if all.next().is_none() {
        if headers.keys().last() == Some(&http::header::COOKIE) {
            return;
        }
        first.clone()
    } else {
        let mut joined = first.as_bytes().to_vec();
        for v in headers.get_all(http::header::COOKIE).iter().skip(1) {
            joined.extend_from_slice(b"; ");
            joined.extend_from_slice(v.as_bytes());
        }
        match HeaderValue::from_bytes(&joined) {
            Ok(v) => v,
            Err(_) => return,
        }
    };
    crate::header_order::remove(headers, &["cookie"]);
    headers.insert(http::header::COOKIE, joined);
}

/// Whether a client header name is one [`clean_client_headers`] may remove.
fn may_clean(name: &str) -> bool {
    matches!(
        name,
        "expect"
            | "connection"
            | "keep-alive"
            | "proxy-connection"
            | "transfer-encoding"
            | "upgrade"
            | "x-forwarded-client-cert"
    ) || name.starts_with("x-envoy-")
}

/// Whether the request's `te` lists `trailers`.
fn te_wants_trailers(headers: &http::HeaderMap) -> bool {
    headers
        .get_all(http::header::TE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
}

/// What Envoy's codec and HCM remove from a client's request before any filter runs.
fn clean_client_headers(headers: &mut http::HeaderMap, keep_xfcc: bool) {
    // Envoy answers `Expect: 100-continue` itself (hyper sends the 100 when the body is read)
    // and removes the header before the filters and the upstream see the request.
    if headers
        .get(http::header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
    {
        crate::header_order::remove(headers, &["expect"]);
    }
    // Whether a request is internal is the proxy's call, never the client's (Envoy removes it
    // from every request; it sets it only for internal peers under use_remote_address).
    if headers.contains_key(X_ENVOY_INTERNAL) {
        crate::header_order::remove(headers, &[X_ENVOY_INTERNAL.as_str()]);
    }
    // Envoy's HCM cleans these before any filter runs: hop-by-hop headers (the connection
    // header stays for an upgrade) and, unless configured to keep it, a client's claim of a
    // client certificate (`forward_client_cert_details` SANITIZE, a spoofing guard).
    // An h2c upgrade is ignored (Envoy's HTTP/1 codec drops its headers): plain HTTP/1.1.
    if headers
        .get(http::header::UPGRADE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"h2c"))
    {
        crate::header_order::remove(headers, &["upgrade", "http2-settings"]);
    }
    let upgrade = headers.contains_key(http::header::UPGRADE);
    // Headers the client nominated as hop-by-hop in `connection` go too.
    let nominated: Vec<String> = headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty() && t != "close" && t != "upgrade" && !t.starts_with(':'))
        // (Envoy keeps a nominated `te` that asks for trailers: `te: trailers` goes on)
        .filter(|t| t != "te" || !te_wants_trailers(headers))
        .collect();
    let mut hop: Vec<&str> = if upgrade {
        vec!["keep-alive", "proxy-connection", "transfer-encoding"]
    } else {
        vec![
            "connection",
            "keep-alive",
            "proxy-connection",
            "transfer-encoding",
        ]
    };
    hop.extend(nominated.iter().map(String::as_str));
    // The router's own controls are not taken from a client (Envoy cleans them; the router
    // sets `x-envoy-expected-rq-timeout-ms` itself).
    hop.extend_from_slice(ROUTER_CONTROLS);
    crate::header_order::remove(headers, &hop);
    if !keep_xfcc && headers.contains_key(X_FORWARDED_CLIENT_CERT) {
        crate::header_order::remove(headers, &[X_FORWARDED_CLIENT_CERT.as_str()]);
    }
}

/// `APPEND_FORWARD` / `SANITIZE_SET` on an mTLS connection: this proxy's view of the client's
/// certificate, appended to the client's header or in its place.
fn set_client_cert(
    headers: &mut http::HeaderMap,
    set: &crate::xfcc::SetCurrent,
    chain: &[Vec<u8>],
) {
    let element = set.element(chain);
    let value = match headers
        .get(X_FORWARDED_CLIENT_CERT)
        .and_then(|v| v.to_str().ok())
    {
        Some(old) if set.append && !old.is_empty() => format!("{old},{element}"),
        _ => element,
    };
    if let Ok(v) = http::HeaderValue::from_str(&value) {
        headers.insert(X_FORWARDED_CLIENT_CERT, v);
    }
}

async fn handle(conn: Rc<Conn>, req: Request<Incoming>) -> Response<Body> {
    let conn = current(conn);
    let hcm = Arc::clone(&conn.hcm);
    hcm.stats.rq_total.inc();
    hcm.stats.rq_active.inc();
    if req.version() == http::Version::HTTP_2 {
        hcm.stats.rq_http2_total.inc();
    } else {
        hcm.stats.rq_http1_total.inc();
    }
    let (mut parts, body) = req.into_parts();
    if hcm.normalize_path
        && let Some(path) = normalize::canonical(parts.uri.path())
    {
        let pq = match parts.uri.query() {
            Some(q) => format!("{path}?{q}"),
            None => path,
        };
        let mut uri = parts.uri.clone().into_parts();
        uri.path_and_query = pq.parse().ok();
        if let Ok(u) = http::Uri::from_parts(uri) {
            parts.uri = u;
        }
    }
    if parts.version == http::Version::HTTP_2 {
        join_cookies(&mut parts.headers);
    }
    // One look at the names first: most requests have nothing to clean.
    if parts.headers.keys().any(|k| may_clean(k.as_str())) {
        let mtls = conn.peer_cert.is_some();
        let keep_xfcc = hcm.keep_xfcc || (mtls && hcm.keep_xfcc_on_mtls);
        clean_client_headers(&mut parts.headers, keep_xfcc);
    }
    if let (Some(set), Some(chain)) = (&hcm.xfcc_set, &conn.peer_cert) {
        set_client_cert(&mut parts.headers, set, chain);
    }
    let node = Arc::clone(&conn.worker.config.load().node);
    let mut info = StreamInfo::new(
        Arc::clone(&conn.listener),
        conn.local,
        conn.remote,
        parts.version,
        node,
    );
    info.downstream_tls = conn.tls;
    info.filter_chain_name = Some(Arc::clone(&conn.chain_name));
    info.listener_direction = conn.direction;
    info.listener_metadata.clone_from(&conn.listener_metadata);
    info.requested_server_name = conn.sni.clone();
    info.tls.clone_from(&conn.tls_facts);
    // The authority of an absolute-form HTTP/1.1 target (or h2's `:authority`) is the host,
    // over any `Host` header (RFC 9112 §3.2.2; Envoy's codecs do the same).
    if let Some(a) = parts.uri.authority()
        && let Ok(v) = HeaderValue::from_str(a.as_str())
    {
        parts.headers.insert(HOST, v);
    }
    if hcm.use_remote_address {
        let ip = conn.remote.ip().to_string();
        let xff = match parts
            .headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
        {
            Some(prev) => format!("{prev},{ip}"),
            None => ip,
        };
        if let Ok(v) = HeaderValue::from_str(&xff) {
            parts.headers.insert("x-forwarded-for", v);
        }
    }
    if hcm.use_remote_address || !parts.headers.contains_key("x-forwarded-proto") {
        parts.headers.insert(
            "x-forwarded-proto",
            HeaderValue::from_static(if conn.tls { "https" } else { "http" }),
        );
    }
    // After `x-forwarded-proto`: Envoy's order, which plugins listing the headers see.
    info.request_id = request_id(&hcm, &mut parts.headers);
    let filters: Vec<Box<dyn HttpFilter>> = hcm
        .filters
        .iter()
        .map(|f| f.config.create_filter(&conn.worker.ctx))
        .collect();
    let stream = Rc::new(local_lock::LocalLock::new(Stream {
        cx: FilterCx::new(info, conn.worker.ctx.clone()),
        filters,
    }));
    let start = Instant::now();
    let mut fin = Finisher::new(Rc::clone(&conn), Rc::clone(&stream), start);
    fin.grpc = is_grpc(&parts.headers);
    router::run(conn, stream, parts, body, fin).await
}

/// Envoy's `Grpc::Common::isGrpcRequestHeaders`: `application/grpc`, optionally with `+codec`
/// or parameters.
fn is_grpc(headers: &http::HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.as_bytes().strip_prefix(b"application/grpc"))
        .is_some_and(|rest| rest.is_empty() || rest[0] == b'+' || rest[0] == b';')
}

/// Envoy's `Grpc::Utility::httpToGrpcStatus`.
pub(crate) fn http_to_grpc(status: u16) -> u32 {
    match status {
        400 => 13,
        401 => 16,
        403 => 7,
        404 => 12,
        429 | 502..=504 => 14,
        _ => 2,
    }
}

/// gRPC's percent-encoding of `grpc-message` (bytes outside printable ASCII, and `%`).
fn grpc_percent_encode(text: &[u8]) -> String {
    let mut out = String::with_capacity(text.len());
    for &b in text {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A local reply to a gRPC request, as Envoy sends it: `200` with `content-type:
/// application/grpc`, `grpc-status` (the filter's, else mapped from the HTTP status) and the
/// body as `grpc-message`, then the reply's own headers; no body (trailers-only).
pub(crate) fn grpc_local_reply_parts(reply: &LocalReply) -> http::response::Parts {
    let (mut parts, ()) = Response::new(()).into_parts();
    parts
        .headers
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    if !reply.headers.contains_key("grpc-status") {
        let code = reply
            .grpc_status
            .unwrap_or_else(|| http_to_grpc(reply.status.as_u16()));
        parts.headers.insert("grpc-status", HeaderValue::from(code));
    }
    if !reply.body.is_empty()
        && let Ok(v) = HeaderValue::from_str(&grpc_percent_encode(&reply.body))
    {
        parts.headers.insert("grpc-message", v);
    }
    for (k, v) in &reply.headers {
        if k != CONTENT_LENGTH && k != CONTENT_TYPE {
            parts.headers.append(k, v.clone());
        }
    }
    parts
}

/// Captures what the default access log format prints from the request headers.
pub(crate) fn summarize(parts: &http::request::Parts) -> RequestSummary {
    let h = |n: &str| {
        parts
            .headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    RequestSummary {
        method: Some(parts.method.as_str().to_string()),
        path: parts.uri.path_and_query().map(|p| p.as_str().to_string()),
        original_path: h("x-envoy-original-path"),
        forwarded_for: h("x-forwarded-for"),
        user_agent: h("user-agent"),
        authority: h("host").or_else(|| parts.uri.authority().map(|a| a.to_string())),
    }
}

/// Builds the response parts of a local reply (before the response filters).
pub(crate) fn local_reply_parts(reply: &LocalReply) -> http::response::Parts {
    let (mut parts, ()) = Response::new(()).into_parts();
    parts.status = reply.status;
    parts.headers = reply.headers.clone();
    // Envoy's order: the reply's own headers, then content-length, then content-type; an
    // empty reply has no content-length (the HTTP/1.1 codec writes `content-length: 0` after
    // the other headers; h2 sends none).
    if !reply.body.is_empty() {
        parts
            .headers
            .insert(CONTENT_LENGTH, HeaderValue::from(reply.body.len()));
    }
    if !reply.body.is_empty() && !parts.headers.contains_key(CONTENT_TYPE) {
        parts
            .headers
            .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    }
    parts
}

/// The current time as an HTTP date, formatted at most once a second per thread.
fn date_now() -> HeaderValue {
    thread_local! {
        static CACHE: std::cell::RefCell<(u64, HeaderValue)> =
            const { std::cell::RefCell::new((0, HeaderValue::from_static(""))) };
    }
    let now = std::time::SystemTime::now();
    let secs = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        if c.0 != secs {
            let text = httpdate::fmt_http_date(now);
            if let Ok(v) = HeaderValue::from_str(&text) {
                *c = (secs, v);
            }
        }
        c.1.clone()
    })
}

/// Final touches on the response headers after the filters (Envoy's HCM `encodeHeaders`).
pub(crate) fn finalize_response_headers(
    hcm: &HcmConfig,
    parts: &mut http::response::Parts,
    request_id: Option<&str>,
) {
    // Envoy keeps an upstream's date and adds one when absent (local replies), in the map
    // filters and the access log see; then it sets `server`. A header already there keeps its
    // place: a local reply ends `date`, `server`, an upstream's keeps its own order.
    if !parts.headers.contains_key(http::header::DATE) {
        parts.headers.insert(http::header::DATE, date_now());
    }
    parts.headers.insert(SERVER, hcm.server_name.clone());
    crate::header_order::remove(&mut parts.headers, &router::HOP_BY_HOP);
    if hcm.always_set_request_id_in_response
        && let Some(id) = request_id
        && let Ok(v) = HeaderValue::from_str(id)
    {
        parts.headers.insert("x-request-id", v);
    }
}

/// End-of-stream bookkeeping: runs once, when the downstream response body ends or is dropped.
pub(crate) struct Finisher {
    conn: Rc<Conn>,
    stream: Rc<local_lock::LocalLock<Stream>>,
    pub(crate) start: Instant,
    pub(crate) summary: RequestSummary,
    pub(crate) bytes_received: Rc<std::cell::Cell<u64>>,
    /// The whole request has been read from the client (Envoy's "remote decode complete").
    pub(crate) request_done: Rc<trailers::ReadAll>,
    /// The response closes an HTTP/1.1 connection (a local 400, as Envoy's HCM decides).
    pub(crate) close: bool,
    /// A HEAD request: the response goes without its body.
    pub(crate) head: bool,
    /// A gRPC request (`content-type: application/grpc...`): local replies are gRPC
    /// trailers-only responses, as Envoy sends them.
    pub(crate) grpc: bool,
    pub(crate) upstream: Option<(Arc<crate::cluster::Cluster>, Arc<crate::cluster::Host>)>,
    /// When the answered upstream attempt started, and whether it was an internal request
    /// (`upstream_rq_time` and its `internal.`/`external.` copy).
    pub(crate) upstream_timing: Option<(Instant, bool)>,
    /// What the answering HTTP/1.1 upstream connection's reads tell the response body.
    pub(crate) upstream_reads: Option<Arc<crate::read_ahead::ReadState>>,
    /// The request as it went upstream, for access log formats that print any header.
    log_request: Option<http::request::Parts>,
    /// The response trailers, for access log formats (`%TRAILER(X)%`, `%GRPC_STATUS%`).
    log_trailers: Option<http::HeaderMap>,
    done: bool,
}

impl Drop for Finisher {
    /// A stream dropped before its response started (the client went away while a filter or
    /// the upstream was pending) still gets its stats, `on_log` and access log.
    fn drop(&mut self) {
        if !self.done {
            let orphan = Finisher {
                conn: Rc::clone(&self.conn),
                stream: Rc::clone(&self.stream),
                start: self.start,
                summary: std::mem::take(&mut self.summary),
                bytes_received: Rc::clone(&self.bytes_received),
                request_done: Rc::clone(&self.request_done),
                close: self.close,
                head: self.head,
                grpc: self.grpc,
                upstream: self.upstream.take(),
                upstream_timing: self.upstream_timing.take(),
                upstream_reads: self.upstream_reads.take(),
                log_request: self.log_request.take(),
                log_trailers: self.log_trailers.take(),
                done: false,
            };
            self.done = true;
            orphan.finish(0, false);
        }
    }
}

impl Finisher {
    fn new(conn: Rc<Conn>, stream: Rc<local_lock::LocalLock<Stream>>, start: Instant) -> Self {
        Self {
            conn,
            stream,
            start,
            summary: RequestSummary::default(),
            bytes_received: Rc::default(),
            request_done: Rc::default(),
            close: false,
            head: false,
            grpc: false,
            upstream: None,
            upstream_timing: None,
            upstream_reads: None,
            log_request: None,
            log_trailers: None,
            done: false,
        }
    }

    /// Captures what the access logs print from the request.
    pub(crate) fn capture(&mut self, parts: &http::request::Parts) {
        let hcm = &self.conn.hcm;
        if !hcm.access_logs.is_empty() {
            self.summary = summarize(parts);
        }
        if hcm.log_needs_headers {
            self.log_request = Some(router::clone_parts(parts));
        }
    }

    fn finish(mut self, bytes_sent: u64, complete: bool) {
        self.done = true;
        let run = move |st: &mut Stream, this: &Finisher| {
            let hcm = &this.conn.hcm;
            let info = st.cx.stream_info_mut();
            info.bytes_sent = bytes_sent;
            info.bytes_received = this.bytes_received.get();
            info.duration = Some(this.start.elapsed());
            info.request_duration = this
                .request_done
                .at()
                .map(|t| t.saturating_duration_since(this.start));
            if !complete {
                info.response_flags.insert(
                    crate::response_flags::ResponseFlags::DOWNSTREAM_CONNECTION_TERMINATION,
                );
                hcm.stats.rq_rx_reset.inc();
            }
            let code = info.response_code.unwrap_or(0);
            hcm.stats.record_status(code);
            hcm.stats.rq_time.record_ms(this.start.elapsed());
            if let (true, Some((cluster, _)), Some((started, internal))) =
                (complete, &this.upstream, this.upstream_timing)
            {
                cluster.stats.record_time(started.elapsed(), internal);
            }
            hcm.stats.rq_active.dec();
            if let Some((_, host)) = &this.upstream {
                host.active_rq
                    .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            }
            let Stream { cx, filters } = st;
            let info = cx.stream_info();
            for f in filters.iter_mut() {
                f.on_log(info);
            }
            if !hcm.access_logs.is_empty() {
                let cx = crate::access_log::format::LogContext {
                    info,
                    request: this
                        .log_request
                        .as_ref()
                        .or(info.request_headers.as_deref()),
                    response: info.response_headers.as_deref(),
                    trailers: this.log_trailers.as_ref(),
                    tcp: false,
                };
                for log in &hcm.access_logs {
                    match &log.sink {
                        crate::access_log::Sink::Plugin(p) => p.log(info, &this.conn.worker.ctx),
                        _ => log.log(&cx, &this.summary),
                    }
                }
            }
        };
        let stream = Rc::clone(&self.stream);
        if let Some(mut guard) = stream.try_lock() {
            run(&mut guard, &self);
            return;
        }
        tokio::task::spawn_local(async move {
            let mut guard = stream.lock().await;
            run(&mut guard, &self);
        });
    }
}

/// The downstream response body: counts bytes and runs the [`Finisher`] at the end.
pub(crate) struct FinalBody {
    inner: Body,
    sent: u64,
    fin: Option<Finisher>,
    /// The client is on HTTP/1.1: trailers are not sent ([`trailers`]).
    drop_trailers: bool,
    /// Ended where the trailers were.
    ended: bool,
    /// The response's `content-length`: hyper stops reading the body at its last byte.
    length: Option<u64>,
}

impl FinalBody {
    pub(crate) fn new(
        inner: Body,
        fin: Finisher,
        drop_trailers: bool,
        headers: &http::HeaderMap,
    ) -> Self {
        let length = trailers::content_length(headers);
        Self {
            inner,
            sent: 0,
            fin: Some(fin),
            drop_trailers,
            ended: false,
            length,
        }
    }
}

impl http_body::Body for FinalBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.ended {
            return Poll::Ready(None);
        }
        let mut r = Pin::new(&mut this.inner).poll_frame(cx);
        // (kept for the access logs even when the HTTP/1.1 client does not get them)
        if let (Poll::Ready(Some(Ok(f))), Some(fin)) = (&r, this.fin.as_mut())
            && let Some(t) = f.trailers_ref()
            && fin.conn.hcm.log_needs_headers
        {
            fin.log_trailers = Some(t.clone());
        }
        if this.drop_trailers && matches!(&r, Poll::Ready(Some(Ok(f))) if f.is_trailers()) {
            this.ended = true;
            r = Poll::Ready(None);
        }
        match &r {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    this.sent += d.len() as u64;
                }
                if this.inner.is_end_stream()
                    && let Some(fin) = this.fin.take()
                {
                    fin.finish(this.sent, true);
                }
            }
            Poll::Ready(None) => {
                if let Some(fin) = this.fin.take() {
                    fin.finish(this.sent, true);
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(fin) = this.fin.take() {
                    fin.finish(this.sent, false);
                }
            }
            Poll::Pending => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for FinalBody {
    fn drop(&mut self) {
        if let Some(fin) = self.fin.take() {
            let complete = self.ended || self.inner.is_end_stream();
            if !complete && self.length == Some(self.sent) {
                // The client has the whole `content-length` body and hyper stopped reading:
                // the rest of the stream still goes through the filters, and completes.
                let rest = std::mem::replace(&mut self.inner, full(Bytes::new()));
                let sent = self.sent;
                let mut fin = fin;
                trailers::drain_rest(rest, move |ok, trailers| {
                    if fin.conn.hcm.log_needs_headers && trailers.is_some() {
                        fin.log_trailers = trailers;
                    }
                    fin.finish(sent, ok);
                });
                return;
            }
            fin.finish(self.sent, complete);
        }
    }
}

/// A body of one chunk.
pub(crate) fn full(b: Bytes) -> Body {
    Box::pin(http_body_util::Full::new(b).map_err(|e: Infallible| -> BoxError { match e {} }))
}
