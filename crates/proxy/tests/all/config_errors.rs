//! Unsupported or invalid bootstraps fail at start-up, naming the field.

use crate::support::*;

fn err(yaml: &str) -> String {
    match start_proxy(yaml) {
        Ok(_) => panic!("config accepted"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn unsupported_fields_are_named() {
    let base = basic(1);
    let e = err(&base.replace(
        "connect_timeout: 1s",
        "connect_timeout: 1s\n    outlier_detection: {}",
    ));
    assert!(
        e.contains("static_resources.clusters[0].outlier_detection"),
        "{e}"
    );
    let e = err(&base.replace(
        "stat_prefix: ingress_http",
        "stat_prefix: ingress_http\n          xff_num_trusted_hops: 1",
    ));
    assert!(e.contains("static_resources.listeners[0].filter_chains[0].filters[0].typed_config.xff_num_trusted_hops"), "{e}");
    let e = err(&base.replace("type: STATIC", "type: STATIC\n    lb_policy: RING_HASH"));
    assert!(e.contains("static_resources.clusters[0].lb_policy"), "{e}");
    let e = err(
        &base.replace("port_value: {PORT}", "port_value: 1").replace(
            "address: 127.0.0.1, port_value: 1",
            "address: example.com, port_value: 1",
        ),
    );
    assert!(e.contains("STRICT_DNS"), "{e}");
    let e = err(&base.replace("route: {cluster: backend}", "route: {cluster: nope}"));
    assert!(e.contains("unknown cluster \"nope\""), "{e}");
    let e = err(&base.replace(
        "stat_prefix: ingress_http",
        "stat_prefix: ingress_http\n          bogus_field: 1",
    ));
    assert!(e.contains("bogus_field"), "{e}");
}

#[test]
fn unknown_filter_types_list_the_supported_ones() {
    let yaml = fill(
        BASIC,
        &[
            ("PORT", "1".into()),
            ("ROUTE_EXTRA", String::new()),
            (
                "FILTERS",
                "- name: envoy.filters.http.buffer\n            typed_config:\n              \"@type\": type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer\n              max_request_bytes: 1024".into(),
            ),
        ],
    );
    let e = err(&yaml);
    assert!(e.contains("http_filters[0].typed_config"), "{e}");
    assert!(
        e.contains("envoy.extensions.filters.http.rbac.v3.RBAC"),
        "{e}"
    );
}
