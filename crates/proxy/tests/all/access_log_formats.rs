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
    let loggers = file_loggers(
        log,
        TEXT,
        r#"                  code: "%RESPONSE_CODE%"
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
                  nested: {code: "%RESPONSE_CODE%", line: "a %PROTOCOL% b", deep: {rx: "%BYTES_RECEIVED%", e: {}}}
"#,
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

/// The commands added for Envoy parity, in text (one line per request; times, ids and ports
/// differ per run and are masked after their shape is checked).
const MORE: &str = "%REQ(:METHOD)% %REQ(:PATH)% %PROTOCOL% code=%RESPONSE_CODE% \
rqd=%REQUEST_DURATION% rqtx=%REQUEST_TX_DURATION% rsd=%RESPONSE_DURATION% \
rstx=%RESPONSE_TX_DURATION% ddr=%DOWNSTREAM_DIRECT_REMOTE_ADDRESS% \
ddrn=%DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT% ura=%UPSTREAM_REMOTE_ADDRESS% \
uran=%UPSTREAM_REMOTE_ADDRESS_WITHOUT_PORT% urp=%UPSTREAM_REMOTE_PORT% dlp=%DOWNSTREAM_LOCAL_PORT% \
stl=%START_TIME_LOCAL% emit=%EMIT_TIME% uid=%UNIQUE_ID% sid=%STREAM_ID% env=%ENVIRONMENT(HOME):3% \
noenv=%ENVIRONMENT(WASMESH_SURELY_UNSET)% grpc=%GRPC_STATUS% grpcn=%GRPC_STATUS_NUMBER% \
grpcs=%GRPC_STATUS(SNAKE_STRING)% tr=%TRAILER(x-up-trailer)% rtr=%RESPONSE_TRAILER(grpc-status)% \
dm=%DYNAMIC_METADATA(a:b)% fs=%FILTER_STATE(wasm.k)% fsp=%FILTER_STATE(wasm.k:PLAIN)% \
fsn=%FILTER_STATE(wasm.none)% rqhb=%REQUEST_HEADERS_BYTES% rshb=%RESPONSE_HEADERS_BYTES% \
rstb=%RESPONSE_TRAILERS_BYTES% ust=%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \
tls=%DOWNSTREAM_TLS_VERSION% pct=100%%\n";

/// The connection manager's `stat_prefix: main` line followed by two file access logs of the
/// same stream: `text` to `log`, and the `json_format` fields `json` (YAML lines, indented
/// 18 spaces) to `log.json`.
fn file_loggers(log: &Path, text: &str, json: &str) -> String {
    format!(
        r#"          stat_prefix: main
          access_log:
          - name: envoy.access_loggers.file
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: "{log}"
              log_format:
                text_format_source: {{inline_string: "{text}"}}
          - name: envoy.access_loggers.file
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: "{log}.json"
              log_format:
                json_format:
{json}"#,
        log = log.display(),
        text = text.replace('\n', "\\n"),
    )
}

/// `props_probe` (sets filter state `wasm.k` to `v`) in front of the h2 echo cluster `up`,
/// logging [`MORE`] to `log` and the same commands as JSON to `log.json`.
fn more_bootstrap(admin: u16, listen: u16, up: u16, log: &Path) -> String {
    let yaml = one_plugin(
        (admin, listen, up),
        test_plugins::PROPS_PROBE,
        "probe",
        r#"{"paths": [], "set": {"k": "v"}}"#,
        "",
    )
    .replacen(
        &cluster_yaml("up", up, false),
        &cluster_yaml("up", up, true),
        1,
    );
    let json: String = MORE
        .trim_end()
        .split(' ')
        .filter_map(|kv| kv.split_once('='))
        .filter(|(k, _)| *k != "pct")
        .map(|(k, v)| format!("                  {k}: \"{v}\"\n"))
        .collect();
    let loggers = file_loggers(
        log,
        MORE,
        &format!("                  float: 2.0\n                  half: 2.5\n{json}"),
    );
    yaml.replacen("          stat_prefix: main\n", &loggers, 1)
}

/// A unary gRPC request (`x-grpc-fail: N` makes the echo answer trailers-only with status N).
fn grpc(fail: Option<&str>) -> anyhow::Result<http::Request<http_body_util::Full<bytes::Bytes>>> {
    let mut b = http::Request::builder()
        .method("POST")
        .uri("http://grpc.example/hello.HelloService/SayHello")
        .version(http::Version::HTTP_2)
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    if let Some(f) = fail {
        b = b.header("x-grpc-fail", f);
    }
    Ok(b.body(http_body_util::Full::new(bytes::Bytes::from_static(
        b"\0\0\0\0\x02hi",
    )))?)
}

/// Masks what differs per run in a [`MORE`] line, after checking its shape.
fn mask_more(line: &str) -> String {
    let re = |r: &str| regex::Regex::new(r).unwrap_or_else(|e| panic!("{e}"));
    for (field, shape) in [
        ("rqd", r"^(\d+|-)$"),
        ("rqtx", r"^(\d+|-)$"),
        ("rsd", r"^(\d+|-)$"),
        ("rstx", r"^(\d+|-)$"),
        ("stl", r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d{4}$"),
        ("emit", r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$"),
        (
            "uid",
            r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$",
        ),
        (
            "sid",
            r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$",
        ),
    ] {
        let v = line
            .split(' ')
            .find_map(|kv| kv.strip_prefix(&format!("{field}=")))
            .unwrap_or_else(|| panic!("no {field} in {line}"));
        assert!(re(shape).is_match(v), "{field}={v} in {line}");
    }
    // (the response headers' size less its `x-envoy-upstream-service-time`, whose digits vary)
    let field = |f: &str| {
        line.split(' ')
            .find_map(|kv| kv.strip_prefix(&format!("{f}=")))
            .unwrap_or_default()
            .to_string()
    };
    let (ust, rshb) = (field("ust"), field("rshb"));
    let fixed = rshb.parse::<usize>().unwrap_or(0) - ust.len();
    let line = line.replacen(&format!(" rshb={rshb} "), &format!(" rshb={fixed}+ust "), 1);
    let line = re(r"\bust=\d+").replace_all(&line, "ust=N");
    let line = re(r"\b(rqd|rqtx|rsd|rstx)=\d+").replace_all(&line, "$1=N");
    let line = re(r"\b(stl|emit|uid|sid)=\S+").replace_all(&line, "$1=X");
    let line = re(r"\b(urp|dlp)=\d+").replace_all(&line, "$1=P");
    re(r":\d{2,5}\b").replace_all(&line, ":P").into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_commands_print_like_envoy() -> anyhow::Result<()> {
    let up = test_support::proxy_peers::start_upstream("up").await?;
    let dir = tempfile::tempdir()?;
    let (our_log, envoy_log) = (dir.path().join("ours.log"), dir.path().join("envoy.log"));
    let (ours, ours_addr, _envoy, envoy_addr) = start_both(|admin, listen| {
        let log = if listen == 0 { &our_log } else { &envoy_log };
        more_bootstrap(admin, listen, up.addr.port(), log)
    })
    .await?;
    let _keep = ours;
    for addr in [envoy_addr, ours_addr] {
        // h2 upstream trailers, logged though an HTTP/1.1 client does not get them
        assert_eq!(
            send(addr, get("al.example", "/trailers")).await?.status,
            200
        );
        let mut post = get("al.example", "/post?q=1");
        *post.method_mut() = http::Method::POST;
        *post.body_mut() = http_body_util::Full::new(bytes::Bytes::from_static(b"hello"));
        assert_eq!(send(addr, post).await?.status, 200);
        assert_eq!(send_h2(addr, grpc(None)?).await?.status, 200);
        assert_eq!(send_h2(addr, grpc(Some("14"))?).await?.status, 200);
        assert_eq!(send_h2(addr, grpc(Some("42"))?).await?.status, 200);
        assert_eq!(
            send(addr, get("al.example", "/status/503")).await?.status,
            503
        );
    }
    let (theirs, mine) = (
        lines(&envoy_log, 6, false).await,
        lines(&our_log, 6, false).await,
    );
    let (theirs, mine): (Vec<String>, Vec<String>) = (
        theirs.iter().map(|l| mask_more(l)).collect(),
        mine.iter().map(|l| mask_more(l)).collect(),
    );
    assert!(theirs[0].contains(" tr=yes "), "{theirs:?}");
    assert!(
        theirs[2].contains(" grpc=OK grpcn=0 grpcs=OK "),
        "{theirs:?}"
    );
    assert!(theirs[3].contains(" grpc=Unavailable "), "{theirs:?}");
    assert!(theirs[1].contains(" fsp=v "), "{theirs:?}");
    assert!(theirs[1].ends_with(" pct=100%"), "{theirs:?}");
    assert_eq!(mine, theirs, "text: wasmesh (left) vs Envoy (right)");

    let json = |p: &Path| {
        let p = p.with_extension("log.json");
        async move {
            lines(&p, 6, false)
                .await
                .iter()
                .map(|l| serde_json::from_str(l).unwrap_or(serde_json::Value::Null))
                .collect::<Vec<serde_json::Value>>()
        }
    };
    let mask = |mut v: serde_json::Value| {
        if let (Some(b), Some(u)) = (v["rshb"].as_u64(), v["ust"].as_str()) {
            v["rshb"] = (b - u.len() as u64).into();
            v["ust"] = "N".into();
        }
        for k in ["rqd", "rqtx", "rsd", "rstx", "urp", "dlp"] {
            if v[k].is_number() {
                v[k] = "N".into();
            }
        }
        for k in ["stl", "emit", "uid", "sid", "ddr", "ura"] {
            if v[k].is_string() {
                v[k] = "X".into();
            }
        }
        v
    };
    let (mut theirs, mut mine) = (json(&envoy_log).await, json(&our_log).await);
    assert_eq!(theirs[2]["grpcn"], 0, "{theirs:?}");
    // Envoy's YAML loader turns float scalars into strings before the struct is built
    // (`2.0` prints "2.0"); ours keeps numbers: a bootstrap loader difference, not compared.
    assert_eq!(theirs[0]["float"], "2.0", "{theirs:?}");
    assert_eq!(theirs[0]["half"], "2.5", "{theirs:?}");
    for v in theirs.iter_mut().chain(mine.iter_mut()) {
        if let Some(o) = v.as_object_mut() {
            o.remove("float");
            o.remove("half");
        }
    }
    assert_eq!(theirs[1]["noenv"], "-", "{theirs:?}");
    let (theirs, mine): (Vec<_>, Vec<_>) = (
        theirs.into_iter().map(mask).collect(),
        mine.into_iter().map(mask).collect(),
    );
    assert_eq!(mine, theirs, "json: wasmesh (left) vs Envoy (right)");
    Ok(())
}
