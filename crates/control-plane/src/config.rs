//! Validated, immutable config: what the generators read. Built from parsed documents by
//! [`Config::build`]; a new config is a new value (swapped atomically by the source).

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::model::wasm::{PluginPhase, PluginType};
use crate::model::{
    Gateway, ObjectMeta, Secret, ServiceEntry, Sidecar, VirtualService, WasmPlugin,
};

/// Prefix of ECDS resource names and LDS filter names, as istiod (1.29) spells it.
pub const WASM_PLUGIN_RESOURCE_PREFIX: &str = "extensions.istio.io/wasmplugin/";

/// Identity and ordering data of a resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    /// Name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// Creation time, nanoseconds since the Unix epoch (metadata.creationTimestamp, or first seen).
    pub created: i128,
    /// Kubernetes resourceVersion, or a content hash when absent.
    pub resource_version: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
}

impl Meta {
    pub(crate) fn from_object(meta: &ObjectMeta, created: i128, content_hash: &str) -> Self {
        Self {
            name: meta.name.clone(),
            namespace: meta.namespace().to_string(),
            created,
            resource_version: meta
                .resource_version
                .clone()
                .unwrap_or_else(|| content_hash.to_string()),
            labels: meta.labels.clone(),
        }
    }
}

/// A validated resource: metadata plus spec.
#[derive(Debug, Clone, PartialEq)]
pub struct Named<T> {
    /// Metadata.
    pub meta: Meta,
    /// Spec as written (already validated).
    pub spec: T,
}

/// A validated WasmPlugin with the derived values the generators need.
#[derive(Debug, Clone, PartialEq)]
pub struct Plugin {
    /// Metadata.
    pub meta: Meta,
    /// Spec as written.
    pub spec: WasmPlugin,
    /// `extensions.istio.io/wasmplugin/<ns>.<name>`: LDS filter name and ECDS resource name.
    pub resource_name: String,
    /// The module URL as istiod writes it into `http_uri.uri`: Go `url.Parse`, scheme defaulted
    /// to `oci`, `URL.String()` (so `HTTPS://h/x` is `https://h/x`, `oci://` is `oci:`).
    pub url: String,
    /// For the `file` scheme, the local filename: the url without a leading `file://`.
    pub local_file: Option<String>,
    /// HTTP or NETWORK (UNSPECIFIED is HTTP).
    pub type_: PluginType,
    /// Phase (unset is UNSPECIFIED_PHASE).
    pub phase: PluginPhase,
}

impl Plugin {
    /// `<ns>.<name>`, the Envoy `PluginConfig.name`.
    pub fn plugin_config_name(&self) -> String {
        format!("{}.{}", self.meta.namespace, self.meta.name)
    }
}

/// One parsed, validated resource of any supported kind.
#[derive(Debug, Clone, PartialEq)]
pub enum Resource {
    /// WasmPlugin.
    WasmPlugin(Arc<Plugin>),
    /// ServiceEntry.
    ServiceEntry(Arc<Named<ServiceEntry>>),
    /// Gateway.
    Gateway(Arc<Named<Gateway>>),
    /// VirtualService.
    VirtualService(Arc<Named<VirtualService>>),
    /// Sidecar.
    Sidecar(Arc<Named<Sidecar>>),
    /// Secret.
    Secret(Arc<Named<Secret>>),
}

impl Resource {
    /// `(kind, namespace, name)`.
    pub fn key(&self) -> (&'static str, &str, &str) {
        let (k, m) = match self {
            Resource::WasmPlugin(p) => ("WasmPlugin", &p.meta),
            Resource::ServiceEntry(r) => ("ServiceEntry", &r.meta),
            Resource::Gateway(r) => ("Gateway", &r.meta),
            Resource::VirtualService(r) => ("VirtualService", &r.meta),
            Resource::Sidecar(r) => ("Sidecar", &r.meta),
            Resource::Secret(r) => ("Secret", &r.meta),
        };
        (k, &m.namespace, &m.name)
    }
}

/// The whole validated config at one point in time.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Config {
    /// WasmPlugins sorted by creation time, name, namespace (istiod's `sortConfigByCreationTime`).
    pub plugins: Vec<Arc<Plugin>>,
    /// ServiceEntries.
    pub service_entries: Vec<Arc<Named<ServiceEntry>>>,
    /// Gateways.
    pub gateways: Vec<Arc<Named<Gateway>>>,
    /// VirtualServices.
    pub virtual_services: Vec<Arc<Named<VirtualService>>>,
    /// Sidecars.
    pub sidecars: Vec<Arc<Named<Sidecar>>>,
    /// Secrets by (namespace, name).
    pub secrets: BTreeMap<(String, String), Arc<Named<Secret>>>,
}

impl Config {
    /// Builds a config from resources (duplicates are resolved by the caller).
    pub fn build(resources: impl IntoIterator<Item = Resource>) -> Self {
        let mut c = Config::default();
        for r in resources {
            match r {
                Resource::WasmPlugin(p) => c.plugins.push(p),
                Resource::ServiceEntry(r) => c.service_entries.push(r),
                Resource::Gateway(r) => c.gateways.push(r),
                Resource::VirtualService(r) => c.virtual_services.push(r),
                Resource::Sidecar(r) => c.sidecars.push(r),
                Resource::Secret(r) => {
                    c.secrets
                        .insert((r.meta.namespace.clone(), r.meta.name.clone()), r);
                }
            }
        }
        fn key(m: &Meta) -> (i128, String, String) {
            (m.created, m.name.clone(), m.namespace.clone())
        }
        c.plugins.sort_by_key(|p| key(&p.meta));
        c.service_entries.sort_by_key(|r| key(&r.meta));
        c.gateways.sort_by_key(|r| key(&r.meta));
        c.virtual_services.sort_by_key(|r| key(&r.meta));
        c.sidecars.sort_by_key(|r| key(&r.meta));
        c
    }
}

/// Test helper: a config from YAML; resources without creationTimestamp get increasing
/// first-seen times in document order.
#[cfg(test)]
pub(crate) fn config_from_yaml(text: &str) -> Config {
    let mut t = 1_000;
    let parsed = crate::validate::parse_file("test.yaml", text, &mut |_, _, _| {
        t += 1;
        t
    });
    assert!(parsed.errors.is_empty(), "{:#?}", parsed.errors);
    Config::build(parsed.resources)
}
