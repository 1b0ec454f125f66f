//! `wasmesh proxy -l LEVEL` sets the log level as Envoy's `-l` does, without `RUST_LOG`:
//! plugins ask for it (`proxy_get_log_level`) and the SDKs drop lines below it, so
//! `-l debug` shows a plugin's debug lines and `-l warning` hides its info lines.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::compile::{bootstrap, get};

/// The `logging` plugin's `request headers: /` lines at each level, with `-l level`.
async fn plugin_lines(level: &str) -> Vec<String> {
    let echo = test_support::echo::start("echo").await.expect("echo");
    let dir = tempfile::tempdir().expect("tempdir");
    let ports = test_support::proxy_peers::free_ports(2).expect("ports");
    let cfg = dir.path().join("bootstrap.yaml");
    let module = test_plugins::path(test_plugins::LOGGING);
    std::fs::write(&cfg, bootstrap(ports[0], ports[1], echo.addr, &module)).expect("write");
    let log = dir.path().join("proxy.log");
    let mut proxy = Command::new(env!("CARGO_BIN_EXE_wasmesh"))
        .args(["proxy", "--concurrency", "1", "-l", level, "-c"])
        .arg(&cfg)
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("proxy runs");
    let admin: SocketAddr = ([127, 0, 0, 1], ports[1]).into();
    let ready = tokio::task::spawn_blocking(move || {
        test_support::proxy_peers::wait_ready(admin, Duration::from_secs(30))
    })
    .await
    .expect("join");
    let listen: SocketAddr = ([127, 0, 0, 1], ports[0]).into();
    let resp = tokio::task::spawn_blocking(move || get(listen))
        .await
        .expect("join");
    let _ = proxy.kill();
    let _ = proxy.wait();
    let log = std::fs::read_to_string(&log).unwrap_or_default();
    ready.unwrap_or_else(|e| panic!("proxy not ready: {e}\n{log}"));
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}\n{log}");
    let levels = ["TRACE", "DEBUG", " INFO", " WARN", "ERROR"];
    log.lines()
        .filter(|l| l.contains("request headers: /") && !l.contains("stdout:"))
        .filter_map(|l| levels.iter().find(|lv| l.contains(*lv)))
        .map(|lv| lv.trim().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_level_flag_sets_what_plugins_log() {
    // critical is logged as an error line
    assert_eq!(plugin_lines("warning").await, ["WARN", "ERROR", "ERROR"]);
    assert_eq!(
        plugin_lines("debug").await,
        ["DEBUG", "INFO", "WARN", "ERROR", "ERROR"]
    );
}
