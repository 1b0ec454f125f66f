//! N simulated proxies (ADS clients in this process) against a control plane running in a child
//! process (this same binary, re-executed), on loopback: time from a WasmPlugin file change to
//! every selected proxy holding the new ECDS resource, and the control plane's memory (VmRSS/VmHWM
//! of the child). Run by hand: `cargo bench -p wasmesh-control-plane --bench convergence`
//! (`-- 1000 5000` to pick N; default 1000 5000 10000). Never run in CI.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use wasmesh_control_plane::proxy::node;
use wasmesh_control_plane::{ControlPlane, Settings};
use wasmesh_xds::client::AdsClient;
use wasmesh_xds::type_url;

const SERVER_ENV: &str = "WASMESH_BENCH_SERVER_DIR";
const ECDS_NAME: &str = "extensions.istio.io/wasmplugin/app.bench";
/// Streams multiplexed per HTTP/2 connection (below h2's default concurrent-stream limit).
const STREAMS_PER_CONN: usize = 100;

fn routing() -> String {
    r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: echo, namespace: app}
spec:
  hosts: [echo.local]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: 127.0.0.1, ports: {http: 9}}]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: app}
spec:
  selector: {istio: ingressgateway}
  servers: [{port: {number: 8080, name: http, protocol: HTTP}, hosts: ['*']}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: vs, namespace: app}
spec:
  hosts: ['*']
  gateways: [gw]
  http: [{route: [{destination: {host: echo.local}}]}]
"#
    .to_string()
}

fn plugin(version: u32) -> String {
    format!(
        "apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nmetadata: {{name: bench, namespace: app}}\nspec:\n  url: file:///plugins/headers.wasm\n  pluginConfig: {{response_add: {{x-version: \"marker-{version:06}\"}}}}\n"
    )
}

fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn server_main(dir: String) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let cp = ControlPlane::start(Settings::new(dir, "127.0.0.1:0".parse().expect("addr")))
            .await
            .expect("control plane starts");
        println!("{}", cp.addr);
        cp.wait().await;
    });
}

async fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    start.elapsed()
}

async fn run(n: usize) {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("routing.yaml"), routing()).expect("write");
    std::fs::write(dir.path().join("plugin.yaml"), plugin(1)).expect("write");
    let exe = std::env::current_exe().expect("current exe");
    let mut child = Command::new(exe)
        .env(SERVER_ENV, dir.path())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn control plane");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("addr line");
    let url = format!("http://{}", line.trim());
    let pid = child.id();
    let (idle_rss, _) = rss_kib(pid);

    // holding[v] = proxies whose latest ECDS carries marker v.
    let holding: Arc<Vec<AtomicUsize>> = Arc::new((0..4).map(|_| AtomicUsize::new(0)).collect());
    let connect_start = Instant::now();
    let mut channels = Vec::new();
    for _ in 0..n.div_ceil(STREAMS_PER_CONN) {
        channels.push(
            tonic::transport::Endpoint::from_shared(url.clone())
                .expect("url")
                .connect_lazy(),
        );
    }
    let mut clients = Vec::with_capacity(n);
    for i in 0..n {
        let id = format!(
            "router~10.{}.{}.{}~gw-{i}.app~app.svc.cluster.local",
            i >> 16,
            (i >> 8) & 255,
            i & 255
        );
        let client = AdsClient::new(
            channels[i / STREAMS_PER_CONN].clone(),
            node(&id, "app", &[("istio", "ingressgateway")]),
        );
        let mut lds = client.subscribe(type_url::LISTENER, vec![]);
        let mut ecds = client.subscribe(type_url::EXTENSION_CONFIG, vec![ECDS_NAME.into()]);
        let holding = holding.clone();
        tokio::spawn(async move {
            while let Some(u) = lds.next().await {
                u.reply.ack();
            }
        });
        tokio::spawn(async move {
            let mut current: Option<usize> = None;
            while let Some(u) = ecds.next().await {
                let version = u.resources.first().and_then(|r| {
                    let pos = r.value.windows(7).position(|w| w == b"marker-")?;
                    std::str::from_utf8(&r.value[pos + 7..pos + 13])
                        .ok()?
                        .parse::<usize>()
                        .ok()
                });
                u.reply.ack();
                if let Some(v) = version.filter(|v| *v < 4) {
                    if let Some(old) = current.replace(v) {
                        holding[old].fetch_sub(1, Ordering::Relaxed);
                    }
                    holding[v].fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        clients.push(client);
    }
    let h = holding.clone();
    wait_until("all proxies to connect", Duration::from_secs(300), || {
        h[1].load(Ordering::Relaxed) == n
    })
    .await;
    let connected = connect_start.elapsed();
    let (connected_rss, _) = rss_kib(pid);

    let mut rounds = Vec::new();
    for v in [2usize, 3] {
        let start = Instant::now();
        std::fs::write(dir.path().join("plugin.yaml.tmp"), plugin(v as u32)).expect("write");
        std::fs::rename(
            dir.path().join("plugin.yaml.tmp"),
            dir.path().join("plugin.yaml"),
        )
        .expect("rename");
        let h = holding.clone();
        wait_until(
            "all proxies to hold the new ECDS",
            Duration::from_secs(120),
            || h[v].load(Ordering::Relaxed) == n,
        )
        .await;
        rounds.push(start.elapsed());
    }
    let (rss, hwm) = rss_kib(pid);
    println!(
        "N={n:>6}  connect+initial push {:>7.0} ms  file change → all hold new ECDS: {:>6.0} ms, {:>6.0} ms  \
         control plane RSS: idle {:>5} MiB, connected {:>5} MiB, now {:>5} MiB, peak {:>5} MiB",
        connected.as_secs_f64() * 1e3,
        rounds[0].as_secs_f64() * 1e3,
        rounds[1].as_secs_f64() * 1e3,
        idle_rss / 1024,
        connected_rss / 1024,
        rss / 1024,
        hwm / 1024,
    );
    drop(clients);
    let _ = child.kill();
    let _ = child.wait();
}

fn main() {
    if let Ok(dir) = std::env::var(SERVER_ENV) {
        server_main(dir);
        return;
    }
    let ns: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let ns = if ns.is_empty() {
        vec![1_000, 5_000, 10_000]
    } else {
        ns
    };
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    println!(
        "wasmesh control plane convergence (debounce 100 ms included; includes file-watch latency)"
    );
    for n in ns {
        rt.block_on(run(n));
    }
}
