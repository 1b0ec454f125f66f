use super::*;
use crate::config::Resource;
use crate::model::wasm::{PluginPhase, PluginType};

fn parse(text: &str) -> Parsed {
    parse_file("plugins.yaml", text, &mut |_, _, _| 42)
}

fn plugin(spec: &str) -> String {
    format!(
        "apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nmetadata:\n  name: p\n  namespace: ns\nspec:\n{}",
        spec.lines().map(|l| format!("  {l}\n")).collect::<String>()
    )
}

fn errors_of(spec: &str) -> Vec<ValidationError> {
    parse(&plugin(spec)).errors
}

fn assert_error(spec: &str, path: &str, reason: &str) {
    let errs = errors_of(spec);
    assert!(
        errs.iter()
            .any(|e| e.path == path && e.reason.contains(reason)),
        "spec {spec:?}: expected {path}: {reason:?}, got {errs:#?}"
    );
    for e in &errs {
        assert_eq!(e.file, "plugins.yaml");
        assert_eq!(e.resource, "WasmPlugin ns/p");
    }
}

#[test]
fn complete_plugin_is_valid() {
    let p = parse(&plugin(
        r#"selector:
  matchLabels: {app: web, app.kubernetes.io/version: v1.2}
url: registry.example/acme/auth:v1
sha256: 2f4a2b68d0e6f7ab3f0c3f0d8a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a1b
imagePullPolicy: Always
imagePullSecret: pull
pluginConfig:
  nested: {a: [1, 2]}
pluginName: auth
phase: AUTHN
priority: 10
vmConfig:
  env:
  - name: A
    value: b
  - name: POD_NAME
    valueFrom: HOST
match:
- mode: SERVER
  ports: [{number: 8080}]
type: HTTP
failStrategy: FAIL_OPEN"#,
    ));
    assert!(p.errors.is_empty(), "{:#?}", p.errors);
    let Resource::WasmPlugin(w) = &p.resources[0] else {
        panic!("not a plugin")
    };
    assert_eq!(w.url, "oci://registry.example/acme/auth:v1");
    assert_eq!(w.resource_name, "extensions.istio.io/wasmplugin/ns.p");
    assert_eq!(w.phase, PluginPhase::Authn);
    assert_eq!(w.type_, PluginType::Http);
    assert_eq!(w.meta.created, 42);
}

#[test]
fn webhook_and_crd_rules() {
    let cases: &[(&str, &str, &str)] = &[
        ("pluginName: x", "spec.url", "url field needs to be set"),
        (
            "url: ftp://x/y.wasm",
            "spec.url",
            "unsupported scheme \"ftp\"",
        ),
        ("url: file://relative.wasm", "spec.url", "absolute path"),
        ("url: oci://", "spec.url", "without a location"),
        (
            "url: oci://x\nsha256: ABC",
            "spec.sha256",
            "64 lowercase hexadecimal",
        ),
        (
            "url: oci://x@sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\nsha256: bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb",
            "spec.sha256",
            "does not match the digest",
        ),
        (
            "url: oci://x\nimagePullSecret: ''",
            "spec.imagePullSecret",
            "1 to 253",
        ),
        (
            "url: oci://x\npluginName: ''",
            "spec.pluginName",
            "1 to 256",
        ),
        (
            "url: oci://x\nvmConfig:\n  env:\n  - value: v",
            "spec.vmConfig.env[0].name",
            "name is required",
        ),
        (
            "url: oci://x\nvmConfig:\n  env:\n  - {name: A}\n  - {name: A}",
            "spec.vmConfig.env[1].name",
            "duplicate env name",
        ),
        (
            "url: oci://x\nvmConfig:\n  env:\n  - {name: A, valueFrom: HOST, value: x}",
            "spec.vmConfig.env[0].value",
            "only be set when valueFrom is INLINE",
        ),
        (
            "url: oci://x\nmatch:\n- ports: [{number: 0}]",
            "spec.match[0].ports[0].number",
            "1..65535",
        ),
        (
            "url: oci://x\nmatch:\n- ports: [{number: 70000}]",
            "spec.match[0].ports[0].number",
            "1..65535",
        ),
        (
            "url: oci://x\nmatch:\n- ports: [{number: 80}, {number: 80}]",
            "spec.match[0].ports[1].number",
            "duplicate port 80",
        ),
        (
            "url: oci://x\nselector: {matchLabels: {app: web}}\ntargetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: gw}]",
            "spec",
            "only one of targetRefs or workloadSelector",
        ),
        (
            "url: oci://x\nselector: {matchLabels: {app: '*'}}",
            "spec.selector.matchLabels.app",
            "wildcard",
        ),
        (
            "url: oci://x\nselector: {matchLabels: {'bad key!': a}}",
            "spec.selector.matchLabels.bad key!",
            "invalid label key",
        ),
        (
            "url: oci://x\nselector: {matchLabels: {app: '-web'}}",
            "spec.selector.matchLabels.app",
            "invalid label value",
        ),
        ("url: oci://x y", "spec.url", "whitespace"),
        (
            "url: oci://x\ntargetRefs: [{kind: Gateway, group: gateway.networking.k8s.io}]",
            "spec.targetRefs[0].name",
            "required",
        ),
        (
            "url: oci://x\ntargetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: g, namespace: other}]",
            "spec.targetRefs[0].namespace",
            "cross namespace",
        ),
        (
            "url: oci://x\ntargetRefs: [{kind: Deployment, group: apps, name: g}]",
            "spec.targetRefs[0].kind",
            "not supported",
        ),
    ];
    for (spec, path, reason) in cases {
        assert_error(spec, path, reason);
    }
}

#[test]
fn unknown_fields_and_enum_values_are_named() {
    let errs = errors_of("url: oci://x\nphasee: AUTHN");
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert!(errs[0].reason.contains("phasee"), "{}", errs[0]);
    assert!(
        errs[0].path == "spec.phasee (line 8 column 3)",
        "{}",
        errs[0]
    );
    let errs = errors_of("url: oci://x\nphase: EARLY");
    assert!(errs[0].reason.contains("EARLY"), "{}", errs[0]);
    let errs = errors_of("url: oci://x\nfailStrategy: FAIL_SOMETIMES");
    assert!(errs[0].reason.contains("FAIL_SOMETIMES"), "{}", errs[0]);
}

#[test]
fn url_scheme_defaults_to_oci() {
    use crate::validate::wasm::normalize_url;
    assert_eq!(normalize_url("test.com/test"), "oci://test.com/test");
    // Better than istiod: a registry with a port is still OCI, not a scheme named "localhost".
    assert_eq!(
        normalize_url("localhost:5000/foo"),
        "oci://localhost:5000/foo"
    );
    assert_eq!(normalize_url("file:///a.wasm"), "file:///a.wasm");
    assert_eq!(normalize_url("https://h/a.wasm"), "https://h/a.wasm");
}

#[test]
fn metadata_and_kinds() {
    let p = parse("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n");
    assert_eq!(p.errors[0].path, "kind");
    assert!(
        p.errors[0]
            .reason
            .contains("unsupported kind \"ConfigMap\"")
    );
    let p = parse(&plugin("url: oci://x").replace("name: p", "name: Bad_Name"));
    assert!(
        p.errors.iter().any(|e| e.path == "metadata.name"),
        "{:#?}",
        p.errors
    );
    let p = parse(&plugin("url: oci://x").replace("v1alpha1", "v1beta9"));
    assert!(
        p.errors.iter().any(|e| e.path == "apiVersion"),
        "{:#?}",
        p.errors
    );
    let p = parse(&format!(
        "{}\n---\n{}",
        plugin("url: oci://x"),
        plugin("url: oci://y")
    ));
    assert!(
        p.errors.iter().any(|e| e.reason.contains("defined twice")),
        "{:#?}",
        p.errors
    );
    let p = parse(&plugin("url: oci://x").replace(
        "metadata:",
        "metadata:\n  creationTimestamp: \"2024-01-01T00:00:00Z\"",
    ));
    let Resource::WasmPlugin(w) = &p.resources[0] else {
        panic!("not a plugin")
    };
    assert_eq!(w.meta.created, 1_704_067_200_000_000_000);
}

#[test]
fn warnings_do_not_reject() {
    let p = parse(&plugin("url: oci://x\nselector: {matchLabels: {}}"));
    assert!(p.errors.is_empty());
    assert_eq!(p.resources.len(), 1);
    assert!(p.warnings[0].reason.contains("without labels"));
}

#[test]
fn routing_subset() {
    let doc = |kind: &str, spec: &str| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: {kind}\nmetadata: {{name: r, namespace: ns}}\nspec:\n{}",
            spec.lines().map(|l| format!("  {l}\n")).collect::<String>()
        )
    };
    let ok = [
        doc(
            "ServiceEntry",
            "hosts: [echo.local]\nports: [{number: 80, name: http, protocol: HTTP}]\nresolution: STATIC\nendpoints: [{address: 127.0.0.1, ports: {http: 9000}}]",
        ),
        doc(
            "Gateway",
            "selector: {istio: ingressgateway}\nservers: [{port: {number: 8080, name: http, protocol: HTTP}, hosts: ['*']}]",
        ),
        doc(
            "VirtualService",
            "hosts: ['*']\ngateways: [gw]\nhttp:\n- match: [{uri: {prefix: /a}, method: {exact: GET}, headers: {x: {regex: 'a.*'}}}]\n  route: [{destination: {host: echo.local}, weight: 100}]\n  timeout: 5s\n  retries: {attempts: 2, perTryTimeout: 1s}\n  rewrite: {uri: /b}",
        ),
        doc(
            "Sidecar",
            "workloadSelector: {labels: {app: web}}\ningress: [{port: {number: 9080, protocol: HTTP, name: http}, defaultEndpoint: '127.0.0.1:8080'}]",
        ),
    ];
    for d in &ok {
        let p = parse(d);
        assert!(p.errors.is_empty(), "{d}\n{:#?}", p.errors);
    }
    let bad: &[(String, &str, &str)] = &[
        (
            doc(
                "ServiceEntry",
                "hosts: [a]\nports: [{number: 80}]\nresolution: STATIC\nendpoints: [{address: example.com}]",
            ),
            "spec.endpoints[0].address",
            "not an IP",
        ),
        (
            doc(
                "ServiceEntry",
                "hosts: [a]\nports: [{number: 80}]\nresolution: NONE",
            ),
            "spec.resolution (line 7 column",
            "NONE",
        ),
        (
            doc(
                "ServiceEntry",
                "hosts: [a]\nports: [{number: 80}]\nresolution: DNS\nexportTo: ['.']",
            ),
            "spec.exportTo (line 8 column 3)",
            "exportTo",
        ),
        (
            doc(
                "Gateway",
                "selector: {a: b}\nservers: [{port: {number: 443, name: https, protocol: HTTPS}, hosts: ['*']}]",
            ),
            "spec.servers[0].port.protocol",
            "HTTPS",
        ),
        (
            doc(
                "VirtualService",
                "hosts: [a]\nhttp: [{route: [{destination: {host: a}}], timeout: soon}]",
            ),
            "spec.http[0].timeout",
            "not a duration",
        ),
        (
            doc(
                "VirtualService",
                "hosts: [a]\nhttp: [{match: [{uri: {exact: /a, prefix: /b}}], route: [{destination: {host: a}}]}]",
            ),
            "spec.http[0].match[0].uri",
            "exactly one",
        ),
        (
            doc(
                "VirtualService",
                "hosts: [a]\nhttp: [{match: [{uri: {regex: '('}}], route: [{destination: {host: a}}]}]",
            ),
            "spec.http[0].match[0].uri.regex",
            "invalid regular expression",
        ),
        (
            doc(
                "Sidecar",
                "ingress: [{port: {number: 9080, protocol: HTTP, name: http}, defaultEndpoint: 'unix:///x'}]",
            ),
            "spec.ingress[0].defaultEndpoint",
            "IP:PORT",
        ),
    ];
    for (d, path, reason) in bad {
        let p = parse(d);
        assert!(
            p.errors
                .iter()
                .any(|e| e.path.starts_with(path) && e.reason.contains(reason)),
            "{d}\nexpected {path}: {reason}\n{:#?}",
            p.errors
        );
    }
}
