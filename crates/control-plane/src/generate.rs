//! xDS generation: (config, proxy) → a [`Snapshot`] of LDS, RDS, CDS, EDS and ECDS resources.
//! Resources are written as Envoy proto3 JSON and encoded through the Envoy descriptor pool, so
//! what we build is what `/config_dump` shows.

mod go_json;
mod routing;
mod wasm;

use std::collections::BTreeMap;
use std::sync::Arc;

use envoy_types::pb::google::protobuf::Any;
use serde_json::{Value, json};
use wasmesh_xds::{Resources, Snapshot, type_url};

use crate::config::{Config, Plugin};
use crate::proxy::{Proxy, ProxyKind};
use crate::select::{ListenerClass, ListenerInfo, PhasedPlugins, plugins_for};

pub use wasm::{ecds_resource, http_filter_for, network_filter_for};

/// Errors generating xDS (a bug or an inconsistency between our JSON and Envoy's protos).
#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    /// A resource did not encode.
    #[error("generating {kind} {name:?} for proxy {proxy}: {source}")]
    Encode {
        /// Resource kind.
        kind: &'static str,
        /// Resource name.
        name: String,
        /// Node id.
        proxy: String,
        /// Encoding error.
        source: wasmesh_xds::DescriptorError,
    },
}

/// Generation options.
#[derive(Debug, Clone)]
pub struct Options {
    /// Root namespace (`istio-system`).
    pub root_namespace: String,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            root_namespace: "istio-system".into(),
        }
    }
}

/// Proto3 JSON resources of one proxy, before encoding (what golden tests compare).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JsonResources {
    /// type URL → name → resource JSON (with `@type`-free top level).
    pub by_type: BTreeMap<&'static str, BTreeMap<String, Value>>,
}

impl JsonResources {
    fn add(&mut self, ty: &'static str, name: String, v: Value) {
        self.by_type.entry(ty).or_default().insert(name, v);
    }

    /// Resources of `ty`.
    pub fn of(&self, ty: &str) -> Option<&BTreeMap<String, Value>> {
        self.by_type.get(ty)
    }
}

fn message_name(ty: &str) -> &str {
    ty.rsplit('/').next().unwrap_or(ty)
}

/// Builds the JSON resources of `proxy`.
pub fn generate_json(config: &Config, proxy: &Proxy, opts: &Options) -> JsonResources {
    let mut out = JsonResources::default();
    for ty in type_url::PUSH_ORDER {
        out.by_type.insert(ty, BTreeMap::new());
    }
    let mut plugins: BTreeMap<String, Arc<Plugin>> = BTreeMap::new();
    let mut listener =
        |out: &mut JsonResources,
         info: ListenerInfo,
         build: &dyn Fn(&PhasedPlugins, &PhasedPlugins) -> (String, Value)| {
            let http = plugins_for(
                config,
                proxy,
                &opts.root_namespace,
                info,
                crate::model::wasm::PluginType::Http,
            );
            let net = plugins_for(
                config,
                proxy,
                &opts.root_namespace,
                info,
                crate::model::wasm::PluginType::Network,
            );
            for p in http.in_chain_order().chain(net.in_chain_order()) {
                plugins.insert(p.resource_name.clone(), p.clone());
            }
            let (name, v) = build(&http, &net);
            out.add(type_url::LISTENER, name, v);
        };
    match proxy.kind {
        ProxyKind::Router => {
            for (port, routes) in routing::gateway_ports(config, proxy) {
                let info = ListenerInfo {
                    class: ListenerClass::Gateway,
                    port,
                };
                listener(&mut out, info, &|http, net| {
                    routing::gateway_listener(port, http, net)
                });
                out.add(type_url::ROUTE, routing::route_name(port), routes);
            }
        }
        ProxyKind::Sidecar => {
            let ingress = routing::sidecar_ingress(config, proxy, &opts.root_namespace);
            for (port, endpoint) in &ingress {
                let port = *port;
                let info = ListenerInfo {
                    class: ListenerClass::SidecarInbound,
                    port,
                };
                listener(&mut out, info, &|http, net| {
                    routing::inbound_listener(port, endpoint, http, net)
                });
                let (name, c) = routing::inbound_cluster(port, endpoint);
                out.add(type_url::CLUSTER, name, c);
            }
            let inbound_ports = ingress.keys().copied().collect();
            for (port, routes) in routing::sidecar_outbound(config, &inbound_ports) {
                let info = ListenerInfo {
                    class: ListenerClass::SidecarOutbound,
                    port,
                };
                listener(&mut out, info, &|http, net| {
                    routing::outbound_listener(port, http, net)
                });
                out.add(type_url::ROUTE, port.to_string(), routes);
            }
        }
    }
    for (name, cluster, cla) in routing::service_clusters(config) {
        out.add(type_url::CLUSTER, name.clone(), cluster);
        if let Some(cla) = cla {
            out.add(type_url::ENDPOINT, name, cla);
        }
    }
    for (name, p) in plugins {
        out.add(type_url::EXTENSION_CONFIG, name, ecds_resource(&p, config));
    }
    out
}

/// Encodes JSON resources into a [`Snapshot`].
pub fn encode(json: &JsonResources, proxy_id: &str) -> Result<Snapshot, GenerateError> {
    let mut snap = Snapshot::new();
    for (ty, items) in &json.by_type {
        let mut encoded = Vec::with_capacity(items.len());
        for (name, v) in items {
            let value =
                wasmesh_xds::descriptors::from_json(message_name(ty), v).map_err(|source| {
                    GenerateError::Encode {
                        kind: message_name(ty).rsplit('.').next().unwrap_or_default(),
                        name: name.clone(),
                        proxy: proxy_id.to_string(),
                        source,
                    }
                })?;
            let value = if *ty == type_url::EXTENSION_CONFIG {
                wasm::with_empty_configuration(value)
            } else {
                value
            };
            encoded.push((
                name.clone(),
                Any {
                    type_url: ty.to_string(),
                    value,
                },
            ));
        }
        snap.insert(ty, Arc::new(Resources::new(encoded)));
    }
    Ok(snap)
}

/// Generates and encodes the snapshot of `proxy`.
pub fn generate(config: &Config, proxy: &Proxy, opts: &Options) -> Result<Snapshot, GenerateError> {
    encode(&generate_json(config, proxy, opts), &proxy.id)
}

/// `{"ads": {}, "resource_api_version": "V3"}` plus an optional initial fetch timeout.
pub(crate) fn ads_source(initial_fetch_timeout: Option<&str>) -> Value {
    let mut v = json!({"ads": {}, "resource_api_version": "V3"});
    if let Some(t) = initial_fetch_timeout {
        v["initial_fetch_timeout"] = json!(t);
    }
    v
}

#[cfg(test)]
mod tests;
