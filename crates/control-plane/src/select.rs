//! Which plugins apply to a proxy's listener, and in which order — exactly as istiod
//! (`WasmPluginsByListenerInfo`, `ShouldAttachPolicy`, `matchTrafficSelectors`, priority sort).

use std::sync::Arc;

use crate::config::{Config, Plugin};
use crate::model::wasm::{PluginPhase, PluginType, WorkloadMode};
use crate::proxy::{GATEWAY_NAME_LABEL, Proxy};

/// Listener class, deciding the workload mode a `match` must allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerClass {
    /// Gateway listener (CLIENT).
    Gateway,
    /// Sidecar inbound (SERVER).
    SidecarInbound,
    /// Sidecar outbound (CLIENT).
    SidecarOutbound,
}

/// The listener a plugin list is computed for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenerInfo {
    /// Class.
    pub class: ListenerClass,
    /// Port (service port outbound and on gateways, container port inbound).
    pub port: u32,
}

/// Plugins of one listener grouped by phase, each phase already ordered.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PhasedPlugins {
    /// AUTHN.
    pub authn: Vec<Arc<Plugin>>,
    /// AUTHZ.
    pub authz: Vec<Arc<Plugin>>,
    /// STATS.
    pub stats: Vec<Arc<Plugin>>,
    /// UNSPECIFIED_PHASE.
    pub unspecified: Vec<Arc<Plugin>>,
}

impl PhasedPlugins {
    /// The filter order: AUTHN, AUTHZ, STATS, UNSPECIFIED (Istio's own filters would sit between).
    pub fn in_chain_order(&self) -> impl Iterator<Item = &Arc<Plugin>> {
        self.authn
            .iter()
            .chain(&self.authz)
            .chain(&self.stats)
            .chain(&self.unspecified)
    }

    /// No plugin at all.
    pub fn is_empty(&self) -> bool {
        self.in_chain_order().next().is_none()
    }
}

/// Whether `plugin` attaches to `proxy` by selector / targetRefs (`ShouldAttachPolicy`).
///
/// A proxy without the `gateway.networking.k8s.io/gateway-name` label takes only plugins without
/// targetRefs whose selector (if any) matches. A Gateway API gateway takes plugins whose
/// `Gateway` targetRef names it (same namespace) and, like istiod with its default
/// `ENABLE_SELECTOR_BASED_K8S_GATEWAY_POLICY=true` (1.22 through 1.29), plugins without
/// targetRefs whose selector matches, including namespace-wide ones. Waypoints (which never take
/// selector-based plugins) are not modelled: node types other than sidecar and router are refused.
pub fn attaches(plugin: &Plugin, proxy: &Proxy) -> bool {
    let spec = &plugin.spec;
    // `GetTargetRefs`: the singular targetRef only when targetRefs is empty.
    let refs: Vec<_> = if spec.target_refs.is_empty() {
        spec.target_ref.iter().collect()
    } else {
        spec.target_refs.iter().collect()
    };
    let selected = || {
        spec.selector
            .as_ref()
            .is_none_or(|s| proxy.matches(&s.match_labels))
    };
    match proxy.labels.get(GATEWAY_NAME_LABEL) {
        None => refs.is_empty() && selected(),
        Some(_) if refs.is_empty() => selected(),
        Some(gw) => {
            plugin.meta.namespace == proxy.namespace
                && refs.iter().any(|r| {
                    (r.namespace.is_empty() || r.namespace == proxy.namespace)
                        && canonical_group(&r.group) == "gateway.networking.k8s.io"
                        && r.kind == "Gateway"
                        && &r.name == gw
                })
        }
    }
}

/// `config.CanonicalGroup`: the empty group is `core`.
pub(crate) fn canonical_group(group: &str) -> &str {
    if group.is_empty() { "core" } else { group }
}

fn mode_matches(mode: Option<WorkloadMode>, class: ListenerClass) -> bool {
    let want = match class {
        ListenerClass::Gateway | ListenerClass::SidecarOutbound => WorkloadMode::Client,
        ListenerClass::SidecarInbound => WorkloadMode::Server,
    };
    match mode {
        None | Some(WorkloadMode::Undefined) | Some(WorkloadMode::ClientAndServer) => true,
        Some(m) => m == want,
    }
}

/// `matchTrafficSelectors`.
pub fn traffic_matches(plugin: &Plugin, info: ListenerInfo) -> bool {
    plugin.spec.match_.is_empty()
        || plugin.spec.match_.iter().any(|m| {
            mode_matches(m.mode, info.class)
                && (m.ports.is_empty()
                    || m.ports
                        .iter()
                        .any(|p| p.number != 0 && p.number == info.port))
        })
}

/// Plugins of type `ty` for `proxy`'s listener `info`, grouped by phase and ordered like istiod:
/// namespaces in lookup order (proxy namespace, then root namespace), each in config order
/// (creationTimestamp, name, namespace), then a stable sort by priority descending with unset
/// priority as `i32::MIN`.
pub fn plugins_for(
    config: &Config,
    proxy: &Proxy,
    root_namespace: &str,
    info: ListenerInfo,
    ty: PluginType,
) -> PhasedPlugins {
    let mut namespaces = vec![proxy.namespace.as_str()];
    if root_namespace != proxy.namespace {
        namespaces.push(root_namespace);
    }
    let mut out = PhasedPlugins::default();
    for ns in namespaces {
        for p in config.plugins.iter().filter(|p| p.meta.namespace == ns) {
            if p.type_ != ty || !attaches(p, proxy) || !traffic_matches(p, info) {
                continue;
            }
            let bucket = match p.phase {
                PluginPhase::Authn => &mut out.authn,
                PluginPhase::Authz => &mut out.authz,
                PluginPhase::Stats => &mut out.stats,
                PluginPhase::Unspecified => &mut out.unspecified,
            };
            bucket.push(p.clone());
        }
    }
    for bucket in [
        &mut out.authn,
        &mut out.authz,
        &mut out.stats,
        &mut out.unspecified,
    ] {
        bucket.sort_by_key(|p| std::cmp::Reverse(p.spec.priority.unwrap_or(i32::MIN)));
    }
    out
}

/// Whether `plugin` may be served to `proxy` over ECDS (istiod: proxy namespace or root namespace).
pub fn may_serve(plugin: &Plugin, proxy: &Proxy, root_namespace: &str) -> bool {
    plugin.meta.namespace == proxy.namespace || plugin.meta.namespace == root_namespace
}

#[cfg(test)]
mod tests;
