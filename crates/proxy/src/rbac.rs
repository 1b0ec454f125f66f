//! `envoy.filters.http.rbac` and `envoy.filters.network.rbac` in the forms whose decision does
//! not depend on the request: allow-all and deny-all (an `ALLOW` action with no policy, a policy
//! whose permissions and principals include `any: true`, a `DENY` action, ...). Anything that
//! would need real matching is rejected at start-up naming the field.

use std::sync::Arc;

use http::StatusCode;
use prost::Message;

use crate::config::ConfigError;
use crate::filter::{
    Any, BuildContext, HeadersStatus, HttpFilter, HttpFilterConfig, LocalBoxFuture, LocalReply,
    RBAC_HTTP_TYPE_URL, RBAC_NETWORK_TYPE_URL, Registry, WorkerContext,
};
use crate::network_filter::{NetStatus, NetworkCx, NetworkFilter, NetworkFilterConfig};
use crate::pb::{http_rbac, network_rbac, rbac};
use crate::stats::Counter;

/// The attributes a policy looks at.
pub struct Attrs<'a> {
    /// The request (HTTP RBAC); `None` for network RBAC.
    pub request: Option<&'a http::request::Parts>,
    /// Downstream peer address.
    pub remote: std::net::SocketAddr,
    /// Downstream local address (destination).
    pub local: std::net::SocketAddr,
}

/// A compiled `rules` block.
#[derive(Debug)]
pub struct Engine {
    /// `None` when no `rules` are set (the filter allows everything).
    rules: Option<(bool, Vec<(String, Policy)>)>,
}

#[derive(Debug)]
struct Policy {
    permissions: Vec<Perm>,
    principals: Vec<Princ>,
}

#[derive(Debug)]
enum Perm {
    Any,
    And(Vec<Perm>),
    Or(Vec<Perm>),
    Not(Box<Perm>),
    Header(Option<String>, crate::route::HeaderMatch),
    UrlPath(crate::route::StringMatch),
    DestinationPort(u32),
    DestinationIp(Cidr),
}

#[derive(Debug)]
enum Princ {
    Any,
    And(Vec<Princ>),
    Or(Vec<Princ>),
    Not(Box<Princ>),
    Header(Option<String>, crate::route::HeaderMatch),
    UrlPath(crate::route::StringMatch),
    RemoteIp(Cidr),
}

#[derive(Debug, Clone, Copy)]
struct Cidr {
    addr: std::net::IpAddr,
    len: u32,
}

impl Cidr {
    fn build(c: &crate::pb::core::CidrRange, path: &str) -> Result<Self, ConfigError> {
        let addr: std::net::IpAddr = c
            .address_prefix
            .parse()
            .map_err(|e| ConfigError::invalid(format!("{path}.address_prefix"), e))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = c.prefix_len.as_ref().map_or(max, |l| l.value);
        if len > max {
            return Err(ConfigError::invalid(
                format!("{path}.prefix_len"),
                "too long",
            ));
        }
        Ok(Cidr { addr, len })
    }

    fn contains(&self, ip: std::net::IpAddr) -> bool {
        let ip = match (self.addr, ip) {
            (std::net::IpAddr::V4(_), std::net::IpAddr::V6(v6)) => {
                v6.to_ipv4_mapped().map_or(ip, std::net::IpAddr::V4)
            }
            _ => ip,
        };
        let (a, b, bits) = match (self.addr, ip) {
            (std::net::IpAddr::V4(a), std::net::IpAddr::V4(b)) => (
                u128::from(u32::from(a)) << 96,
                u128::from(u32::from(b)) << 96,
                self.len,
            ),
            (std::net::IpAddr::V6(a), std::net::IpAddr::V6(b)) => {
                (u128::from(a), u128::from(b), self.len)
            }
            _ => return false,
        };
        if bits == 0 {
            return true;
        }
        let mask = u128::MAX << (128 - bits);
        a & mask == b & mask
    }
}

fn header_rule(
    h: &crate::pb::route::HeaderMatcher,
    path: &str,
) -> Result<(Option<String>, crate::route::HeaderMatch), ConfigError> {
    if h.name.starts_with(':') {
        let mut renamed = h.clone();
        renamed.name = "x-wasmesh-pseudo-header".into();
        Ok((
            Some(h.name.to_ascii_lowercase()),
            crate::route::header_match(&renamed, path)?,
        ))
    } else {
        Ok((None, crate::route::header_match(h, path)?))
    }
}

fn path_rule(
    p: &crate::pb::matcher::PathMatcher,
    path: &str,
) -> Result<crate::route::StringMatch, ConfigError> {
    match &p.rule {
        Some(crate::pb::matcher::path_matcher::Rule::Path(m)) => {
            crate::route::string_match(m, &format!("{path}.path"))
        }
        None => Err(ConfigError::invalid(path, "path is required")),
    }
}

fn perm(p: &rbac::Permission, path: &str) -> Result<Perm, ConfigError> {
    use rbac::permission::Rule as R;
    let set = |rules: &[rbac::Permission], what: &str| {
        rules
            .iter()
            .enumerate()
            .map(|(i, r)| perm(r, &format!("{path}.{what}.rules[{i}]")))
            .collect::<Result<Vec<_>, _>>()
    };
    Ok(match &p.rule {
        Some(R::Any(true)) => Perm::Any,
        Some(R::AndRules(s)) => Perm::And(set(&s.rules, "and_rules")?),
        Some(R::OrRules(s)) => Perm::Or(set(&s.rules, "or_rules")?),
        Some(R::NotRule(r)) => Perm::Not(Box::new(perm(r, &format!("{path}.not_rule"))?)),
        Some(R::Header(h)) => {
            let (pseudo, m) = header_rule(h, &format!("{path}.header"))?;
            Perm::Header(pseudo, m)
        }
        Some(R::UrlPath(u)) => Perm::UrlPath(path_rule(u, &format!("{path}.url_path"))?),
        Some(R::DestinationPort(p)) => Perm::DestinationPort(*p),
        Some(R::DestinationIp(c)) => {
            Perm::DestinationIp(Cidr::build(c, &format!("{path}.destination_ip"))?)
        }
        _ => {
            return Err(ConfigError::unsupported(
                path,
                "RBAC permission kind (any, and_rules, or_rules, not_rule, header, url_path, destination_port, destination_ip are)",
            ));
        }
    })
}

#[allow(deprecated, reason = "source_ip is still used")]
fn princ(p: &rbac::Principal, path: &str) -> Result<Princ, ConfigError> {
    use rbac::principal::Identifier as I;
    let set = |ids: &[rbac::Principal], what: &str| {
        ids.iter()
            .enumerate()
            .map(|(i, r)| princ(r, &format!("{path}.{what}.ids[{i}]")))
            .collect::<Result<Vec<_>, _>>()
    };
    Ok(match &p.identifier {
        Some(I::Any(true)) => Princ::Any,
        Some(I::AndIds(s)) => Princ::And(set(&s.ids, "and_ids")?),
        Some(I::OrIds(s)) => Princ::Or(set(&s.ids, "or_ids")?),
        Some(I::NotId(r)) => Princ::Not(Box::new(princ(r, &format!("{path}.not_id"))?)),
        Some(I::Header(h)) => {
            let (pseudo, m) = header_rule(h, &format!("{path}.header"))?;
            Princ::Header(pseudo, m)
        }
        Some(I::UrlPath(u)) => Princ::UrlPath(path_rule(u, &format!("{path}.url_path"))?),
        // Without a trusted proxy in front, the three are the downstream peer's address.
        Some(I::RemoteIp(c)) => Princ::RemoteIp(Cidr::build(c, &format!("{path}.remote_ip"))?),
        Some(I::DirectRemoteIp(c)) => {
            Princ::RemoteIp(Cidr::build(c, &format!("{path}.direct_remote_ip"))?)
        }
        Some(I::SourceIp(c)) => Princ::RemoteIp(Cidr::build(c, &format!("{path}.source_ip"))?),
        _ => {
            return Err(ConfigError::unsupported(
                path,
                "RBAC principal kind (any, and_ids, or_ids, not_id, header, url_path, remote_ip, direct_remote_ip, source_ip are)",
            ));
        }
    })
}

fn header_value(
    a: &Attrs<'_>,
    pseudo: &Option<String>,
    m: &crate::route::HeaderMatch,
) -> Option<String> {
    let req = a.request?;
    match pseudo.as_deref() {
        Some(":method") => Some(req.method.to_string()),
        Some(":path") => req.uri.path_and_query().map(|p| p.to_string()),
        Some(":authority") => req
            .headers
            .get(http::header::HOST)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .or_else(|| req.uri.authority().map(|x| x.to_string())),
        Some(":scheme") => Some(req.uri.scheme_str().unwrap_or("http").to_string()),
        Some(_) => None,
        None => {
            let values: Vec<&str> = req
                .headers
                .get_all(m.name())
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect();
            if values.is_empty() {
                None
            } else {
                Some(values.join(","))
            }
        }
    }
}

fn url_path<'a>(a: &Attrs<'a>) -> Option<&'a str> {
    a.request.map(|r| r.uri.path())
}

impl Perm {
    fn matches(&self, a: &Attrs<'_>) -> bool {
        match self {
            Perm::Any => true,
            Perm::And(v) => v.iter().all(|p| p.matches(a)),
            Perm::Or(v) => v.iter().any(|p| p.matches(a)),
            Perm::Not(p) => !p.matches(a),
            Perm::Header(pseudo, m) => m.matches_joined(header_value(a, pseudo, m).as_deref()),
            Perm::UrlPath(m) => url_path(a).is_some_and(|p| m.matches(p)),
            Perm::DestinationPort(p) => u32::from(a.local.port()) == *p,
            Perm::DestinationIp(c) => c.contains(a.local.ip()),
        }
    }
}

impl Princ {
    fn matches(&self, a: &Attrs<'_>) -> bool {
        match self {
            Princ::Any => true,
            Princ::And(v) => v.iter().all(|p| p.matches(a)),
            Princ::Or(v) => v.iter().any(|p| p.matches(a)),
            Princ::Not(p) => !p.matches(a),
            Princ::Header(pseudo, m) => m.matches_joined(header_value(a, pseudo, m).as_deref()),
            Princ::UrlPath(m) => url_path(a).is_some_and(|p| m.matches(p)),
            Princ::RemoteIp(c) => c.contains(a.remote.ip()),
        }
    }
}

impl Engine {
    /// Compiles `rules` at `path`.
    pub fn build(rules: Option<&rbac::Rbac>, path: &str) -> Result<Self, ConfigError> {
        let Some(rules) = rules else {
            return Ok(Engine { rules: None });
        };
        if rules.audit_logging_options.is_some() {
            return Err(ConfigError::unsupported(
                format!("{path}.audit_logging_options"),
                "RBAC audit logging",
            ));
        }
        let allow = match rbac::rbac::Action::try_from(rules.action) {
            Ok(rbac::rbac::Action::Allow) => true,
            Ok(rbac::rbac::Action::Deny) => false,
            _ => {
                return Err(ConfigError::unsupported(
                    format!("{path}.action"),
                    "only ALLOW and DENY",
                ));
            }
        };
        let mut names: Vec<&String> = rules.policies.keys().collect();
        names.sort();
        let mut policies = Vec::new();
        for name in names {
            let Some(policy) = rules.policies.get(name) else {
                continue;
            };
            let ppath = format!("{path}.policies[{name:?}]");
            if policy.condition.is_some() || policy.checked_condition.is_some() {
                return Err(ConfigError::unsupported(
                    format!("{ppath}.condition"),
                    "RBAC CEL conditions",
                ));
            }
            let permissions = policy
                .permissions
                .iter()
                .enumerate()
                .map(|(i, p)| perm(p, &format!("{ppath}.permissions[{i}]")))
                .collect::<Result<Vec<_>, _>>()?;
            let principals = policy
                .principals
                .iter()
                .enumerate()
                .map(|(i, p)| princ(p, &format!("{ppath}.principals[{i}]")))
                .collect::<Result<Vec<_>, _>>()?;
            policies.push((
                name.clone(),
                Policy {
                    permissions,
                    principals,
                },
            ));
        }
        Ok(Engine {
            rules: Some((allow, policies)),
        })
    }

    /// `Ok(())` if allowed, else `Err(matched policy)`.
    pub fn check(&self, a: &Attrs<'_>) -> Result<(), Option<String>> {
        let Some((allow, policies)) = &self.rules else {
            return Ok(());
        };
        let matched = policies.iter().find(|(_, p)| {
            p.permissions.iter().any(|x| x.matches(a)) && p.principals.iter().any(|x| x.matches(a))
        });
        match (allow, matched) {
            (true, Some(_)) => Ok(()),
            (true, None) => Err(None),
            (false, Some((name, _))) => Err(Some(name.clone())),
            (false, None) => Ok(()),
        }
    }
}

fn details(policy: &Option<String>) -> String {
    format!(
        "rbac_access_denied_matched_policy[{}]",
        policy.as_deref().unwrap_or("none")
    )
}

/// Registers both RBAC filters.
pub fn register(registry: &mut Registry) {
    registry.register_http(RBAC_HTTP_TYPE_URL, Arc::new(build_http));
    registry.register_network(RBAC_NETWORK_TYPE_URL, Arc::new(build_network));
}

fn decode<M: Message + Default>(any: &Any, ctx: &BuildContext) -> Result<M, ConfigError> {
    M::decode(any.value.as_slice()).map_err(|e| ConfigError::filter(ctx, e))
}

struct HttpRbacConfig {
    engine: Arc<Engine>,
    allowed: Counter,
    denied: Counter,
}

fn build_http(any: &Any, ctx: &BuildContext) -> Result<Arc<dyn HttpFilterConfig>, ConfigError> {
    let cfg: http_rbac::Rbac = decode(any, ctx)?;
    let path = format!("{}.typed_config", ctx.field_path);
    if cfg.matcher.is_some() || cfg.shadow_matcher.is_some() {
        return Err(ConfigError::unsupported(
            format!("{path}.matcher"),
            "RBAC matcher API",
        ));
    }
    if cfg.shadow_rules.is_some() {
        return Err(ConfigError::unsupported(
            format!("{path}.shadow_rules"),
            "RBAC shadow rules",
        ));
    }
    if cfg.track_per_rule_stats {
        return Err(ConfigError::unsupported(
            format!("{path}.track_per_rule_stats"),
            "per-rule stats",
        ));
    }
    let engine = Arc::new(Engine::build(cfg.rules.as_ref(), &format!("{path}.rules"))?);
    let tag = [("envoy_http_conn_manager_prefix", ctx.stat_prefix.as_str())];
    let rp = &cfg.rules_stat_prefix;
    let name = |n: &str| format!("http.{}.rbac.{rp}{n}", ctx.stat_prefix);
    let prom = |n: &str| format!("envoy_http_rbac_{}{n}", sanitize(rp));
    Ok(Arc::new(HttpRbacConfig {
        engine,
        allowed: ctx.stats.counter(&name("allowed"), &prom("allowed"), &tag),
        denied: ctx.stats.counter(&name("denied"), &prom("denied"), &tag),
    }))
}

fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

impl HttpFilterConfig for HttpRbacConfig {
    fn create_filter(&self, _worker: &WorkerContext) -> Box<dyn HttpFilter> {
        Box::new(HttpRbacFilter {
            engine: Arc::clone(&self.engine),
            allowed: self.allowed.clone(),
            denied: self.denied.clone(),
        })
    }

    fn uses_bodies(&self) -> bool {
        false
    }
}

struct HttpRbacFilter {
    engine: Arc<Engine>,
    allowed: Counter,
    denied: Counter,
}

impl HttpFilter for HttpRbacFilter {
    fn on_request_headers<'a>(
        &'a mut self,
        cx: &'a mut crate::filter::FilterCx,
        headers: &'a mut http::request::Parts,
        _end_stream: bool,
    ) -> LocalBoxFuture<'a, HeadersStatus> {
        let info = cx.stream_info();
        let attrs = Attrs {
            request: Some(headers),
            remote: info.downstream_remote_addr,
            local: info.downstream_local_addr,
        };
        let status = match self.engine.check(&attrs) {
            Ok(()) => {
                self.allowed.inc();
                HeadersStatus::Continue
            }
            Err(policy) => {
                self.denied.inc();
                HeadersStatus::LocalReply(LocalReply::new(
                    StatusCode::FORBIDDEN,
                    "RBAC: access denied",
                    details(&policy),
                ))
            }
        };
        Box::pin(std::future::ready(status))
    }
}

struct NetworkRbacConfig {
    engine: Arc<Engine>,
    allowed: Counter,
    denied: Counter,
}

fn build_network(
    any: &Any,
    ctx: &BuildContext,
) -> Result<Arc<dyn NetworkFilterConfig>, ConfigError> {
    let cfg: network_rbac::Rbac = decode(any, ctx)?;
    let path = format!("{}.typed_config", ctx.field_path);
    if cfg.matcher.is_some() || cfg.shadow_matcher.is_some() {
        return Err(ConfigError::unsupported(
            format!("{path}.matcher"),
            "RBAC matcher API",
        ));
    }
    if cfg.shadow_rules.is_some() {
        return Err(ConfigError::unsupported(
            format!("{path}.shadow_rules"),
            "RBAC shadow rules",
        ));
    }
    if cfg.delay_deny.is_some() {
        return Err(ConfigError::unsupported(
            format!("{path}.delay_deny"),
            "delayed deny",
        ));
    }
    if cfg.enforcement_type != 0 {
        return Err(ConfigError::unsupported(
            format!("{path}.enforcement_type"),
            "only ONE_TIME_ON_FIRST_BYTE",
        ));
    }
    let engine = Arc::new(Engine::build(cfg.rules.as_ref(), &format!("{path}.rules"))?);
    let p = &cfg.stat_prefix;
    let name = |n: &str| {
        if p.is_empty() {
            format!("rbac.{n}")
        } else {
            format!("{p}.rbac.{n}")
        }
    };
    let prom = |n: &str| {
        if p.is_empty() {
            format!("envoy_rbac_{n}")
        } else {
            format!("envoy_{}_rbac_{n}", sanitize(p))
        }
    };
    Ok(Arc::new(NetworkRbacConfig {
        engine,
        allowed: ctx.stats.counter(&name("allowed"), &prom("allowed"), &[]),
        denied: ctx.stats.counter(&name("denied"), &prom("denied"), &[]),
    }))
}

impl NetworkFilterConfig for NetworkRbacConfig {
    fn create_filter(&self, _worker: &WorkerContext) -> Box<dyn NetworkFilter> {
        Box::new(NetworkRbacFilter {
            engine: Arc::clone(&self.engine),
            allowed: self.allowed.clone(),
            denied: self.denied.clone(),
        })
    }

    fn connection_only(&self) -> bool {
        true
    }
}

struct NetworkRbacFilter {
    engine: Arc<Engine>,
    allowed: Counter,
    denied: Counter,
}

impl NetworkFilter for NetworkRbacFilter {
    fn on_new_connection<'a>(&'a mut self, cx: &'a mut NetworkCx) -> LocalBoxFuture<'a, NetStatus> {
        let info = cx.stream_info();
        let attrs = Attrs {
            request: None,
            remote: info.downstream_remote_addr,
            local: info.downstream_local_addr,
        };
        match self.engine.check(&attrs) {
            Ok(()) => self.allowed.inc(),
            Err(_) => {
                self.denied.inc();
                cx.close();
            }
        }
        Box::pin(std::future::ready(NetStatus::Continue))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn attrs<'a>(req: &'a http::request::Parts, remote: &str) -> Attrs<'a> {
        Attrs {
            request: Some(req),
            remote: remote.parse().unwrap(),
            local: "10.0.0.1:8080".parse().unwrap(),
        }
    }

    fn rules(yaml: &str) -> rbac::Rbac {
        let v = crate::config::bootstrap::parse_value(yaml).unwrap();
        let bytes = wasmesh_xds::descriptors::from_json("envoy.config.rbac.v3.RBAC", &v).unwrap();
        rbac::Rbac::decode(bytes.as_slice()).unwrap()
    }

    #[test]
    fn allow_all_deny_all_and_matching() {
        let req = http::Request::get("/admin/x?q=1")
            .header("x-user", "alice")
            .body(())
            .unwrap()
            .into_parts()
            .0;
        let a = attrs(&req, "192.168.1.7:5555");
        assert_eq!(Engine::build(None, "r").unwrap().check(&a), Ok(()));
        let none = rbac::Rbac {
            action: 0,
            policies: HashMap::new(),
            ..Default::default()
        };
        assert_eq!(
            Engine::build(Some(&none), "r").unwrap().check(&a),
            Err(None)
        );
        let r = rules(
            r#"
action: DENY
policies:
  admin-from-outside:
    permissions: [{url_path: {path: {prefix: /admin}}}]
    principals: [{not_id: {remote_ip: {address_prefix: 10.0.0.0, prefix_len: 8}}}]
  bad-method:
    permissions: [{header: {name: ":method", string_match: {exact: DELETE}}}]
    principals: [{any: true}]
"#,
        );
        let e = Engine::build(Some(&r), "r").unwrap();
        assert_eq!(e.check(&a), Err(Some("admin-from-outside".into())));
        let inside = attrs(&req, "10.1.2.3:1");
        assert_eq!(e.check(&inside), Ok(()));
        let del = http::Request::delete("/x").body(()).unwrap().into_parts().0;
        assert_eq!(
            e.check(&attrs(&del, "10.1.2.3:1")),
            Err(Some("bad-method".into()))
        );
        let r = rules(
            r#"
action: ALLOW
policies:
  alice:
    permissions: [{and_rules: {rules: [{destination_port: 8080}, {header: {name: x-user, string_match: {exact: alice}}}]}}]
    principals: [{any: true}]
"#,
        );
        let e = Engine::build(Some(&r), "r").unwrap();
        assert_eq!(e.check(&a), Ok(()));
        let bob = http::Request::get("/")
            .header("x-user", "bob")
            .body(())
            .unwrap()
            .into_parts()
            .0;
        assert_eq!(e.check(&attrs(&bob, "1.2.3.4:1")), Err(None));
        let bad = rules(
            "policies: {p: {permissions: [{requested_server_name: {exact: x}}], principals: [{any: true}]}}",
        );
        let err = Engine::build(Some(&bad), "x.rules")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("x.rules.policies[\"p\"].permissions[0]"),
            "{err}"
        );
    }
}
