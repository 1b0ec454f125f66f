//! Several filter chains on one listener, chosen by SNI, transport protocol and
//! `default_filter_chain`: the same bootstrap in real Envoy 1.40 and in wasmesh must pick the same
//! chain for each client.

use std::net::SocketAddr;

use test_support::proxy_peers::{free_ports, start_envoy};

use crate::support::*;

/// The keys of a chain answering every request with `body` (indented for a listener item);
/// `tls` adds the test certificate.
fn chain_body(tls: bool, body: &str) -> String {
    let ts = if tls {
        r#"
      transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          common_tls_context:
            tls_certificates:
            - certificate_chain: {filename: "{CERT}"}
              private_key: {filename: "{KEY}"}"#
    } else {
        ""
    };
    format!(
        r#"{ts}
      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: chains
          route_config:
            virtual_hosts:
            - {{name: all, domains: ["*"], routes: [{{match: {{prefix: "/"}}, direct_response: {{status: 200, body: {{inline_string: "{body}"}}}}}}]}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}"#
    )
}

fn bootstrap() -> String {
    let chains: String = [
        ("{server_names: [a.test]}", true, "chain a"),
        (r#"{server_names: ["*.wild.test"]}"#, true, "chain wildcard"),
        ("{server_names: [x.wild.test]}", true, "chain exact"),
        ("{transport_protocol: raw_buffer}", false, "chain plaintext"),
    ]
    .iter()
    .map(|(m, tls, body)| format!("\n    - filter_chain_match: {m}{}", chain_body(*tls, body)))
    .collect();
    format!(
        r#"
admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: {{ADMIN}}}}}}
static_resources:
  listeners:
  - name: multi
    address: {{socket_address: {{address: 127.0.0.1, port_value: {{PORT}}}}}}
    listener_filters:
    - name: envoy.filters.listener.tls_inspector
      typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector}}
    filter_chains:{chains}
    default_filter_chain:{}
"#,
        chain_body(true, "chain default")
    )
}

/// The body curl gets from `url` (`-k`: the chain's certificate is self-signed), or curl's error.
async fn fetch(addr: SocketAddr, host: &str, https: bool) -> anyhow::Result<String> {
    let scheme = if https { "https" } else { "http" };
    let out = tokio::process::Command::new("curl")
        .args(["-sk", "--max-time", "5", "--resolve"])
        .arg(format!("{host}:{}:127.0.0.1", addr.port()))
        .arg(format!("{scheme}://{host}:{}/", addr.port()))
        .output()
        .await?;
    Ok(if out.status.success() {
        String::from_utf8_lossy(&out.stdout).into_owned()
    } else {
        format!("curl exit {:?}", out.status.code())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chains_are_chosen_as_envoy_chooses_them() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (cert, key) = self_signed_cert(
        dir.path(),
        "a.test",
        "DNS:a.test,DNS:*.wild.test,DNS:other.test",
    )?;
    let ports = free_ports(2)?;
    let vars = |port: u16, admin: u16| {
        vec![
            ("CERT", cert.display().to_string()),
            ("KEY", key.display().to_string()),
            ("PORT", port.to_string()),
            ("ADMIN", admin.to_string()),
        ]
    };
    let template = bootstrap();
    let envoy = tokio::task::spawn_blocking({
        let yaml = fill(&template, &vars(ports[0], ports[1]));
        let admin = SocketAddr::from(([127, 0, 0, 1], ports[1]));
        move || start_envoy(&yaml, admin)
    })
    .await??;
    let ours = start_proxy(&fill(&template, &vars(0, 0)))?;
    let envoy_addr = SocketAddr::from(([127, 0, 0, 1], ports[0]));
    let ours_addr = ours.listener_addr("multi").unwrap();
    let cases = [
        ("a.test", true, "chain a"),
        ("x.wild.test", true, "chain exact"),
        ("y.wild.test", true, "chain wildcard"),
        ("other.test", true, "chain default"),
        ("a.test", false, "chain plaintext"),
    ];
    for (host, https, want) in cases {
        let theirs = fetch(envoy_addr, host, https).await?;
        let got = fetch(ours_addr, host, https).await?;
        assert_eq!(theirs, want, "Envoy, {host} https={https}");
        assert_eq!(got, theirs, "wasmesh vs Envoy, {host} https={https}");
    }
    drop(envoy);
    ours.shutdown();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_match_twice_is_rejected_like_envoy() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (cert, key) = self_signed_cert(dir.path(), "a.test", "DNS:a.test")?;
    let ports = free_ports(2)?;
    let yaml = fill(
        &bootstrap().replace("{server_names: [a.test]}", "{server_names: [x.wild.test]}"),
        &[
            ("CERT", cert.display().to_string()),
            ("KEY", key.display().to_string()),
            ("PORT", ports[0].to_string()),
            ("ADMIN", ports[1].to_string()),
        ],
    );
    let err = start_proxy(&yaml)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        err.contains("has the same matching rules defined as")
            && err.contains("filter_chains[2]")
            && err.contains("filter_chains[0]"),
        "{err}"
    );
    let admin = SocketAddr::from(([127, 0, 0, 1], ports[1]));
    let envoy = tokio::task::spawn_blocking(move || start_envoy(&yaml, admin)).await?;
    assert!(
        envoy.is_err(),
        "Envoy accepted two chains with the same match"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destination_port_then_longest_prefix_as_in_envoy() -> anyhow::Result<()> {
    let ports = free_ports(4)?;
    let template = |port: u16, admin: u16| {
        let chains: String = [
            (
                "{destination_port: PORT, prefix_ranges: [{address_prefix: 127.0.0.0, prefix_len: 8}]}",
                "port and /8",
            ),
            (
                "{destination_port: PORT, prefix_ranges: [{address_prefix: 127.0.0.1, prefix_len: 32}]}",
                "port and /32",
            ),
            (
                "{prefix_ranges: [{address_prefix: 127.0.0.1, prefix_len: 32}]}",
                "any port and /32",
            ),
            ("{destination_port: 1}", "port 1"),
        ]
        .iter()
        .map(|(m, body)| {
            format!(
                "\n    - filter_chain_match: {}{}",
                m.replace("PORT", &port.to_string()),
                chain_body(false, body)
            )
        })
        .collect();
        format!(
            "static_resources:\n  listeners:\n  - name: multi\n    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}\n    filter_chains:{chains}\n"
        ) + &format!(
            "admin:\n  address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}\n"
        )
    };
    let envoy_yaml = template(ports[0], ports[1]);
    let admin = SocketAddr::from(([127, 0, 0, 1], ports[1]));
    let envoy = tokio::task::spawn_blocking(move || start_envoy(&envoy_yaml, admin)).await??;
    let ours = start_proxy(&template(ports[2], ports[3]))?;
    let theirs = fetch(SocketAddr::from(([127, 0, 0, 1], ports[0])), "x", false).await?;
    let got = fetch(ours.listener_addr("multi").unwrap(), "x", false).await?;
    assert_eq!(theirs, "port and /32");
    assert_eq!(got, theirs);
    drop(envoy);
    ours.shutdown();
    Ok(())
}
