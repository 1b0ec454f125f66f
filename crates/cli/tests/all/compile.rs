//! Wasm modules compiled in a child process of the binary (`wasmesh compile-wasm`), as
//! `wasmesh proxy` and `wasmesh up` do.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

fn compile_wasm(module: &[u8]) -> std::process::Output {
    compile_wasm_with(module, &[])
}

fn compile_wasm_with(module: &[u8], extra: &[&str]) -> std::process::Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_wasmesh"))
        .args(["compile-wasm", "--max-stack-bytes", "524288"])
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("wasmesh runs");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(module).expect("write module");
    drop(stdin);
    child.wait_with_output().expect("wait")
}

#[test]
fn compile_wasm_writes_an_artifact_or_exits_2_with_the_reason() {
    let ok = compile_wasm(&test_plugins::bytes(test_plugins::HEADERS));
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(ok.stdout.starts_with(b"\x7fELF"), "a wasmtime artifact");
    let bad = compile_wasm(b"\0asm\x01\0\0\0\x63junk");
    assert_eq!(bad.status.code(), Some(2));
    assert!(bad.stdout.is_empty());
    let reason = String::from_utf8_lossy(&bad.stderr);
    assert!(!reason.trim().is_empty());
}

#[test]
fn the_compilers_heap_is_capped() {
    let module = test_plugins::bytes(test_plugins::HEADERS);
    let roomy = compile_wasm_with(&module, &["--max-memory-bytes", "2147483648"]);
    assert!(
        roomy.status.success(),
        "{}",
        String::from_utf8_lossy(&roomy.stderr)
    );
    // 8 MiB of heap is not enough to compile the plugin: the process fails, with no artifact.
    let tight = compile_wasm_with(&module, &["--max-memory-bytes", "8388608"]);
    assert!(!tight.status.success());
    assert!(tight.stdout.is_empty());
    // and a runtime using such a compiler fails the module instead of falling back
    let rt = wasm_host::Runtime::new(wasm_host::RuntimeConfig {
        pooling: false,
        compiler: wasm_host::Compiler::Command {
            program: env!("CARGO_BIN_EXE_wasmesh").into(),
            args: vec![
                "compile-wasm".into(),
                "--max-memory-bytes".into(),
                "8388608".into(),
            ],
        },
        ..Default::default()
    })
    .expect("runtime");
    let err = rt.compile(&module).err().expect("over the cap");
    assert!(matches!(err, wasm_host::Error::Compiler(_)), "{err:?}");
}

#[test]
fn a_runtime_using_the_binary_as_compiler_runs_plugins_compiled_there() {
    let rt = wasm_host::Runtime::new(wasm_host::RuntimeConfig {
        pooling: false,
        compiler: wasm_host::Compiler::Command {
            program: env!("CARGO_BIN_EXE_wasmesh").into(),
            args: vec!["compile-wasm".into()],
        },
        ..Default::default()
    })
    .expect("runtime");
    let m = rt
        .compile(&test_plugins::bytes(test_plugins::HEADERS))
        .expect("compiled by the child");
    assert_eq!(m.origin(), wasm_host::Origin::CompilerProcess);
    assert_eq!(m.abi(), wasm_host::AbiVersion::V0_2_1);
    let err = rt
        .compile(b"\0asm\x01\0\0\0\x63junk")
        .err()
        .expect("invalid");
    assert!(matches!(err, wasm_host::Error::InvalidModule(_)), "{err:?}");
}

/// One listener with one Wasm filter (`module`, with the `headers` plugin's configuration
/// adding `x-compiled: child`) in front of `upstream`.
pub(crate) fn bootstrap(
    listen: u16,
    admin: u16,
    upstream: SocketAddr,
    module: &std::path::Path,
) -> String {
    format!(
        r#"
admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}}}
static_resources:
  listeners:
  - name: main
    address: {{socket_address: {{address: 127.0.0.1, port_value: {listen}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: main
          route_config:
            virtual_hosts: [{{name: all, domains: ["*"], routes: [{{match: {{prefix: "/"}}, route: {{cluster: echo}}}}]}}]
          http_filters:
          - name: envoy.filters.http.wasm
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                name: headers
                configuration:
                  "@type": type.googleapis.com/google.protobuf.StringValue
                  value: '{{"response_add":{{"x-compiled":"child"}}}}'
                vm_config:
                  runtime: envoy.wasm.runtime.v8
                  code: {{local: {{filename: "{module}"}}}}
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: echo
    connect_timeout: 1s
    load_assignment:
      cluster_name: echo
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}}}}}]}}]
"#,
        module = module.display(),
        port = upstream.port(),
    )
}

/// A GET of `/` over a fresh connection; the raw response.
pub(crate) fn get(addr: SocketAddr) -> String {
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .expect("write");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

/// Runs `wasmesh proxy` (with `args` before `-c`, and `RUST_LOG` set to `rust_log` or
/// removed) on [`bootstrap`] with `module` in front of an echo upstream, sends one GET once it
/// is ready, stops it, and returns the raw response and what it logged.
pub(crate) async fn one_request(
    module: &std::path::Path,
    args: &[&str],
    rust_log: Option<&str>,
) -> (String, String) {
    let echo = test_support::echo::start("echo").await.expect("echo");
    let dir = tempfile::tempdir().expect("tempdir");
    let ports = test_support::proxy_peers::free_ports(2).expect("ports");
    let cfg = dir.path().join("bootstrap.yaml");
    std::fs::write(&cfg, bootstrap(ports[0], ports[1], echo.addr, module)).expect("write");
    let log = dir.path().join("proxy.log");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wasmesh"));
    cmd.args(["proxy", "--concurrency", "1"])
        .args(args)
        .arg("-c")
        .arg(&cfg);
    match rust_log {
        Some(l) => cmd.env("RUST_LOG", l),
        None => cmd.env_remove("RUST_LOG"),
    };
    let mut proxy = cmd
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
    (resp, log)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wasmesh_proxy_compiles_plugins_in_a_child_process() {
    let module = test_plugins::path(test_plugins::HEADERS);
    let (resp, log) = one_request(&module, &[], Some("info")).await;
    assert!(
        resp.to_ascii_lowercase().contains("x-compiled: child"),
        "{resp}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("compiled Wasm module") && l.contains("compiler process")),
        "{log}"
    );

    // a corrupt module: the proxy does not start, and says which filter and why
    let dir = tempfile::tempdir().expect("tempdir");
    let ports = test_support::proxy_peers::free_ports(2).expect("ports");
    let cfg = dir.path().join("bootstrap.yaml");
    let bad = dir.path().join("bad.wasm");
    std::fs::write(&bad, b"\0asm\x01\0\0\0\x63junk").expect("write");
    let upstream: SocketAddr = ([127, 0, 0, 1], ports[1]).into();
    std::fs::write(&cfg, bootstrap(ports[0], ports[1], upstream, &bad)).expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_wasmesh"))
        .args(["proxy", "--concurrency", "1", "-c"])
        .arg(&cfg)
        .stdin(Stdio::null())
        .output()
        .expect("proxy runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("not valid WebAssembly"), "{err}");
    assert!(err.contains("http_filters"), "{err}");
}
