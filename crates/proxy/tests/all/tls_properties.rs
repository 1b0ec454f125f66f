//! The `connection.*` properties of a TLS connection, against Envoy 1.40: a plugin on a chain
//! that accepts client certificates reads whether the peer presented one (`mtls`), the TLS
//! version, SNI, and the subject, URI and DNS SANs of both certificates and the peer
//! certificate's digest, as an authorization plugin in a mesh does (`uri_san_peer_certificate`
//! is the caller's SPIFFE identity).

use test_support::proxy_peers::start_upstream;

use crate::support::*;

const PATHS: &[&str] = &[
    "connection.mtls",
    "connection.tls_version",
    "connection.requested_server_name",
    "connection.subject_peer_certificate",
    "connection.subject_local_certificate",
    "connection.uri_san_peer_certificate",
    "connection.uri_san_local_certificate",
    "connection.dns_san_peer_certificate",
    "connection.dns_san_local_certificate",
    "connection.sha256_peer_certificate_digest",
    "connection.transport_failure_reason",
    "request.scheme",
    "request.protocol",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_connection_properties_match_envoy() -> anyhow::Result<()> {
    let up = start_upstream("up").await?;
    let m = mtls()?;
    let (tls, client_cert, client_key) = (&m.chain, &m.client_cert, &m.client_key);
    let paths: Vec<String> = PATHS.iter().map(|p| format!("\"{p}\"")).collect();
    let config = format!(r#"{{"paths": [{}]}}"#, paths.join(","));
    let boot = |admin, listen| {
        one_plugin(
            (admin, listen, up.addr.port()),
            test_plugins::PROPS_PROBE,
            "probe",
            &config,
            "",
        )
        .replace("    - filters:\n", tls)
    };
    let (ours, ours_addr, envoy, envoy_addr) = start_both(boot).await?;
    let mut failures = Vec::new();
    let mut envoy_mtls = Vec::new();
    for with_cert in [true, false] {
        let mut got = Vec::new();
        for addr in [ours_addr, envoy_addr] {
            let port = addr.port();
            let mut cmd = std::process::Command::new("curl");
            cmd.args(["-sk", "-D", "-", "-o", "/dev/null", "--resolve"])
                .arg(format!("proxy.test:{port}:127.0.0.1"));
            if with_cert {
                cmd.arg("--cert")
                    .arg(client_cert)
                    .arg("--key")
                    .arg(client_key);
            }
            let out = cmd.arg(format!("https://proxy.test:{port}/")).output()?;
            let head = String::from_utf8_lossy(&out.stdout).to_string();
            let answers: Vec<String> = (0..PATHS.len())
                .map(|i| {
                    head.lines()
                        .find_map(|l| l.strip_prefix(&format!("x-probe-{i}: ")))
                        .unwrap_or("<no header>")
                        .trim()
                        .to_string()
                })
                .collect();
            got.push(answers);
        }
        for (i, p) in PATHS.iter().enumerate() {
            if got[0][i] != got[1][i] {
                failures.push(format!(
                    "cert {with_cert} {p}: wasmesh {:?} Envoy {:?}",
                    got[0][i], got[1][i]
                ));
            }
        }
        envoy_mtls.push(got[1][0].clone());
    }
    drop((ours, envoy));
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(envoy_mtls.len(), 2);
    assert_ne!(
        envoy_mtls[0], envoy_mtls[1],
        "mtls differs with a client cert"
    );
    Ok(())
}
