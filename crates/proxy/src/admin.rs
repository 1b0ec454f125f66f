//! The admin server: Envoy's `/ready`, `/stats` (`filter`, `usedonly`), `/stats/prometheus`,
//! `/config_dump`, `/server_info`, `/clusters`, `/listeners`, `/drain_listeners`,
//! `/healthcheck/fail|ok`, `/quitquitquit`, with the bootstrap's `admin.access_log`.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use prost::Message;
use tokio::net::TcpListener;

use crate::config::ProxyConfig;
use crate::stats::Store;

/// What the admin handlers read.
#[derive(Clone)]
pub(crate) struct AdminState {
    pub(crate) config: Arc<ArcSwap<ProxyConfig>>,
    pub(crate) store: Store,
    pub(crate) listeners: crate::server::BoundListeners,
    pub(crate) quit: Arc<tokio::sync::Notify>,
    /// `server.state` and the other server stats.
    pub(crate) server: crate::stats::ServerStats,
    /// The workers' listener commands (`/drain_listeners`).
    pub(crate) workers: WorkerCmds,
    /// `--drain-time-s`: how long a graceful `/drain_listeners` keeps listeners open.
    pub(crate) drain_time: std::time::Duration,
}

/// Where the admin API tells the workers to stop listeners.
pub(crate) type WorkerCmds =
    Arc<std::sync::Mutex<Vec<tokio::sync::mpsc::UnboundedSender<crate::server::ListenerCmd>>>>;

/// The admin listener's own stats, as Envoy keeps them: `listener.admin.*` and the admin
/// connection manager's `http.admin.*`.
#[derive(Clone)]
struct AdminStats {
    listener: crate::stats::ListenerStats,
    http: crate::stats::HcmStats,
}

impl AdminStats {
    fn new(store: &Store) -> Self {
        Self {
            listener: crate::stats::ListenerStats::new(store, crate::stats::ListenerScope::Admin),
            http: crate::stats::HcmStats::admin(store),
        }
    }
}

/// One admin request's response code, counted once: Envoy counts it when the response headers
/// go out, before a streamed body such as `/stats` is rendered (so a stats dump includes the
/// request asking for it).
struct Charge<'a> {
    stats: &'a crate::stats::HcmStats,
    done: std::cell::Cell<bool>,
}

impl Charge<'_> {
    fn status(&self, code: StatusCode) {
        if !self.done.replace(true) {
            self.stats.record_status(code.as_u16());
        }
    }
}

/// Serves the admin API on `listener` until the task is dropped.
pub(crate) async fn serve(listener: TcpListener, state: AdminState) {
    let stats = AdminStats::new(&state.store);
    loop {
        let Ok((sock, peer)) = listener.accept().await else {
            continue;
        };
        let local = sock.local_addr().unwrap_or(peer);
        let st = state.clone();
        let stats = stats.clone();
        tokio::spawn(async move {
            let opened = std::time::Instant::now();
            let cx = stats.listener.open();
            stats.http.cx_total.inc();
            stats.http.cx_active.inc();
            let svc_stats = stats.clone();
            let svc = hyper::service::service_fn(move |req| {
                let st = st.clone();
                let stats = svc_stats.clone();
                async move { Ok::<_, Infallible>(handle_counted(&st, &stats.http, req, (local, peer))) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(sock), svc)
                .await;
            stats.http.cx_active.dec();
            stats.http.cx_length_ms.record_ms(opened.elapsed());
            drop(cx);
        });
    }
}

/// Handles one request, counting it in `http.admin.*`.
fn handle_counted(
    st: &AdminState,
    http: &crate::stats::HcmStats,
    req: Request<Incoming>,
    addrs: (std::net::SocketAddr, std::net::SocketAddr),
) -> Response<Full<Bytes>> {
    let started = std::time::Instant::now();
    http.rq_total.inc();
    http.rq_http1_total.inc();
    http.rq_active.inc();
    let charge = Charge {
        stats: http,
        done: std::cell::Cell::new(false),
    };
    let resp = handle_logged(st, req, addrs, &charge);
    charge.status(resp.status());
    http.rq_active.dec();
    http.rq_time.record_ms(started.elapsed());
    resp
}

/// Handles one request and writes the admin access log line (`admin.access_log`).
fn handle_logged(
    st: &AdminState,
    req: Request<Incoming>,
    (local, peer): (std::net::SocketAddr, std::net::SocketAddr),
    charge: &Charge<'_>,
) -> Response<Full<Bytes>> {
    let cfg = st.config.load();
    if cfg.admin_logs.is_empty() {
        return handle(st, req, charge);
    }
    let started = std::time::Instant::now();
    let (parts, body) = req.into_parts();
    let request = Request::from_parts(parts.clone(), ());
    let resp = handle(st, Request::from_parts(parts, body), charge);
    let mut info = crate::filter::StreamInfo::new(
        Arc::from("admin"),
        local,
        peer,
        request.version(),
        Arc::clone(&cfg.node),
    );
    info.response_code = Some(resp.status().as_u16());
    info.bytes_sent = http_body::Body::size_hint(resp.body()).exact().unwrap_or(0);
    info.duration = Some(started.elapsed());
    let (req_parts, ()) = request.into_parts();
    let summary = crate::hcm::summarize(&req_parts);
    let cx = crate::access_log::format::LogContext {
        info: &info,
        request: Some(&req_parts),
        response: Some(resp.headers()),
        trailers: None,
        tcp: false,
    };
    for log in &cfg.admin_logs {
        log.log(&cx, &summary);
    }
    resp
}

fn text(status: StatusCode, ct: &str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    if let Ok(v) = ct.parse() {
        r.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    r
}

fn handle(st: &AdminState, req: Request<Incoming>, charge: &Charge<'_>) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    let query = req.uri().query().unwrap_or("");
    const PLAIN: &str = "text/plain; charset=UTF-8";
    if path.starts_with("/stats") {
        st.server.touch_uptime();
    }
    match path {
        "/ready" => {
            let state = st.server.state();
            let code = if state == crate::stats::ServerState::Live {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            text(code, PLAIN, format!("{}\n", state.name()))
        }
        "/stats/prometheus" => prometheus(st, query, charge),
        "/stats" if query_param(query, "format").as_deref() == Some("prometheus") => {
            prometheus(st, query, charge)
        }
        "/stats" => {
            // `usedonly`: only the stats written since start (istio-agent's readiness probe).
            let used_only = query
                .split('&')
                .any(|kv| kv.split('=').next() == Some("usedonly"));
            // Envoy's `/stats?filter=<regex>` (searched anywhere in the name).
            let filter = match query_param(query, "filter").map(|f| regex::Regex::new(&f)) {
                None => None,
                Some(Ok(re)) => Some(re),
                Some(Err(e)) => {
                    return text(
                        StatusCode::BAD_REQUEST,
                        PLAIN,
                        format!("Invalid re2 regex: {e}\n"),
                    );
                }
            };
            charge.status(StatusCode::OK);
            let all = st.store.render_text_with(used_only);
            let lines: Vec<String> = all
                .lines()
                .filter(|l| {
                    filter
                        .as_ref()
                        .is_none_or(|re| l.split(": ").next().is_some_and(|n| re.is_match(n)))
                })
                .map(str::to_string)
                .collect();
            if query_param(query, "format").as_deref() == Some("json") {
                return text(StatusCode::OK, "application/json", stats_json(&lines));
            }
            let mut out = lines.join("\n");
            if !out.is_empty() {
                out.push('\n');
            }
            text(StatusCode::OK, PLAIN, out)
        }
        "/config_dump" => {
            let dump = config_dump(&st.config.load());
            // The dump needed the Envoy API descriptors; serving does not.
            wasmesh_xds::release_descriptor_pool();
            match query_param(query, "resource") {
                Some(r) => match dump_resource(&dump, &r) {
                    Some(out) => text(StatusCode::OK, "application/json", out),
                    None => text(
                        StatusCode::NOT_FOUND,
                        PLAIN,
                        format!("{r} not found in config dump"),
                    ),
                },
                None => text(StatusCode::OK, "application/json", dump),
            }
        }
        "/server_info" => text(StatusCode::OK, "application/json", server_info(st)),
        "/clusters" if query_param(query, "format").as_deref() == Some("json") => text(
            StatusCode::OK,
            "application/json",
            clusters_json(&st.config.load()),
        ),
        "/clusters" => text(StatusCode::OK, PLAIN, clusters(&st.config.load())),
        "/listeners" if query_param(query, "format").as_deref() == Some("json") => {
            let statuses: Vec<serde_json::Value> = st
                .listeners
                .load()
                .iter()
                .map(|(name, addr)| {
                    serde_json::json!({"name": &**name, "local_address": {"socket_address": {
                        "address": addr.ip().to_string(), "port_value": addr.port(),
                    }}})
                })
                .collect();
            let body = serde_json::json!({ "listener_statuses": statuses });
            text(
                StatusCode::OK,
                "application/json",
                serde_json::to_string_pretty(&body).unwrap_or_default(),
            )
        }
        "/listeners" => {
            let mut out = String::new();
            for (name, addr) in st.listeners.load().iter() {
                let _ = writeln!(out, "{name}::{addr}");
            }
            text(StatusCode::OK, PLAIN, out)
        }
        "/drain_listeners" | "/healthcheck/fail" | "/healthcheck/ok" | "/quitquitquit"
            if req.method() != Method::POST =>
        {
            // Envoy's words (no newline).
            text(
                StatusCode::METHOD_NOT_ALLOWED,
                PLAIN,
                format!("Method {} not allowed, POST required.", req.method()),
            )
        }
        "/drain_listeners" => {
            drain_listeners(
                st,
                has_param(query, "inboundonly"),
                has_param(query, "graceful"),
            );
            text(StatusCode::OK, PLAIN, "OK\n".into())
        }
        // Envoy's health-check failing: `/ready` answers 503 DRAINING until `/healthcheck/ok`.
        "/healthcheck/fail" => {
            st.server.set_state(crate::stats::ServerState::Draining);
            text(StatusCode::OK, PLAIN, "OK\n".into())
        }
        "/healthcheck/ok" => {
            if st.server.state() == crate::stats::ServerState::Draining {
                st.server.set_state(crate::stats::ServerState::Live);
            }
            text(StatusCode::OK, PLAIN, "OK\n".into())
        }
        "/quitquitquit" => {
            st.quit.notify_waiters();
            st.quit.notify_one();
            text(StatusCode::OK, PLAIN, "OK\n".into())
        }
        _ => text(
            StatusCode::NOT_FOUND,
            PLAIN,
            format!("invalid path: {path}\n"),
        ),
    }
}

/// Envoy's `/server_info`: version, state, uptime, the options that apply here and the node.
/// `/stats/prometheus` and `/stats?format=prometheus`, with `filter=<regex>` matched against
/// Envoy's stat names; Envoy sends them as plain UTF-8 text.
fn prometheus(st: &AdminState, query: &str, charge: &Charge<'_>) -> Response<Full<Bytes>> {
    const PLAIN: &str = "text/plain; charset=UTF-8";
    let filter = match query_param(query, "filter").map(|f| regex::Regex::new(&f)) {
        None => None,
        Some(Ok(re)) => Some(re),
        Some(Err(e)) => {
            return text(
                StatusCode::BAD_REQUEST,
                PLAIN,
                format!("Invalid re2 regex: {e}\n"),
            );
        }
    };
    charge.status(StatusCode::OK);
    text(
        StatusCode::OK,
        PLAIN,
        st.store
            .render_prometheus_filtered(filter.as_ref(), has_param(query, "usedonly")),
    )
}

fn server_info(st: &AdminState) -> String {
    let uptime = format!("{}s", st.server.uptime().as_secs());
    let cfg = st.config.load();
    let node = cfg
        .bootstrap
        .node
        .as_ref()
        .map(|n| any_json("envoy.config.core.v3.Node", &n.encode_to_vec()))
        .and_then(|v| match v {
            serde_json::Value::Object(mut m) => {
                m.remove("@type");
                Some(serde_json::Value::Object(m))
            }
            _ => None,
        })
        .unwrap_or_else(|| serde_json::json!({}));
    let concurrency = st.workers.lock().map_or(0, |w| w.len());
    let info = serde_json::json!({
        "version": format!("wasmesh/{}", env!("CARGO_PKG_VERSION")),
        "state": st.server.state().name(),
        "uptime_current_epoch": uptime,
        "uptime_all_epochs": uptime,
        "hot_restart_version": "disabled",
        "command_line_options": {
            "concurrency": concurrency,
            "drain_time": format!("{}s", st.drain_time.as_secs()),
            "mode": "Serve",
            "disable_hot_restart": true,
        },
        "node": node,
    });
    serde_json::to_string_pretty(&info).unwrap_or_default()
}

/// Envoy's `/stats?format=json` from `/stats` text lines: `{"stats": [{"name", "value"}...,
/// {"histograms": {"supported_quantiles", "computed_quantiles": [{"name", "values":
/// [{"cumulative", "interval"}...]}]}}]}`, a quantile with no samples as `null`.
fn stats_json(lines: &[String]) -> String {
    use serde_json::{Value, json};
    let number = |v: &str| -> Value {
        match v.parse::<f64>() {
            Ok(x) if x.is_finite() && x.fract() == 0.0 && x.abs() < 1e15 => json!(x as i64),
            Ok(x) if x.is_finite() => json!(x),
            _ => Value::Null,
        }
    };
    let mut stats = Vec::new();
    let mut hists = Vec::new();
    for l in lines {
        let Some((name, v)) = l.split_once(": ") else {
            continue;
        };
        if v == "No recorded values" {
            let nulls = vec![json!({"cumulative": null, "interval": null}); 10];
            hists.push(json!({"name": name, "values": nulls}));
        } else if v.starts_with("P0(") {
            let values: Vec<Value> = v
                .split(' ')
                .filter_map(|p| {
                    let inner = p.split_once('(')?.1.strip_suffix(')')?;
                    let (i, c) = inner.split_once(',')?;
                    Some(json!({"cumulative": number(c), "interval": number(i)}))
                })
                .collect();
            hists.push(json!({"name": name, "values": values}));
        } else {
            stats.push(json!({"name": name, "value": number(v)}));
        }
    }
    if !hists.is_empty() {
        let supported: Vec<Value> = wasm_host::QUANTILE_LABELS
            .iter()
            .map(|q| number(q))
            .collect();
        stats.push(json!({"histograms": {
            "supported_quantiles": supported,
            "computed_quantiles": hists,
        }}));
    }
    json!({ "stats": stats }).to_string()
}

/// Whether the query has parameter `name` (with or without a value: `?usedonly`).
fn has_param(query: &str, name: &str) -> bool {
    query
        .split('&')
        .any(|kv| kv.split('=').next() == Some(name))
}

/// Envoy's `POST /drain_listeners[?inboundonly][&graceful]`: the listeners (only
/// `traffic_direction: INBOUND` ones with `inboundonly`) stop accepting and their connections
/// drain (`Connection: close`, GOAWAY), at once or, with `graceful`, after the drain time
/// (istio-agent drains this way when its pod terminates). `/ready` stays LIVE, as in Envoy.
fn drain_listeners(st: &AdminState, inbound_only: bool, graceful: bool) {
    let names: Vec<Arc<str>> = st
        .config
        .load()
        .listeners
        .iter()
        .filter(|l| !inbound_only || l.direction == 1)
        .map(|l| Arc::clone(&l.name))
        .collect();
    let workers = Arc::clone(&st.workers);
    let delay = if graceful {
        st.drain_time
    } else {
        std::time::Duration::ZERO
    };
    tracing::info!(
        listeners = names.len(),
        ?delay,
        "draining listeners (/drain_listeners)"
    );
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        let workers = workers.lock().unwrap_or_else(|e| e.into_inner()).clone();
        for w in &workers {
            for n in &names {
                let _ = w.send(crate::server::ListenerCmd::Remove(Arc::clone(n)));
            }
        }
    });
}

/// A percent-decoded query parameter.
fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == name).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let mut out = Vec::with_capacity(s.len());
    let mut rest = s.as_bytes();
    while let Some((&b, tail)) = rest.split_first() {
        rest = tail;
        match b {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = tail.get(..2).and_then(|h| std::str::from_utf8(h).ok());
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(v) => {
                        out.push(v);
                        rest = tail.get(2..).unwrap_or_default();
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Per-host counters and gauges as Envoy's `/clusters` lists them (name, value, gauge).
fn host_stats(h: &crate::cluster::Host) -> [(&'static str, i64, bool); 9] {
    let c = |a: &std::sync::atomic::AtomicU64| {
        i64::try_from(a.load(Ordering::Relaxed)).unwrap_or(i64::MAX)
    };
    [
        (
            "cx_active",
            h.cx_active.load(Ordering::Relaxed).max(0),
            true,
        ),
        ("cx_connect_fail", c(&h.cx_connect_fail), false),
        ("cx_total", c(&h.cx_total), false),
        ("rq_active", c(&h.active_rq), true),
        ("rq_error", c(&h.rq_error), false),
        // (no request waits in a queue for a connection here)
        ("rq_pending_active", 0, true),
        ("rq_success", c(&h.rq_success), false),
        ("rq_timeout", c(&h.rq_timeout), false),
        ("rq_total", c(&h.rq_total), false),
    ]
}

/// Whether a cluster came over CDS (`added_via_api`).
fn via_api(cfg: &ProxyConfig, name: &str) -> bool {
    cfg.dynamic
        .as_ref()
        .is_some_and(|d| d.get().resources.clusters.contains_key(name))
}

/// Envoy's default circuit breaker thresholds (none are configurable here).
const THRESHOLDS: [(&str, u32); 4] = [
    ("max_connections", 1024),
    ("max_pending_requests", 1024),
    ("max_requests", 1024),
    ("max_retries", 3),
];

/// Envoy's `/clusters` text: per cluster its thresholds, then per host its stats and state.
fn clusters(cfg: &ProxyConfig) -> String {
    let mut out = String::new();
    for name in &cfg.cluster_order {
        let Some(c) = cfg.clusters.get(name) else {
            continue;
        };
        let _ = writeln!(out, "{name}::observability_name::{name}");
        for prio in ["default_priority", "high_priority"] {
            for (t, v) in THRESHOLDS {
                let _ = writeln!(out, "{name}::{prio}::{t}::{v}");
            }
        }
        let _ = writeln!(out, "{name}::added_via_api::{}", via_api(cfg, name));
        for h in c.hosts().iter() {
            let a = h.addr;
            for (stat, v, _) in host_stats(h) {
                let _ = writeln!(out, "{name}::{a}::{stat}::{v}");
            }
            let flags = if h.healthy() {
                "healthy"
            } else {
                "/failed_outlier_check"
            };
            let _ = writeln!(out, "{name}::{a}::hostname::");
            let _ = writeln!(out, "{name}::{a}::health_flags::{flags}");
            let _ = writeln!(out, "{name}::{a}::weight::1");
            for z in ["region", "zone", "sub_zone"] {
                let _ = writeln!(out, "{name}::{a}::{z}::");
            }
            let _ = writeln!(out, "{name}::{a}::canary::false");
            let _ = writeln!(out, "{name}::{a}::priority::0");
            let _ = writeln!(out, "{name}::{a}::success_rate::-1");
            let _ = writeln!(out, "{name}::{a}::local_origin_success_rate::-1");
        }
    }
    out
}

/// Envoy's `/clusters?format=json` (`envoy.admin.v3.Clusters`; what `istioctl proxy-config
/// endpoint` reads): counters first, then gauges, a zero value left out as proto3 JSON does.
fn clusters_json(cfg: &ProxyConfig) -> String {
    use serde_json::json;
    let mut statuses = Vec::new();
    for name in &cfg.cluster_order {
        let Some(c) = cfg.clusters.get(name) else {
            continue;
        };
        let hosts: Vec<serde_json::Value> = c
            .hosts()
            .iter()
            .map(|h| {
                let mut stats = host_stats(h);
                stats.sort_by_key(|(n, _, gauge)| (*gauge, *n));
                let stats: Vec<serde_json::Value> = stats
                    .iter()
                    .map(|(n, v, gauge)| {
                        let mut s = serde_json::Map::new();
                        if *gauge {
                            s.insert("type".into(), json!("GAUGE"));
                        }
                        if *v != 0 {
                            s.insert("value".into(), json!(v.to_string()));
                        }
                        s.insert("name".into(), json!(n));
                        serde_json::Value::Object(s)
                    })
                    .collect();
                let health = if h.healthy() { "HEALTHY" } else { "UNHEALTHY" };
                json!({
                    "address": {"socket_address": {
                        "address": h.addr.ip().to_string(),
                        "port_value": h.addr.port(),
                    }},
                    "stats": stats,
                    "health_status": {"eds_health_status": health},
                    "weight": 1,
                    "locality": {},
                })
            })
            .collect();
        let threshold = |high: bool| {
            let mut t = serde_json::Map::new();
            if high {
                t.insert("priority".into(), json!("HIGH"));
            }
            for (k, v) in THRESHOLDS {
                t.insert(k.into(), json!(v));
            }
            serde_json::Value::Object(t)
        };
        let mut status = serde_json::Map::new();
        status.insert("name".into(), json!(name));
        if via_api(cfg, name) {
            status.insert("added_via_api".into(), json!(true));
        }
        status.insert("host_statuses".into(), json!(hosts));
        status.insert(
            "circuit_breakers".into(),
            json!({"thresholds": [threshold(false), threshold(true)]}),
        );
        status.insert("observability_name".into(), json!(name));
        statuses.push(serde_json::Value::Object(status));
    }
    serde_json::to_string_pretty(&json!({ "cluster_statuses": statuses })).unwrap_or_default()
}

fn any_json(type_name: &str, bytes: &[u8]) -> serde_json::Value {
    let mut v = wasmesh_xds::descriptors::to_json_proto_names(type_name, bytes)
        .unwrap_or(serde_json::Value::Null);
    if let serde_json::Value::Object(m) = &mut v {
        m.insert(
            "@type".into(),
            format!("type.googleapis.com/{type_name}").into(),
        );
    }
    v
}

/// Envoy's `/config_dump` shape: bootstrap, clusters, listeners, routes.
pub(crate) fn config_dump(cfg: &ProxyConfig) -> String {
    use serde_json::json;
    if let Some(d) = &cfg.dynamic {
        return dynamic_config_dump(&d.get(), cfg.loaded_at);
    }
    let loaded = crate::access_log::format_start_time(cfg.loaded_at);
    let b = &cfg.bootstrap;
    let sr = b.static_resources.clone().unwrap_or_default();
    let clusters: Vec<_> = sr
        .clusters
        .iter()
        .map(
            |c| json!({"cluster": any_json("envoy.config.cluster.v3.Cluster", &c.encode_to_vec()), "last_updated": loaded}),
        )
        .collect();
    let listeners: Vec<_> = sr
        .listeners
        .iter()
        .map(|l| json!({"listener": any_json("envoy.config.listener.v3.Listener", &l.encode_to_vec()), "last_updated": loaded}))
        .collect();
    let routes: Vec<_> = cfg
        .listeners
        .iter()
        .flat_map(|l| l.all_chains())
        .filter_map(|c| match &c.terminal {
            crate::listener::Terminal::Http(h) => {
                Some(json!({"route_config": {"name": h.routes.name}}))
            }
            crate::listener::Terminal::Tcp(_) => None,
        })
        .collect();
    let dump = json!({
        "configs": [
            {
                "@type": "type.googleapis.com/envoy.admin.v3.BootstrapConfigDump",
                "bootstrap": bootstrap_json(b),
            },
            {
                "@type": "type.googleapis.com/envoy.admin.v3.ClustersConfigDump",
                "static_clusters": clusters,
            },
            {
                "@type": "type.googleapis.com/envoy.admin.v3.ListenersConfigDump",
                "static_listeners": listeners,
            },
            {
                "@type": "type.googleapis.com/envoy.admin.v3.RoutesConfigDump",
                "static_route_configs": routes,
            },
        ]
    });
    serde_json::to_string_pretty(&dump).unwrap_or_default()
}

const BOOTSTRAP: &str = "envoy.config.bootstrap.v3.Bootstrap";

/// Envoy's `/config_dump?resource=<field>`: the items of that repeated field of the dump's
/// sections, each typed (`...ClustersConfigDump.DynamicCluster`); `None` for an unknown field.
fn dump_resource(dump: &str, field: &str) -> Option<String> {
    const ITEMS: &[(&str, &str)] = &[
        ("static_clusters", "ClustersConfigDump.StaticCluster"),
        (
            "dynamic_active_clusters",
            "ClustersConfigDump.DynamicCluster",
        ),
        ("static_listeners", "ListenersConfigDump.StaticListener"),
        ("dynamic_listeners", "ListenersConfigDump.DynamicListener"),
        ("static_route_configs", "RoutesConfigDump.StaticRouteConfig"),
        (
            "dynamic_route_configs",
            "RoutesConfigDump.DynamicRouteConfig",
        ),
        ("ecds_filters", "EcdsConfigDump.EcdsFilterConfig"),
    ];
    let item_type = ITEMS.iter().find(|(f, _)| *f == field)?.1;
    let dump: serde_json::Value = serde_json::from_str(dump).ok()?;
    let items: Vec<serde_json::Value> = dump["configs"]
        .as_array()?
        .iter()
        .filter_map(|c| c[field].as_array())
        .flatten()
        .map(|item| {
            let mut m = serde_json::Map::new();
            m.insert(
                "@type".into(),
                format!("type.googleapis.com/envoy.admin.v3.{item_type}").into(),
            );
            if let Some(o) = item.as_object() {
                m.extend(o.clone());
            }
            serde_json::Value::Object(m)
        })
        .collect();
    serde_json::to_string_pretty(&serde_json::json!({ "configs": items })).ok()
}

/// The bootstrap as `/config_dump` shows it (`.proto` field names).
fn bootstrap_json(b: &crate::pb::bootstrap::Bootstrap) -> serde_json::Value {
    wasmesh_xds::descriptors::to_json_proto_names(BOOTSTRAP, &b.encode_to_vec())
        .unwrap_or(serde_json::Value::Null)
}

/// `/config_dump` of a proxy configured over xDS, in Envoy's shape: the bootstrap file, its
/// static clusters and listeners, and the resources from xDS under `dynamic_active_clusters`,
/// `dynamic_listeners[].active_state`, `dynamic_route_configs` and `ecds_filters`, each with the
/// version and time of the response that brought it (what `istioctl proxy-config` reads).
fn dynamic_config_dump(d: &crate::xds::XdsDump, loaded_at: std::time::SystemTime) -> String {
    use serde_json::json;
    use wasmesh_xds::type_url;
    let res = &d.resources;
    let version = |t: &str| -> (String, String) {
        res.versions.get(t).map_or_else(
            || (String::new(), String::new()),
            |(v, at)| (v.clone(), crate::access_log::format_start_time(*at)),
        )
    };
    let sr = d.bootstrap.static_resources.clone().unwrap_or_default();
    let loaded = crate::access_log::format_start_time(loaded_at);
    let (cds_v, cds_at) = version(type_url::CLUSTER);
    let (lds_v, lds_at) = version(type_url::LISTENER);
    let (rds_v, rds_at) = version(type_url::ROUTE);
    let (ecds_v, ecds_at) = version(type_url::EXTENSION_CONFIG);
    let cluster = |c: &crate::pb::cluster::Cluster| {
        any_json("envoy.config.cluster.v3.Cluster", &c.encode_to_vec())
    };
    let listener = |l: &crate::pb::listener::Listener| {
        any_json("envoy.config.listener.v3.Listener", &l.encode_to_vec())
    };
    let dump = json!({
        "configs": [
            {
                "@type": "type.googleapis.com/envoy.admin.v3.BootstrapConfigDump",
                "bootstrap": bootstrap_json(&d.bootstrap),
            },
            {
                "@type": "type.googleapis.com/envoy.admin.v3.ClustersConfigDump",
                "version_info": cds_v,
                "static_clusters": sr.clusters.iter().map(|c| json!({"cluster": cluster(c), "last_updated": loaded})).collect::<Vec<_>>(),
                "dynamic_active_clusters": res.clusters.values().map(|c| json!({
                    "version_info": cds_v, "cluster": cluster(c), "last_updated": cds_at,
                })).collect::<Vec<_>>(),
            },
            {
                "@type": "type.googleapis.com/envoy.admin.v3.EcdsConfigDump",
                "ecds_filters": res.extensions.values().map(|e| json!({
                    "version_info": ecds_v,
                    "ecds_filter": any_json("envoy.config.core.v3.TypedExtensionConfig", &e.encode_to_vec()),
                    "last_updated": ecds_at,
                })).collect::<Vec<_>>(),
            },
            {
                "@type": "type.googleapis.com/envoy.admin.v3.ListenersConfigDump",
                "version_info": lds_v,
                "static_listeners": sr.listeners.iter().map(|l| json!({"listener": listener(l), "last_updated": loaded})).collect::<Vec<_>>(),
                "dynamic_listeners": res.listeners.values().map(|l| json!({
                    "name": l.name,
                    "active_state": {"version_info": lds_v, "listener": listener(l), "last_updated": lds_at},
                })).collect::<Vec<_>>(),
            },
            {
                "@type": "type.googleapis.com/envoy.admin.v3.RoutesConfigDump",
                "dynamic_route_configs": res.routes.values().map(|r| json!({
                    "version_info": rds_v,
                    "route_config": any_json("envoy.config.route.v3.RouteConfiguration", &r.encode_to_vec()),
                    "last_updated": rds_at,
                })).collect::<Vec<_>>(),
            },
        ]
    });
    serde_json::to_string_pretty(&dump).unwrap_or_default()
}
