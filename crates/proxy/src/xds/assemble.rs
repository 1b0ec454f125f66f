//! The resources the proxy holds from xDS, and the static bootstrap they amount to.

use std::collections::{BTreeMap, BTreeSet};

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{ClusterDiscoveryType, DiscoveryType};
use envoy_types::pb::envoy::config::core::v3::TypedExtensionConfig;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::{Filter, Listener, filter};
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, http_connection_manager, http_filter,
};
use prost::Message;
use wasmesh_xds::type_url;

use super::decode;
use crate::pb::Any;
use crate::pb::bootstrap::Bootstrap;

const HCM_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";

/// Resources by name, as last received (state of the world per type).
#[derive(Debug, Clone, Default)]
pub struct Resources {
    pub listeners: BTreeMap<String, Listener>,
    pub clusters: BTreeMap<String, Cluster>,
    pub routes: BTreeMap<String, RouteConfiguration>,
    pub endpoints: BTreeMap<String, ClusterLoadAssignment>,
    pub extensions: BTreeMap<String, TypedExtensionConfig>,
    /// Per type URL: the version of the last accepted response and when it was accepted (for
    /// `/config_dump`'s `version_info` and `last_updated`).
    pub versions: BTreeMap<String, (String, std::time::SystemTime)>,
}

/// Names to subscribe to for the types that follow references.
#[derive(Debug, Default)]
pub struct Wanted {
    pub endpoints: Vec<String>,
    pub routes: Vec<String>,
    pub extensions: Vec<String>,
}

fn hcm_of(f: &Filter) -> Option<HttpConnectionManager> {
    match &f.config_type {
        Some(filter::ConfigType::TypedConfig(any)) if any.type_url == HCM_TYPE => decode(any).ok(),
        _ => None,
    }
}

fn is_eds(c: &Cluster) -> bool {
    matches!(c.cluster_discovery_type, Some(ClusterDiscoveryType::Type(t)) if t == DiscoveryType::Eds as i32)
}

impl Resources {
    /// Replaces every resource of `kind` with `resources` (state of the world).
    pub fn replace(&mut self, kind: &str, resources: &[Any]) -> Result<(), String> {
        match kind {
            type_url::LISTENER => {
                self.listeners = resources
                    .iter()
                    .map(|a| decode::<Listener>(a).map(|l| (l.name.clone(), l)))
                    .collect::<Result<_, _>>()?;
            }
            type_url::CLUSTER => {
                self.clusters = resources
                    .iter()
                    .map(|a| decode::<Cluster>(a).map(|c| (c.name.clone(), c)))
                    .collect::<Result<_, _>>()?;
            }
            type_url::ROUTE => {
                self.routes = resources
                    .iter()
                    .map(|a| decode::<RouteConfiguration>(a).map(|r| (r.name.clone(), r)))
                    .collect::<Result<_, _>>()?;
            }
            type_url::ENDPOINT => {
                self.endpoints = resources
                    .iter()
                    .map(|a| {
                        decode::<ClusterLoadAssignment>(a).map(|e| (e.cluster_name.clone(), e))
                    })
                    .collect::<Result<_, _>>()?;
            }
            type_url::EXTENSION_CONFIG => {
                self.extensions = resources
                    .iter()
                    .map(|a| decode::<TypedExtensionConfig>(a).map(|e| (e.name.clone(), e)))
                    .collect::<Result<_, _>>()?;
            }
            other => return Err(format!("unexpected type {other}")),
        }
        Ok(())
    }

    /// The EDS, RDS and ECDS names the current clusters and listeners reference.
    pub fn wanted(&self) -> Wanted {
        let mut w = Wanted::default();
        let (mut routes, mut exts) = (BTreeSet::new(), BTreeSet::new());
        for c in self.clusters.values().filter(|c| is_eds(c)) {
            let name = c
                .eds_cluster_config
                .as_ref()
                .map(|e| e.service_name.clone())
                .filter(|s| !s.is_empty());
            w.endpoints.push(name.unwrap_or_else(|| c.name.clone()));
        }
        for l in self.listeners.values() {
            for chain in &l.filter_chains {
                for f in &chain.filters {
                    if let Some(filter::ConfigType::ConfigDiscovery(cd)) = &f.config_type {
                        exts.insert(f.name.clone());
                        let _ = cd;
                    }
                    let Some(hcm) = hcm_of(f) else { continue };
                    if let Some(http_connection_manager::RouteSpecifier::Rds(rds)) =
                        &hcm.route_specifier
                    {
                        routes.insert(rds.route_config_name.clone());
                    }
                    for hf in &hcm.http_filters {
                        if let Some(http_filter::ConfigType::ConfigDiscovery(_)) = &hf.config_type {
                            exts.insert(hf.name.clone());
                        }
                    }
                }
            }
        }
        w.routes = routes.into_iter().collect();
        w.extensions = exts.into_iter().collect();
        w
    }

    /// The static bootstrap: `base` (node, admin, static resources) plus every dynamic resource
    /// with references inlined. `None` while a referenced resource has not arrived (warming).
    pub fn assemble(&self, base: &Bootstrap) -> Option<Bootstrap> {
        if self.listeners.is_empty() {
            return None;
        }
        let mut b = base.clone();
        b.dynamic_resources = None;
        let sr = b.static_resources.get_or_insert_with(Default::default);
        for c in self.clusters.values() {
            let mut c = c.clone();
            if is_eds(&c) {
                let key = c
                    .eds_cluster_config
                    .as_ref()
                    .map(|e| e.service_name.clone())
                    .filter(|s| !s.is_empty());
                let key = key.unwrap_or_else(|| c.name.clone());
                let mut cla = self.endpoints.get(&key)?.clone();
                cla.cluster_name = c.name.clone();
                cla.policy = None;
                c.load_assignment = Some(cla);
                c.eds_cluster_config = None;
                c.cluster_discovery_type =
                    Some(ClusterDiscoveryType::Type(DiscoveryType::Static as i32));
            }
            sr.clusters.retain(|s| s.name != c.name);
            sr.clusters.push(c);
        }
        for l in self.listeners.values() {
            let mut l = l.clone();
            for chain in &mut l.filter_chains {
                for f in &mut chain.filters {
                    if let Some(filter::ConfigType::ConfigDiscovery(_)) = &f.config_type {
                        let ext = self.extensions.get(&f.name)?;
                        f.config_type =
                            Some(filter::ConfigType::TypedConfig(ext.typed_config.clone()?));
                        continue;
                    }
                    let Some(mut hcm) = hcm_of(f) else { continue };
                    if let Some(http_connection_manager::RouteSpecifier::Rds(rds)) =
                        &hcm.route_specifier
                    {
                        let rc = self.routes.get(&rds.route_config_name)?.clone();
                        hcm.route_specifier =
                            Some(http_connection_manager::RouteSpecifier::RouteConfig(rc));
                    }
                    for hf in &mut hcm.http_filters {
                        if let Some(http_filter::ConfigType::ConfigDiscovery(cd)) = &hf.config_type
                        {
                            let typed = match self.extensions.get(&hf.name) {
                                Some(ext) => ext.typed_config.clone(),
                                None => cd.default_config.clone(),
                            }?;
                            hf.config_type = Some(http_filter::ConfigType::TypedConfig(typed));
                        }
                    }
                    f.config_type = Some(filter::ConfigType::TypedConfig(Any {
                        type_url: HCM_TYPE.into(),
                        value: hcm.encode_to_vec(),
                    }));
                }
            }
            sr.listeners.retain(|s| s.name != l.name);
            sr.listeners.push(l);
        }
        Some(b)
    }
}
