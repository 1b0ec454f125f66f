//! Listeners, routes and clusters from Gateway, VirtualService, Sidecar and ServiceEntry.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};

use super::ads_source;
use super::wasm::{http_filter_for, network_filter_for};
use crate::config::Config;
use crate::model::networking::{HttpRoute, Resolution, ServiceEntry, StringMatch};
use crate::proxy::Proxy;
use crate::select::PhasedPlugins;
use crate::validate::{parse_default_endpoint, parse_duration_ms};

const HCM: &str = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
const ROUTER: &str = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router";

/// RDS name of a gateway port (`http.8080`, as istiod).
pub(super) fn route_name(port: u32) -> String {
    format!("http.{port}")
}

/// Istio's outbound cluster name.
pub(crate) fn outbound_cluster(port: u32, host: &str) -> String {
    format!("outbound|{port}||{host}")
}

fn ms(ms: u64) -> String {
    format!("{}.{:03}s", ms / 1000, ms % 1000)
}

fn hcm(stat_prefix: &str, routes: Value, http: &PhasedPlugins) -> Value {
    let mut filters: Vec<Value> = http.in_chain_order().map(|p| http_filter_for(p)).collect();
    filters.push(json!({"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}));
    let mut v = json!({
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": HCM,
            "stat_prefix": stat_prefix,
            "http_filters": filters,
        },
    });
    let key = if routes.get("route_config_name").is_some() {
        "rds"
    } else {
        "route_config"
    };
    v["typed_config"][key] = routes;
    v
}

fn listener(name: &str, bind: &str, port: u32, hcm: Value, net: &PhasedPlugins) -> Value {
    let mut filters: Vec<Value> = net
        .in_chain_order()
        .map(|p| network_filter_for(p))
        .collect();
    filters.push(hcm);
    json!({
        "name": name,
        "address": {"socket_address": {"address": bind, "port_value": port}},
        "filter_chains": [{"filters": filters}],
    })
}

/// Gateways selecting this proxy: port → route configuration JSON.
pub(super) fn gateway_ports(config: &Config, proxy: &Proxy) -> BTreeMap<u32, Value> {
    // port → (server hosts, gateway names "ns/name")
    let mut ports: BTreeMap<u32, Vec<(String, String)>> = BTreeMap::new();
    for gw in &config.gateways {
        if gw.spec.selector.is_empty() || !proxy.matches(&gw.spec.selector) {
            continue;
        }
        let gw_name = format!("{}/{}", gw.meta.namespace, gw.meta.name);
        for s in &gw.spec.servers {
            for h in &s.hosts {
                let host = h.split_once('/').map(|(_, h)| h).unwrap_or(h).to_string();
                ports
                    .entry(s.port.number)
                    .or_default()
                    .push((host, gw_name.clone()));
            }
        }
    }
    ports
        .into_iter()
        .map(|(port, hosts)| (port, gateway_routes(config, port, &hosts)))
        .collect()
}

fn host_matches(server_host: &str, vs_host: &str) -> bool {
    server_host == "*"
        || server_host == vs_host
        || server_host
            .strip_prefix('*')
            .is_some_and(|suffix| vs_host.ends_with(suffix))
}

fn gateway_routes(config: &Config, port: u32, servers: &[(String, String)]) -> Value {
    let mut vhosts = Vec::new();
    let mut used_domains = BTreeSet::new();
    for vs in &config.virtual_services {
        let bound: Vec<&(String, String)> = servers
            .iter()
            .filter(|(_, gw)| {
                vs.spec.gateways.iter().any(|g| {
                    let full = if g.contains('/') {
                        g.clone()
                    } else {
                        format!("{}/{g}", vs.meta.namespace)
                    };
                    &full == gw
                })
            })
            .collect();
        if bound.is_empty() {
            continue;
        }
        for host in &vs.spec.hosts {
            if !bound.iter().any(|(sh, _)| host_matches(sh, host)) {
                continue;
            }
            let domains: Vec<String> = if host == "*" {
                vec!["*".into()]
            } else {
                vec![host.clone(), format!("{host}:{port}")]
            };
            if domains.iter().any(|d| used_domains.contains(d)) {
                tracing::warn!(virtual_service = %vs.meta.name, %host, port, "host already routed on this gateway port by an older VirtualService; ignored");
                continue;
            }
            used_domains.extend(domains.iter().cloned());
            let routes: Vec<Value> = vs
                .spec
                .http
                .iter()
                .flat_map(|r| http_routes(config, r))
                .collect();
            vhosts.push(
                json!({"name": format!("{host}:{port}"), "domains": domains, "routes": routes}),
            );
        }
    }
    json!({"name": route_name(port), "virtual_hosts": vhosts})
}

fn string_matcher(m: &StringMatch) -> Value {
    if let Some(e) = &m.exact {
        json!({"exact": e})
    } else if let Some(p) = &m.prefix {
        json!({"prefix": p})
    } else {
        json!({"safe_regex": {"regex": m.regex.clone().unwrap_or_default()}})
    }
}

fn service_port(config: &Config, host: &str) -> Option<u32> {
    let se = config
        .service_entries
        .iter()
        .find(|s| s.spec.hosts.iter().any(|h| h == host))?;
    (se.spec.ports.len() == 1).then(|| se.spec.ports[0].number)
}

fn http_routes(config: &Config, r: &HttpRoute) -> Vec<Value> {
    let clusters: Vec<(String, u32)> = r
        .route
        .iter()
        .map(|d| {
            let port = d
                .destination
                .port
                .as_ref()
                .map(|p| p.number)
                .or_else(|| service_port(config, &d.destination.host))
                .unwrap_or(80);
            (
                outbound_cluster(port, &d.destination.host),
                d.weight.unwrap_or(0),
            )
        })
        .collect();
    let mut action = if clusters.len() == 1 {
        json!({"cluster": clusters[0].0})
    } else {
        let total: u32 = clusters.iter().map(|c| c.1).sum();
        json!({"weighted_clusters": {
            "clusters": clusters.iter().filter(|c| c.1 > 0).map(|(n, w)| json!({"name": n, "weight": w})).collect::<Vec<_>>(),
            "total_weight": total,
        }})
    };
    action["timeout"] = json!(ms(r
        .timeout
        .as_deref()
        .and_then(parse_duration_ms)
        .unwrap_or(0)));
    if let Some(rw) = &r.rewrite {
        if let Some(u) = &rw.uri {
            action["prefix_rewrite"] = json!(u);
        }
        if let Some(a) = &rw.authority {
            action["host_rewrite_literal"] = json!(a);
        }
    }
    if let Some(retry) = &r.retries {
        let mut policy = json!({
            "num_retries": retry.attempts,
            "retry_on": retry.retry_on.clone().unwrap_or_else(|| "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes".into()),
        });
        if let Some(t) = retry.per_try_timeout.as_deref().and_then(parse_duration_ms) {
            policy["per_try_timeout"] = json!(ms(t));
        }
        action["retry_policy"] = policy;
    }
    let matches: Vec<Value> = if r.match_.is_empty() {
        vec![json!({"prefix": "/"})]
    } else {
        r.match_
            .iter()
            .map(|m| {
                let mut v = match &m.uri {
                    None => json!({"prefix": "/"}),
                    Some(u) if u.exact.is_some() => json!({"path": u.exact}),
                    Some(u) if u.prefix.is_some() => json!({"prefix": u.prefix}),
                    Some(u) => json!({"safe_regex": {"regex": u.regex}}),
                };
                let mut headers: Vec<Value> = m
                    .headers
                    .iter()
                    .map(|(name, sm)| json!({"name": name, "string_match": string_matcher(sm)}))
                    .collect();
                if let Some(method) = &m.method {
                    headers
                        .push(json!({"name": ":method", "string_match": string_matcher(method)}));
                }
                if !headers.is_empty() {
                    v["headers"] = json!(headers);
                }
                v
            })
            .collect()
    };
    matches
        .into_iter()
        .map(|m| {
            let mut route = json!({"match": m, "route": action});
            if let Some(n) = &r.name {
                route["name"] = json!(n);
            }
            route
        })
        .collect()
}

/// The gateway listener of `port`.
pub(super) fn gateway_listener(
    port: u32,
    http: &PhasedPlugins,
    net: &PhasedPlugins,
) -> (String, Value) {
    let name = format!("0.0.0.0_{port}");
    let routes =
        json!({"config_source": ads_source(Some("0s")), "route_config_name": route_name(port)});
    let l = listener(
        &name,
        "0.0.0.0",
        port,
        hcm(&format!("outbound_0.0.0.0_{port}"), routes, http),
        net,
    );
    (name, l)
}

/// Sidecar ingress ports of this proxy: port → default endpoint.
/// Istio's choice: a matching selector Sidecar in the proxy's namespace, else the namespace-wide
/// one, else the root namespace's selector-less Sidecar (the mesh-wide default).
pub(super) fn sidecar_ingress(
    config: &Config,
    proxy: &Proxy,
    root_namespace: &str,
) -> BTreeMap<u32, String> {
    let mut out = BTreeMap::new();
    let sidecars = config
        .sidecars
        .iter()
        .filter(|s| s.meta.namespace == proxy.namespace);
    // A Sidecar with a selector wins over the namespace-wide one (as istiod).
    let (with_sel, without): (Vec<_>, Vec<_>) =
        sidecars.partition(|s| s.spec.workload_selector.is_some());
    let chosen = with_sel
        .into_iter()
        .find(|s| {
            s.spec
                .workload_selector
                .as_ref()
                .is_some_and(|w| proxy.matches(&w.labels))
        })
        .or_else(|| without.into_iter().next())
        .or_else(|| {
            config
                .sidecars
                .iter()
                .find(|s| s.meta.namespace == root_namespace && s.spec.workload_selector.is_none())
        });
    if let Some(s) = chosen {
        for l in &s.spec.ingress {
            out.insert(l.port.number, l.default_endpoint.clone());
        }
    }
    out
}

fn inbound_cluster_name(port: u32) -> String {
    format!("inbound|{port}||")
}

/// The inbound listener of a Sidecar ingress port.
pub(super) fn inbound_listener(
    port: u32,
    _endpoint: &str,
    http: &PhasedPlugins,
    net: &PhasedPlugins,
) -> (String, Value) {
    let name = format!("inbound_0.0.0.0_{port}");
    let routes = json!({
        "name": format!("inbound|{port}||"),
        "virtual_hosts": [{
            "name": "inbound|http|".to_string() + &port.to_string(),
            "domains": ["*"],
            "routes": [{"match": {"prefix": "/"}, "route": {"cluster": inbound_cluster_name(port), "timeout": "0s"}}],
        }],
    });
    let l = listener(
        &name,
        "0.0.0.0",
        port,
        hcm(&format!("inbound_0.0.0.0_{port}"), routes, http),
        net,
    );
    (name, l)
}

/// The static cluster to a Sidecar ingress default endpoint.
pub(super) fn inbound_cluster(port: u32, endpoint: &str) -> (String, Value) {
    let name = inbound_cluster_name(port);
    let (ip, ep_port) = parse_default_endpoint(endpoint).unwrap_or(("127.0.0.1".into(), port));
    let c = json!({
        "name": name,
        "type": "STATIC",
        "connect_timeout": "10s",
        "load_assignment": cla(&name, &[(ip, ep_port, None)]),
    });
    (name, c)
}

fn cla(name: &str, eps: &[(String, u32, Option<u32>)]) -> Value {
    let lb: Vec<Value> = eps
        .iter()
        .map(|(a, p, w)| {
            let mut e = json!({"endpoint": {"address": {"socket_address": {"address": a, "port_value": p}}}});
            if let Some(w) = w {
                e["load_balancing_weight"] = json!(w);
            }
            e
        })
        .collect();
    json!({"cluster_name": name, "endpoints": [{"lb_endpoints": lb}]})
}

fn endpoints(se: &ServiceEntry, host: &str, port_index: usize) -> Vec<(String, u32, Option<u32>)> {
    let p = &se.ports[port_index];
    let default_port = p.target_port.unwrap_or(p.number);
    if se.endpoints.is_empty() {
        return vec![(host.to_string(), default_port, None)];
    }
    se.endpoints
        .iter()
        .map(|e| {
            let port = p
                .name
                .as_ref()
                .and_then(|n| e.ports.get(n))
                .copied()
                .unwrap_or(default_port);
            (e.address.clone(), port, e.weight)
        })
        .collect()
}

/// Every ServiceEntry host and port: (cluster name, cluster JSON, EDS JSON for STATIC).
pub(super) fn service_clusters(config: &Config) -> Vec<(String, Value, Option<Value>)> {
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    for se in &config.service_entries {
        for host in &se.spec.hosts {
            for (i, p) in se.spec.ports.iter().enumerate() {
                let name = outbound_cluster(p.number, host);
                if !seen.insert(name.clone()) {
                    continue;
                }
                let eps = endpoints(&se.spec, host, i);
                let mut c = json!({"name": name, "connect_timeout": "10s"});
                if p.protocol.as_deref().is_some_and(|pr| {
                    pr.eq_ignore_ascii_case("HTTP2") || pr.eq_ignore_ascii_case("GRPC")
                }) {
                    c["typed_extension_protocol_options"] = json!({
                        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                            "explicit_http_config": {"http2_protocol_options": {}},
                        }
                    });
                }
                match se.spec.resolution {
                    Some(Resolution::Dns) => {
                        c["type"] = json!("STRICT_DNS");
                        c["load_assignment"] = cla(&name, &eps);
                        out.push((name, c, None));
                    }
                    _ => {
                        c["type"] = json!("EDS");
                        c["eds_cluster_config"] =
                            json!({"eds_config": ads_source(None), "service_name": name});
                        out.push((name.clone(), c, Some(cla(&name, &eps))));
                    }
                }
            }
        }
    }
    out
}

/// Whether a VirtualService applies to sidecars (`gateways` empty or containing `mesh`).
fn applies_to_mesh(gateways: &[String]) -> bool {
    gateways.is_empty() || gateways.iter().any(|g| g == "mesh")
}

/// Sidecar outbound HTTP ports (from ServiceEntries) → route configuration JSON (named by port,
/// as istiod names outbound RDS). Ports used by the proxy's inbound listeners are skipped: without
/// traffic capture both would bind the same address.
pub(super) fn sidecar_outbound(config: &Config, inbound: &BTreeSet<u32>) -> BTreeMap<u32, Value> {
    let mut hosts: BTreeMap<u32, Vec<String>> = BTreeMap::new();
    for se in &config.service_entries {
        for p in &se.spec.ports {
            let http = p.protocol.as_deref().is_some_and(|pr| {
                matches!(pr.to_ascii_uppercase().as_str(), "HTTP" | "HTTP2" | "GRPC")
            });
            if http && !inbound.contains(&p.number) {
                hosts
                    .entry(p.number)
                    .or_default()
                    .extend(se.spec.hosts.iter().cloned());
            }
        }
    }
    hosts
        .into_iter()
        .map(|(port, hosts)| {
            let mut vhosts = Vec::new();
            for host in hosts {
                let vs = config
                    .virtual_services
                    .iter()
                    .find(|v| applies_to_mesh(&v.spec.gateways) && v.spec.hosts.contains(&host));
                let routes: Vec<Value> = match vs {
                    Some(vs) => vs.spec.http.iter().flat_map(|r| http_routes(config, r)).collect(),
                    None => vec![json!({"match": {"prefix": "/"}, "route": {"cluster": outbound_cluster(port, &host), "timeout": "0s"}})],
                };
                vhosts.push(json!({
                    "name": format!("{host}:{port}"),
                    "domains": [host.clone(), format!("{host}:{port}")],
                    "routes": routes,
                }));
            }
            (port, json!({"name": port.to_string(), "virtual_hosts": vhosts}))
        })
        .collect()
}

/// The sidecar outbound listener of `port`.
pub(super) fn outbound_listener(
    port: u32,
    http: &PhasedPlugins,
    net: &PhasedPlugins,
) -> (String, Value) {
    let name = format!("0.0.0.0_{port}");
    let routes =
        json!({"config_source": ads_source(Some("0s")), "route_config_name": port.to_string()});
    let l = listener(
        &name,
        "0.0.0.0",
        port,
        hcm(&format!("outbound_0.0.0.0_{port}"), routes, http),
        net,
    );
    (name, l)
}
