//! Proxy metrics with Envoy's names: a flat name for `/stats` (`http.ingress.downstream_rq_total`)
//! and a Prometheus name + tags for `/stats/prometheus`
//! (`envoy_http_downstream_rq_total{envoy_http_conn_manager_prefix="ingress"}`), exactly as
//! Envoy's tag extraction produces them.
//!
//! We do not use prometheus-client's counters here: its OpenMetrics encoder appends `_total` to
//! every counter, which would rename Envoy's metrics (`envoy_cluster_upstream_cx_connect_fail`)
//! and break dashboards. A metric is an atomic shared between the owner and this store; there is
//! no global registry (one [`Store`] per proxy).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use crate::filter::StatsHooks;

pub(crate) mod histogram;
mod matcher;
mod server;
mod tags;
pub use histogram::Histogram;
pub use matcher::{Matcher, StatsMatcher};
pub use server::{ServerState, ServerStats, XdsUpdateStats};
pub use tags::{TagSpec, TagSpecs, build as build_tag_specs};

/// A monotonically increasing counter.
#[derive(Debug, Clone, Default)]
pub struct Counter(Arc<AtomicU64>);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    /// Current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Debug, Clone, Default)]
pub struct Gauge(Arc<GaugeCell>);

#[derive(Debug, Default)]
struct GaugeCell {
    value: AtomicI64,
    /// Written at least once (Envoy's "used" flag, for `/stats?usedonly`).
    used: AtomicBool,
}

impl GaugeCell {
    fn mark(&self) {
        if !self.used.load(Ordering::Relaxed) {
            self.used.store(true, Ordering::Relaxed);
        }
    }
}

impl Gauge {
    /// Adds one.
    pub fn inc(&self) {
        self.0.value.fetch_add(1, Ordering::Relaxed);
        self.0.mark();
    }
    /// Subtracts one.
    pub fn dec(&self) {
        self.0.value.fetch_sub(1, Ordering::Relaxed);
        self.0.mark();
    }
    /// Sets the value.
    pub fn set(&self, v: i64) {
        self.0.value.store(v, Ordering::Relaxed);
        self.0.mark();
    }
    /// Current value.
    pub fn get(&self) -> i64 {
        self.0.value.load(Ordering::Relaxed)
    }
    /// Whether it was ever written.
    pub fn used(&self) -> bool {
        self.0.used.load(Ordering::Relaxed)
    }
}

#[derive(Debug, Clone)]
enum Metric {
    Counter(Counter),
    Gauge(Gauge),
    Histogram(Histogram),
}

#[derive(Debug, Clone)]
struct Entry {
    prom_name: String,
    tags: Vec<(String, String)>,
    metric: Metric,
}

/// Every metric of one proxy, by flat Envoy name.
#[derive(Debug, Clone, Default)]
pub struct Store {
    entries: Arc<Mutex<BTreeMap<String, Entry>>>,
    hooks: StatsHooks,
    tags: TagSpecs,
    matcher: StatsMatcher,
    /// `stats_flush_interval` in ms (0: Envoy's default, 5 s).
    flush_ms: Arc<AtomicU64>,
    /// The metrics this proxy's plugins define (`wasmcustom.*`).
    plugin_metrics: Arc<wasm_host::Metrics>,
    /// Where the proxy's own histograms live (the same flush model as plugins' histograms).
    histograms: Arc<wasm_host::Metrics>,
}

impl Store {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// The bootstrap's `stats_config.stats_tags`.
    pub fn tag_specs(&self) -> &TagSpecs {
        &self.tags
    }

    /// This store's identity (one per proxy; its clones share it).
    pub fn id(&self) -> usize {
        Arc::as_ptr(&self.entries) as usize
    }

    /// The bootstrap's `stats_flush_interval`: how often histograms are flushed (what the
    /// admin API shows of them changes only then, as in Envoy).
    pub fn set_flush_interval(&self, d: std::time::Duration) {
        let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1);
        self.flush_ms.store(ms, Ordering::Relaxed);
        self.plugin_metrics.set_flush_interval(d);
        self.histograms.set_flush_interval(d);
    }

    /// The registry of the metrics this proxy's plugins define.
    pub fn plugin_metrics(&self) -> &Arc<wasm_host::Metrics> {
        &self.plugin_metrics
    }

    /// See [`Store::set_flush_interval`]; 5 s unless the bootstrap says otherwise.
    pub fn flush_interval(&self) -> std::time::Duration {
        match self.flush_ms.load(Ordering::Relaxed) {
            0 => std::time::Duration::from_secs(5),
            ms => std::time::Duration::from_millis(ms),
        }
    }

    /// The bootstrap's `stats_config.stats_matcher`.
    pub fn matcher(&self) -> &StatsMatcher {
        &self.matcher
    }

    /// Where filters register their own metrics (plugin metrics).
    pub fn hooks(&self) -> &StatsHooks {
        &self.hooks
    }

    /// The counter named `flat` (created on first use; the same handle afterwards, so counters
    /// survive config swaps). `prom` is the Prometheus name without the `envoy_` prefix rules
    /// applied: pass it complete, e.g. `envoy_http_downstream_rq_total`.
    pub fn counter(&self, flat: &str, prom: &str, tags: &[(&str, &str)]) -> Counter {
        match self.get_or_insert(flat, prom, tags, || Metric::Counter(Counter::default())) {
            Metric::Counter(c) => c,
            // A name registered as a gauge asked for as a counter: a programming error; hand out
            // a detached counter rather than panic on the request path.
            _ => Counter::default(),
        }
    }

    /// The gauge named `flat`.
    pub fn gauge(&self, flat: &str, prom: &str, tags: &[(&str, &str)]) -> Gauge {
        match self.get_or_insert(flat, prom, tags, || Metric::Gauge(Gauge::default())) {
            Metric::Gauge(g) => g,
            _ => Gauge::default(),
        }
    }

    /// The histogram named `flat`.
    pub fn histogram(&self, flat: &str, prom: &str, tags: &[(&str, &str)]) -> Histogram {
        let make = || {
            let (_, m) = self
                .histograms
                .define(wasm_host::MetricType::Histogram, flat);
            Metric::Histogram(Histogram(m))
        };
        match self.get_or_insert(flat, prom, tags, make) {
            Metric::Histogram(h) => h,
            _ => Histogram(
                self.histograms
                    .define(wasm_host::MetricType::Histogram, "")
                    .1,
            ),
        }
    }

    fn get_or_insert(
        &self,
        flat: &str,
        prom: &str,
        tags: &[(&str, &str)],
        make: impl FnOnce() -> Metric,
    ) -> Metric {
        let mut map = match self.entries.lock() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        map.entry(flat.to_string())
            .or_insert_with(|| Entry {
                prom_name: prom.to_string(),
                tags: tags
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                metric: make(),
            })
            .metric
            .clone()
    }

    fn snapshot(&self) -> Vec<(String, Entry)> {
        let map = match self.entries.lock() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    /// Envoy's `/stats` text: `name: value` lines sorted by name, then plugin metrics.
    pub fn render_text(&self) -> String {
        self.render_text_with(false)
    }

    /// `/stats` text; with `used_only` (`/stats?usedonly`), only the stats written since start:
    /// counters above zero, gauges ever set (plugin metrics: those not zero).
    pub fn render_text_with(&self, used_only: bool) -> String {
        let mut out = String::new();
        for (name, e) in self.snapshot() {
            if !self.matcher.accepts(&name) {
                continue;
            }
            let v = match &e.metric {
                Metric::Counter(c) if used_only && c.get() == 0 => continue,
                Metric::Gauge(g) if used_only && !g.used() => continue,
                Metric::Counter(c) => c.get().to_string(),
                Metric::Gauge(g) => g.get().to_string(),
                Metric::Histogram(h) => {
                    let f = h.flushed();
                    if used_only && !f.used {
                        continue;
                    }
                    histogram::quantile_summary(&f)
                }
            };
            let _ = writeln!(out, "{name}: {v}");
        }
        let keep = |name: &str| self.matcher.accepts(name);
        for s in self.hooks.sources() {
            s.append_text(&mut out, &keep, used_only);
        }
        sorted_like_envoy(&out)
    }

    /// Envoy's `/stats/prometheus`: metrics grouped by name with a `# TYPE` line each.
    pub fn render_prometheus(&self) -> String {
        self.render_prometheus_filtered(None, false)
    }

    /// `/stats/prometheus?filter=<regex>`: only the stats whose Envoy name (before the
    /// Prometheus conversion) the regex finds a match in; with `used_only` (`usedonly`, what
    /// istio-agent scrapes), only the proxy's own stats written since start.
    pub fn render_prometheus_filtered(
        &self,
        filter: Option<&regex::Regex>,
        used_only: bool,
    ) -> String {
        // (kind rank, name) → sample lines: Envoy writes every counter, then every gauge, then
        // every histogram, each kind sorted by name, plugin metrics included (so a counter and
        // a histogram that share a name get a block each).
        let mut groups: BTreeMap<(u8, String), Vec<String>> = BTreeMap::new();
        let custom = !self.tags.is_empty();
        let defaults = self.tags.use_default_tags();
        let keep =
            |name: &str| self.matcher.accepts(name) && filter.is_none_or(|re| re.is_match(name));
        for (flat, e) in self.snapshot() {
            if !keep(&flat) {
                continue;
            }
            let (rank, v) = match &e.metric {
                Metric::Counter(c) if used_only && c.get() == 0 => continue,
                Metric::Gauge(g) if used_only && !g.used() => continue,
                Metric::Histogram(h) if used_only && !h.flushed().used => continue,
                Metric::Counter(c) => (0, Some(c.get().to_string())),
                Metric::Gauge(g) => (1, Some(g.get().to_string())),
                Metric::Histogram(_) => (2, None),
            };
            let (prom_name, tags) = if !defaults {
                // Only the bootstrap's tags: the name is what they leave of the flat name
                // (`use_all_default_tags: false`, as in Istio's bootstrap).
                let (cut, tags) = self.tags.extract(&flat);
                (format!("envoy_{}", sanitize(&cut)), tags)
            } else {
                // The bootstrap's tags come first, as Envoy applies them before its default
                // ones (names stay as Envoy's built-in extraction makes them).
                let mut tags = if custom {
                    self.tags.extract(&flat).1
                } else {
                    Vec::new()
                };
                tags.extend(e.tags.iter().cloned());
                (e.prom_name.clone(), tags)
            };
            let line = match (v, &e.metric) {
                // Envoy writes `{}` for a stat without tags.
                (Some(v), _) if tags.is_empty() => format!("{prom_name}{{}} {v}"),
                (Some(v), _) => format!("{prom_name}{} {v}", labels(&tags)),
                (None, Metric::Histogram(h)) => {
                    let l = labels(&tags);
                    let inner = l.trim_start_matches('{').trim_end_matches('}');
                    histogram::prometheus_lines(&prom_name, inner, &h.flushed())
                        .trim_end()
                        .to_string()
                }
                (None, _) => continue,
            };
            groups.entry((rank, prom_name)).or_default().push(line);
        }
        for s in self.hooks.sources() {
            let mut text = String::new();
            s.append_prometheus(&mut text, &keep);
            merge_blocks(&mut groups, &text);
        }
        let mut out = String::new();
        for ((rank, name), lines) in groups {
            if let Some(kind) = KINDS.get(usize::from(rank)) {
                let _ = writeln!(out, "# TYPE {name} {kind}");
            }
            for l in lines {
                out.push_str(&l);
                out.push('\n');
            }
        }
        out
    }
}

/// Prometheus kinds in Envoy's output order; samples of no declared kind come last, untyped.
const KINDS: [&str; 3] = ["counter", "gauge", "histogram"];

/// Adds exposition text (`# TYPE` blocks, or untyped samples) to `groups`.
fn merge_blocks(groups: &mut BTreeMap<(u8, String), Vec<String>>, text: &str) {
    let mut current: Option<(u8, String)> = None;
    for line in text.lines() {
        if let Some(decl) = line.strip_prefix("# TYPE ") {
            let mut it = decl.split(' ');
            let (name, kind) = (it.next().unwrap_or_default(), it.next().unwrap_or_default());
            let rank = KINDS.iter().position(|k| *k == kind).unwrap_or(KINDS.len());
            let key = (u8::try_from(rank).unwrap_or(u8::MAX), name.to_string());
            groups.entry(key.clone()).or_default();
            current = Some(key);
        } else if line.is_empty() || line.starts_with('#') {
            continue;
        } else {
            let key = match &current {
                Some(k) => k.clone(),
                None => {
                    let name = line.split(['{', ' ']).next().unwrap_or_default();
                    (
                        u8::try_from(KINDS.len()).unwrap_or(u8::MAX),
                        name.to_string(),
                    )
                }
            };
            groups.entry(key).or_default().push(line.to_string());
        }
    }
}

/// A Prometheus metric name from a stat name: characters other than letters, digits and `_`
/// become `_` (Envoy's `PrometheusStatsFormatter::sanitizeName`).
pub(crate) fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// `{k="v",...}`, or nothing without tags.
pub(crate) fn labels(tags: &[(String, String)]) -> String {
    if tags.is_empty() {
        return String::new();
    }
    let inner: Vec<String> = tags
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape_label(v)))
        .collect();
    format!("{{{}}}", inner.join(","))
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Counters of one HTTP connection manager (`http.<stat_prefix>.*`).
#[derive(Debug, Clone)]
pub struct HcmStats {
    /// `downstream_rq_total`
    pub rq_total: Counter,
    /// `downstream_rq_1xx` .. `downstream_rq_5xx`
    pub rq_class: [Counter; 5],
    /// `downstream_rq_completed`
    pub rq_completed: Counter,
    /// `downstream_rq_http1_total`
    pub rq_http1_total: Counter,
    /// `downstream_rq_http2_total`
    pub rq_http2_total: Counter,
    /// `downstream_rq_active`
    pub rq_active: Gauge,
    /// `downstream_cx_total`
    pub cx_total: Counter,
    /// `downstream_cx_active`
    pub cx_active: Gauge,
    /// `downstream_cx_protocol_error`: requests the codec refused.
    pub cx_protocol_error: Counter,
    /// `no_route`
    pub no_route: Counter,
    /// `downstream_rq_rx_reset`
    pub rq_rx_reset: Counter,
    /// `downstream_rq_too_large`
    pub rq_too_large: Counter,
    /// `rq_direct_response`
    pub rq_direct_response: Counter,
    /// `rq_redirect` (internal redirects; always 0 here, as in Envoy without them)
    pub rq_redirect: Counter,
    /// `rs_too_large`: responses too large to buffer (a 500 local reply instead).
    pub rs_too_large: Counter,
    /// `downstream_rq_time`: ms from a request's first byte to its stream's end.
    pub rq_time: Histogram,
    /// `downstream_cx_length_ms`
    pub cx_length_ms: Histogram,
    /// The listener's copy of the response classes (`listener.<addr>.http.<prefix>.*`).
    pub listener: Option<ListenerHttpStats>,
}

/// Which listener a stat belongs to: Envoy names a listener's stats by its address
/// (`listener.127.0.0.1_8080.*`, tag `envoy_listener_address`), the admin listener's
/// `listener.admin.*` (no tag, the name kept in the Prometheus name).
#[derive(Debug, Clone, Copy)]
pub enum ListenerScope<'a> {
    /// An address in stat form: `127.0.0.1_8080` (see [`listener_stat_address`]).
    Address(&'a str),
    /// The admin listener.
    Admin,
}

/// A listener address in Envoy's stat form: `127.0.0.1_8080`, `[::1]_8080`.
pub fn listener_stat_address(addr: std::net::SocketAddr) -> String {
    addr.to_string().replace(':', "_")
}

impl ListenerScope<'_> {
    /// (flat name, Prometheus name, tags) of `stat` (`downstream_cx_total`, `http.<prefix>.x`:
    /// `prom_stat` is its Prometheus part, `http_downstream_rq_xx`), with `tags` first, as
    /// Envoy's extraction orders them.
    fn names(
        &self,
        stat: &str,
        prom_stat: &str,
        tags: &[(&str, &str)],
    ) -> (String, String, Vec<(String, String)>) {
        let mut t: Vec<(String, String)> = tags
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        match self {
            ListenerScope::Address(a) => {
                t.push(("envoy_listener_address".into(), a.to_string()));
                (
                    format!("listener.{a}.{stat}"),
                    format!("envoy_listener_{prom_stat}"),
                    t,
                )
            }
            ListenerScope::Admin => (
                format!("listener.admin.{stat}"),
                format!("envoy_listener_admin_{prom_stat}"),
                t,
            ),
        }
    }

    fn counter(&self, store: &Store, stat: &str, prom: &str, tags: &[(&str, &str)]) -> Counter {
        let (flat, prom, t) = self.names(stat, prom, tags);
        let t: Vec<(&str, &str)> = t.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        store.counter(&flat, &prom, &t)
    }

    fn gauge(&self, store: &Store, stat: &str, prom: &str) -> Gauge {
        let (flat, prom, t) = self.names(stat, prom, &[]);
        let t: Vec<(&str, &str)> = t.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        store.gauge(&flat, &prom, &t)
    }
}

/// A listener's copy of its HTTP connection manager's response classes:
/// `listener.<addr>.http.<prefix>.downstream_rq_<class>xx` and `downstream_rq_completed`.
#[derive(Debug, Clone)]
pub struct ListenerHttpStats {
    /// `downstream_rq_1xx` .. `downstream_rq_5xx`
    pub rq_class: [Counter; 5],
    /// `downstream_rq_completed`
    pub rq_completed: Counter,
}

impl ListenerHttpStats {
    /// The counters of connection manager `stat_prefix` on `listener`.
    pub fn new(store: &Store, listener: ListenerScope<'_>, stat_prefix: &str) -> Self {
        let prefix = ("envoy_http_conn_manager_prefix", stat_prefix);
        let class = |d: u8| {
            let code = d.to_string();
            listener.counter(
                store,
                &format!("http.{stat_prefix}.downstream_rq_{d}xx"),
                "http_downstream_rq_xx",
                &[("envoy_response_code_class", &code), prefix],
            )
        };
        Self {
            rq_class: [class(1), class(2), class(3), class(4), class(5)],
            rq_completed: listener.counter(
                store,
                &format!("http.{stat_prefix}.downstream_rq_completed"),
                "http_downstream_rq_completed",
                &[prefix],
            ),
        }
    }
}

/// Connection counters of one listener (`listener.<addr>.*`, `listener.admin.*`); Envoy's
/// other listener counters are kept at 0 (no overflow, overload, listener filter errors).
#[derive(Debug, Clone)]
pub struct ListenerStats {
    /// `downstream_cx_total`
    pub cx_total: Counter,
    /// `downstream_cx_destroy`
    pub cx_destroy: Counter,
    /// `downstream_cx_active`
    pub cx_active: Gauge,
    /// The accepting thread's copy: `worker_<n>.` (`main_thread.` for the admin listener)
    /// `downstream_cx_total` and `downstream_cx_active`; `None` when not kept per thread.
    pub thread: Option<(Counter, Gauge)>,
    /// Registered at 0, never counted.
    _zeros: Arc<[Counter]>,
    /// `downstream_pre_cx_active`: always 0.
    _pre_cx_active: Gauge,
}

impl ListenerStats {
    /// The stats of `listener`.
    pub fn new(store: &Store, listener: ListenerScope<'_>) -> Self {
        let c = |n: &str| listener.counter(store, n, &n.replace('.', "_"), &[]);
        let mut zeros = vec![
            "downstream_cx_overflow",
            "downstream_cx_overload_reject",
            "downstream_cx_transport_socket_connect_timeout",
            "downstream_global_cx_overflow",
            "downstream_listener_filter_error",
            "downstream_listener_filter_remote_close",
            "downstream_pre_cx_timeout",
            "no_filter_chain_match",
        ];
        if matches!(listener, ListenerScope::Address(_)) {
            zeros.extend([
                "extension_config_missing",
                "network_extension_config_missing",
            ]);
        }
        let thread = match listener {
            ListenerScope::Admin => Some((
                c("main_thread.downstream_cx_total"),
                listener.gauge(
                    store,
                    "main_thread.downstream_cx_active",
                    "main_thread_downstream_cx_active",
                ),
            )),
            ListenerScope::Address(_) => None,
        };
        let pre_cx_active = listener.gauge(
            store,
            "downstream_pre_cx_active",
            "downstream_pre_cx_active",
        );
        pre_cx_active.set(0);
        Self {
            cx_total: c("downstream_cx_total"),
            cx_destroy: c("downstream_cx_destroy"),
            cx_active: listener.gauge(store, "downstream_cx_active", "downstream_cx_active"),
            thread,
            _zeros: zeros.into_iter().map(c).collect(),
            _pre_cx_active: pre_cx_active,
        }
    }

    /// A connection was accepted: counts it, and its end when the guard drops.
    pub fn open(&self) -> ConnectionGuard {
        self.cx_total.inc();
        self.cx_active.inc();
        if let Some((t, a)) = &self.thread {
            t.inc();
            a.inc();
        }
        ConnectionGuard {
            stats: self.clone(),
        }
    }
}

/// Counts a listener connection's end (`downstream_cx_destroy`, `downstream_cx_active`) when
/// dropped.
#[derive(Debug)]
pub struct ConnectionGuard {
    stats: ListenerStats,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.stats.cx_active.dec();
        self.stats.cx_destroy.inc();
        if let Some((_, a)) = &self.stats.thread {
            a.dec();
        }
    }
}

impl HcmStats {
    /// The counters for `stat_prefix`.
    pub fn new(store: &Store, stat_prefix: &str) -> Self {
        Self::build(store, stat_prefix, true)
    }

    /// The admin listener's connection manager (`http.admin.*`): no router, so no `no_route`,
    /// `rq_direct_response` or `rq_redirect` (kept detached), as in Envoy.
    pub fn admin(store: &Store) -> Self {
        Self {
            listener: Some(ListenerHttpStats::new(store, ListenerScope::Admin, "admin")),
            ..Self::build(store, "admin", false)
        }
    }

    fn build(store: &Store, stat_prefix: &str, router: bool) -> Self {
        let tag = [("envoy_http_conn_manager_prefix", stat_prefix)];
        let r = |n: &str| {
            if router {
                store.counter(
                    &format!("http.{stat_prefix}.{n}"),
                    &format!("envoy_http_{n}"),
                    &tag,
                )
            } else {
                Counter::default()
            }
        };
        let c = |n: &str| {
            store.counter(
                &format!("http.{stat_prefix}.{n}"),
                &format!("envoy_http_{n}"),
                &tag,
            )
        };
        let g = |n: &str| {
            store.gauge(
                &format!("http.{stat_prefix}.{n}"),
                &format!("envoy_http_{n}"),
                &tag,
            )
        };
        let h = |n: &str| {
            store.histogram(
                &format!("http.{stat_prefix}.{n}"),
                &format!("envoy_http_{n}"),
                &tag,
            )
        };
        let class = |d: u8| {
            let code = d.to_string();
            store.counter(
                &format!("http.{stat_prefix}.downstream_rq_{d}xx"),
                "envoy_http_downstream_rq_xx",
                &[
                    ("envoy_response_code_class", &code),
                    ("envoy_http_conn_manager_prefix", stat_prefix),
                ],
            )
        };
        Self {
            rq_total: c("downstream_rq_total"),
            rq_class: [class(1), class(2), class(3), class(4), class(5)],
            rq_completed: c("downstream_rq_completed"),
            rq_http1_total: c("downstream_rq_http1_total"),
            rq_http2_total: c("downstream_rq_http2_total"),
            rq_active: g("downstream_rq_active"),
            cx_total: c("downstream_cx_total"),
            cx_active: g("downstream_cx_active"),
            cx_protocol_error: c("downstream_cx_protocol_error"),
            no_route: r("no_route"),
            rq_rx_reset: c("downstream_rq_rx_reset"),
            rq_too_large: c("downstream_rq_too_large"),
            rq_direct_response: r("rq_direct_response"),
            rq_redirect: r("rq_redirect"),
            rs_too_large: c("rs_too_large"),
            rq_time: h("downstream_rq_time"),
            cx_length_ms: h("downstream_cx_length_ms"),
            listener: None,
        }
    }

    /// The counters for `stat_prefix` on `listener`, with the listener's copy of the response
    /// classes (`listener.<addr>.http.<prefix>.downstream_rq_<class>xx`).
    pub fn for_listener(store: &Store, stat_prefix: &str, listener: ListenerScope<'_>) -> Self {
        Self {
            listener: Some(ListenerHttpStats::new(store, listener, stat_prefix)),
            ..Self::new(store, stat_prefix)
        }
    }

    /// Counts a finished response with `status`.
    pub fn record_status(&self, status: u16) {
        if let Some(c) = (status / 100)
            .checked_sub(1)
            .and_then(|i| self.rq_class.get(usize::from(i)))
        {
            c.inc();
        }
        self.rq_completed.inc();
        if let Some(l) = &self.listener {
            if let Some(c) = (status / 100)
                .checked_sub(1)
                .and_then(|i| l.rq_class.get(usize::from(i)))
            {
                c.inc();
            }
            l.rq_completed.inc();
        }
    }
}

/// Counters of one upstream cluster (`cluster.<name>.*`).
#[derive(Debug, Clone)]
pub struct ClusterStats {
    /// `upstream_rq_total`
    pub rq_total: Counter,
    /// `upstream_rq_timeout`
    pub rq_timeout: Counter,
    /// `upstream_rq_retry`
    pub rq_retry: Counter,
    /// `upstream_rq_retry_backoff_exponential`: retries that waited the exponential back-off.
    pub rq_retry_backoff_exponential: Counter,
    /// `upstream_rq_retry_limit_exceeded`: a retriable outcome with no retry left.
    pub rq_retry_limit_exceeded: Counter,
    /// `upstream_rq_retry_success`: a retry whose response was not retriable.
    pub rq_retry_success: Counter,
    /// Envoy's other retry counters, never counted here (no retry budget, no shadows).
    pub rq_retry_unused: [Counter; 3],
    /// `upstream_cx_total`
    pub cx_total: Counter,
    /// `upstream_cx_connect_fail`
    pub cx_connect_fail: Counter,
    /// `upstream_cx_active`
    pub cx_active: Gauge,
    /// `upstream_rq_pending_failure_eject`: requests that failed before a response started.
    pub rq_pending_failure_eject: Counter,
    /// `upstream_cx_none_healthy`
    pub cx_none_healthy: Counter,
    /// `membership_total`
    pub membership_total: Gauge,
    /// `membership_healthy`
    pub membership_healthy: Gauge,
    /// `upstream_cx_connect_ms`
    pub cx_connect_ms: Histogram,
    /// `upstream_cx_length_ms`
    pub cx_length_ms: Histogram,
    /// What Envoy's router charges per upstream response (`upstream_rq_<class>xx`,
    /// `upstream_rq_<code>`, `upstream_rq_completed`, `upstream_rq_time`), and again under
    /// `external.` or `internal.` (`x-envoy-internal: true`).
    codes: Arc<CodeStats>,
}

/// The router's per-response stats of one cluster, made on first use as Envoy's are (a
/// cluster that never answered a 5xx has no `upstream_rq_5xx`): plain, then the `external.`
/// and `internal.` copies.
#[derive(Debug)]
struct CodeStats {
    store: Store,
    name: Arc<str>,
    completed: [OnceLock<Counter>; 4],
    rq_time: [OnceLock<Histogram>; 4],
    class: [[OnceLock<Counter>; 5]; 4],
    /// `upstream_rq_<code>` by (scope, code).
    by_code: Mutex<Vec<((usize, u16), Counter)>>,
}

/// Plain, `external.`, `internal.`, and `retry.` (responses the router retried).
const SCOPES: [&str; 4] = ["", "external.", "internal.", "retry."];

impl CodeStats {
    fn new(store: &Store, name: &str) -> Self {
        Self {
            store: store.clone(),
            name: Arc::from(name),
            completed: Default::default(),
            rq_time: Default::default(),
            class: Default::default(),
            by_code: Mutex::default(),
        }
    }

    /// `stat` under `scope` (an index of [`SCOPES`]): the flat name and the Prometheus name.
    fn names(&self, scope: usize, stat: &str, prom_stat: &str) -> (String, String) {
        let sc = SCOPES.get(scope).copied().unwrap_or_default();
        (
            format!("cluster.{}.{sc}{stat}", self.name),
            format!("envoy_cluster_{}{prom_stat}", sc.replace('.', "_")),
        )
    }

    fn completed(&self, scope: usize) -> Option<&Counter> {
        let cell = self.completed.get(scope)?;
        Some(cell.get_or_init(|| {
            let (flat, prom) = self.names(scope, "upstream_rq_completed", "upstream_rq_completed");
            self.store
                .counter(&flat, &prom, &[("envoy_cluster_name", &self.name)])
        }))
    }

    fn rq_time(&self, scope: usize) -> Option<&Histogram> {
        let cell = self.rq_time.get(scope)?;
        Some(cell.get_or_init(|| {
            let (flat, prom) = self.names(scope, "upstream_rq_time", "upstream_rq_time");
            self.store
                .histogram(&flat, &prom, &[("envoy_cluster_name", &self.name)])
        }))
    }

    /// `upstream_rq_<d>xx` for class index `i` (0: 1xx).
    fn class(&self, scope: usize, i: usize) -> Option<&Counter> {
        let cell = self.class.get(scope)?.get(i)?;
        Some(cell.get_or_init(|| {
            let d = (i + 1).to_string();
            let (flat, prom) = self.names(scope, &format!("upstream_rq_{d}xx"), "upstream_rq_xx");
            self.store.counter(
                &flat,
                &prom,
                &[
                    ("envoy_response_code_class", &d),
                    ("envoy_cluster_name", &self.name),
                ],
            )
        }))
    }

    /// Adds one to `upstream_rq_<code>` under `scope`.
    fn count_code(&self, scope: usize, code: u16) {
        let mut v = match self.by_code.lock() {
            Ok(v) => v,
            Err(p) => p.into_inner(),
        };
        if let Some((_, c)) = v.iter().find(|(k, _)| *k == (scope, code)) {
            c.inc();
            return;
        }
        let (flat, prom) = self.names(scope, &format!("upstream_rq_{code}"), "upstream_rq");
        let c = self.store.counter(
            &flat,
            &prom,
            &[
                ("envoy_response_code", &code.to_string()),
                ("envoy_cluster_name", &self.name),
            ],
        );
        c.inc();
        v.push(((scope, code), c));
    }
}

impl ClusterStats {
    /// The counters for cluster `name`.
    pub fn new(store: &Store, name: &str) -> Self {
        let tag = [("envoy_cluster_name", name)];
        let c = |n: &str| {
            store.counter(
                &format!("cluster.{name}.{n}"),
                &format!("envoy_cluster_{n}"),
                &tag,
            )
        };
        let g = |n: &str| {
            store.gauge(
                &format!("cluster.{name}.{n}"),
                &format!("envoy_cluster_{n}"),
                &tag,
            )
        };
        let h = |n: &str| {
            store.histogram(
                &format!("cluster.{name}.{n}"),
                &format!("envoy_cluster_{n}"),
                &tag,
            )
        };
        Self {
            rq_total: c("upstream_rq_total"),
            rq_timeout: c("upstream_rq_timeout"),
            rq_retry: c("upstream_rq_retry"),
            rq_retry_backoff_exponential: c("upstream_rq_retry_backoff_exponential"),
            rq_retry_limit_exceeded: c("upstream_rq_retry_limit_exceeded"),
            rq_retry_success: c("upstream_rq_retry_success"),
            rq_retry_unused: [
                c("upstream_rq_retry_backoff_ratelimited"),
                c("upstream_rq_retry_overflow"),
                c("retry_or_shadow_abandoned"),
            ],
            cx_total: c("upstream_cx_total"),
            cx_connect_fail: c("upstream_cx_connect_fail"),
            cx_active: g("upstream_cx_active"),
            rq_pending_failure_eject: c("upstream_rq_pending_failure_eject"),
            cx_none_healthy: c("upstream_cx_none_healthy"),
            membership_total: g("membership_total"),
            membership_healthy: g("membership_healthy"),
            cx_connect_ms: h("upstream_cx_connect_ms"),
            cx_length_ms: h("upstream_cx_length_ms"),
            codes: Arc::new(CodeStats::new(store, name)),
        }
    }

    /// Counts an upstream response with `status` (at its headers, as Envoy's router does):
    /// `upstream_rq_<class>xx`, `upstream_rq_<code>`, `upstream_rq_completed`, each also under
    /// `external.` or, for `x-envoy-internal: true` requests, `internal.`.
    pub fn record_status(&self, status: u16, internal: bool) {
        let class = (status / 100).checked_sub(1).map(usize::from);
        for scope in [0, if internal { 2 } else { 1 }] {
            if let Some(c) = class.and_then(|i| self.codes.class(scope, i)) {
                c.inc();
            }
            self.codes.count_code(scope, status);
            if let Some(c) = self.codes.completed(scope) {
                c.inc();
            }
        }
    }

    /// Counts an upstream response the router retried, as Envoy charges it: `retry.upstream_rq_<code>`,
    /// `retry.upstream_rq_<class>xx` and `retry.upstream_rq_completed` (not the plain ones).
    pub fn record_retried_status(&self, status: u16) {
        let class = (status / 100).checked_sub(1).map(usize::from);
        if let Some(c) = class.and_then(|i| self.codes.class(3, i)) {
            c.inc();
        }
        self.codes.count_code(3, status);
        if let Some(c) = self.codes.completed(3) {
            c.inc();
        }
    }

    /// Records `upstream_rq_time` (and its `external.`/`internal.` copy) for a response that
    /// completed.
    pub fn record_time(&self, d: std::time::Duration, internal: bool) {
        for scope in [0, if internal { 2 } else { 1 }] {
            if let Some(h) = self.codes.rq_time(scope) {
                h.record_ms(d);
            }
        }
    }
}

/// Envoy's `/stats` order: counters and gauges (plugins' included) sorted by name, then the
/// histograms sorted by name.
fn sorted_like_envoy(text: &str) -> String {
    let name = |l: &&str| l.split(": ").next().unwrap_or_default().to_string();
    let (mut hist, mut rest): (Vec<&str>, Vec<&str>) = text
        .lines()
        .partition(|l| l.contains(": P0(") || l.ends_with(": No recorded values"));
    rest.sort_by_key(name);
    hist.sort_by_key(name);
    let mut out = String::with_capacity(text.len());
    for l in rest.into_iter().chain(hist) {
        out.push_str(l);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_are_sorted_histograms_last() {
        let text = "b.x: 1\nwasmcustom.h: P0(nan,0) count=1 sum=2\na.y: 2\nwasmcustom.a: 3\n";
        assert_eq!(
            sorted_like_envoy(text),
            "a.y: 2\nb.x: 1\nwasmcustom.a: 3\nwasmcustom.h: P0(nan,0) count=1 sum=2\n"
        );
    }

    /// Envoy's order: counters, gauges, histograms, each sorted by name, plugin metrics among
    /// them; a counter and a histogram sharing a name get a block each.
    #[test]
    fn prometheus_blocks_by_kind_then_name() {
        let mut groups = BTreeMap::new();
        groups.insert((1, "envoy_g".to_string()), vec!["envoy_g{} 1".to_string()]);
        merge_blocks(
            &mut groups,
            "# TYPE h histogram\nh_sum{} 3\nh_count{} 1\n# TYPE h counter\nh{} 0\n# TYPE a gauge\na{} 2\n",
        );
        merge_blocks(&mut groups, "# TYPE h counter\nh{x=\"1\"} 4\n");
        let order: Vec<_> = groups
            .iter()
            .map(|((r, n), l)| format!("{r}:{n}:{}", l.len()))
            .collect();
        assert_eq!(order, ["0:h:2", "1:a:1", "1:envoy_g:1", "2:h:2"]);
    }

    #[test]
    fn renders_envoy_names() {
        let store = Store::new();
        let s = HcmStats::new(&store, "ingress_http");
        s.rq_total.inc();
        s.record_status(200);
        let text = store.render_text();
        assert!(
            text.contains("http.ingress_http.downstream_rq_total: 1\n"),
            "{text}"
        );
        assert!(
            text.contains("http.ingress_http.downstream_rq_2xx: 1\n"),
            "{text}"
        );
        let prom = store.render_prometheus();
        assert!(
            prom.contains("# TYPE envoy_http_downstream_rq_total counter\n"),
            "{prom}"
        );
        assert!(
            prom.contains("envoy_http_downstream_rq_total{envoy_http_conn_manager_prefix=\"ingress_http\"} 1\n"),
            "{prom}"
        );
        assert!(prom.contains(
            "envoy_http_downstream_rq_xx{envoy_response_code_class=\"2\",envoy_http_conn_manager_prefix=\"ingress_http\"} 1"
        ));
    }
}
