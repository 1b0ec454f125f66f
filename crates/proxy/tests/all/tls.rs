//! TLS: downstream TLS with ALPN (h2 and HTTP/1.1), upstream TLS with SNI.

use test_support::proxy_peers::{free_port, start_upstream};

use crate::support::*;

const TLS: &str = r#"
static_resources:
  listeners:
  - name: front
    address: {socket_address: {address: 127.0.0.1, port_value: 0}}
    filter_chains:
    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          common_tls_context:
            alpn_protocols: [h2, http/1.1]
            tls_certificates:
            - certificate_chain: {filename: "{CERT}"}
              private_key: {filename: "{KEY}"}
      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: front
          route_config:
            virtual_hosts:
            - {name: all, domains: ["*"], routes: [{match: {prefix: "/"}, route: {cluster: back_tls}}]}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
  - name: back
    address: {socket_address: {address: 127.0.0.1, port_value: {BACK}}}
    filter_chains:
    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          common_tls_context:
            tls_certificates:
            - certificate_chain: {filename: "{CERT}"}
              private_key: {filename: "{KEY}"}
      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: back
          route_config:
            virtual_hosts:
            - {name: all, domains: ["*"], routes: [{match: {prefix: "/"}, route: {cluster: echo}}]}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
  clusters:
  - name: back_tls
    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        sni: backend.test
        common_tls_context:
          validation_context: {trusted_ca: {filename: "{CERT}"}}
    load_assignment:
      cluster_name: back_tls
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: {BACK}}}}}]}]
  - name: echo
    load_assignment:
      cluster_name: echo
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: {ECHO}}}}}]}]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_both_ways_with_alpn() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (cert, key) =
        self_signed_cert(dir.path(), "backend.test", "DNS:backend.test,IP:127.0.0.1")?;
    let echo = start_upstream("echo").await?;
    let yaml = fill(
        TLS,
        &[
            ("CERT", cert.display().to_string()),
            ("KEY", key.display().to_string()),
            ("BACK", free_port()?.to_string()),
            ("ECHO", echo.addr.port().to_string()),
        ],
    );
    let p = start_proxy(&yaml)?;
    let front = p.listener_addr("front").unwrap();
    for (flag, version) in [("--http2", "2"), ("--http1.1", "1.1")] {
        let out = tokio::process::Command::new("curl")
            .args(["-s", "--cacert"])
            .arg(&cert)
            .arg(flag)
            .args([
                "--resolve",
                &format!("backend.test:{}:127.0.0.1", front.port()),
            ])
            .args(["-w", "\n%{http_version}"])
            .arg(format!("https://backend.test:{}/tls", front.port()))
            .output()
            .await?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, got_version) = text.rsplit_once('\n').unwrap_or_default();
        assert_eq!(got_version, version, "{text}");
        let j: serde_json::Value =
            serde_json::from_str(body).map_err(|e| anyhow::anyhow!("{e}: {text}"))?;
        assert_eq!(j["upstream"], "echo");
        assert_eq!(j["headers"]["x-forwarded-proto"], "https", "{body}");
    }
    Ok(())
}
