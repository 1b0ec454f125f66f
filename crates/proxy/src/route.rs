//! Route tables: virtual hosts selected by `:authority`, routes matched by path and headers,
//! built from `RouteConfiguration` by a pure function and matched on the request path.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, StatusCode};
use regex::Regex;

use crate::config::{ConfigError, duration};
use crate::pb::{matcher, route as pbr};

/// A built `RouteConfiguration`.
#[derive(Debug)]
pub struct RouteTable {
    /// `name`.
    pub name: String,
    virtual_hosts: Vec<VirtualHost>,
    exact: HashMap<String, usize>,
    suffix: Vec<(String, usize)>,
    prefix: Vec<(String, usize)>,
    default: Option<usize>,
    /// `ignore_port_in_host_matching`: the authority's port is dropped before matching.
    ignore_port: bool,
    request_headers: HeaderMutations,
    response_headers: HeaderMutations,
}

/// `request_headers_to_add`/`_to_remove` (or the response ones) of one level.
#[derive(Debug, Default)]
pub struct HeaderMutations {
    add: Vec<(http::HeaderName, http::HeaderValue, AppendAction)>,
    remove: Vec<http::HeaderName>,
}

#[derive(Debug, Clone, Copy)]
enum AppendAction {
    AppendIfExistsOrAdd,
    AddIfAbsent,
    OverwriteIfExistsOrAdd,
    OverwriteIfExists,
}

impl HeaderMutations {
    /// Envoy's header parser order: removals first; then every condition is evaluated against
    /// the headers as they were; overwrites are applied before appends.
    pub fn apply(&self, headers: &mut HeaderMap) {
        if !self.remove.is_empty() {
            let names: Vec<&str> = self.remove.iter().map(|n| n.as_str()).collect();
            crate::header_order::remove(headers, &names);
        }
        let mut overwrite = Vec::new();
        let mut append = Vec::new();
        for (name, value, action) in &self.add {
            match action {
                AppendAction::AppendIfExistsOrAdd => append.push((name, value)),
                AppendAction::AddIfAbsent => {
                    if !headers.contains_key(name) {
                        append.push((name, value));
                    }
                }
                AppendAction::OverwriteIfExists => {
                    if headers.contains_key(name) {
                        overwrite.push((name, value));
                    }
                }
                AppendAction::OverwriteIfExistsOrAdd => overwrite.push((name, value)),
            }
        }
        for (name, value) in overwrite {
            headers.insert(name.clone(), value.clone());
        }
        for (name, value) in append {
            headers.append(name.clone(), value.clone());
        }
    }

    fn build(
        add: &[crate::pb::core::HeaderValueOption],
        remove: &[String],
        path: &str,
        what: &str,
    ) -> Result<Self, ConfigError> {
        let mut out = HeaderMutations::default();
        for (i, o) in add.iter().enumerate() {
            let opath = format!("{path}.{what}_headers_to_add[{i}]");
            let h = o
                .header
                .as_ref()
                .ok_or_else(|| ConfigError::invalid(format!("{opath}.header"), "required"))?;
            if h.value.contains('%') {
                return Err(ConfigError::unsupported(
                    format!("{opath}.header.value"),
                    "header values with %COMMAND% substitutions (only literal values are)",
                ));
            }
            if h.value.is_empty() && !o.keep_empty_value {
                continue;
            }
            let name = http::HeaderName::from_bytes(h.key.to_ascii_lowercase().as_bytes())
                .map_err(|e| ConfigError::invalid(format!("{opath}.header.key"), e))?;
            let value = http::HeaderValue::from_str(&h.value)
                .map_err(|e| ConfigError::invalid(format!("{opath}.header.value"), e))?;
            #[allow(deprecated, reason = "`append` is still common in configs")]
            let append = o.append.as_ref().map(|b| b.value);
            let action = match (append, o.append_action) {
                (Some(false), _) => AppendAction::OverwriteIfExistsOrAdd,
                (Some(true), _) | (None, 0) => AppendAction::AppendIfExistsOrAdd,
                (None, 1) => AppendAction::AddIfAbsent,
                (None, 2) => AppendAction::OverwriteIfExistsOrAdd,
                (None, 3) => AppendAction::OverwriteIfExists,
                (None, _) => {
                    return Err(ConfigError::invalid(
                        format!("{opath}.append_action"),
                        "unknown action",
                    ));
                }
            };
            out.add.push((name, value, action));
        }
        for (i, r) in remove.iter().enumerate() {
            out.remove.push(
                http::HeaderName::from_bytes(r.to_ascii_lowercase().as_bytes()).map_err(|e| {
                    ConfigError::invalid(format!("{path}.{what}_headers_to_remove[{i}]"), e)
                })?,
            );
        }
        Ok(out)
    }
}

/// A virtual host.
#[derive(Debug)]
pub struct VirtualHost {
    /// `name`.
    pub name: Arc<str>,
    /// `metadata` (`xds.virtual_host_metadata`), if set.
    pub metadata: Option<Arc<MetadataProp>>,
    /// Its routes, in order.
    pub routes: Vec<Route>,
    request_headers: HeaderMutations,
    response_headers: HeaderMutations,
}

/// One route.
#[derive(Debug)]
pub struct Route {
    /// `name` (may be empty).
    pub name: Arc<str>,
    /// `metadata` (`xds.route_metadata`), if set.
    pub metadata: Option<Arc<MetadataProp>>,
    matcher: RouteMatch,
    /// What to do with a matching request.
    pub action: Action,
    request_headers: HeaderMutations,
    response_headers: HeaderMutations,
}

/// A route's or cluster's `metadata` as plugins read it (`xds.route_metadata`,
/// `xds.cluster_metadata`): the whole message (protobuf bytes, what Envoy serializes for the
/// path itself) and its `filter_metadata` for paths below it.
#[derive(Debug)]
pub struct MetadataProp {
    /// The `envoy.config.core.v3.Metadata` message, encoded.
    pub proto: Vec<u8>,
    /// `{"filter_metadata": {filter: {key: value}}}`.
    pub value: wasm_host::PropertyValue,
}

impl MetadataProp {
    /// From the config's `metadata`.
    pub fn build(m: &envoy_types::pb::envoy::config::core::v3::Metadata) -> Self {
        use prost::Message;
        let filters = m
            .filter_metadata
            .iter()
            .map(|(name, st)| {
                (
                    name.clone().into_bytes(),
                    wasm_host::PropertyValue::Map(
                        st.fields
                            .iter()
                            .map(|(k, v)| {
                                (
                                    k.clone().into_bytes(),
                                    crate::wasm_filter::plugin_config::struct_value(v),
                                )
                            })
                            .collect(),
                    ),
                )
            })
            .collect();
        Self {
            proto: m.encode_to_vec(),
            value: wasm_host::PropertyValue::Map(vec![(
                b"filter_metadata".to_vec(),
                wasm_host::PropertyValue::Map(filters),
            )]),
        }
    }
}

#[derive(Debug)]
enum PathMatch {
    Prefix(String),
    Exact(String),
    Regex(Regex),
}

#[derive(Debug)]
struct RouteMatch {
    path: PathMatch,
    case_sensitive: bool,
    headers: Vec<HeaderMatch>,
}

#[derive(Debug)]
pub(crate) struct HeaderMatch {
    name: http::HeaderName,
    invert: bool,
    kind: HeaderMatchKind,
}

#[derive(Debug)]
enum HeaderMatchKind {
    Present(bool),
    String(StringMatch),
}

/// Envoy's `StringMatcher`.
#[derive(Debug)]
pub enum StringMatch {
    /// `exact` (with `ignore_case`).
    Exact(String, bool),
    /// `prefix`.
    Prefix(String, bool),
    /// `suffix`.
    Suffix(String, bool),
    /// `contains`.
    Contains(String, bool),
    /// `safe_regex` (full match).
    Regex(Regex),
}

impl StringMatch {
    /// Whether `v` matches.
    pub fn matches(&self, v: &str) -> bool {
        fn low(s: &str, ic: bool) -> std::borrow::Cow<'_, str> {
            if ic {
                s.to_ascii_lowercase().into()
            } else {
                s.into()
            }
        }
        match self {
            StringMatch::Exact(s, ic) => low(v, *ic) == low(s, *ic),
            StringMatch::Prefix(s, ic) => low(v, *ic).starts_with(&*low(s, *ic)),
            StringMatch::Suffix(s, ic) => low(v, *ic).ends_with(&*low(s, *ic)),
            StringMatch::Contains(s, ic) => low(v, *ic).contains(&*low(s, *ic)),
            StringMatch::Regex(r) => r.is_match(v),
        }
    }
}

/// What a route does.
#[derive(Debug)]
pub enum Action {
    /// Forward to a cluster.
    Route(RouteAction),
    /// Answer locally.
    DirectResponse {
        /// Status.
        status: StatusCode,
        /// Body (none if empty).
        body: Option<bytes::Bytes>,
    },
    /// Answer with a redirect.
    Redirect(Redirect),
}

/// A route's `redirect`.
#[derive(Debug)]
pub struct Redirect {
    scheme: Option<String>,
    host: Option<String>,
    port: Option<u16>,
    path: Option<String>,
    prefix_rewrite: Option<String>,
    /// 301, 302, 303, 307 or 308.
    pub status: StatusCode,
    strip_query: bool,
}

impl Redirect {
    /// The `location` for a request (`scheme` is the request's, from `x-forwarded-proto`).
    pub fn location(
        &self,
        route: &Route,
        authority: &str,
        path_and_query: &str,
        scheme: &str,
    ) -> String {
        let scheme_out = self.scheme.as_deref().unwrap_or(scheme);
        let mut host = self.host.clone().unwrap_or_else(|| authority.to_string());
        let split_port = |h: &str| -> (String, Option<String>) {
            match h.rsplit_once(':') {
                Some((name, port)) if !name.contains(']') || name.ends_with(']') => {
                    if port.chars().all(|c| c.is_ascii_digit()) && !port.is_empty() {
                        return (name.to_string(), Some(port.to_string()));
                    }
                    (h.to_string(), None)
                }
                _ => (h.to_string(), None),
            }
        };
        if let Some(p) = self.port {
            let (name, _) = split_port(&host);
            host = format!("{name}:{p}");
        } else if self.scheme.is_some() {
            // A scheme change drops the old scheme's default port.
            let (name, port) = split_port(&host);
            if matches!(port.as_deref(), Some("80") | Some("443")) {
                host = name;
            }
        }
        let (path, query) = match path_and_query.split_once('?') {
            Some((p, q)) => (p.to_string(), Some(q.to_string())),
            None => (path_and_query.to_string(), None),
        };
        let mut new_pq = if let Some(p) = &self.path {
            if p.contains('?') {
                p.clone()
            } else {
                with_query(p, &query)
            }
        } else if let Some(rw) = &self.prefix_rewrite {
            rewrite_prefix(route, rw, &with_query(&path, &query))
        } else {
            with_query(&path, &query)
        };
        if self.strip_query
            && let Some((p, _)) = new_pq.split_once('?')
        {
            new_pq = p.to_string();
        }
        format!("{scheme_out}://{host}{new_pq}")
    }
}

fn with_query(path: &str, query: &Option<String>) -> String {
    match query {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    }
}

/// Where and how to forward.
#[derive(Debug)]
pub struct RouteAction {
    /// The cluster(s).
    pub clusters: ClusterChoice,
    /// `prefix_rewrite`, with the matched prefix it replaces.
    pub prefix_rewrite: Option<String>,
    /// `host_rewrite_literal`.
    pub host_rewrite: Option<http::HeaderValue>,
    /// `timeout` (Envoy's default is 15 s; `None` means disabled, i.e. `0s`).
    pub timeout: Option<Duration>,
    /// `max_grpc_timeout` (deprecated, and set by istiod on every route): a gRPC request's
    /// timeout is its `grpc-timeout` (none without one), capped at this unless it is zero.
    pub max_grpc_timeout: Option<Duration>,
    /// `retry_policy`.
    pub retry: Option<RetryPolicy>,
    /// The virtual host's `include_request_attempt_count`: `x-envoy-attempt-count` upstream.
    pub attempt_count_upstream: bool,
    /// A weighted cluster's own `request_headers_to_add/_remove`, by cluster (only those that
    /// set any): applied before the route's, as Envoy's weighted cluster entry does.
    pub cluster_request_headers: Vec<(Arc<str>, HeaderMutations)>,
}

/// Single or weighted clusters.
#[derive(Debug)]
pub enum ClusterChoice {
    /// `cluster`.
    Single(Arc<str>),
    /// `weighted_clusters`: (name, weight) and the total weight.
    Weighted(Vec<(Arc<str>, u32)>, u32),
}

impl ClusterChoice {
    /// Whether `name` is one of the choices.
    pub fn contains(&self, name: &str) -> bool {
        match self {
            ClusterChoice::Single(c) => &**c == name,
            ClusterChoice::Weighted(list, _) => list.iter().any(|(c, _)| &**c == name),
        }
    }

    /// Picks a cluster; `rand` is uniform in `0..u32::MAX`.
    pub fn pick(&self, rand: u32) -> &Arc<str> {
        match self {
            ClusterChoice::Single(c) => c,
            ClusterChoice::Weighted(list, total) => {
                let mut point = if *total == 0 { 0 } else { rand % total };
                for (name, w) in list {
                    if point < *w {
                        return name;
                    }
                    point -= w;
                }
                static NONE: std::sync::LazyLock<Arc<str>> =
                    std::sync::LazyLock::new(|| Arc::from(""));
                list.last().map_or(&*NONE, |(n, _)| n)
            }
        }
    }

    /// Every cluster name it may pick.
    pub fn names(&self) -> Vec<&str> {
        match self {
            ClusterChoice::Single(c) => vec![&**c],
            ClusterChoice::Weighted(list, _) => list.iter().map(|(n, _)| &**n).collect(),
        }
    }
}

/// A route's `retry_policy`.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Retry on connect failures (`connect-failure`, `5xx`, `gateway-error`, `reset`).
    pub on_connect_failure: bool,
    /// Retry on resets before response headers (`reset`, `5xx`).
    pub on_reset: bool,
    /// Retry on 5xx responses (`5xx`).
    pub on_5xx: bool,
    /// Retry on 502/503/504 (`gateway-error`).
    pub on_gateway_error: bool,
    /// Retry on the listed status codes (`retriable-status-codes`).
    pub status_codes: Vec<u16>,
    /// Retry on a response whose `grpc-status` (headers or trailers-only) is one of these
    /// (`cancelled` 1, `deadline-exceeded` 4, `resource-exhausted` 8, `internal` 13,
    /// `unavailable` 14).
    pub grpc_codes: Vec<u32>,
    /// `num_retries` (default 1).
    pub num_retries: u32,
    /// `per_try_timeout`.
    pub per_try_timeout: Option<Duration>,
}

impl RouteAction {
    /// The request's timeout: the route's, or for a gRPC request under `max_grpc_timeout` its
    /// `grpc-timeout` header (Envoy's `FilterUtility::finalTimeout`).
    pub fn timeout_for(&self, headers: &http::HeaderMap, grpc: bool) -> Option<Duration> {
        let Some(max) = self.max_grpc_timeout.filter(|_| grpc) else {
            return self.timeout;
        };
        let asked = headers
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(grpc_timeout);
        match asked {
            Some(t) if !max.is_zero() => Some(t.min(max)),
            Some(t) => Some(t),
            None if !max.is_zero() => Some(max),
            None => None,
        }
        .filter(|t| !t.is_zero())
    }
}

/// `host[:port]` (or `[v6]:port`) without its port.
fn without_port(authority: &str) -> &str {
    match authority.rfind(':') {
        Some(i)
            if authority[i + 1..].bytes().all(|b| b.is_ascii_digit())
                && (!authority.starts_with('[') || authority[..i].ends_with(']')) =>
        {
            &authority[..i]
        }
        _ => authority,
    }
}

/// A `grpc-timeout` value (`<up to 8 digits><H|M|S|m|u|n>`).
fn grpc_timeout(v: &str) -> Option<Duration> {
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

impl RetryPolicy {
    /// Whether a response status should be retried.
    pub fn retry_status(&self, status: u16) -> bool {
        (self.on_5xx && status >= 500)
            || (self.on_gateway_error && matches!(status, 502..=504))
            || self.status_codes.contains(&status)
    }

    /// Whether a response with these headers should be retried for its `grpc-status`.
    pub fn retry_grpc(&self, headers: &http::HeaderMap) -> bool {
        !self.grpc_codes.is_empty()
            && headers
                .get("grpc-status")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u32>().ok())
                .is_some_and(|c| self.grpc_codes.contains(&c))
    }
}

/// The match of a request against a table.
#[derive(Debug, Clone, Copy)]
pub struct Selected<'a> {
    /// The virtual host.
    pub virtual_host: &'a VirtualHost,
    /// The route.
    pub route: &'a Route,
}

impl RouteTable {
    /// Applies the request header mutations of the route, its virtual host, then the table
    /// (Envoy's order).
    pub fn mutate_request(&self, vh: &VirtualHost, route: &Route, headers: &mut HeaderMap) {
        route.request_headers.apply(headers);
        vh.request_headers.apply(headers);
        self.request_headers.apply(headers);
    }

    /// Applies the response header mutations of the route, its virtual host, then the table.
    pub fn mutate_response(&self, vh: &VirtualHost, route: &Route, headers: &mut HeaderMap) {
        route.response_headers.apply(headers);
        vh.response_headers.apply(headers);
        self.response_headers.apply(headers);
    }

    /// Selects the route for a request.
    pub fn select<'a>(
        &'a self,
        authority: &str,
        path: &str,
        headers: &HeaderMap,
    ) -> Option<Selected<'a>> {
        let vh = self.virtual_host(authority)?;
        let path_only = path.split(['?', '#']).next().unwrap_or(path);
        let route = vh
            .routes
            .iter()
            .find(|r| r.matcher.matches(path_only, headers))?;
        Some(Selected {
            virtual_host: vh,
            route,
        })
    }

    fn virtual_host(&self, authority: &str) -> Option<&VirtualHost> {
        let authority = if self.ignore_port {
            without_port(authority)
        } else {
            authority
        };
        let host = authority.to_ascii_lowercase();
        let idx = self
            .exact
            .get(&host)
            .copied()
            .or_else(|| {
                self.suffix
                    .iter()
                    .find(|(s, _)| host.len() > s.len() && host.ends_with(s))
                    .map(|(_, i)| *i)
            })
            .or_else(|| {
                self.prefix
                    .iter()
                    .find(|(p, _)| host.len() > p.len() && host.starts_with(p))
                    .map(|(_, i)| *i)
            })
            .or(self.default)?;
        self.virtual_hosts.get(idx)
    }

    /// Builds a table from `cfg` at `path`, checking that every cluster exists.
    pub fn build(
        cfg: &pbr::RouteConfiguration,
        path: &str,
        clusters: &[String],
    ) -> Result<Self, ConfigError> {
        let mut table = RouteTable {
            name: cfg.name.clone(),
            virtual_hosts: Vec::new(),
            exact: HashMap::new(),
            suffix: Vec::new(),
            prefix: Vec::new(),
            default: None,
            ignore_port: cfg.ignore_port_in_host_matching,
            request_headers: HeaderMutations::build(
                &cfg.request_headers_to_add,
                &cfg.request_headers_to_remove,
                path,
                "request",
            )?,
            response_headers: HeaderMutations::build(
                &cfg.response_headers_to_add,
                &cfg.response_headers_to_remove,
                path,
                "response",
            )?,
        };
        for (vi, vh) in cfg.virtual_hosts.iter().enumerate() {
            let vpath = format!("{path}.virtual_hosts[{vi}]");
            if vh.domains.is_empty() {
                return Err(ConfigError::invalid(
                    format!("{vpath}.domains"),
                    "at least one domain is required",
                ));
            }
            for (di, d) in vh.domains.iter().enumerate() {
                let d = d.to_ascii_lowercase();
                let dup = |what: &str| {
                    ConfigError::invalid(
                        format!("{vpath}.domains[{di}]"),
                        format!("{what} {d:?} appears in more than one virtual host"),
                    )
                };
                if d == "*" {
                    if table.default.replace(vi).is_some() {
                        return Err(dup("wildcard domain"));
                    }
                } else if let Some(rest) = d.strip_prefix('*') {
                    table.suffix.push((rest.to_string(), vi));
                } else if let Some(rest) = d.strip_suffix('*') {
                    table.prefix.push((rest.to_string(), vi));
                } else if table.exact.insert(d.clone(), vi).is_some() {
                    return Err(dup("domain"));
                }
            }
            let mut routes = Vec::new();
            for (ri, r) in vh.routes.iter().enumerate() {
                let mut route = build_route(r, &format!("{vpath}.routes[{ri}]"), clusters)?;
                if let Action::Route(a) = &mut route.action {
                    a.attempt_count_upstream = vh.include_request_attempt_count;
                }
                routes.push(route);
            }
            table.virtual_hosts.push(VirtualHost {
                name: Arc::from(vh.name.as_str()),
                metadata: vh
                    .metadata
                    .as_ref()
                    .map(|m| Arc::new(MetadataProp::build(m))),
                routes,
                request_headers: HeaderMutations::build(
                    &vh.request_headers_to_add,
                    &vh.request_headers_to_remove,
                    &vpath,
                    "request",
                )?,
                response_headers: HeaderMutations::build(
                    &vh.response_headers_to_add,
                    &vh.response_headers_to_remove,
                    &vpath,
                    "response",
                )?,
            });
        }
        // Envoy: longest wildcard first.
        table.suffix.sort_by_key(|b| std::cmp::Reverse(b.0.len()));
        table.prefix.sort_by_key(|b| std::cmp::Reverse(b.0.len()));
        Ok(table)
    }
}

impl RouteMatch {
    fn matches(&self, path: &str, headers: &HeaderMap) -> bool {
        let path_ok = match &self.path {
            PathMatch::Prefix(p) => {
                if self.case_sensitive {
                    path.starts_with(p.as_str())
                } else {
                    path.len() >= p.len()
                        && path
                            .get(..p.len())
                            .is_some_and(|h| h.eq_ignore_ascii_case(p))
                }
            }
            PathMatch::Exact(p) => {
                if self.case_sensitive {
                    path == p
                } else {
                    path.eq_ignore_ascii_case(p)
                }
            }
            PathMatch::Regex(r) => r.is_match(path),
        };
        path_ok && self.headers.iter().all(|h| h.matches(headers))
    }
}

impl HeaderMatch {
    fn matches(&self, headers: &HeaderMap) -> bool {
        let values: Vec<&str> = headers
            .get_all(&self.name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        self.matches_joined(
            if values.is_empty() {
                None
            } else {
                Some(values.join(","))
            }
            .as_deref(),
        )
    }

    /// The header (or pseudo-header) name it looks at.
    pub(crate) fn name(&self) -> &http::HeaderName {
        &self.name
    }

    /// Matches the header's value (several values joined with `,`, as Envoy does), `None` when
    /// absent.
    pub(crate) fn matches_joined(&self, value: Option<&str>) -> bool {
        let result = match &self.kind {
            HeaderMatchKind::Present(p) => value.is_some() == *p,
            HeaderMatchKind::String(m) => value.is_some_and(|v| m.matches(v)),
        };
        result != self.invert
    }
}

/// Compiles a `RegexMatcher` as a full-string match (Envoy's RE2 semantics).
pub fn regex(m: &matcher::RegexMatcher, path: &str) -> Result<Regex, ConfigError> {
    Regex::new(&format!("^(?:{})$", m.regex))
        .map_err(|e| ConfigError::invalid(format!("{path}.regex"), e))
}

/// Builds a `StringMatcher`.
pub fn string_match(m: &matcher::StringMatcher, path: &str) -> Result<StringMatch, ConfigError> {
    use matcher::string_matcher::MatchPattern as P;
    let ic = m.ignore_case;
    Ok(match &m.match_pattern {
        Some(P::Exact(s)) => StringMatch::Exact(s.clone(), ic),
        Some(P::Prefix(s)) => StringMatch::Prefix(s.clone(), ic),
        Some(P::Suffix(s)) => StringMatch::Suffix(s.clone(), ic),
        Some(P::Contains(s)) => StringMatch::Contains(s.clone(), ic),
        Some(P::SafeRegex(r)) => StringMatch::Regex(regex(r, &format!("{path}.safe_regex"))?),
        _ => return Err(ConfigError::unsupported(path, "string matcher kind")),
    })
}

#[allow(
    deprecated,
    reason = "Envoy configs still use exact_match/prefix_match etc."
)]
pub(crate) fn header_match(h: &pbr::HeaderMatcher, path: &str) -> Result<HeaderMatch, ConfigError> {
    use pbr::header_matcher::HeaderMatchSpecifier as S;
    let name = http::HeaderName::from_bytes(h.name.to_ascii_lowercase().as_bytes())
        .map_err(|e| ConfigError::invalid(format!("{path}.name"), e))?;
    let kind = match &h.header_match_specifier {
        None => HeaderMatchKind::Present(true),
        Some(S::PresentMatch(p)) => HeaderMatchKind::Present(*p),
        Some(S::ExactMatch(s)) => HeaderMatchKind::String(StringMatch::Exact(s.clone(), false)),
        Some(S::PrefixMatch(s)) => HeaderMatchKind::String(StringMatch::Prefix(s.clone(), false)),
        Some(S::SuffixMatch(s)) => HeaderMatchKind::String(StringMatch::Suffix(s.clone(), false)),
        Some(S::ContainsMatch(s)) => {
            HeaderMatchKind::String(StringMatch::Contains(s.clone(), false))
        }
        Some(S::SafeRegexMatch(r)) => HeaderMatchKind::String(StringMatch::Regex(regex(
            r,
            &format!("{path}.safe_regex_match"),
        )?)),
        Some(S::StringMatch(m)) => {
            HeaderMatchKind::String(string_match(m, &format!("{path}.string_match"))?)
        }
        Some(S::RangeMatch(_)) => {
            return Err(ConfigError::unsupported(
                format!("{path}.range_match"),
                "range match",
            ));
        }
    };
    Ok(HeaderMatch {
        name,
        invert: h.invert_match,
        kind,
    })
}

fn build_route(r: &pbr::Route, path: &str, clusters: &[String]) -> Result<Route, ConfigError> {
    use pbr::route::Action as A;
    use pbr::route_match::PathSpecifier as PS;
    let m = r
        .r#match
        .as_ref()
        .ok_or_else(|| ConfigError::invalid(format!("{path}.match"), "required"))?;
    let mpath = format!("{path}.match");
    let path_match = match &m.path_specifier {
        Some(PS::Prefix(p)) => PathMatch::Prefix(p.clone()),
        Some(PS::Path(p)) => PathMatch::Exact(p.clone()),
        Some(PS::SafeRegex(re)) => PathMatch::Regex(regex(re, &format!("{mpath}.safe_regex"))?),
        Some(_) => {
            return Err(ConfigError::unsupported(
                mpath,
                "path matcher kind (prefix, path, safe_regex are)",
            ));
        }
        None => {
            return Err(ConfigError::invalid(
                mpath,
                "one of prefix, path, safe_regex is required",
            ));
        }
    };
    let headers = m
        .headers
        .iter()
        .enumerate()
        .map(|(i, h)| header_match(h, &format!("{mpath}.headers[{i}]")))
        .collect::<Result<Vec<_>, _>>()?;
    let matcher = RouteMatch {
        path: path_match,
        case_sensitive: m.case_sensitive.as_ref().is_none_or(|b| b.value),
        headers,
    };
    let action = match &r.action {
        Some(A::Route(ra)) => Action::Route(build_action(ra, &format!("{path}.route"), clusters)?),
        Some(A::DirectResponse(d)) => {
            let dpath = format!("{path}.direct_response");
            let status = u16::try_from(d.status)
                .ok()
                .and_then(|s| StatusCode::from_u16(s).ok())
                .filter(|s| s.as_u16() >= 200)
                .ok_or_else(|| {
                    ConfigError::invalid(format!("{dpath}.status"), "must be 200..599")
                })?;
            let body = match &d.body {
                Some(ds) => Some(crate::config::data_source(ds, &format!("{dpath}.body"))?.into()),
                None => None,
            };
            Action::DirectResponse { status, body }
        }
        Some(A::Redirect(r)) => Action::Redirect(build_redirect(r, &format!("{path}.redirect"))?),
        Some(_) => {
            return Err(ConfigError::unsupported(
                path,
                "route action kind (route, redirect and direct_response are)",
            ));
        }
        None => {
            return Err(ConfigError::invalid(
                path,
                "an action (route, direct_response) is required",
            ));
        }
    };
    Ok(Route {
        name: Arc::from(r.name.as_str()),
        metadata: r
            .metadata
            .as_ref()
            .map(|m| Arc::new(MetadataProp::build(m))),
        matcher,
        action,
        request_headers: HeaderMutations::build(
            &r.request_headers_to_add,
            &r.request_headers_to_remove,
            path,
            "request",
        )?,
        response_headers: HeaderMutations::build(
            &r.response_headers_to_add,
            &r.response_headers_to_remove,
            path,
            "response",
        )?,
    })
}

fn build_action(
    ra: &pbr::RouteAction,
    path: &str,
    clusters: &[String],
) -> Result<RouteAction, ConfigError> {
    use pbr::route_action::ClusterSpecifier as CS;
    use pbr::route_action::HostRewriteSpecifier as HS;
    let check = |name: &str, p: String| {
        if clusters.iter().any(|c| c == name) {
            Ok(())
        } else {
            Err(ConfigError::invalid(p, format!("unknown cluster {name:?}")))
        }
    };
    let mut cluster_request_headers = Vec::new();
    let choice = match &ra.cluster_specifier {
        Some(CS::Cluster(c)) => {
            check(c, format!("{path}.cluster"))?;
            ClusterChoice::Single(Arc::from(c.as_str()))
        }
        Some(CS::WeightedClusters(w)) => {
            let mut list = Vec::new();
            for (i, c) in w.clusters.iter().enumerate() {
                check(
                    &c.name,
                    format!("{path}.weighted_clusters.clusters[{i}].name"),
                )?;
                if !c.request_headers_to_add.is_empty() || !c.request_headers_to_remove.is_empty() {
                    cluster_request_headers.push((
                        Arc::from(c.name.as_str()),
                        HeaderMutations::build(
                            &c.request_headers_to_add,
                            &c.request_headers_to_remove,
                            &format!("{path}.weighted_clusters.clusters[{i}]"),
                            "request",
                        )?,
                    ));
                }
                list.push((
                    Arc::from(c.name.as_str()),
                    c.weight.as_ref().map_or(0, |w| w.value),
                ));
            }
            let total = list.iter().map(|(_, w)| *w).sum();
            if total == 0 {
                return Err(ConfigError::invalid(
                    format!("{path}.weighted_clusters"),
                    "total weight is 0",
                ));
            }
            ClusterChoice::Weighted(list, total)
        }
        Some(_) => {
            return Err(ConfigError::unsupported(
                path,
                "cluster specifier (cluster, weighted_clusters are)",
            ));
        }
        None => {
            return Err(ConfigError::invalid(
                path,
                "cluster or weighted_clusters is required",
            ));
        }
    };
    let host_rewrite = match &ra.host_rewrite_specifier {
        Some(HS::HostRewriteLiteral(h)) => Some(
            http::HeaderValue::from_str(h)
                .map_err(|e| ConfigError::invalid(format!("{path}.host_rewrite_literal"), e))?,
        ),
        Some(_) => {
            return Err(ConfigError::unsupported(
                path,
                "host rewrite kind (host_rewrite_literal is)",
            ));
        }
        None => None,
    };
    let timeout = match &ra.timeout {
        None => Some(Duration::from_secs(15)),
        Some(d) => Some(duration(d)).filter(|d| !d.is_zero()),
    };
    let retry = match &ra.retry_policy {
        None => None,
        Some(rp) => Some(retry_policy(rp, &format!("{path}.retry_policy"))?),
    };
    let prefix_rewrite = Some(ra.prefix_rewrite.clone()).filter(|p| !p.is_empty());
    Ok(RouteAction {
        clusters: choice,
        prefix_rewrite,
        host_rewrite,
        timeout,
        // (deprecated in Envoy's API, still honoured by Envoy and sent by istiod)
        #[allow(deprecated)]
        max_grpc_timeout: ra.max_grpc_timeout.as_ref().map(duration),
        retry,
        attempt_count_upstream: false,
        cluster_request_headers,
    })
}

fn retry_policy(rp: &pbr::RetryPolicy, path: &str) -> Result<RetryPolicy, ConfigError> {
    let mut p = RetryPolicy {
        on_connect_failure: false,
        on_reset: false,
        on_5xx: false,
        on_gateway_error: false,
        status_codes: rp
            .retriable_status_codes
            .iter()
            .filter_map(|c| u16::try_from(*c).ok())
            .collect(),
        grpc_codes: Vec::new(),
        num_retries: rp.num_retries.as_ref().map_or(1, |n| n.value),
        per_try_timeout: rp
            .per_try_timeout
            .as_ref()
            .map(duration)
            .filter(|d| !d.is_zero()),
    };
    for cond in rp
        .retry_on
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        match cond {
            "5xx" => {
                p.on_5xx = true;
                p.on_reset = true;
                p.on_connect_failure = true;
            }
            "gateway-error" => {
                p.on_gateway_error = true;
                p.on_connect_failure = true;
            }
            "reset" => {
                p.on_reset = true;
                p.on_connect_failure = true;
            }
            "connect-failure" => p.on_connect_failure = true,
            // An h2 upstream's REFUSED_STREAM reset: a reset before the response.
            "refused-stream" => p.on_reset = true,
            "retriable-status-codes" => {}
            "cancelled" => p.grpc_codes.push(1),
            "deadline-exceeded" => p.grpc_codes.push(4),
            "resource-exhausted" => p.grpc_codes.push(8),
            "internal" => p.grpc_codes.push(13),
            "unavailable" => p.grpc_codes.push(14),
            other => {
                return Err(ConfigError::unsupported(
                    format!("{path}.retry_on"),
                    format!(
                        "retry condition {other:?} (5xx, gateway-error, reset, connect-failure, refused-stream, retriable-status-codes and the gRPC cancelled, deadline-exceeded, resource-exhausted, internal, unavailable are)"
                    ),
                ));
            }
        }
    }
    Ok(p)
}

/// Applies `prefix_rewrite` for a route that matched by prefix `matched`.
pub fn rewrite_prefix(route: &Route, rewrite: &str, path_and_query: &str) -> String {
    match &route.matcher.path {
        PathMatch::Prefix(p) if path_and_query.len() >= p.len() => {
            format!(
                "{rewrite}{}",
                path_and_query.get(p.len()..).unwrap_or_default()
            )
        }
        _ => {
            // Exact and regex matches replace the whole path, keeping the query.
            match path_and_query.find('?') {
                Some(q) => format!("{rewrite}{}", path_and_query.get(q..).unwrap_or_default()),
                None => rewrite.to_string(),
            }
        }
    }
}

fn build_redirect(r: &pbr::RedirectAction, path: &str) -> Result<Redirect, ConfigError> {
    use pbr::redirect_action::{
        PathRewriteSpecifier as P, RedirectResponseCode as C, SchemeRewriteSpecifier as S,
    };
    let scheme = match &r.scheme_rewrite_specifier {
        Some(S::HttpsRedirect(true)) => Some("https".to_string()),
        Some(S::SchemeRedirect(s)) if !s.is_empty() => Some(s.to_ascii_lowercase()),
        _ => None,
    };
    let (path_redirect, prefix_rewrite) = match &r.path_rewrite_specifier {
        None => (None, None),
        Some(P::PathRedirect(p)) => (Some(p.clone()), None),
        Some(P::PrefixRewrite(p)) => (None, Some(p.clone())),
        Some(_) => {
            return Err(ConfigError::unsupported(
                format!("{path}.regex_rewrite"),
                "regex rewrite in redirects",
            ));
        }
    };
    let status = match C::try_from(r.response_code) {
        Ok(C::MovedPermanently) => StatusCode::MOVED_PERMANENTLY,
        Ok(C::Found) => StatusCode::FOUND,
        Ok(C::SeeOther) => StatusCode::SEE_OTHER,
        Ok(C::TemporaryRedirect) => StatusCode::TEMPORARY_REDIRECT,
        Ok(C::PermanentRedirect) => StatusCode::PERMANENT_REDIRECT,
        Err(_) => {
            return Err(ConfigError::invalid(
                format!("{path}.response_code"),
                "unknown code",
            ));
        }
    };
    let port =
        match r.port_redirect {
            0 => None,
            p => Some(u16::try_from(p).map_err(|_| {
                ConfigError::invalid(format!("{path}.port_redirect"), "out of range")
            })?),
        };
    Ok(Redirect {
        scheme,
        host: Some(r.host_redirect.clone()).filter(|h| !h.is_empty()),
        port,
        path: path_redirect,
        prefix_rewrite,
        status,
        strip_query: r.strip_query,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::bootstrap::parse_value;

    fn table(yaml: &str) -> RouteTable {
        let v = parse_value(yaml).unwrap();
        let bytes =
            wasmesh_xds::descriptors::from_json("envoy.config.route.v3.RouteConfiguration", &v)
                .unwrap();
        let cfg: pbr::RouteConfiguration = prost::Message::decode(bytes.as_slice()).unwrap();
        RouteTable::build(&cfg, "rc", &["a".into(), "b".into()]).unwrap()
    }

    /// istiod's gateway routes: `ignore_port_in_host_matching`, `timeout: 0s` and
    /// `max_grpc_timeout: 0s`, Istio's `retry_on` list.
    #[test]
    fn istio_route_settings() {
        let yaml = r#"
ignore_port_in_host_matching: IGNORE
virtual_hosts:
- name: app
  domains: ["app1.mplb.com", "[::1]"]
  routes:
  - match: {prefix: "/"}
    route:
      cluster: a
      timeout: 0s
      max_grpc_timeout: 0s
      retry_policy:
        retry_on: connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes
        num_retries: 2
        retriable_status_codes: [503]
"#;
        let t = table(&yaml.replace("IGNORE", "true"));
        let h = HeaderMap::new();
        assert!(t.select("app1.mplb.com:8080", "/", &h).is_some());
        assert!(t.select("[::1]:80", "/", &h).is_some());
        let strict = table(&yaml.replace("IGNORE", "false"));
        assert!(strict.select("app1.mplb.com:8080", "/", &h).is_none());
        let s = t.select("app1.mplb.com", "/", &h).unwrap();
        let Action::Route(ra) = &s.route.action else {
            panic!()
        };
        // No route timeout; a gRPC request's own deadline applies.
        assert_eq!(ra.timeout_for(&h, true), None);
        let mut grpc = HeaderMap::new();
        grpc.insert("grpc-timeout", "250m".parse().unwrap());
        assert_eq!(
            ra.timeout_for(&grpc, true),
            Some(Duration::from_millis(250))
        );
        assert_eq!(ra.timeout_for(&grpc, false), None);
        let retry = ra.retry.as_ref().unwrap();
        assert_eq!(retry.grpc_codes, [14, 1]);
        let mut unavailable = HeaderMap::new();
        unavailable.insert("grpc-status", "14".parse().unwrap());
        assert!(retry.retry_grpc(&unavailable));
        unavailable.insert("grpc-status", "0".parse().unwrap());
        assert!(!retry.retry_grpc(&unavailable));
        assert!(retry.retry_status(503) && !retry.retry_status(502));
        assert_eq!(grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(grpc_timeout("123456789S"), None);
        assert_eq!(grpc_timeout("5x"), None);
    }

    #[test]
    fn domains_paths_and_headers() {
        let t = table(
            r#"
virtual_hosts:
- name: exact
  domains: ["api.example.com"]
  routes:
  - match: {prefix: "/", headers: [{name: x-canary, string_match: {exact: "1"}}]}
    route: {cluster: b}
  - match: {prefix: "/v1/"}
    route: {cluster: a, prefix_rewrite: "/"}
- name: wild
  domains: ["*.example.com"]
  routes:
  - match: {safe_regex: {regex: "/item/[0-9]+"}}
    route: {cluster: a}
- name: default
  domains: ["*"]
  routes:
  - match: {path: "/exact"}
    direct_response: {status: 200, body: {inline_string: "hi"}}
"#,
        );
        let h = HeaderMap::new();
        let s = t.select("api.example.com", "/v1/x?q=1", &h).unwrap();
        assert_eq!(&*s.virtual_host.name, "exact");
        let Action::Route(ra) = &s.route.action else {
            panic!()
        };
        assert_eq!(&**ra.clusters.pick(0), "a");
        assert_eq!(rewrite_prefix(s.route, "/", "/v1/x?q=1"), "/x?q=1");
        let mut canary = HeaderMap::new();
        canary.insert("x-canary", "1".parse().unwrap());
        let s = t.select("API.example.com", "/v1/x", &canary).unwrap();
        let Action::Route(ra) = &s.route.action else {
            panic!()
        };
        assert_eq!(&**ra.clusters.pick(0), "b");
        assert!(t.select("www.example.com", "/item/12", &h).is_some());
        assert!(t.select("www.example.com", "/item/12x", &h).is_none());
        assert!(t.select("other", "/exact", &h).is_some());
        assert!(t.select("other", "/exact/no", &h).is_none());
    }
}
