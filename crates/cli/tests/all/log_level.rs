//! `wasmesh proxy -l LEVEL` sets the log level as Envoy's `-l` does, without `RUST_LOG`:
//! plugins ask for it (`proxy_get_log_level`) and the SDKs drop lines below it, so
//! `-l debug` shows a plugin's debug lines and `-l warning` hides its info lines.

use crate::compile::one_request;

/// The `logging` plugin's `request headers: /` lines at each level, with `-l level`.
async fn plugin_lines(level: &str) -> Vec<String> {
    let module = test_plugins::path(test_plugins::LOGGING);
    let (_, log) = one_request(&module, &["-l", level], None).await;
    log.lines()
        .filter(|l| l.contains("request headers: /") && !l.contains("stdout:"))
        .filter_map(|l| {
            // `[date][thread][level][wasm] ...`, as Envoy writes it
            let mut parts = l.split(']');
            parts.nth(2).map(|p| p.trim_start_matches('[').to_string())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_level_flag_sets_what_plugins_log() {
    assert_eq!(
        plugin_lines("warning").await,
        ["warning", "error", "critical"]
    );
    assert_eq!(
        plugin_lines("debug").await,
        ["debug", "info", "warning", "error", "critical"]
    );
}

/// Plugin log lines read as Envoy's: `[time][thread][level][wasm] [source location] wasm log
/// <name> <root_id> <vm_id>: <message>` from a stream, `wasm log <root_id> <vm_id>: ` from a
/// root context (each part only when set). For the same plugin, config and request, the `vm
/// start`, `configure` and `request headers` lines are the same text apart from the time and
/// thread, as many times (every VM, every level), WASI stdout included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_log_lines_read_as_envoys() {
    use std::net::SocketAddr;
    let module = test_plugins::path(test_plugins::LOGGING);
    let (_, ours) = one_request(&module, &["-l", "info"], None).await;
    let echo = test_support::echo::start("echo").await.expect("echo");
    let dir = tempfile::tempdir().expect("tempdir");
    let ports = test_support::proxy_peers::free_ports(2).expect("ports");
    let cfg = dir.path().join("envoy.yaml");
    std::fs::write(
        &cfg,
        crate::compile::bootstrap(ports[0], ports[1], echo.addr, &module),
    )
    .expect("write");
    let admin = SocketAddr::from(([127, 0, 0, 1], ports[1]));
    let listen = SocketAddr::from(([127, 0, 0, 1], ports[0]));
    let log = dir.path().join("envoy.log");
    let envoy_bin = test_support::proxy_peers::envoy_binary().expect("envoy");
    let args: Vec<String> = [
        "-c",
        &cfg.display().to_string(),
        "--concurrency",
        "1",
        "-l",
        "info",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain(["--base-id".to_string(), ports[1].to_string()])
    .collect();
    let envoy = tokio::task::spawn_blocking(move || {
        let child = crate::istio_agent::start(&envoy_bin, &args, admin, &log);
        test_support::proxy_peers::wait_ready(admin, std::time::Duration::from_secs(60))
            .expect("envoy ready");
        let resp = crate::istio_agent::http(listen, "GET", "/");
        // Envoy writes its log as it goes; give it a moment.
        std::thread::sleep(std::time::Duration::from_millis(300));
        drop(child);
        (resp, std::fs::read_to_string(&log).unwrap_or_default())
    })
    .await
    .expect("join");
    assert_eq!(envoy.0.map(|r| r.0), Some(200));
    let lines = |log: &str| -> Vec<String> {
        let mut v: Vec<String> = log
            .lines()
            .filter(|l| l.contains("wasm log"))
            // without `[time][thread]`
            .filter_map(|l| l.splitn(3, ']').nth(2).map(|r| r.trim_end().to_string()))
            .filter(|l| {
                ["request headers: /", ": vm start", ": configure"]
                    .iter()
                    .any(|m| l.contains(m))
            })
            .collect();
        v.sort();
        v
    };
    let theirs = lines(&envoy.1);
    assert!(
        theirs.iter().any(|l| l
            == "[info][wasm] [source/extensions/common/wasm/context.cc:1151] \
                    wasm log headers: request headers: /"),
        "{theirs:?}"
    );
    assert_eq!(lines(&ours), theirs, "wasmesh (left) vs Envoy (right)");
}

/// Envoy's Wasm runtime stats for one plugin, each proxy in its own process (the counts are
/// per process): `wasm.envoy.wasm.runtime.v8.active` / `.created` count the base Wasm that
/// holds the compiled module as well as each thread's VM, and `wasm.wasm_vm_count` the active
/// ones, at one and at two workers; the remote-load stats are there at 0 with local code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wasm_runtime_vm_counts_match_envoy() {
    use std::net::SocketAddr;
    let echo = test_support::echo::start("echo").await.expect("echo");
    let envoy_bin = test_support::proxy_peers::envoy_binary().expect("envoy");
    let ours_bin = std::path::PathBuf::from(env!("CARGO_BIN_EXE_wasmesh"));
    // (the trap plugin fails its VM on the request: Envoy keeps counting the failed VM)
    for (workers, plugin) in [
        ("1", test_plugins::LOGGING),
        ("2", test_plugins::LOGGING),
        ("1", test_plugins::TRAP),
    ] {
        let module = test_plugins::path(plugin);
        let mut seen = Vec::new();
        for envoy in [true, false] {
            let dir = tempfile::tempdir().expect("tempdir");
            let ports = test_support::proxy_peers::free_ports(2).expect("ports");
            let cfg = dir.path().join("bootstrap.yaml");
            std::fs::write(
                &cfg,
                crate::compile::bootstrap(ports[0], ports[1], echo.addr, &module),
            )
            .expect("write");
            let admin = SocketAddr::from(([127, 0, 0, 1], ports[1]));
            let listen = SocketAddr::from(([127, 0, 0, 1], ports[0]));
            let log = dir.path().join("proxy.log");
            let mut args: Vec<String> = vec![];
            if !envoy {
                args.push("proxy".into());
            }
            args.extend(
                ["-c", &cfg.display().to_string(), "--concurrency", workers]
                    .iter()
                    .map(|s| s.to_string()),
            );
            if envoy {
                args.extend(["--base-id".to_string(), ports[1].to_string()]);
            }
            let program = if envoy {
                envoy_bin.clone()
            } else {
                ours_bin.clone()
            };
            let stats = tokio::task::spawn_blocking(move || {
                let child = crate::istio_agent::start(&program, &args, admin, &log);
                {
                    use std::io::{Read, Write};
                    if let Ok(mut s) = std::net::TcpStream::connect(listen) {
                        let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(5)));
                        let _ = s.write_all(
                            b"GET / HTTP/1.1\r\nhost: h\r\nx-trap: 1\r\nconnection: close\r\n\r\n",
                        );
                        let _ = s.read_to_end(&mut Vec::new());
                    }
                }
                let text = crate::istio_agent::http(admin, "GET", "/stats?filter=^wasm\\.")
                    .map(|r| r.1)
                    .unwrap_or_default();
                drop(child);
                let mut lines: Vec<String> = text
                    .lines()
                    .filter(|l| {
                        l.starts_with("wasm.envoy.wasm.runtime.v8.")
                            || l.starts_with("wasm.wasm_vm_count")
                            || l.starts_with("wasm.remote_load_")
                    })
                    .map(str::to_string)
                    .collect();
                lines.sort();
                lines
            })
            .await
            .expect("join");
            seen.push(stats);
        }
        assert!(!seen[0].is_empty(), "envoy: {:?}", seen[0]);
        assert_eq!(
            seen[1], seen[0],
            "{plugin}, {workers} workers: wasmesh (left) vs Envoy (right)"
        );
    }
}
