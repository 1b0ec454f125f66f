//! The stream's life: request filters, route selection, the router's upstream request (cluster
//! choice, host pick, rewrites, timeout, retries), then the response through the filters.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::HOST;
use http::{HeaderValue, Response, StatusCode};
use http_body::{Body as _, Frame};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::chain::{self, Dir, FilterBody, Flow, FrameFlow, Hdrs, Pass, PumpStop, Stream};
use super::prefixed::Prefixed;
use super::trailers::NoTrailers;
use super::{Conn, FinalBody, Finisher, finalize_response_headers, full, local_reply_parts};
use crate::error::{ErrorKind, ProxyError};
use crate::filter::LocalReply;
use crate::response_flags::ResponseFlags;
use crate::route::{Action, RouteAction, rewrite_prefix};
use crate::upstream::{Body, BoxError};

type Shared = Rc<super::local_lock::LocalLock<Stream>>;

/// Frames read ahead while a filter held the headers, and the rest of the body.
enum Phase {
    Done(Vec<Frame<Bytes>>),
    Reply(LocalReply, usize),
    TooLarge,
}

/// Runs the header hooks of `pass`; when a filter stops iteration, reads the body through the
/// filters up to it until it lets data through, then resumes the headers.
async fn headers_phase<B>(
    stream: &Shared,
    pass: &mut Pass,
    h: &mut Hdrs<'_>,
    src: &mut Option<Prefixed<B>>,
) -> Phase
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    let mut from = 0;
    let mut carry: Vec<Frame<Bytes>> = Vec::new();
    let mut carry_from = 0;
    loop {
        let end = carry.is_empty() && src.is_none();
        let limit = pass.limit;
        let flow = {
            let mut st = stream.lock().await;
            let hooks = chain::headers(&mut st, pass, from, h, end);
            tokio::pin!(hooks);
            // Most hooks finish at once: no select for them.
            match futures::FutureExt::now_or_never(hooks.as_mut()) {
                Some(flow) => flow,
                // While a filter waits in its header hook (a plugin paused for a callout),
                // the body goes on being read into the source's front, up to the buffer
                // limit, as Envoy's codec reads a stopped stream's body into its buffer.
                None => loop {
                    let more = src.as_ref().is_some_and(|s| s.can_read_ahead(limit));
                    tokio::select! {
                        biased;
                        flow = &mut hooks => break flow,
                        () = async {
                            if let Some(s) = src.as_mut() {
                                s.read_ahead().await;
                            }
                        }, if more => {}
                    }
                },
            }
        };
        let stop_at = match flow {
            Flow::Done => pass.len(),
            Flow::Reply(r, pos) => return Phase::Reply(r, pos),
            Flow::Stopped(s) => s + 1,
        };
        let mut outs = Vec::new();
        for f in std::mem::take(&mut carry) {
            let end = f.is_trailers() || src.is_none();
            let mut st = stream.lock().await;
            match chain::frame(&mut st, pass, carry_from, stop_at, f, end).await {
                FrameFlow::Out(o) => outs.extend(o),
                FrameFlow::Reply(r) => return Phase::Reply(r, stop_at),
                FrameFlow::TooLarge => return Phase::TooLarge,
            }
        }
        if matches!(flow, Flow::Done) {
            return Phase::Done(outs);
        }
        // Park the headers where the holding filter's body hooks can still change them.
        {
            let mut st = stream.lock().await;
            match h {
                Hdrs::Req(p) => st
                    .cx
                    .hold_request_headers(std::mem::replace(*p, empty_request_parts())),
                Hdrs::Resp(p) => st
                    .cx
                    .hold_response_headers(std::mem::replace(*p, empty_response_parts())),
            }
        }
        let read = read_until_released(stream, pass, src, stop_at, outs).await;
        {
            let mut st = stream.lock().await;
            match h {
                Hdrs::Req(p) => {
                    if let Some(back) = st.cx.release_request_headers() {
                        **p = back;
                    }
                }
                Hdrs::Resp(p) => {
                    if let Some(back) = st.cx.release_response_headers() {
                        **p = back;
                    }
                }
            }
        }
        carry = match read {
            Ok(o) => o,
            Err(phase) => return phase,
        };
        carry_from = stop_at;
        from = stop_at;
    }
}

fn empty_request_parts() -> http::request::Parts {
    http::Request::new(()).into_parts().0
}

fn empty_response_parts() -> http::response::Parts {
    http::Response::new(()).into_parts().0
}

/// Reads the body through positions `..stop_at` until something comes out of the filter that
/// holds the headers, or the body ends.
async fn read_until_released<B>(
    stream: &Shared,
    pass: &mut Pass,
    src: &mut Option<B>,
    stop_at: usize,
    mut outs: Vec<Frame<Bytes>>,
) -> Result<Vec<Frame<Bytes>>, Phase>
where
    B: http_body::Body<Data = Bytes> + Unpin,
{
    while outs.is_empty() {
        let Some(body) = src.as_mut() else { break };
        let (fr, end) = match body.frame().await {
            Some(Ok(f)) => {
                let end = f.is_trailers() || body.is_end_stream();
                (f, end)
            }
            // A reset while a filter holds the headers: nothing will go upstream.
            Some(Err(_)) => {
                return Err(Phase::Reply(
                    LocalReply::new(StatusCode::BAD_REQUEST, "", "downstream_reset"),
                    0,
                ));
            }
            None => (Frame::data(Bytes::new()), true),
        };
        if end {
            *src = None;
        }
        let mut st = stream.lock().await;
        match chain::frame(&mut st, pass, 0, stop_at, fr, end).await {
            FrameFlow::Out(o) => {
                outs.extend(
                    o.into_iter()
                        .filter(|f| f.data_ref().is_none_or(|d| !d.is_empty()) || end),
                );
            }
            FrameFlow::Reply(r) => return Err(Phase::Reply(r, stop_at)),
            FrameFlow::TooLarge => return Err(Phase::TooLarge),
        }
    }
    Ok(outs)
}

fn error_reply(e: &ProxyError) -> LocalReply {
    LocalReply::new(e.status(), e.body(), e.details())
}

/// The whole stream.
pub(super) async fn run(
    conn: Rc<Conn>,
    stream: Shared,
    mut parts: http::request::Parts,
    body: Incoming,
    mut fin: Finisher,
) -> Response<Body> {
    let hcm = Arc::clone(&conn.hcm);
    let n = hcm.filters.len();
    let counter = Rc::clone(&fin.bytes_received);
    fin.head = parts.method == http::Method::HEAD;
    let limit = buffer_limit(&hcm, parts.version);
    // Envoy answers these before any filter runs: HTTP/1.0 (and 0.9) with 426
    // (`accept_http_10` is off by default; setting it is rejected as unsupported), headers over
    // `max_request_headers_kb` (60) with 431 (both from its HTTP/1 codec, which closes the
    // connection), and an HTTP/1.1 request with no `Host` with an empty 400 (its HCM).
    let h11 = parts.version == http::Version::HTTP_11;
    let codec_error = if parts.version < http::Version::HTTP_11 {
        Some((http::StatusCode::UPGRADE_REQUIRED, "low_version", true))
    } else if h11 && header_bytes(&parts) > MAX_HEADER_BYTES {
        let too_large = http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE;
        Some((too_large, "http1.headers_too_large", true))
    } else if h11 && !parts.headers.contains_key(HOST) {
        Some((http::StatusCode::BAD_REQUEST, "missing_host_header", false))
    } else if parts.headers.contains_key(http::header::UPGRADE) {
        // An upgrade (WebSocket...) with no `upgrade_configs`, which we do not support:
        // Envoy's HCM refuses it with an empty 403 before any filter runs.
        Some((http::StatusCode::FORBIDDEN, "upgrade_failed", false))
    } else {
        None
    };
    if let Some((status, details, codec)) = codec_error {
        if codec {
            // The codec refused the request before handing its headers on: the access log
            // has no method or path, and the protocol is the codec's (HTTP/1.1).
            hcm.stats.cx_protocol_error.inc();
            stream.lock().await.cx.stream_info_mut().protocol = http::Version::HTTP_11;
        } else {
            fin.capture(&parts);
        }
        let body = if codec {
            status.canonical_reason().unwrap_or_default()
        } else {
            ""
        };
        let reply = LocalReply::new(status, body, details);
        let flags = if status == http::StatusCode::FORBIDDEN {
            ResponseFlags::default()
        } else {
            ResponseFlags::DOWNSTREAM_PROTOCOL_ERROR
        };
        let mut resp = respond_local(&conn, &stream, fin, reply, 0, flags).await;
        if codec {
            resp.headers_mut()
                .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
        }
        return resp;
    }
    // An HTTP/1.1 client's trailers are dropped here, before the filters (Envoy's codec).
    let mut src = if body.is_end_stream() {
        fin.request_done.set(true);
        None
    } else {
        // (the end as a separate frame only matters to filters that see the body)
        let filtered = n > 0 && hcm.filters_use_bodies;
        // Filters see one chunk per socket read, as Envoy's HTTP/1.1 codec makes them.
        let ahead = (filtered && parts.version < http::Version::HTTP_2)
            .then(|| Arc::clone(&conn.read_ahead));
        let body = crate::read_ahead::Coalesce::new(body, ahead);
        let body =
            NoTrailers::decoded(body, parts.version, filtered).notify(Rc::clone(&fin.request_done));
        // (the bytes read are counted as they come off the connection: `request.size`)
        Some(Prefixed::new(body).counting(Rc::clone(&counter)))
    };
    // Route as the filters first see it (proxy-wasm reads `route_name` in request headers).
    let routes = Arc::clone(&hcm.routes);
    let select = |parts: &http::request::Parts| {
        let authority = parts
            .headers
            .get(HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| parts.uri.authority().map(|a| a.as_str()))
            .unwrap_or_default();
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        routes
            .select(authority, path, &parts.headers)
            .map(|s| (s.virtual_host, s.route))
    };
    let mut selected = select(&parts);
    if n > 0 {
        let mut st = stream.lock().await;
        let info = st.cx.stream_info_mut();
        info.route_name = selected.as_ref().map(|(_, r)| r.name.clone());
        info.virtual_host_name = selected.as_ref().map(|(v, _)| v.name.clone());
        let cluster = selected.as_ref().and_then(|(_, r)| picked_cluster(r));
        info.set_cluster(cluster, &conn.worker.config.load());
        info.route_metadata = selected.as_ref().and_then(|(_, r)| r.metadata.clone());
        info.virtual_host_metadata = selected.as_ref().and_then(|(v, _)| v.metadata.clone());
    }
    let mut pending = Vec::new();
    let mut headers_waited = false;
    if n > 0 {
        let mut pass = Pass::new(Dir::Request, n, limit);
        let waited = std::cell::Cell::new(false);
        let phase = WasPending {
            inner: std::pin::pin!(headers_phase(
                &stream,
                &mut pass,
                &mut Hdrs::Req(&mut parts),
                &mut src,
            )),
            pending: &waited,
        }
        .await;
        headers_waited = waited.get();
        match phase {
            Phase::Done(p) => pending = p,
            Phase::Reply(r, pos) => {
                if waited.get() && !fin.request_done.get() {
                    read_arrived(&mut src, limit).await;
                }
                fin.capture(&parts);
                keep_request(&stream, &parts, n).await;
                return respond_local(&conn, &stream, fin, r, pos + 1, ResponseFlags::default())
                    .await;
            }
            Phase::TooLarge => {
                hcm.stats.rq_too_large.inc();
                // (Envoy's codec is still inside the body when the limit is crossed: the
                // request never completes, and an HTTP/1.1 connection is closed)
                fin.close = true;
                fin.capture(&parts);
                keep_request(&stream, &parts, n).await;
                let e = ProxyError::new(ErrorKind::RequestTooLarge);
                return respond_local(&conn, &stream, fin, error_reply(&e), n, e.response_flags())
                    .await;
            }
        }
        let mut st = stream.lock().await;
        if st.cx.take_route_cache_cleared() {
            let again = select(&parts);
            let same = |a: &Option<(&crate::route::VirtualHost, &crate::route::Route)>| {
                a.map(|(v, r)| (v as *const _, r as *const _))
            };
            if same(&again) != same(&selected) {
                let info = st.cx.stream_info_mut();
                info.route_name = again.as_ref().map(|(_, r)| r.name.clone());
                info.virtual_host_name = again.as_ref().map(|(v, _)| v.name.clone());
                let cluster = again.as_ref().and_then(|(_, r)| picked_cluster(r));
                info.set_cluster(cluster, &conn.worker.config.load());
                info.route_metadata = again.as_ref().and_then(|(_, r)| r.metadata.clone());
                info.virtual_host_metadata = again.as_ref().and_then(|(v, _)| v.metadata.clone());
            }
            selected = again;
        }
    }
    let Some((vhost, route)) = selected else {
        hcm.stats.no_route.inc();
        fin.capture(&parts);
        keep_request(&stream, &parts, n).await;
        let e = ProxyError::new(ErrorKind::NoRoute);
        return respond_local(&conn, &stream, fin, error_reply(&e), n, e.response_flags()).await;
    };
    let action = match &route.action {
        Action::DirectResponse { status, body } => {
            hcm.stats.rq_direct_response.inc();
            fin.capture(&parts);
            keep_request(&stream, &parts, n).await;
            let mut reply =
                LocalReply::new(*status, body.clone().unwrap_or_default(), "direct_response");
            routes.mutate_response(vhost, route, &mut reply.headers);
            return respond_local(&conn, &stream, fin, reply, n, ResponseFlags::default()).await;
        }
        Action::Redirect(r) => {
            // Envoy counts route redirects as direct responses (its `rq_redirect` is for
            // internal redirects, which we do not do).
            hcm.stats.rq_direct_response.inc();
            fin.capture(&parts);
            keep_request(&stream, &parts, n).await;
            let authority = parts
                .headers
                .get(HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_string)
                .or_else(|| parts.uri.authority().map(|a| a.to_string()))
                .unwrap_or_default();
            let scheme = parts
                .headers
                .get("x-forwarded-proto")
                .and_then(|h| h.to_str().ok())
                .unwrap_or(if conn.tls { "https" } else { "http" })
                .to_string();
            let pq = parts
                .uri
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_string();
            let mut reply = LocalReply::new(r.status, "", "direct_response");
            if let Ok(v) = HeaderValue::from_str(&r.location(route, &authority, &pq, &scheme)) {
                reply.headers.insert(http::header::LOCATION, v);
            }
            routes.mutate_response(vhost, route, &mut reply.headers);
            return respond_local(&conn, &stream, fin, reply, n, ResponseFlags::default()).await;
        }
        Action::Route(a) => a,
    };
    // The request body from here on.
    let stop_slot: Rc<RefCell<Option<PumpStop>>> = Rc::default();
    let mut retained = None;
    let body_empty = src.is_none() && pending.is_empty();
    let upstream_body: Body = match src.take() {
        // No body (a GET): nothing for the body hooks (Envoy calls no decodeData after headers
        // with end of stream), and a zero-sized body costs no allocation.
        None if pending.is_empty() => Box::pin(
            http_body_util::Empty::<Bytes>::new()
                .map_err(|e: std::convert::Infallible| -> BoxError { match e {} }),
        ),
        Some(b) if pending.is_empty() && !hcm.filters_use_bodies => Box::pin(b),
        src => {
            let from = if hcm.filters_use_bodies { 0 } else { n };
            let slot = Rc::clone(&stop_slot);
            let pass = Pass::new(Dir::Request, n, limit);
            let body = FilterBody::new(pending, src, Rc::clone(&stream), pass, from)
                .buffered_while_held(headers_waited)
                .on_stop(Box::new(move |s| {
                    *slot.borrow_mut() = Some(s);
                }))
                .boxed();
            if hcm.filters_use_bodies {
                let (body, slot) = Retained::new(body);
                retained = Some(slot);
                Box::pin(body)
            } else {
                body
            }
        }
    };
    if !action.cluster_request_headers.is_empty() {
        // The weighted cluster's own header mutations come first (Envoy's weighted cluster
        // entry applies them before the route's): the cluster is chosen now.
        let mut st = stream.lock().await;
        let info = st.cx.stream_info_mut();
        let name = match &info.cluster_name {
            Some(c) if action.clusters.contains(c) => Arc::clone(c),
            _ => Arc::clone(action.clusters.pick(crate::worker::rand_u32())),
        };
        if let Some((_, m)) = action
            .cluster_request_headers
            .iter()
            .find(|(c, _)| *c == name)
        {
            m.apply(&mut parts.headers);
        }
        info.cluster_name = Some(name);
    }
    routes.mutate_request(vhost, route, &mut parts.headers);
    let result = forward(
        &conn,
        &stream,
        action,
        route,
        &mut parts,
        upstream_body,
        body_empty,
        n > 0,
        &mut fin,
    )
    .await;
    if result.is_err()
        && let Some(slot) = retained
    {
        // The upstream failed before reading the request body (a refused connection, say):
        // Envoy's codec has passed what arrived through the filters meanwhile (the router
        // buffers it), so their body hooks, `request.size` and the connection's keep-alive
        // see it before the local reply.
        let left = slot.borrow_mut().take();
        if left.is_some() {
            read_arrived(&mut { left }, limit).await;
        }
    }
    if n > 0 {
        // The request as far as it got, for on_log, when `forward` stopped before storing it.
        let mut st = stream.lock().await;
        let info = st.cx.stream_info_mut();
        if info.request_headers.is_none() {
            info.request_headers = Some(Arc::new(parts));
        }
    }
    let stop = stop_slot.borrow_mut().take();
    match (result, stop) {
        (_, Some(PumpStop::Reply(r, at_end))) => {
            if !at_end {
                // (the rest of the request may be read already; Envoy's codec had not
                // delivered its end yet)
                fin.request_done.set(false);
            }
            respond_local(&conn, &stream, fin, r, n, ResponseFlags::default()).await
        }
        (_, Some(PumpStop::TooLarge)) => {
            hcm.stats.rq_too_large.inc();
            fin.close = true;
            let e = ProxyError::new(ErrorKind::RequestTooLarge);
            respond_local(&conn, &stream, fin, error_reply(&e), n, e.response_flags()).await
        }
        (Ok((resp, service_time)), None) => {
            let (mut rparts, rbody) = resp.into_parts();
            // Envoy writes the standard reason phrase, whatever the upstream's was.
            rparts.extensions.remove::<hyper::ext::ReasonPhrase>();
            // An HTTP/1.1 upstream's trailers are dropped before the filters, and its
            // `transfer-encoding` is the codec's business (Envoy's removes it).
            let version = rparts.version;
            if version < http::Version::HTTP_2
                && rparts.headers.contains_key(http::header::TRANSFER_ENCODING)
            {
                crate::header_order::remove(&mut rparts.headers, &["transfer-encoding"]);
            }
            routes.mutate_response(vhost, route, &mut rparts.headers);
            if let Ok(v) = HeaderValue::from_str(&service_time.as_millis().to_string()) {
                rparts.headers.insert("x-envoy-upstream-service-time", v);
            }
            {
                let mut st = stream.lock().await;
                let info = st.cx.stream_info_mut();
                info.upstream_service_time = Some(service_time);
                // The request's end went upstream when the answered attempt started or, with a
                // body, when the body's end was read (still streaming: by now).
                let now = Instant::now();
                let sent = match (fin.request_done.at(), fin.upstream_timing) {
                    (Some(read), Some((attempt, _))) => read.max(attempt),
                    _ => now,
                };
                info.request_tx_duration = Some(sent.saturating_duration_since(fin.start));
                info.response_duration = Some(now.saturating_duration_since(fin.start));
                info.upstream_local_addr = fin.upstream_reads.as_ref().and_then(|r| r.local());
                // (what was read of the request so far: `request.size` without a length)
                info.bytes_received = counter.get();
                info.response_code_details = Some(Arc::clone(&VIA_UPSTREAM));
            }
            let end = rbody.is_end_stream();
            let filtered = n > 0 && hcm.filters_use_bodies;
            // Filters see one chunk per upstream read, as Envoy's HTTP/1.1 codec makes them.
            let reads = fin.upstream_reads.take().filter(|_| filtered);
            let rsrc = if end {
                None
            } else {
                Some(NoTrailers::decoded(
                    crate::read_ahead::Coalesce::new(rbody, reads),
                    version,
                    filtered,
                ))
            };
            respond(&conn, &stream, fin, rparts, rsrc, n).await
        }
        (Err(e), None) => {
            if let Some(why) = e.transport_failure_reason() {
                let mut st = stream.lock().await;
                st.cx.stream_info_mut().upstream_transport_failure_reason = Some(Arc::from(why));
            }
            // The router's local replies carry the route's response header mutations.
            let flags = e.response_flags();
            let mut reply = error_reply(&e);
            routes.mutate_response(vhost, route, &mut reply.headers);
            respond_local(&conn, &stream, fin, reply, n, flags).await
        }
    }
}

pub(super) fn clone_parts(p: &http::request::Parts) -> http::request::Parts {
    // Field by field: `http::request::Builder` moves the whole head through a `Result` at each
    // step (memcpy showed up under it in perf).
    let (mut out, ()) = http::Request::new(()).into_parts();
    out.method = p.method.clone();
    out.uri = p.uri.clone();
    out.version = p.version;
    out.headers = p.headers.clone();
    out
}

/// Envoy's default `max_request_headers_kb`, in bytes.
const MAX_HEADER_BYTES: usize = 60 * 1024;

/// The size Envoy checks against `max_request_headers_kb`: names and values, the request
/// target included.
fn header_bytes(parts: &http::request::Parts) -> usize {
    let target = parts.uri.path_and_query().map_or(0, |p| p.as_str().len());
    parts
        .headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len())
        .sum::<usize>()
        + target
}

/// `%RESPONSE_CODE_DETAILS%` of a proxied response, shared by every stream.
static VIA_UPSTREAM: std::sync::LazyLock<Arc<str>> =
    std::sync::LazyLock::new(|| Arc::from("via_upstream"));

/// Keeps the request for `on_log` when the filters get a local reply (Envoy's access-log
/// request headers are the request as it came, also when nothing went upstream).
async fn keep_request(stream: &Shared, parts: &http::request::Parts, n: usize) {
    if n == 0 {
        return;
    }
    let mut st = stream.lock().await;
    let info = st.cx.stream_info_mut();
    if info.request_headers.is_none() {
        info.request_headers = Some(Arc::new(clone_parts(parts)));
    }
}

/// The cluster a route sends to, picked when the route is chosen (Envoy's route entry knows
/// its cluster, weighted ones included, before the filters run: `xds.cluster_name`).
fn picked_cluster(route: &crate::route::Route) -> Option<Arc<str>> {
    match &route.action {
        Action::Route(a) => Some(Arc::clone(a.clusters.pick(crate::worker::rand_u32()))),
        _ => None,
    }
}

/// Hop-by-hop headers, removed from requests sent upstream and from responses sent downstream.
pub(super) const HOP_BY_HOP: [&str; 5] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
];

#[allow(
    clippy::too_many_arguments,
    reason = "one call site; the stream's pieces"
)]
async fn forward(
    conn: &Conn,
    stream: &Shared,
    action: &RouteAction,
    route: &crate::route::Route,
    parts: &mut http::request::Parts,
    body: Body,
    body_empty: bool,
    log_request: bool,
    fin: &mut Finisher,
) -> Result<(Response<Incoming>, Duration), ProxyError> {
    let config = conn.worker.config.load();
    // The cluster picked when the route was chosen (filters may have read it), if it is one
    // of this route's.
    let (cluster_name, cluster) = {
        let mut st = stream.lock().await;
        let info = st.cx.stream_info_mut();
        let name = match &info.cluster_name {
            Some(c) if action.clusters.contains(c) => Arc::clone(c),
            _ => Arc::clone(action.clusters.pick(crate::worker::rand_u32())),
        };
        let cluster = config.clusters.get(&*name).cloned();
        // (one lookup: the cluster's metadata comes with it)
        info.cluster_metadata = cluster.as_ref().and_then(|c| c.metadata.clone());
        info.cluster_name = Some(Arc::clone(&name));
        (name, cluster)
    };
    let cluster =
        cluster.ok_or_else(|| ProxyError::new(ErrorKind::NoCluster(cluster_name.to_string())))?;
    // Trailers from an h2 client are not sent to an HTTP/1.1 upstream (Envoy's codec drops
    // them); an HTTP/1.1 client's were dropped on the way in.
    let body = if !body_empty
        && cluster.protocol == crate::cluster::UpstreamProtocol::Http1
        && !super::trailers::dropped_on(parts.version)
    {
        let length = super::trailers::content_length(&parts.headers);
        crate::upstream::boxed(super::trailers::ToLength::new(
            NoTrailers::new(body, true),
            length,
        ))
    } else {
        body
    };
    // Rewrites.
    if let Some(rw) = &action.prefix_rewrite {
        let pq = parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string();
        let new = rewrite_prefix(route, rw, &pq);
        if let Ok(v) = HeaderValue::from_str(&pq) {
            parts.headers.insert("x-envoy-original-path", v);
        }
        let mut up = parts.uri.clone().into_parts();
        up.path_and_query = new.parse().ok();
        if let Ok(u) = http::Uri::from_parts(up) {
            parts.uri = u;
        }
    }
    if let Some(h) = &action.host_rewrite {
        if let Some(orig) = parts.headers.get(HOST).cloned() {
            parts.headers.insert("x-envoy-original-host", orig);
        }
        parts.headers.insert(HOST, h.clone());
    }
    crate::header_order::remove(&mut parts.headers, &HOP_BY_HOP);
    // `te` goes upstream only as `trailers` (Envoy keeps that token and drops the rest).
    if let Some(te) = parts.headers.get(http::header::TE)
        && te.as_bytes() != b"trailers"
    {
        let trailers = te
            .to_str()
            .unwrap_or_default()
            .split(',')
            .any(|t| t.trim().eq_ignore_ascii_case("trailers"));
        if trailers {
            parts
                .headers
                .insert(http::header::TE, HeaderValue::from_static("trailers"));
        } else {
            crate::header_order::remove(&mut parts.headers, &["te"]);
        }
    }
    let timeout = action.timeout_for(&parts.headers, fin.grpc);
    if let Some(t) = timeout
        && let Ok(v) = HeaderValue::from_str(&t.as_millis().to_string())
    {
        parts.headers.insert("x-envoy-expected-rq-timeout-ms", v);
    }
    // Envoy's HTTP/1 encoder states an empty body on a headers-only request whose method may
    // carry one (POST, PUT, PATCH, OPTIONS...; not GET, HEAD, DELETE, TRACE, CONNECT).
    if body_empty
        && cluster.protocol == crate::cluster::UpstreamProtocol::Http1
        && !matches!(
            parts.method,
            http::Method::GET
                | http::Method::HEAD
                | http::Method::DELETE
                | http::Method::TRACE
                | http::Method::CONNECT
        )
        && !parts.headers.contains_key(http::header::CONTENT_LENGTH)
    {
        parts
            .headers
            .insert(http::header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    }
    // Envoy's HTTP/1 encoder writes `host` (its `:authority`) first.
    if cluster.protocol == crate::cluster::UpstreamProtocol::Http1
        && parts.headers.keys().next().is_some_and(|k| k != HOST)
        && let Some(host) = parts.headers.get(HOST).cloned()
    {
        crate::header_order::remove(&mut parts.headers, &["host"]);
        let rest = std::mem::take(&mut parts.headers);
        parts.headers.reserve(rest.len() + 1);
        parts.headers.insert(HOST, host);
        let mut current = None;
        for (k, v) in rest {
            if let Some(k) = k {
                current = Some(k);
            }
            if let Some(k) = &current {
                parts.headers.append(k.clone(), v);
            }
        }
    }
    fin.capture(parts);
    if log_request {
        // Filters' on_log sees the request as it goes upstream (Envoy's router edits the same
        // map), also when the client goes away before the response.
        let mut st = stream.lock().await;
        st.cx.stream_info_mut().request_headers = Some(Arc::new(clone_parts(parts)));
    }
    let deadline = timeout.map(|t| Instant::now() + t);
    let retries = match &action.retry {
        Some(r) if body_empty => r.num_retries,
        _ => 0,
    };
    let cname: Arc<str> = cluster_name;
    let chunk_unsized = !body_empty
        && cluster.protocol == crate::cluster::UpstreamProtocol::Http1
        && matches!(
            parts.method,
            http::Method::GET | http::Method::HEAD | http::Method::CONNECT
        );
    let mut body = Some(body);
    let started = Instant::now();
    let mut attempt = 0;
    loop {
        attempt += 1;
        let Some(host) = cluster.pick(crate::worker::rand_u32()) else {
            cluster.stats.cx_none_healthy.inc();
            return Err(ProxyError {
                kind: ErrorKind::NoHealthyUpstream,
                attempts: attempt,
            });
        };
        {
            let mut st = stream.lock().await;
            let info = st.cx.stream_info_mut();
            info.upstream_host = Some(host.addr);
            info.attempt_count = attempt;
        }
        let this_body = match body.take() {
            Some(b) if attempt == 1 => b,
            _ => super::full(Bytes::new()),
        };
        let mut b = http::Request::builder()
            .method(parts.method.clone())
            .uri(parts.uri.clone())
            .version(parts.version);
        if let Some(h) = b.headers_mut() {
            // Without retries the headers are not needed again (on_log has its copy).
            *h = if retries == 0 {
                std::mem::take(&mut parts.headers)
            } else {
                parts.headers.clone()
            };
        }
        let mut req = b
            .body(this_body)
            .map_err(|e| ProxyError::new(ErrorKind::Internal(e.to_string())))?;
        // A retry tells the upstream the time left of the route's timeout (Envoy's router).
        if attempt > 1
            && let Some(d) = deadline
        {
            let left = d.saturating_duration_since(Instant::now()).as_millis();
            if let Ok(v) = HeaderValue::from_str(&left.to_string()) {
                req.headers_mut()
                    .insert("x-envoy-expected-rq-timeout-ms", v);
            }
        }
        if action.attempt_count_upstream {
            // (the virtual host's `include_request_attempt_count`; Envoy's router sets it on
            // each attempt)
            req.headers_mut()
                .insert("x-envoy-attempt-count", HeaderValue::from(attempt));
        }
        // A GET (HEAD, CONNECT) with a body but no `content-length` (a plugin removed it):
        // hyper would assume no body for these methods; Envoy's HTTP/1 encoder sends it
        // chunked.
        if chunk_unsized
            && attempt == 1
            && !req.headers().contains_key(http::header::CONTENT_LENGTH)
            && !req.headers().contains_key(http::header::TRANSFER_ENCODING)
        {
            req.headers_mut().insert(
                http::header::TRANSFER_ENCODING,
                HeaderValue::from_static("chunked"),
            );
        }
        let internal = req
            .headers()
            .get(super::X_ENVOY_INTERNAL)
            .is_some_and(|v| v.as_bytes() == b"true");
        cluster.stats.rq_total.inc();
        host.active_rq
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let per_try = action.retry.as_ref().and_then(|r| r.per_try_timeout);
        let limit = match (deadline, per_try) {
            (Some(d), Some(p)) => Some(d.min(Instant::now() + p)),
            (Some(d), None) => Some(d),
            (None, Some(p)) => Some(Instant::now() + p),
            (None, None) => None,
        };
        let send = conn
            .worker
            .pools
            .send_with_reads(&cluster, &cname, &host, req);
        let result = match limit {
            Some(l) => match tokio::time::timeout_at(l.into(), send).await {
                Ok(r) => r,
                Err(_) => {
                    cluster.stats.rq_timeout.inc();
                    host.rq_timeout
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    Err(ProxyError::new(ErrorKind::UpstreamTimeout))
                }
            },
            None => send.await,
        };
        let can_retry = attempt <= retries;
        match result {
            Ok((resp, reads)) => {
                fin.upstream_reads = reads;
                let status = resp.status().as_u16();
                let outcome = if status >= 500 {
                    &host.rq_error
                } else {
                    &host.rq_success
                };
                outcome.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let retriable = action
                    .retry
                    .as_ref()
                    .is_some_and(|r| r.retry_status(status) || r.retry_grpc(resp.headers()));
                if can_retry && retriable {
                    // (Envoy charges a retried response under `retry.`)
                    cluster.stats.record_retried_status(status);
                    host.active_rq
                        .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                    cluster.stats.rq_retry.inc();
                    cluster.stats.rq_retry_backoff_exponential.inc();
                    backoff(attempt).await;
                    continue;
                }
                cluster.stats.record_status(status, internal);
                if retriable && retries > 0 {
                    retry_limit_exceeded(stream, &cluster).await;
                } else if attempt > 1 {
                    cluster.stats.rq_retry_success.inc();
                }
                fin.upstream = Some((Arc::clone(&cluster), host));
                fin.upstream_timing = Some((started, internal));
                return Ok((resp, started.elapsed()));
            }
            Err(mut e) => {
                host.active_rq
                    .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                if !matches!(e.kind, ErrorKind::UpstreamTimeout) {
                    host.rq_error
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                let policy_allows = action.retry.as_ref().is_some_and(|r| match e.kind {
                    ErrorKind::ConnectFailure(_) => r.on_connect_failure,
                    ErrorKind::UpstreamReset(_) => r.on_reset,
                    _ => false,
                });
                let timed_out = matches!(e.kind, ErrorKind::UpstreamTimeout);
                let global_deadline_passed = deadline.is_some_and(|d| Instant::now() >= d);
                if can_retry && policy_allows && !global_deadline_passed && !timed_out {
                    cluster.stats.rq_retry.inc();
                    cluster.stats.rq_retry_backoff_exponential.inc();
                    backoff(attempt).await;
                    continue;
                }
                if policy_allows && retries > 0 {
                    retry_limit_exceeded(stream, &cluster).await;
                }
                // The router charges its own reply to an attempt that failed (Envoy's
                // `chargeUpstreamAbort`): `upstream_rq_503` for a refused or reset
                // connection, `upstream_rq_504` for a timeout. A connection that could not be
                // made also fails the pending request.
                if matches!(
                    e.kind,
                    ErrorKind::ConnectFailure(_)
                        | ErrorKind::UpstreamReset(_)
                        | ErrorKind::UpstreamProtocol(_)
                        | ErrorKind::UpstreamTimeout
                ) {
                    cluster.stats.record_status(e.status().as_u16(), internal);
                }
                if matches!(e.kind, ErrorKind::ConnectFailure(_)) {
                    cluster.stats.rq_pending_failure_eject.inc();
                }
                e.attempts = attempt;
                return Err(e);
            }
        }
    }
}

/// Envoy's h2 stream buffer: its `initial_stream_window_size` default (256 MiB).
const H2_STREAM_BUFFER_LIMIT: usize = 256 * 1024 * 1024;

/// How much a filter may buffer on a stream: Envoy takes the stream's own limit, which for an
/// HTTP/1.1 connection is `per_connection_buffer_limit_bytes` and for an h2 stream its flow
/// control window (so an h2 client's 2 MiB body is buffered whole where HTTP/1.1 gets a 413).
fn buffer_limit(hcm: &super::HcmConfig, version: http::Version) -> usize {
    if version >= http::Version::HTTP_2 {
        H2_STREAM_BUFFER_LIMIT.max(hcm.buffer_limit)
    } else {
        hcm.buffer_limit
    }
}

/// A retriable outcome with no retry left: Envoy's `URX` flag and `upstream_rq_retry_limit_exceeded`.
async fn retry_limit_exceeded(stream: &Shared, cluster: &crate::cluster::Cluster) {
    cluster.stats.rq_retry_limit_exceeded.inc();
    let mut st = stream.lock().await;
    st.cx
        .stream_info_mut()
        .response_flags
        .insert(ResponseFlags::UPSTREAM_RETRY_LIMIT_EXCEEDED);
}

/// Envoy's retry back-off: 25 ms base, doubling.
async fn backoff(attempt: u32) {
    let ms = 25u64.saturating_mul(1 << attempt.saturating_sub(1).min(4));
    tokio::time::sleep(Duration::from_millis(
        crate::worker::rand_u32() as u64 % ms + 1,
    ))
    .await;
}

/// A future that records whether it ever had to wait.
struct WasPending<'a, F> {
    inner: std::pin::Pin<&'a mut F>,
    pending: &'a std::cell::Cell<bool>,
}

impl<F: std::future::Future> std::future::Future for WasPending<'_, F> {
    type Output = F::Output;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<F::Output> {
        let r = self.inner.as_mut().poll(cx);
        if r.is_pending() {
            self.pending.set(true);
        }
        r
    }
}

/// A filter that paused the request and replied later (after a callout, say) replies to a
/// request Envoy's codec has read meanwhile, as far as it had arrived: read what already
/// arrived (up to `limit` bytes, dropped), so that a request whose end is here is complete
/// and its reply keeps the connection, as in Envoy.
async fn read_arrived<B>(src: &mut Option<B>, limit: usize)
where
    B: http_body::Body + Unpin,
{
    use futures::FutureExt;
    let Some(b) = src.as_mut() else { return };
    let mut seen = 0;
    let mut idle = 0;
    while seen < limit && idle < 2 {
        match b.frame().now_or_never() {
            Some(Some(Ok(f))) => {
                idle = 0;
                seen += f.data_ref().map_or(0, bytes::Buf::remaining);
            }
            Some(_) => return,
            // let the connection task read the socket, then look again
            None => {
                idle += 1;
                tokio::task::yield_now().await;
            }
        }
    }
}

/// The request body as the upstream reads it, with the body kept reachable (`slot`) so that
/// what a failed upstream never read can still be read through the filters.
struct Retained {
    slot: Rc<RefCell<Option<Body>>>,
}

impl Retained {
    fn new(body: Body) -> (Self, Rc<RefCell<Option<Body>>>) {
        let slot = Rc::new(RefCell::new(Some(body)));
        (
            Self {
                slot: Rc::clone(&slot),
            },
            slot,
        )
    }
}

impl http_body::Body for Retained {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.slot.borrow_mut().as_mut() {
            Some(b) => b.as_mut().poll_frame(cx),
            None => std::task::Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.slot
            .borrow()
            .as_ref()
            .is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.slot
            .borrow()
            .as_ref()
            .map_or_else(|| http_body::SizeHint::with_exact(0), |b| b.size_hint())
    }
}

/// Whether a plugin removed the response's `:status` (and none set it again).
fn missing_status(parts: &mut http::response::Parts) -> bool {
    parts
        .extensions
        .remove::<crate::wasm_filter::MissingStatus>()
        .is_some()
}

/// A local reply through the response hooks of the first `seen` filters.
async fn respond_local(
    conn: &Rc<Conn>,
    stream: &Shared,
    fin: Finisher,
    reply: LocalReply,
    seen: usize,
    flags: ResponseFlags,
) -> Response<Body> {
    {
        let mut st = stream.lock().await;
        let info = st.cx.stream_info_mut();
        info.response_code_details = Some(Arc::from(reply.details.as_str()));
        info.response_flags.insert(flags);
        // What was read of the request so far (`request.size` for the response hooks).
        info.bytes_received = fin.bytes_received.get();
    }
    if fin.grpc {
        let parts = super::grpc_local_reply_parts(&reply);
        return respond(conn, stream, fin, parts, None::<Body>, seen).await;
    }
    let parts = local_reply_parts(&reply);
    let src = if reply.body.is_empty() || fin.head {
        None
    } else {
        Some(full(reply.body))
    };
    // Envoy closes an HTTP/1.1 connection after a local 400 (the request may be broken).
    let mut fin = fin;
    fin.close |= reply.status == http::StatusCode::BAD_REQUEST;
    respond(conn, stream, fin, parts, src, seen).await
}

/// Sends a response downstream through the response hooks of the first `seen` filters
/// (reverse order).
async fn respond<B>(
    conn: &Rc<Conn>,
    stream: &Shared,
    mut fin: Finisher,
    mut parts: http::response::Parts,
    src: Option<B>,
    seen: usize,
) -> Response<Body>
where
    B: http_body::Body<Data = Bytes> + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    let hcm = Arc::clone(&conn.hcm);
    let mut src = src.map(Prefixed::new);
    let mut pending = Vec::new();
    let limit = if seen > 0 {
        let st = stream.lock().await;
        buffer_limit(&hcm, st.cx.stream_info().protocol)
    } else {
        hcm.buffer_limit
    };
    if seen > 0 {
        let mut pass = Pass::new(Dir::Response, seen, limit);
        match headers_phase(stream, &mut pass, &mut Hdrs::Resp(&mut parts), &mut src).await {
            Phase::Done(p) if missing_status(&mut parts) => {
                // Envoy checks the required headers once the filters are done: a `:status` a
                // plugin removed is a 502 (not filtered again).
                drop(p);
                let r = LocalReply::new(
                    StatusCode::BAD_GATEWAY,
                    "missing required header: :status",
                    "filter_removed_required_response_headers{missing_required_header:_:status}",
                );
                parts = local_reply_parts(&r);
                pending = if fin.head {
                    Vec::new()
                } else {
                    vec![Frame::data(r.body.clone())]
                };
                src = None;
                let mut st = stream.lock().await;
                st.cx.stream_info_mut().response_code_details = Some(Arc::from(r.details.as_str()));
            }
            Phase::Done(p) => pending = p,
            Phase::Reply(r, _) => {
                // A reply from a response hook replaces the response; it is not filtered again.
                fin.close |= r.status == http::StatusCode::BAD_REQUEST;
                if fin.grpc {
                    parts = super::grpc_local_reply_parts(&r);
                    pending = Vec::new();
                } else {
                    parts = local_reply_parts(&r);
                    pending = vec![Frame::data(r.body.clone())];
                }
                if fin.head {
                    pending = Vec::new();
                }
                src = None;
                let mut st = stream.lock().await;
                st.cx.stream_info_mut().response_code_details = Some(Arc::from(r.details.as_str()));
            }
            Phase::TooLarge => {
                hcm.stats.rs_too_large.inc();
                let e = ProxyError::new(ErrorKind::ResponseTooLarge);
                let r = error_reply(&e);
                parts = local_reply_parts(&r);
                pending = vec![Frame::data(r.body.clone())];
                src = None;
                let mut st = stream.lock().await;
                st.cx.stream_info_mut().response_code_details = Some(Arc::from(r.details.as_str()));
            }
        }
    }
    let drop_trailers;
    let h1;
    {
        let mut st = stream.lock().await;
        let info = st.cx.stream_info_mut();
        info.response_code = Some(parts.status.as_u16());
        h1 = info.protocol < http::Version::HTTP_2;
        drop_trailers = super::trailers::dropped_on(info.protocol);
        finalize_response_headers(&hcm, &mut parts, info.request_id.as_deref());
        // A response that starts before the whole request was read closes an HTTP/1.1
        // connection (Envoy's HCM: the rest of the request is not waited for).
        if h1 && (!fin.request_done.get() || fin.close) {
            parts
                .headers
                .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
        }
        // on_log and the access log see the headers as sent (`server` included), as in Envoy.
        if seen > 0 || hcm.log_needs_headers {
            info.response_headers = Some(Arc::new(parts.headers.clone()));
        }
    }
    let body: Body = match src {
        Some(b) if pending.is_empty() && !(hcm.filters_use_bodies && seen > 0) => {
            crate::upstream::boxed(b)
        }
        src => {
            let from = if hcm.filters_use_bodies { 0 } else { seen };
            let pass = Pass::new(Dir::Response, seen, limit);
            FilterBody::new(pending, src, Rc::clone(stream), pass, from).boxed()
        }
    };
    let body = Box::pin(FinalBody::new(body, fin, drop_trailers, &parts.headers)) as Body;
    Response::from_parts(parts, body)
}
