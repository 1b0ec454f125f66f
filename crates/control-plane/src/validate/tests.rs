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
    // Reasons are istiod's webhook strings (pkg/config/validation ValidateWasmPlugin) where the
    // webhook has the rule, else the CRD schema's.
    let cases: &[(&str, &str, &str)] = &[
        ("pluginName: x", "spec.url", "url field needs to be set"),
        (
            "url: ftp://x/y.wasm",
            "spec.url",
            "url contains unsupported scheme: ftp",
        ),
        (
            "url: oci://x\nsha256: ABC",
            "spec.sha256",
            "sha256 field must be 64 characters long",
        ),
        (
            "url: oci://x\nsha256: AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "spec.sha256",
            "sha256 field must match [a-f0-9]{64} pattern",
        ),
        (
            "url: oci://x\nimagePullSecret: ''",
            "spec.imagePullSecret",
            "must not be empty",
        ),
        (
            &format!("url: oci://x\nimagePullSecret: {}", "s".repeat(254)),
            "spec.imagePullSecret",
            "imagePullSecret field must be less than 253 characters long",
        ),
        (
            "url: oci://x\npluginName: ''",
            "spec.pluginName",
            "must not be empty",
        ),
        (
            &format!("url: oci://x\npluginName: {}", "n".repeat(257)),
            "spec.pluginName",
            "pluginName field must be less than 255 characters long",
        ),
        (
            "url: oci://x\nvmConfig:\n  env:\n  - value: v",
            "spec.vmConfig.env[0].name",
            "spec.vmConfig.env invalid",
        ),
        (
            "url: oci://x\nvmConfig:\n  env:\n  - {name: A}\n  - {name: A}",
            "spec.vmConfig.env[1].name",
            "duplicate env",
        ),
        (
            "url: oci://x\nvmConfig:\n  env:\n  - {name: A, valueFrom: HOST, value: x}",
            "spec.vmConfig.env[0].value",
            "value may only be set when valueFrom is INLINE",
        ),
        (
            "url: oci://x\nmatch:\n- ports: [{number: 0}]",
            "spec.match[0].ports[0].number",
            "spec.Match[0].Ports[0] is out of range: 0",
        ),
        (
            "url: oci://x\nmatch:\n- {}\n- ports: [{number: 80}, {number: 70000}]",
            "spec.match[1].ports[1].number",
            "spec.Match[1].Ports[1] is out of range: 70000",
        ),
        (
            "url: oci://x\nmatch:\n- ports: [{number: 80}, {number: 80}]",
            "spec.match[0].ports[1].number",
            "duplicate port 80",
        ),
        (
            "url: oci://x\nselector: {matchLabels: {app: web}}\ntargetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: gw}]",
            "spec",
            "only one of targetRefs or workloadSelector can be set",
        ),
        (
            "url: oci://x\nselector: {matchLabels: {app: '*'}}",
            "spec.selector.matchLabels.app",
            "wildcard is not supported in selector: \"app=*\"",
        ),
        (
            "url: oci://x\nselector: {matchLabels: {'': web}}",
            "spec.selector.matchLabels",
            "empty key is not supported in selector: \"=web\"",
        ),
        (
            &format!(
                "url: oci://x\nselector: {{matchLabels: {{app: {}}}}}",
                "v".repeat(64)
            ),
            "spec.selector.matchLabels.app",
            "at most 63 characters",
        ),
        (
            "url: oci://x\ntargetRefs: [{kind: Gateway, group: gateway.networking.k8s.io}]",
            "spec.targetRefs[0].name",
            "targetRef name must be set",
        ),
        (
            "url: oci://x\ntargetRef: {kind: Gateway, group: gateway.networking.k8s.io}",
            "spec.targetRef.name",
            "targetRef name must be set",
        ),
        (
            "url: oci://x\ntargetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: g, namespace: other}]",
            "spec.targetRefs[0].namespace",
            "targetRef namespace must not be set; cross namespace referencing is not supported",
        ),
        (
            "url: oci://x\ntargetRefs: [{kind: Deployment, group: apps, name: g}]",
            "spec.targetRefs[0].kind",
            "targetRef must be to one of [core/v1/Service networking.istio.io/v1/ServiceEntry \
             gateway.networking.k8s.io/v1/Gateway gateway.networking.k8s.io/v1/GatewayClass] \
             but was apps/Deployment",
        ),
        (
            "url: oci://x\ntargetRefs: [{kind: Gateway, name: g}]",
            "spec.targetRefs[0].kind",
            "but was /Gateway",
        ),
    ];
    for (spec, path, reason) in cases {
        assert_error(spec, path, reason);
    }
}

#[test]
fn what_istiod_accepts_is_accepted() {
    // A plugin istiod applies must not be dropped by a stricter check of ours.
    for spec in [
        // istiod leaves a sha256/digest mismatch to the agent.
        "url: oci://r/x@sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\nsha256: bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb",
        // CanonicalGroup: "core" is the empty group.
        "url: oci://x\ntargetRefs: [{group: core, kind: Service, name: s}]",
        "url: oci://x\ntargetRefs: [{group: '', kind: Service, name: s}]",
        // Label syntax is not checked by the webhook or the CRD.
        "url: oci://x\nselector: {matchLabels: {'bad key!': '-web'}}",
        // HOST with no value.
        "url: oci://x\nvmConfig:\n  env:\n  - {name: A, valueFrom: HOST}",
    ] {
        let p = parse(&plugin(spec));
        assert!(p.errors.is_empty(), "{spec:?}: {:#?}", p.errors);
        assert_eq!(p.resources.len(), 1, "{spec:?}");
    }
}

fn url_of(spec: &str) -> (String, Option<String>) {
    let p = parse(&plugin(spec));
    assert!(p.errors.is_empty(), "{spec:?}: {:#?}", p.errors);
    let Some(Resource::WasmPlugin(w)) = p.resources.first() else {
        panic!("{spec:?}: no plugin: {:#?}", p.warnings)
    };
    (w.url.clone(), w.local_file.clone())
}

#[test]
fn urls_are_validated_like_istiods_webhook() {
    // localhost:5000/x parses (ParseRequestURI) with the scheme "localhost": no http:// retry.
    assert_error(
        "url: localhost:5000/x",
        "spec.url",
        "url contains unsupported scheme: localhost",
    );
    assert_error(
        "url: ftp:x/y",
        "spec.url",
        "url contains unsupported scheme: ftp",
    );
    // Neither the url nor http://url parses: the first error is reported.
    assert_error(
        "url: \"%zz\"",
        "spec.url",
        "failed to parse url: parse \"%zz\": invalid URI for request",
    );
    // Go lowercases the scheme; String() writes it back lowercased.
    assert_eq!(
        url_of("url: HTTPS://example.com/x.wasm"),
        ("https://example.com/x.wasm".into(), None)
    );
    assert_eq!(url_of("url: oci://"), ("oci:".into(), None));
    assert_eq!(
        url_of("url: file://plugin.wasm"),
        ("file://plugin.wasm".into(), Some("plugin.wasm".into()))
    );
    assert_eq!(
        url_of("url: file:///opt/p.wasm"),
        ("file:///opt/p.wasm".into(), Some("/opt/p.wasm".into()))
    );
    assert_eq!(
        url_of("url: test.com/test"),
        ("oci://test.com/test".into(), None)
    );
    // Any scheme-less host:port reference whose host is letters only reads as a scheme.
    assert_error(
        "url: registry:5000/a/b:v1",
        "spec.url",
        "url contains unsupported scheme: registry",
    );
}

#[test]
fn url_istiod_validates_but_cannot_build_drops_the_plugin_with_a_warning() {
    // ParseRequestURI fails, http://127.0.0.1:5000/x passes the webhook; url.Parse then fails
    // ("first path segment in URL cannot contain colon") and istiod discards the plugin.
    let p = parse(&plugin("url: 127.0.0.1:5000/x"));
    assert!(p.errors.is_empty(), "{:#?}", p.errors);
    assert!(p.resources.is_empty(), "{:#?}", p.resources);
    assert_eq!(p.warnings.len(), 1, "{:#?}", p.warnings);
    let w = &p.warnings[0];
    assert_eq!(
        (w.resource.as_str(), w.path.as_str()),
        ("WasmPlugin ns/p", "spec.url")
    );
    assert_eq!(
        w.reason,
        "wasmplugin ns/p discarded due to failure to parse URL: parse \"127.0.0.1:5000/x\": \
         first path segment in URL cannot contain colon"
    );
    // A space in the host: the webhook's http:// retry accepts it, url.Parse does not.
    let p = parse(&plugin("url: oci://x y"));
    assert!(p.errors.is_empty() && p.resources.is_empty(), "{p:#?}");
    assert!(p.warnings[0].reason.contains("in host name"), "{p:#?}");
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
