//! `forward_client_cert_details` with `set_current_client_cert_details` on a plain-text chain,
//! against Envoy 1.40: with no client certificate, every mode but `ALWAYS_FORWARD_ONLY` removes
//! a client's `x-forwarded-client-cert` (the Zig SDK's forward-ssl-session example uses
//! `APPEND_FORWARD`, which we used to refuse).

use test_support::proxy_peers::start_upstream;

use crate::support::*;

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
    for mode in [
        "SANITIZE",
        "FORWARD_ONLY",
        "APPEND_FORWARD",
        "SANITIZE_SET",
        "ALWAYS_FORWARD_ONLY",
    ] {
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
