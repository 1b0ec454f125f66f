//! The Kubernetes source (feature `kubernetes`) against a fake API server speaking the real
//! list/watch protocol: ADDED, MODIFIED (good and bad) and DELETED objects reach ADS clients
//! as they do from files; a relist after an expired watch drops what was deleted meanwhile; a
//! type that cannot be listed is reported and does not block the others.

mod fake_apiserver;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use serde_json::{Value, json};
use wasmesh_control_plane::proxy::node;
use wasmesh_control_plane::source::kubernetes::{KubernetesSettings, KubernetesSource};
use wasmesh_control_plane::{ControlPlane, Settings, SourceSettings};
use wasmesh_xds::client::AdsClient;
use wasmesh_xds::type_url;

use self::fake_apiserver::FakeApiServer;
use crate::helpers::{eventually, gateway_routing, wasm_plugin};

const T: Duration = Duration::from_secs(10);

fn plugin(name: &str, extra: &str) -> Value {
    serde_saphyr::from_str(&wasm_plugin("app", name, "file:///p.wasm", extra)).expect("YAML")
}

fn pull_secret(name: &str, type_: &str) -> Value {
    // base64 of {"auths":{"r.example":{"auth":"dTpw"}}}
    json!({"apiVersion": "v1", "kind": "Secret",
           "metadata": {"name": name, "namespace": "app"},
           "type": type_,
           "data": {".dockerconfigjson": "eyJhdXRocyI6eyJyLmV4YW1wbGUiOnsiYXV0aCI6ImRUcHcifX19"}})
}

/// Settings for the fake server, through a kubeconfig file as a user would pass it.
fn settings(fake: &FakeApiServer, dir: &std::path::Path) -> KubernetesSettings {
    let path: PathBuf = dir.join("kubeconfig");
    std::fs::write(&path, fake.kubeconfig()).expect("write kubeconfig");
    KubernetesSettings {
        kubeconfig: Some(path),
        ..Default::default()
    }
}

async fn next(s: &mut wasmesh_xds::client::Subscription) -> wasmesh_xds::client::Update {
    tokio::time::timeout(T, s.next())
        .await
        .expect("xDS update")
        .expect("open")
}

fn resource_json(any: &envoy_types::pb::google::protobuf::Any) -> Value {
    wasmesh_xds::descriptors::any_to_json(any).expect("resource decodes")
}

fn plugin_config(u: &wasmesh_xds::client::Update) -> Value {
    resource_json(&u.resources[0])["typedConfig"]["config"].clone()
}

async fn http_get(addr: std::net::SocketAddr, path: &str) -> Value {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).await.expect("read");
    serde_json::from_str(out.split_once("\r\n\r\n").expect("body").1).expect("JSON")
}

#[tokio::test]
async fn kubernetes_objects_reach_proxies_and_bad_edits_keep_the_last_valid_version() {
    let fake = FakeApiServer::start().await;
    fake.apply_yaml(&gateway_routing(18081, 9));
    fake.apply(pull_secret("pull", "kubernetes.io/dockerconfigjson"));
    fake.apply(pull_secret("tls", "kubernetes.io/tls"));
    fake.apply(plugin("hdr", "imagePullSecret: pull\npluginConfig: {v: 1}"));
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut s = Settings::with_source(
        SourceSettings::Kubernetes(settings(&fake, tmp.path())),
        "127.0.0.1:0".parse().expect("addr"),
    );
    s.status_addr = Some("127.0.0.1:0".parse().expect("addr"));
    let cp = ControlPlane::start(s).await.expect("control plane starts");

    // Start-up waited for the first complete list: everything is there at once.
    let config = cp.source.config();
    assert_eq!(config.plugins.len(), 1);
    assert_eq!(config.gateways.len(), 1);
    assert_eq!(config.virtual_services.len(), 1);
    assert_eq!(config.service_entries.len(), 1);
    assert_eq!(
        config.secrets.keys().cloned().collect::<Vec<_>>(),
        [("app".to_string(), "pull".to_string())],
        "only image pull secrets are read"
    );
    assert!(
        config.plugins[0].meta.created > 0,
        "creationTimestamp honoured"
    );
    // The real protocol: a list, then a watch from its resourceVersion; Secrets filtered by the
    // server.
    let reqs = fake.requests();
    assert!(
        reqs.iter().any(
            |r| r.starts_with("/apis/extensions.istio.io/v1alpha1/wasmplugins?")
                && !r.contains("watch=")
        ),
        "{reqs:?}"
    );
    assert!(
        reqs.iter().any(|r| r.contains("wasmplugins?")
            && r.contains("watch=true")
            && r.contains("resourceVersion=")),
        "{reqs:?}"
    );
    assert!(
        reqs.iter().any(|r| r.starts_with("/api/v1/secrets?")
            && r.contains("fieldSelector=type%3Dkubernetes.io%2Fdockerconfigjson")),
        "{reqs:?}"
    );

    let ch = tonic::transport::Endpoint::from_shared(format!("http://{}", cp.addr))
        .expect("endpoint")
        .connect_lazy();
    let client = AdsClient::new(
        ch,
        node(
            "router~10.0.0.1~gw.app~app.svc.cluster.local",
            "app",
            &[("istio", "ingressgateway")],
        ),
    );
    let mut lds = client.subscribe(type_url::LISTENER, vec![]);
    let l = next(&mut lds).await;
    assert_eq!(l.resources.len(), 1, "the Gateway's listener");
    l.reply.ack();
    let name = "extensions.istio.io/wasmplugin/app.hdr".to_string();
    let mut ecds = client.subscribe(type_url::EXTENSION_CONFIG, vec![name]);
    let u = next(&mut ecds).await;
    let cfg = plugin_config(&u);
    assert_eq!(cfg["configuration"]["value"], "{\"v\":1}");
    let env = cfg["vmConfig"]["environmentVariables"]["keyValues"].to_string();
    assert!(
        env.contains(r#"{\"auths\":{\"r.example\":{\"auth\":\"dTpw\"}}}"#),
        "pull secret from the Kubernetes Secret: {env}"
    );
    u.reply.ack();

    // MODIFIED: the new config is pushed.
    fake.apply(plugin("hdr", "imagePullSecret: pull\npluginConfig: {v: 2}"));
    let u = next(&mut ecds).await;
    assert_eq!(plugin_config(&u)["configuration"]["value"], "{\"v\":2}");
    u.reply.ack();

    // A bad MODIFIED: reported with the object and field; nothing pushed; v2 keeps serving.
    fake.apply(plugin(
        "hdr",
        "imagePullSecret: pull\npluginConfig: {v: 3}\nsha256: nothex",
    ));
    let errors = eventually(T, "the bad object to be reported", || {
        let st = cp.source.status();
        async move {
            let errs: Vec<String> = st.errors().map(|e| e.to_string()).collect();
            (!errs.is_empty()).then_some(errs)
        }
    })
    .await;
    assert!(
        errors[0].starts_with("k8s://WasmPlugin/app/hdr: WasmPlugin app/hdr: spec.sha256:"),
        "{errors:?}"
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(500), ecds.next())
            .await
            .is_err(),
        "a bad edit pushes nothing"
    );
    let served = cp.source.config();
    assert_eq!(
        served.plugins[0]
            .spec
            .plugin_config
            .as_ref()
            .expect("config")["v"],
        2
    );
    let status = http_get(
        cp.status_addr.expect("status endpoint"),
        "/debug/config_status",
    )
    .await;
    let obj = status["files"]
        .as_array()
        .expect("files")
        .iter()
        .find(|f| f["file"] == "k8s://WasmPlugin/app/hdr")
        .unwrap_or_else(|| panic!("object in the status: {status}"));
    assert_eq!(obj["applied"], false);
    assert_eq!(obj["serving"], 1);
    assert!(
        obj["errors"][0]
            .as_str()
            .expect("error")
            .contains("spec.sha256")
    );
    let secret = status["files"]
        .as_array()
        .expect("files")
        .iter()
        .find(|f| f["file"] == "k8s://Secret/app/pull")
        .unwrap_or_else(|| panic!("secret in the status: {status}"));
    assert_eq!(secret["applied"], true);
    assert!(
        !status.to_string().contains("eyJhdXRocy"),
        "secret data never shown"
    );

    // An unknown field: the YAML-level error names its path, like a file's.
    fake.apply(plugin("hdr", "pluginConfig: {v: 3}\nbogus: 1"));
    eventually(T, "the unknown field to be reported", || {
        let st = cp.source.status();
        async move {
            st.errors()
                .any(|e| e.file == "k8s://WasmPlugin/app/hdr" && e.path.starts_with("spec.bogus"))
                .then_some(())
        }
    })
    .await;

    // Fixed: applied and pushed; the status is clean.
    fake.apply(plugin("hdr", "imagePullSecret: pull\npluginConfig: {v: 4}"));
    let u = next(&mut ecds).await;
    assert_eq!(plugin_config(&u)["configuration"]["value"], "{\"v\":4}");
    u.reply.ack();
    assert_eq!(cp.source.status().errors().count(), 0);

    // ADDED: a second plugin joins the listener's filter chain.
    fake.apply(plugin("second", "pluginConfig: {v: 1}"));
    let l = next(&mut lds).await;
    let filters = resource_json(&l.resources[0])["filterChains"][0]["filters"][0]["typedConfig"]
        ["httpFilters"]
        .clone();
    let names: Vec<&str> = filters
        .as_array()
        .expect("filters")
        .iter()
        .filter_map(|f| f["name"].as_str())
        .collect();
    assert_eq!(
        names,
        [
            "extensions.istio.io/wasmplugin/app.hdr",
            "extensions.istio.io/wasmplugin/app.second",
            "envoy.filters.http.router"
        ]
    );
    l.reply.ack();

    // DELETED: both plugins go, the listener is back to the router only.
    fake.delete("WasmPlugin", "app", "hdr");
    fake.delete("WasmPlugin", "app", "second");
    let filters = loop {
        let l = next(&mut lds).await;
        let f = resource_json(&l.resources[0])["filterChains"][0]["filters"][0]["typedConfig"]
            ["httpFilters"]
            .clone();
        l.reply.ack();
        if f.as_array().expect("filters").len() == 1 {
            break f;
        }
    };
    assert_eq!(filters[0]["name"], "envoy.filters.http.router");
    assert!(cp.source.config().plugins.is_empty());
    assert!(
        !cp.source
            .status()
            .files
            .keys()
            .any(|k| k.to_string_lossy().starts_with("k8s://WasmPlugin/")),
        "deleted objects leave the status"
    );
}

async fn start_source(fake: &FakeApiServer, k: KubernetesSettings) -> Arc<KubernetesSource> {
    let (src, _rx) = KubernetesSource::connect(&k).await.expect("connect");
    tokio::spawn(
        src.clone()
            .run(Duration::from_millis(100), Duration::from_secs(1)),
    );
    src.wait_synced().await;
    assert!(!fake.requests().is_empty());
    src
}

fn plugin_names(src: &KubernetesSource) -> Vec<String> {
    src.config()
        .plugins
        .iter()
        .map(|p| p.meta.name.clone())
        .collect()
}

#[tokio::test]
async fn a_relist_after_an_expired_watch_drops_objects_deleted_meanwhile() {
    let fake = FakeApiServer::start().await;
    fake.apply(plugin("a", ""));
    fake.apply(plugin("b", ""));
    let tmp = tempfile::tempdir().expect("tempdir");
    let src = start_source(&fake, settings(&fake, tmp.path())).await;
    assert_eq!(plugin_names(&src), ["a", "b"]);

    // The watch is cut and "b" is deleted with its event compacted away: the watcher gets 410
    // Gone, lists again, and the relist removes b.
    fake.delete_unobserved("WasmPlugin", "app", "b");
    eventually(T, "b to be gone after the relist", || {
        let names = plugin_names(&src);
        async move { (names == ["a"]).then_some(()) }
    })
    .await;
    let relists = fake
        .requests()
        .iter()
        .filter(|r| r.contains("wasmplugins?") && !r.contains("watch="))
        .count();
    assert!(relists >= 2, "listed again: {:?}", fake.requests());

    // Watching resumes after the relist.
    fake.apply(plugin("c", ""));
    eventually(T, "c to be added", || {
        let names = plugin_names(&src);
        async move { (names == ["a", "c"]).then_some(()) }
    })
    .await;
    assert_eq!(
        src.status().errors().count(),
        0,
        "an expired watch is routine, not an error"
    );
}

#[tokio::test]
async fn a_type_that_cannot_be_listed_is_reported_and_the_others_serve_after_the_sync_timeout() {
    let fake = FakeApiServer::start().await;
    fake.set_missing("Sidecar");
    fake.apply(plugin("a", ""));
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut k = settings(&fake, tmp.path());
    k.sync_timeout = Duration::from_secs(1);
    let started = tokio::time::Instant::now();
    let src = start_source(&fake, k).await;
    assert!(
        started.elapsed() < T,
        "start-up is bounded by the sync timeout"
    );
    assert_eq!(plugin_names(&src), ["a"]);
    let st = src.status();
    let e = st
        .errors()
        .find(|e| e.file == "k8s://sidecars.networking.istio.io/v1")
        .unwrap_or_else(|| panic!("Sidecar list failure reported: {st:?}"));
    assert!(e.reason.contains("404"), "{e}");

    // The other types keep watching.
    fake.apply(plugin("b", ""));
    eventually(T, "b to be added", || {
        let names = plugin_names(&src);
        async move { (names == ["a", "b"]).then_some(()) }
    })
    .await;
}
