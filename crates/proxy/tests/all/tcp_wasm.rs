//! A network Wasm filter in front of the TCP proxy, against real Envoy 1.40: the plugin may
//! choose the TCP proxy's cluster with the `set_envoy_filter_state` foreign function
//! (`envoy.tcp_proxy.cluster`, as the proxy-wasm Rust SDK's TCP routing example does); a key
//! with no object factory is NotFound and changes nothing. The TCP proxy's `access_log` writes
//! one line per connection.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

use test_support::proxy_peers::{free_ports, start_envoy, start_upstream};

use crate::support::*;

fn bootstrap(admin: u16, listen: u16, a: u16, b: u16, config: &str, log: &str) -> String {
    format!(
        r#"
admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}
static_resources:
  listeners:
  - name: main
    address: {{socket_address: {{address: 127.0.0.1, port_value: {listen}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.wasm
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.wasm.v3.Wasm
          config:
            name: route
            configuration:
              "@type": type.googleapis.com/google.protobuf.StringValue
              value: '{config}'
            vm_config:
              runtime: envoy.wasm.runtime.v8
              code: {{local: {{filename: "{path}"}}}}
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: tcp
          cluster: a
          access_log:
          - name: envoy.access_loggers.file
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: {log}
              log_format:
                text_format: "%UPSTREAM_CLUSTER% %BYTES_RECEIVED% %BYTES_SENT% %RESPONSE_CODE% %PROTOCOL%\n"
  clusters:
{a}{b}"#,
        path = test_plugins::path(test_plugins::TCP_COUNTER).display(),
        a = cluster_yaml("a", a, false),
        b = cluster_yaml("b", b, false),
    )
}

/// Which upstream answered an HTTP request sent through the TCP proxy.
fn upstream_of(addr: SocketAddr) -> anyhow::Result<String> {
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")?;
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let name = out
        .split("\"upstream\":\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap_or("<none>");
    Ok(name.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_network_plugin_routes_the_tcp_proxy_like_envoy() -> anyhow::Result<()> {
    let a = start_upstream("a").await?;
    let b = start_upstream("b").await?;
    let (pa, pb) = (a.addr.port(), b.addr.port());
    for (config, want) in [
        (r#"{"filter_state": ["envoy.tcp_proxy.cluster", "b"]}"#, "b"),
        (r#"{"filter_state": ["envoy.no_such_object", "b"]}"#, "a"),
        ("", "a"),
    ] {
        let ports = free_ports(2)?;
        let dir = tempfile::tempdir()?;
        let (elog, olog) = (dir.path().join("envoy.log"), dir.path().join("ours.log"));
        let envoy_yaml = bootstrap(
            ports[1],
            ports[0],
            pa,
            pb,
            config,
            &elog.display().to_string(),
        );
        let admin: SocketAddr = ([127, 0, 0, 1], ports[1]).into();
        let _envoy = tokio::task::spawn_blocking(move || start_envoy(&envoy_yaml, admin)).await??;
        let ours = start_proxy(&bootstrap(
            0,
            0,
            pa,
            pb,
            config,
            &olog.display().to_string(),
        ))?;
        let envoy_addr: SocketAddr = ([127, 0, 0, 1], ports[0]).into();
        let ours_addr = ours.listener_addr("main").expect("listener");
        let e = tokio::task::spawn_blocking(move || upstream_of(envoy_addr)).await??;
        let o = tokio::task::spawn_blocking(move || upstream_of(ours_addr)).await??;
        assert_eq!(e, want, "envoy with {config:?}");
        assert_eq!(o, e, "wasmesh (left) vs Envoy (right) with {config:?}");
        let read = |p: std::path::PathBuf| async move {
            for _ in 0..50 {
                let t = std::fs::read_to_string(&p).unwrap_or_default();
                if !t.is_empty() {
                    return t;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            String::new()
        };
        let (el, ol) = (read(elog).await, read(olog).await);
        assert!(el.starts_with(want), "envoy's access log: {el:?}");
        assert_eq!(
            ol, el,
            "access log: wasmesh (left) vs Envoy (right) with {config:?}"
        );
    }
    Ok(())
}

/// Which side ended a proxied TCP connection, as a network plugin hears it
/// (`on_downstream_connection_close`): when the upstream ends last, Envoy closes the client's
/// side itself (local); when the client's FIN comes last, the client closed it (remote). The
/// `tcp_counter` plugin counts each kind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downstream_close_kinds_match_envoy() -> anyhow::Result<()> {
    let a = start_upstream("a").await?;
    let pa = a.addr.port();
    let ports = free_ports(2)?;
    let dir = tempfile::tempdir()?;
    let log = |n: &str| dir.path().join(n).display().to_string();
    let envoy_yaml = bootstrap(ports[1], ports[0], pa, pa, "", &log("envoy.log"));
    let admin: SocketAddr = ([127, 0, 0, 1], ports[1]).into();
    let envoy = tokio::task::spawn_blocking(move || start_envoy(&envoy_yaml, admin)).await??;
    let ours = start_proxy(&bootstrap(0, 0, pa, pa, "", &log("ours.log")))?;
    let envoy_addr: SocketAddr = ([127, 0, 0, 1], ports[0]).into();
    let ours_addr = ours.listener_addr("main").expect("listener");
    // The client half-closes right after its request (the upstream ends last), then a client
    // that reads the whole answer first (its FIN comes last).
    let exchange = |addr: SocketAddr, half_close: bool| -> anyhow::Result<()> {
        let mut s = std::net::TcpStream::connect(addr)?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")?;
        if half_close {
            s.shutdown(std::net::Shutdown::Write)?;
        }
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        Ok(())
    };
    let mut seen = Vec::new();
    for (addr, admin) in [
        (envoy_addr, envoy.admin),
        (ours_addr, ours.admin_addr().expect("admin")),
    ] {
        for half_close in [true, false] {
            tokio::task::spawn_blocking(move || exchange(addr, half_close)).await??;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let stats = send(admin, get("admin", "/stats")).await?.text();
        let closes: Vec<String> = stats
            .lines()
            .filter(|l| l.contains("tcp_counter_closed_"))
            .map(str::to_string)
            .collect();
        // The tcp_proxy's own stats (`tcp.<stat_prefix>.*`), by name.
        let mut tcp: Vec<String> = stats
            .lines()
            .filter(|l| l.starts_with("tcp.tcp."))
            .filter_map(|l| l.split(": ").next().map(str::to_string))
            .collect();
        tcp.sort();
        seen.push((closes, tcp));
    }
    assert_eq!(seen[1], seen[0], "wasmesh (left) vs Envoy (right)");
    assert!(
        seen[0]
            .0
            .iter()
            .any(|l| l.ends_with("tcp_counter_closed_local: 1")),
        "{:?}",
        seen[0]
    );
    assert!(
        seen[0].1.contains(&"tcp.tcp.idle_timeout".to_string()),
        "{:?}",
        seen[0].1
    );
    Ok(())
}

/// A TCP proxy whose upstream refuses the connection: Envoy logs `UF,URX` with the transport
/// failure reason, closes the client's connection itself, and network plugins hear that
/// local close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_upstream_is_logged_and_closed_like_envoy() -> anyhow::Result<()> {
    let refused = free_ports(1)?[0];
    let ports = free_ports(2)?;
    let dir = tempfile::tempdir()?;
    let log = |n: &str| dir.path().join(n).display().to_string();
    let with_flags = |yaml: String| {
        yaml.replace(
            "%UPSTREAM_CLUSTER% %BYTES_RECEIVED% %BYTES_SENT% %RESPONSE_CODE% %PROTOCOL%",
            "%UPSTREAM_CLUSTER% %RESPONSE_FLAGS% %UPSTREAM_TRANSPORT_FAILURE_REASON%",
        )
    };
    let envoy_yaml = with_flags(bootstrap(
        ports[1],
        ports[0],
        refused,
        refused,
        "",
        &log("envoy.log"),
    ));
    let admin: SocketAddr = ([127, 0, 0, 1], ports[1]).into();
    let envoy = tokio::task::spawn_blocking(move || start_envoy(&envoy_yaml, admin)).await??;
    let ours = start_proxy(&with_flags(bootstrap(
        0,
        0,
        refused,
        refused,
        "",
        &log("ours.log"),
    )))?;
    let envoy_addr: SocketAddr = ([127, 0, 0, 1], ports[0]).into();
    let ours_addr = ours.listener_addr("main").expect("listener");
    let mut seen = Vec::new();
    for (addr, admin, file) in [
        (envoy_addr, envoy.admin, "envoy.log"),
        (ours_addr, ours.admin_addr().expect("admin"), "ours.log"),
    ] {
        tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            let mut s = std::net::TcpStream::connect(addr)?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            let _ = s.write_all(b"hello");
            let mut out = Vec::new();
            let _ = s.read_to_end(&mut out);
            Ok(())
        })
        .await??;
        // (Envoy writes its access log on a timer)
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let closes: Vec<String> = send(admin, get("admin", "/stats"))
            .await?
            .text()
            .lines()
            .filter(|l| l.contains("tcp_counter_closed_"))
            .map(str::to_string)
            .collect();
        let line = std::fs::read_to_string(log(file)).unwrap_or_default();
        seen.push((line, closes));
    }
    assert_eq!(seen[1], seen[0], "wasmesh (left) vs Envoy (right)");
    assert_eq!(
        seen[0].0, "a UF,URX delayed_connect_error:_Connection_refused\n",
        "envoy"
    );
    assert!(
        seen[0]
            .1
            .iter()
            .any(|l| l.ends_with("tcp_counter_closed_local: 1")),
        "{:?}",
        seen[0].1
    );
    Ok(())
}
