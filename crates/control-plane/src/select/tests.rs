//! Golden tests of selection and ordering against istiod's algorithm.

use super::*;
use crate::config::config_from_yaml;
use crate::proxy::{Proxy, ProxyKind};

fn wp(ns: &str, name: &str, extra: &str) -> String {
    format!(
        "---\napiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nmetadata:\n  name: {name}\n  namespace: {ns}\n{}spec:\n  url: file:///{name}.wasm\n{}",
        extra
            .lines()
            .filter(|l| l.starts_with("creationTimestamp"))
            .map(|l| format!("  {l}\n"))
            .collect::<String>(),
        extra
            .lines()
            .filter(|l| !l.starts_with("creationTimestamp"))
            .map(|l| format!("  {l}\n"))
            .collect::<String>()
    )
}

fn proxy(kind: ProxyKind, ns: &str, labels: &[(&str, &str)]) -> Proxy {
    Proxy {
        id: format!(
            "{}~10.0.0.1~pod.{ns}~{ns}.svc.cluster.local",
            if kind == ProxyKind::Router {
                "router"
            } else {
                "sidecar"
            }
        ),
        kind,
        namespace: ns.into(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

const GW: ListenerInfo = ListenerInfo {
    class: ListenerClass::Gateway,
    port: 8080,
};
const INBOUND: ListenerInfo = ListenerInfo {
    class: ListenerClass::SidecarInbound,
    port: 9080,
};
const OUTBOUND: ListenerInfo = ListenerInfo {
    class: ListenerClass::SidecarOutbound,
    port: 80,
};

fn names(config: &str, p: &Proxy, info: ListenerInfo, ty: PluginType) -> Vec<String> {
    let c = config_from_yaml(config);
    plugins_for(&c, p, "istio-system", info, ty)
        .in_chain_order()
        .map(|p| format!("{}.{}", p.meta.namespace, p.meta.name))
        .collect()
}

fn http(config: &str, p: &Proxy, info: ListenerInfo) -> Vec<String> {
    names(config, p, info, PluginType::Http)
}

fn sidecar(ns: &str) -> Proxy {
    proxy(ProxyKind::Sidecar, ns, &[("app", "web")])
}

#[test]
fn creation_timestamp_then_name() {
    let c = [
        wp("app", "b", "creationTimestamp: \"2024-01-01T00:00:02Z\""),
        wp("app", "a", "creationTimestamp: \"2024-01-01T00:00:02Z\""),
        wp("app", "z", "creationTimestamp: \"2024-01-01T00:00:01Z\""),
    ]
    .concat();
    assert_eq!(
        http(&c, &sidecar("app"), INBOUND),
        ["app.z", "app.a", "app.b"]
    );
}

#[test]
fn first_seen_time_orders_plugins_without_timestamp() {
    // Document order = first-seen order in this helper: y was seen before x.
    let c = [wp("app", "y", ""), wp("app", "x", "")].concat();
    assert_eq!(http(&c, &sidecar("app"), INBOUND), ["app.y", "app.x"]);
}

#[test]
fn proxy_namespace_before_root_namespace() {
    let c = [
        wp(
            "istio-system",
            "old",
            "creationTimestamp: \"2020-01-01T00:00:00Z\"",
        ),
        wp("app", "new", "creationTimestamp: \"2024-01-01T00:00:00Z\""),
    ]
    .concat();
    assert_eq!(
        http(&c, &sidecar("app"), INBOUND),
        ["app.new", "istio-system.old"]
    );
    // In the root namespace itself, the bucket is visited once.
    assert_eq!(
        http(&c, &sidecar("istio-system"), INBOUND),
        ["istio-system.old"]
    );
}

#[test]
fn other_namespaces_are_not_visible() {
    let c = [wp("other", "p", ""), wp("istio-system", "root", "")].concat();
    assert_eq!(http(&c, &sidecar("app"), INBOUND), ["istio-system.root"]);
}

#[test]
fn priority_descending_unset_last_stable() {
    let c = [
        wp("app", "unset1", ""),
        wp("app", "neg", "priority: -100"),
        wp("app", "zero", "priority: 0"),
        wp("app", "unset2", ""),
        wp("app", "ten", "priority: 10"),
        wp("app", "ten-later", "priority: 10"),
        wp("istio-system", "root-high", "priority: 1000"),
        wp("istio-system", "root-ten", "priority: 10"),
    ]
    .concat();
    assert_eq!(
        http(&c, &sidecar("app"), INBOUND),
        [
            "istio-system.root-high",
            "app.ten",
            "app.ten-later",
            "istio-system.root-ten",
            "app.zero",
            "app.neg",
            "app.unset1",
            "app.unset2",
        ]
    );
}

#[test]
fn phases_in_chain_order() {
    let c = [
        wp("app", "none", "priority: 100"),
        wp("app", "stats", "phase: STATS"),
        wp("app", "authz", "phase: AUTHZ"),
        wp("app", "authn", "phase: AUTHN\npriority: -5"),
        wp("app", "explicit-unspecified", "phase: UNSPECIFIED_PHASE"),
        wp("app", "authn-high", "phase: AUTHN\npriority: 5"),
    ]
    .concat();
    assert_eq!(
        http(&c, &sidecar("app"), INBOUND),
        [
            "app.authn-high",
            "app.authn",
            "app.authz",
            "app.stats",
            "app.none",
            "app.explicit-unspecified"
        ]
    );
}

#[test]
fn selector_labels_subset() {
    let c = [
        wp("app", "web", "selector:\n  matchLabels: {app: web}"),
        wp("app", "db", "selector:\n  matchLabels: {app: db}"),
        wp(
            "app",
            "web-v2",
            "selector:\n  matchLabels: {app: web, version: v2}",
        ),
        wp(
            "istio-system",
            "mesh-web",
            "selector:\n  matchLabels: {app: web}",
        ),
    ]
    .concat();
    assert_eq!(
        http(&c, &sidecar("app"), INBOUND),
        ["app.web", "istio-system.mesh-web"]
    );
    let v2 = proxy(
        ProxyKind::Sidecar,
        "app",
        &[("app", "web"), ("version", "v2")],
    );
    assert_eq!(
        http(&c, &v2, INBOUND),
        ["app.web", "app.web-v2", "istio-system.mesh-web"]
    );
}

#[test]
fn match_mode_and_ports() {
    let c = [
        wp("app", "server", "match:\n- mode: SERVER"),
        wp("app", "client", "match:\n- mode: CLIENT"),
        wp("app", "both", "match:\n- mode: CLIENT_AND_SERVER"),
        wp("app", "undefined", "match:\n- mode: UNDEFINED"),
        wp("app", "port-9080", "match:\n- ports: [{number: 9080}]"),
        wp(
            "app",
            "server-80",
            "match:\n- mode: SERVER\n  ports: [{number: 80}]",
        ),
        wp(
            "app",
            "any-of",
            "match:\n- mode: SERVER\n  ports: [{number: 80}]\n- mode: CLIENT",
        ),
    ]
    .concat();
    assert_eq!(
        http(&c, &sidecar("app"), INBOUND),
        ["app.server", "app.both", "app.undefined", "app.port-9080"]
    );
    assert_eq!(
        http(&c, &sidecar("app"), OUTBOUND),
        ["app.client", "app.both", "app.undefined", "app.any-of"]
    );
    let gw = proxy(ProxyKind::Router, "app", &[("app", "web")]);
    assert_eq!(
        http(&c, &gw, GW),
        ["app.client", "app.both", "app.undefined", "app.any-of"]
    );
}

#[test]
fn plugin_type() {
    let c = [
        wp("app", "default", ""),
        wp("app", "http", "type: HTTP"),
        wp("app", "net", "type: NETWORK"),
        wp("app", "unspec", "type: UNSPECIFIED_PLUGIN_TYPE"),
    ]
    .concat();
    assert_eq!(
        http(&c, &sidecar("app"), INBOUND),
        ["app.default", "app.http", "app.unspec"]
    );
    assert_eq!(
        names(&c, &sidecar("app"), INBOUND, PluginType::Network),
        ["app.net"]
    );
}

#[test]
fn gateway_api_gateways_take_target_refs_selectors_and_namespace_wide_plugins() {
    let refs = "targetRefs:\n- kind: Gateway\n  group: gateway.networking.k8s.io\n  name: edge";
    let c = [
        wp("app", "by-ref", refs),
        wp(
            "app",
            "by-singular-ref",
            &refs.replace("targetRefs:\n-", "targetRef:\n "),
        ),
        wp("app", "by-selector", "selector:\n  matchLabels: {app: web}"),
        wp("app", "everywhere", ""),
        wp("app", "other-gw", &refs.replace("edge", "other")),
    ]
    .concat();
    let k8s_gw = proxy(
        ProxyKind::Router,
        "app",
        &[("app", "web"), (GATEWAY_NAME_LABEL, "edge")],
    );
    // istiod ShouldAttachPolicy: a Gateway API gateway falls back to the selector when the plugin
    // has no targetRefs (ENABLE_SELECTOR_BASED_K8S_GATEWAY_POLICY, default true in 1.22-1.29).
    assert_eq!(
        http(&c, &k8s_gw, GW),
        [
            "app.by-ref",
            "app.by-singular-ref",
            "app.by-selector",
            "app.everywhere"
        ]
    );
    // ... but only when the selector matches its labels.
    let k8s_gw_other_app = proxy(
        ProxyKind::Router,
        "app",
        &[("app", "api"), (GATEWAY_NAME_LABEL, "edge")],
    );
    assert_eq!(
        http(&c, &k8s_gw_other_app, GW),
        ["app.by-ref", "app.by-singular-ref", "app.everywhere"]
    );
    let istio_gw = proxy(ProxyKind::Router, "app", &[("app", "web")]);
    assert_eq!(
        http(&c, &istio_gw, GW),
        ["app.by-selector", "app.everywhere"]
    );
    // A targetRefs plugin in another namespace never attaches.
    let k8s_gw_other_ns = proxy(
        ProxyKind::Router,
        "istio-system",
        &[(GATEWAY_NAME_LABEL, "edge")],
    );
    assert!(http(&c, &k8s_gw_other_ns, GW).is_empty());
}

#[test]
fn target_ref_group_core_is_the_empty_group() {
    // istiod compares config.CanonicalGroup(group): "" and "core" are the same group.
    let c = [
        wp(
            "app",
            "core",
            "targetRefs:\n- {kind: Service, group: core, name: web}",
        ),
        wp("app", "empty", "targetRefs:\n- {kind: Service, name: web}"),
    ]
    .concat();
    // Service refs attach only to waypoints, which we do not model: both validate, neither
    // attaches to a sidecar or a Gateway API gateway.
    let k8s_gw = proxy(ProxyKind::Router, "app", &[(GATEWAY_NAME_LABEL, "web")]);
    assert!(http(&c, &k8s_gw, GW).is_empty());
    assert!(http(&c, &sidecar("app"), INBOUND).is_empty());
}
