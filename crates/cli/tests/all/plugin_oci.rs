//! `wasmesh plugin push|pull` against a real docker-registry, and `wasmesh status` against a
//! real control plane with a proxy connected over ADS. Every command runs the built binary.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use test_support::registry::Registry;
use wasmesh_agent::fetch::oci::{ISTIO_WASM_LAYER, ImageFormat, OCI_MANIFEST};
use wasmesh_agent::fetch::{FetchOptions, InsecureRegistries, OciFetcher, PullSecret};

const USER: &str = "pusher";
const PASSWORD: &str = "pa55-w0rd";

fn wasmesh(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wasmesh"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("wasmesh runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs `wasmesh plugin push` and returns the manifest digest it printed (`sha256:<hex>`).
fn push(file: &Path, image: &str) -> String {
    let out = wasmesh(&[
        "plugin",
        "push",
        file.to_str().expect("utf-8 path"),
        image,
        "--insecure",
    ]);
    assert!(out.status.success(), "push failed: {}", stderr(&out));
    let digest = stdout(&out).trim().to_owned();
    let hex = digest.strip_prefix("sha256:").unwrap_or("");
    assert!(
        hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()),
        "push printed {digest:?}"
    );
    digest
}

fn fetcher(insecure_host: &str) -> OciFetcher {
    OciFetcher::new(FetchOptions {
        insecure_registries: InsecureRegistries::parse(insecure_host),
        ..FetchOptions::default()
    })
}

#[tokio::test]
async fn pushed_module_pulls_back_identical_and_the_agent_accepts_it() -> anyhow::Result<()> {
    let reg = Registry::start().await?;
    let file = test_plugins::path(test_plugins::HEADERS);
    let module = std::fs::read(&file)?;
    let image = reg.url("plugins/headers", "v1");
    let digest = push(&file, &image);
    let hex = digest.trim_start_matches("sha256:");

    // Istio's Wasm OCI artifact, as the registry serves it.
    let manifest: serde_json::Value = reqwest::Client::new()
        .get(format!(
            "http://{}/v2/plugins/headers/manifests/v1",
            reg.host
        ))
        .header("accept", OCI_MANIFEST)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(manifest["mediaType"], OCI_MANIFEST, "{manifest}");
    assert_eq!(
        manifest["config"]["mediaType"], "application/vnd.module.wasm.config.v1+json",
        "{manifest}"
    );
    let layers = manifest["layers"].as_array().expect("layers");
    // Istio's extractOCIArtifactImage wants exactly two layers, one of them the module.
    assert_eq!(layers.len(), 2, "{manifest}");
    assert_eq!(layers[0]["mediaType"], ISTIO_WASM_LAYER, "{manifest}");
    assert_eq!(layers[0]["size"], module.len(), "{manifest}");

    // The agent's fetcher: recognised as the Wasm artifact, checksum = the printed digest.
    let oci = fetcher(&reg.host);
    let prepared = oci.prepare(&image, None).await?;
    assert_eq!(prepared.format, ImageFormat::WasmArtifact);
    assert_eq!(prepared.digest, hex);
    assert_eq!(oci.fetch_module(prepared).await?.bytes, module);

    // Pull back by tag with the digest as sha256, and by digest.
    let dir = tempfile::tempdir()?;
    for (i, url) in [
        image.clone(),
        format!("oci://{}/plugins/headers@{digest}", reg.host),
    ]
    .iter()
    .enumerate()
    {
        let out_file = dir.path().join(format!("pulled{i}.wasm"));
        let out = wasmesh(&[
            "plugin",
            "pull",
            url,
            "-o",
            out_file.to_str().expect("utf-8 path"),
            "--sha256",
            hex,
            "--insecure",
        ]);
        assert!(out.status.success(), "pull {url}: {}", stderr(&out));
        assert_eq!(std::fs::read(&out_file)?, module, "{url}");
        let text = stdout(&out);
        assert!(text.contains(&format!("digest:      {digest}")), "{text}");
        assert!(
            text.contains(&format!("size:        {} bytes", module.len())),
            "{text}"
        );
    }
    // Only the two modules: no temporary files left behind.
    assert_eq!(std::fs::read_dir(dir.path())?.count(), 2);
    Ok(())
}

#[tokio::test]
async fn pull_with_a_wrong_sha256_fails_naming_both_digests() -> anyhow::Result<()> {
    let reg = Registry::start().await?;
    let file = test_plugins::path(test_plugins::HEADERS);
    let image = reg.url("plugins/sha", "v1");
    let digest = push(&file, &image);
    let wrong = "0".repeat(64);
    let dir = tempfile::tempdir()?;
    let out_file = dir.path().join("m.wasm");
    let out = wasmesh(&[
        "plugin",
        "pull",
        &image,
        "-o",
        out_file.to_str().expect("utf-8 path"),
        "--sha256",
        &wrong,
        "--insecure",
    ]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains(&wrong), "{err}");
    assert!(err.contains(digest.trim_start_matches("sha256:")), "{err}");
    assert!(!out_file.exists(), "nothing is written on a mismatch");
    Ok(())
}

#[tokio::test]
async fn push_with_credentials_from_stdin() -> anyhow::Result<()> {
    let reg = Registry::start_with_auth(USER, PASSWORD).await?;
    let file = test_plugins::path(test_plugins::HEADERS);
    let file = file.to_str().expect("utf-8 path");
    let image = reg.url("private/headers", "v1");

    let anonymous = wasmesh(&["plugin", "push", file, &image, "--insecure"]);
    assert!(!anonymous.status.success(), "anonymous push was accepted");
    assert!(
        stderr(&anonymous).contains(&image),
        "{}",
        stderr(&anonymous)
    );

    let mut child = Command::new(env!("CARGO_BIN_EXE_wasmesh"))
        .args([
            "plugin",
            "push",
            file,
            &image,
            "--insecure",
            "--username",
            USER,
            "--password-stdin",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        writeln!(stdin, "{PASSWORD}")?;
    }
    let out = child.wait_with_output()?;
    assert!(out.status.success(), "{}", stderr(&out));
    let digest = stdout(&out).trim().to_owned();

    // The agent pulls it with a pull secret for that registry.
    let secret = PullSecret(
        serde_json::to_vec(&serde_json::json!({"auths": {reg.host.clone(): {
            "username": USER, "password": PASSWORD}}}))
        .expect("json"),
    );
    let prepared = fetcher(&reg.host).prepare(&image, Some(&secret)).await?;
    assert_eq!(format!("sha256:{}", prepared.digest), digest);
    Ok(())
}

// Multi-threaded: the module server keeps answering while the test blocks on the binary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_over_http_verifies_the_module_sha256() -> anyhow::Result<()> {
    let module = test_plugins::bytes(test_plugins::HEADERS);
    let (addr, server) = test_support::proxy_peers::serve_bytes(module.clone()).await?;
    let url = format!("http://{addr}/headers.wasm");
    let dir = tempfile::tempdir()?;
    let out_file = dir.path().join("m.wasm");
    let out_path = out_file.to_str().expect("utf-8 path");
    let out = wasmesh(&["plugin", "pull", &url, "-o", out_path]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(std::fs::read(&out_file)?, module);
    let sha = stdout(&out)
        .lines()
        .find_map(|l| l.strip_prefix("sha256:").map(|s| s.trim().to_owned()))
        .expect("a sha256 line");
    assert_eq!(sha.len(), 64);
    let ok = wasmesh(&["plugin", "pull", &url, "-o", out_path, "--sha256", &sha]);
    assert!(ok.status.success(), "{}", stderr(&ok));

    let wrong = "f".repeat(64);
    let out = wasmesh(&["plugin", "pull", &url, "-o", out_path, "--sha256", &wrong]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains(&wrong) && err.contains(&sha), "{err}");
    assert!(err.contains("module sha256"), "{err}");
    server.abort();
    Ok(())
}

/// Kills the child when dropped.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port")
}

#[tokio::test]
async fn status_lists_connected_proxies_and_files_with_errors() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    std::fs::write(
        dir.path().join("broken.yaml"),
        "apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nmetadata: {name: auth, namespace: app}\nspec:\n  url: oci://127.0.0.1:5000/p:v1\n  sha256: not-a-digest\n",
    )?;
    let (xds, status) = (free_port(), free_port());
    let _cp = Guard(
        Command::new(env!("CARGO_BIN_EXE_wasmesh"))
            .args(["control-plane", "--config-dir"])
            .arg(dir.path())
            .args(["--xds-addr", &format!("127.0.0.1:{xds}")])
            .args(["--status-addr", &format!("127.0.0.1:{status}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    );
    let base = format!("http://127.0.0.1:{status}");

    let id = "router~10.0.0.1~gw.app~app.svc.cluster.local";
    let ch =
        tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{xds}"))?.connect_lazy();
    let client = wasmesh_xds::client::AdsClient::new(
        ch,
        wasmesh_control_plane::proxy::node(id, "app", &[("istio", "ingressgateway")]),
    );
    let mut lds = client.subscribe(wasmesh_xds::type_url::LISTENER, vec![]);
    let update = tokio::time::timeout(Duration::from_secs(30), lds.next())
        .await?
        .expect("an LDS response");
    update.reply.ack();

    let deadline = Instant::now() + Duration::from_secs(20);
    let text = loop {
        let out = wasmesh(&["status", "--control-plane", &base]);
        let text = stdout(&out);
        if out.status.success()
            && text.contains(id)
            && text
                .lines()
                .any(|l| l.contains("LDS") && l.contains("SYNCED"))
        {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "status never showed {id} with LDS synced: {text}{}",
            stderr(&out)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(text.contains("PROXIES: 1 connected"), "{text}");
    assert!(text.contains("CONFIG FILES: 1 (1 with errors)"), "{text}");
    assert!(text.contains("broken.yaml"), "{text}");
    assert!(text.contains("spec.sha256"), "{text}");

    // Nothing listening: a clear error, non-zero exit.
    let out = wasmesh(&[
        "status",
        "--control-plane",
        &format!("http://127.0.0.1:{}", free_port()),
    ]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("cannot reach the control plane"),
        "{}",
        stderr(&out)
    );
    drop(client);
    Ok(())
}
