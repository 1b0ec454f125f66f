//! ECDS latency through the agent: from the control plane's ECDS push to the rewritten ECDS
//! the proxy receives, for a cached module and for a 1 MB module pulled from a local
//! docker-registry. Prints figures; never a pass/fail test.
//!
//! Run: `cargo bench -p wasmesh-agent --bench ecds --profile dev` (debug build; an optimized
//! build is faster still). Needs /usr/bin/docker-registry (installed by .ci/run).

#[allow(dead_code, unused_imports, unused_macros)]
#[path = "../tests/all/registry.rs"]
mod registry;
#[allow(dead_code, unused_imports, unused_macros)]
#[path = "../tests/all/util.rs"]
mod util;

use std::time::{Duration, Instant};

use envoy_types::pb::envoy::extensions::wasm::v3::FailurePolicy;
use test_support::fake_ads::{FakeAds, type_url};
use wasmesh_agent::ListenAddr;

use registry::{Format, Options, Registry};
use util::{AdsClient, Seen, inspect, start_agent, wasm_plugin};

/// A valid module of about `size` bytes: the header and one custom section of filler.
fn big_module(size: usize, seed: u8) -> Vec<u8> {
    let mut payload = Vec::with_capacity(size);
    let mut x: u32 = 0x9e37_79b9 ^ u32::from(seed);
    while payload.len() < size {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        payload.extend_from_slice(&x.to_le_bytes());
    }
    let mut content = vec![3u8];
    content.extend_from_slice(b"big");
    content.extend_from_slice(&payload);
    let mut m = b"\0asm\x01\0\0\0".to_vec();
    m.push(0);
    let mut n = content.len();
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            m.push(byte);
            break;
        }
        m.push(byte | 0x80);
    }
    m.extend_from_slice(&content);
    m
}

fn summary(name: &str, mut v: Vec<Duration>, goal_ms: f64) {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let mean = v.iter().map(|d| ms(*d)).sum::<f64>() / v.len() as f64;
    let p = |q: f64| ms(v[((v.len() as f64 - 1.0) * q).round() as usize]);
    println!(
        "{name:<52} n={:<3} mean {mean:7.2} ms  p50 {:7.2} ms  p90 {:7.2} ms  max {:7.2} ms  (goal < {goal_ms} ms: {})",
        v.len(),
        p(0.5),
        p(0.9),
        p(1.0),
        if p(0.5) < goal_ms { "met" } else { "NOT met" }
    );
}

async fn run() -> anyhow::Result<()> {
    let reg = Registry::start(Options {
        tls: false,
        auth: false,
    })
    .await?;
    let fake = FakeAds::start().await?;
    let dir = tempfile::tempdir()?;
    let agent = start_agent(
        ListenAddr::Tcp("127.0.0.1:0".parse()?),
        fake.addr(),
        dir.path(),
        &reg.host,
    )
    .await?;
    let ListenAddr::Tcp(addr) = *agent.listen_addr() else {
        anyhow::bail!("tcp")
    };
    let mut proxy = AdsClient::connect(addr).await?;
    let name = util::ecds_name("bench");

    // Cached module: every push is a new config (new plugin configuration) for a module in the cache.
    let small = big_module(64 * 1024, 0);
    let digest = reg
        .push("bench/cached", "v1", Format::WasmArtifact, &small)
        .await?;
    let url = reg.url("bench/cached", "v1");
    fake.set(
        type_url::ECDS,
        vec![wasm_plugin(
            "bench",
            &url,
            &digest,
            "{}",
            FailurePolicy::FailClosed,
            &[],
        )],
    );
    proxy.subscribe(type_url::ECDS, &[&name], true).await;
    let first = proxy.recv().await;
    proxy.ack(&first, &[&name]).await;
    let mut cached = Vec::new();
    for i in 0..200 {
        let cfg = format!(r#"{{"i":{i}}}"#);
        fake.set(
            type_url::ECDS,
            vec![wasm_plugin(
                "bench",
                &url,
                &digest,
                &cfg,
                FailurePolicy::FailClosed,
                &[],
            )],
        );
        let t0 = Instant::now();
        let r = proxy.recv().await;
        cached.push(t0.elapsed());
        assert!(matches!(inspect(&r.resources[0]).1, Seen::LocalFile(_)));
        proxy.ack(&r, &[&name]).await;
    }
    // The conversion alone (no gRPC hops).
    let conv = wasmesh_agent::Converter::new(agent.cache().clone());
    let (_, res) = wasm_plugin("bench", &url, &digest, "{}", FailurePolicy::FailClosed, &[]);
    let mut convert_only = Vec::new();
    for _ in 0..500 {
        let t0 = Instant::now();
        conv.convert_all(std::slice::from_ref(&res)).await?;
        convert_only.push(t0.elapsed());
    }

    // 1 MB modules, each new to the cache: manifest + blob from the registry, verify, write.
    let n = 20;
    let mut digests = Vec::new();
    for i in 0..n {
        let m = big_module(1024 * 1024, i as u8 + 1);
        digests.push(
            reg.push(&format!("bench/big{i}"), "v1", Format::WasmArtifact, &m)
                .await?,
        );
    }
    let mut fetched = Vec::new();
    for (i, digest) in digests.iter().enumerate() {
        let url = reg.url(&format!("bench/big{i}"), "v1");
        fake.set(
            type_url::ECDS,
            vec![wasm_plugin(
                "bench",
                &url,
                digest,
                "{}",
                FailurePolicy::FailClosed,
                &[],
            )],
        );
        let t0 = Instant::now();
        let r = proxy.recv().await;
        fetched.push(t0.elapsed());
        assert!(
            matches!(inspect(&r.resources[0]).1, Seen::LocalFile(_)),
            "{:?}",
            inspect(&r.resources[0])
        );
        proxy.ack(&r, &[&name]).await;
    }

    println!(
        "\nECDS push → rewritten ECDS at the proxy (fake control plane → agent → client, loopback gRPC):"
    );
    summary("cached module (64 KiB), end to end", cached, 5.0);
    summary("cached module, conversion only", convert_only, 5.0);
    summary(
        "1 MiB module from the local registry, end to end",
        fetched,
        100.0,
    );
    agent.shutdown().await;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    if std::env::args().any(|a| a == "--list") {
        // `cargo test --benches` lists benches; nothing to list here.
        return Ok(());
    }
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run())
}
