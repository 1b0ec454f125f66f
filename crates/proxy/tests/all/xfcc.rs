//! `forward_client_cert_details` with `set_current_client_cert_details` on a plain-text chain,
//! against Envoy 1.40: with no client certificate, every mode but `ALWAYS_FORWARD_ONLY` removes
//! a client's `x-forwarded-client-cert` (the Zig SDK's forward-ssl-session example uses
//! `APPEND_FORWARD`, which we used to refuse).

use test_support::proxy_peers::start_upstream;

use crate::support::*;

/// Every `forward_client_cert_details` mode.
const MODES: [&str; 5] = [
    "SANITIZE",
    "FORWARD_ONLY",
    "APPEND_FORWARD",
    "SANITIZE_SET",
    "ALWAYS_FORWARD_ONLY",
];

fn bootstrap(admin: u16, listen: u16, up: u16, mode: &str) -> String {
    hcm_bootstrap(
        (admin, listen, up),
        &format!(
            "          forward_client_cert_details: {mode}\n          set_current_client_cert_details: {{cert: true, subject: true, uri: true, dns: true}}\n"
        ),
        "",
        "",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_cert_header_modes_on_plain_text_match_envoy() -> anyhow::Result<()> {
    let up = start_upstream("up").await?;
    let mut seen = Vec::new();
    for mode in MODES {
        let (ours, ours_addr, envoy, envoy_addr) =
            start_both(|admin, listen| bootstrap(admin, listen, up.addr.port(), mode)).await?;
        let mut got = Vec::new();
        for addr in [ours_addr, envoy_addr] {
            let mut req = get("xfcc.example", "/");
            req.headers_mut()
                .insert("x-forwarded-client-cert", "By=spiffe://a;Hash=abc".parse()?);
            let r = send(addr, req).await?;
            anyhow::ensure!(r.status == 200, "{mode}: status {}", r.status);
            got.push(
                r.text()
                    .to_ascii_lowercase()
                    .contains("x-forwarded-client-cert"),
            );
        }
        drop((ours, envoy));
        seen.push((mode, got[0], got[1]));
    }
    for (mode, ours, envoy) in &seen {
        assert_eq!(
            ours, envoy,
            "{mode}: upstream saw the header (wasmesh, Envoy)"
        );
    }
    assert_eq!(
        seen.iter().filter(|s| s.2).map(|s| s.0).collect::<Vec<_>>(),
        ["ALWAYS_FORWARD_ONLY"]
    );
    Ok(())
}

/// On a TLS chain that accepts (optional) client certificates, against Envoy 1.40: what the
/// upstream gets in `x-forwarded-client-cert`, with and without a client certificate, in every
/// mode. `FORWARD_ONLY` keeps the client's header only under mTLS; `APPEND_FORWARD` and
/// `SANITIZE_SET` describe the client's certificate (`By`, `Hash`, `Cert`, `Subject`, `URI`,
/// `DNS`), appended to the client's header or in its place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_cert_header_modes_with_mtls_match_envoy() -> anyhow::Result<()> {
    let up = start_upstream("up").await?;
    let m = mtls()?;
    let (tls, client_cert, client_key) = (&m.chain, &m.client_cert, &m.client_key);
    let mut seen = Vec::new();
    for mode in MODES {
        let boot = |admin, listen| {
            bootstrap(admin, listen, up.addr.port(), mode).replace("    - filters:\n", tls)
        };
        let (ours, ours_addr, envoy, envoy_addr) = start_both(boot).await?;
        for with_cert in [true, false] {
            let mut got = Vec::new();
            for addr in [ours_addr, envoy_addr] {
                let mut cmd = std::process::Command::new("curl");
                cmd.args([
                    "-sk",
                    "-H",
                    "x-forwarded-client-cert: By=spiffe://a;Hash=abc",
                ]);
                if with_cert {
                    cmd.arg("--cert")
                        .arg(client_cert)
                        .arg("--key")
                        .arg(client_key);
                }
                let out = cmd
                    .arg(format!("https://127.0.0.1:{}/", addr.port()))
                    .output()?;
                let body: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| {
                    anyhow::anyhow!(
                        "{mode} {with_cert}: {e}: {}",
                        String::from_utf8_lossy(&out.stdout)
                    )
                })?;
                got.push(
                    body["headers"]["x-forwarded-client-cert"]
                        .as_str()
                        .map(str::to_string),
                );
            }
            seen.push((mode, with_cert, got[0].clone(), got[1].clone()));
        }
        drop((ours, envoy));
    }
    for (mode, with_cert, ours, envoy) in &seen {
        assert_eq!(
            ours, envoy,
            "{mode}, client certificate {with_cert}: the upstream's x-forwarded-client-cert (wasmesh, Envoy)"
        );
    }
    let kept: Vec<_> = seen
        .iter()
        .filter(|s| s.3.is_some())
        .map(|s| (s.0, s.1))
        .collect();
    assert_eq!(
        kept,
        [
            ("FORWARD_ONLY", true),
            ("APPEND_FORWARD", true),
            ("SANITIZE_SET", true),
            ("ALWAYS_FORWARD_ONLY", true),
            ("ALWAYS_FORWARD_ONLY", false)
        ]
    );
    Ok(())
}
