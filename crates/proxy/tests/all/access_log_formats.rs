//! Substitution formats of file access logs, against real Envoy 1.40: a plugin's local reply
//! with empty details prints `details=` / `""` (unset prints `-` / `null`), a header present
//! with an empty value prints empty, `%RESPONSE_FLAGS_LONG%`,
//! `%UPSTREAM_TRANSPORT_FAILURE_REASON%`, `%UPSTREAM_REQUEST_ATTEMPT_COUNT%`, and `json_format`
//! literals (integers, bools, null), nested structs and lists.

use std::path::Path;
use std::time::Duration;

use test_support::proxy_peers::free_port;

use crate::support::*;

const TEXT: &str = "[%REQ(:METHOD)% %REQ(:PATH)%] code=%RESPONSE_CODE% flags=%RESPONSE_FLAGS% \
long=%RESPONSE_FLAGS_LONG% details=%RESPONSE_CODE_DETAILS% utfr=%UPSTREAM_TRANSPORT_FAILURE_REASON% \
att=%UPSTREAM_REQUEST_ATTEMPT_COUNT% empty=%REQ(X-EMPTY)% missing=%REQ(X-MISSING)% \
route=%ROUTE_NAME% vc=%VIRTUAL_CLUSTER_NAME% upcl=%UPSTREAM_CLUSTER_RAW%\n";

/// The plugin `auth` (key `k`) in front of cluster `up` at `up` (a closed port, so allowed
/// requests fail to connect), logging in text and JSON to `log` and `log.json`.
fn bootstrap(admin: u16, listen: u16, up: u16, log: &Path) -> String {
    let yaml = one_plugin(
        (admin, listen, up),
        test_plugins::AUTH,
        "au",
        r#"{"value": "k"}"#,
        "",
    );
    let loggers = format!(
        r#"          stat_prefix: main
          access_log:
          - name: envoy.access_loggers.file
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: "{log}"
              log_format:
                text_format_source: {{inline_string: "{TEXT}"}}
          - name: envoy.access_loggers.file
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: "{log}.json"
              log_format:
                json_format:
                  code: "%RESPONSE_CODE%"
                  details: "%RESPONSE_CODE_DETAILS%"
                  long: "%RESPONSE_FLAGS_LONG%"
                  utfr: "%UPSTREAM_TRANSPORT_FAILURE_REASON%"
                  att: "%UPSTREAM_REQUEST_ATTEMPT_COUNT%"
                  empty: "%REQ(X-EMPTY)%"
                  missing: "%REQ(X-MISSING)%"
                  n: 3
                  neg: -2
                  yes: true
                  nothing: null
                  list: ["%RESPONSE_CODE%", 1, "x", [false]]
                  nested: {{code: "%RESPONSE_CODE%", line: "a %PROTOCOL% b", deep: {{rx: "%BYTES_RECEIVED%", e: {{}}}}}}
"#,
        log = log.display(),
        TEXT = TEXT.replace('\n', "\\n"),
    );
    yaml.replacen("          stat_prefix: main\n", &loggers, 1)
}

/// The lines of `path` once there are `n`, ports masked if `mask`.
async fn lines(path: &Path, n: usize, mask: bool) -> Vec<String> {
    let read = || {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let complete = eventually(Duration::from_secs(10), || async { read().len() >= n }).await;
    assert!(complete, "{}: {:?}", path.display(), read());
    let port = regex::Regex::new(r":\d{2,5}\b").unwrap_or_else(|e| panic!("{e}"));
    read()
        .iter()
        .map(|l| match mask {
            true => port.replace_all(l, ":P").into_owned(),
            false => l.clone(),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn formats_print_like_envoy() -> anyhow::Result<()> {
    let dead = free_port()?;
    let dir = tempfile::tempdir()?;
    let (our_log, envoy_log) = (dir.path().join("ours.log"), dir.path().join("envoy.log"));
    let (ours, ours_addr, _envoy, envoy_addr) = start_both(|admin, listen| {
        let log = if listen == 0 { &our_log } else { &envoy_log };
        bootstrap(admin, listen, dead, log)
    })
    .await?;
    let _keep = ours;
    for addr in [envoy_addr, ours_addr] {
        // Denied by the plugin: a local reply with empty details.
        let mut denied = get("al.example", "/denied");
        denied.headers_mut().insert("x-empty", "".parse()?);
        assert_eq!(send(addr, denied).await?.status, 401);
        // Allowed: the upstream refuses the connection (UF, a transport failure reason).
        let mut allowed = get("al.example", "/allowed");
        allowed.headers_mut().insert("x-api-key", "k".parse()?);
        assert_eq!(send(addr, allowed).await?.status, 503);
    }
    let (theirs, mine) = (
        lines(&envoy_log, 2, true).await,
        lines(&our_log, 2, true).await,
    );
    assert!(theirs[0].contains(" details= "), "{theirs:?}");
    assert!(theirs[0].contains(" empty= missing=- "), "{theirs:?}");
    assert!(
        theirs[1].contains(" long=UpstreamConnectionFailure "),
        "{theirs:?}"
    );
    assert_eq!(mine, theirs, "text: wasmesh (left) vs Envoy (right)");

    let json = |p: &Path| {
        let p = p.with_extension("log.json");
        async move {
            lines(&p, 2, false)
                .await
                .iter()
                .map(|l| serde_json::from_str(l).unwrap_or(serde_json::Value::Null))
                .collect::<Vec<serde_json::Value>>()
        }
    };
    let (theirs, mine) = (json(&envoy_log).await, json(&our_log).await);
    assert_eq!(theirs[0]["details"], "", "{theirs:?}");
    assert_eq!(theirs[0]["missing"], serde_json::Value::Null, "{theirs:?}");
    assert_eq!(theirs[0]["nested"]["code"], 401, "{theirs:?}");
    assert_eq!(mine, theirs, "json: wasmesh (left) vs Envoy (right)");
    Ok(())
}
