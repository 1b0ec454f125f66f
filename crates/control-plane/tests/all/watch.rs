//! The directory source end to end: file edits reach an ADS client as ECDS updates.

use std::time::Duration;

use futures::StreamExt;
use wasmesh_control_plane::proxy::node;
use wasmesh_control_plane::{ControlPlane, Settings};
use wasmesh_xds::client::AdsClient;
use wasmesh_xds::type_url;

use crate::helpers::{eventually, gateway_routing, wasm_plugin, write};

async fn http_get(addr: std::net::SocketAddr, path: &str) -> serde_json::Value {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let body = out.split_once("\r\n\r\n").unwrap().1;
    serde_json::from_str(body).unwrap()
}

async fn next(s: &mut wasmesh_xds::client::Subscription) -> wasmesh_xds::client::Update {
    tokio::time::timeout(Duration::from_secs(10), s.next())
        .await
        .expect("ECDS update")
        .expect("open")
}

fn plugin_json(any: &envoy_types::pb::google::protobuf::Any) -> serde_json::Value {
    wasmesh_xds::descriptors::any_to_json(any).expect("ECDS resource decodes")
}

#[tokio::test]
async fn file_edits_reach_subscribed_proxies_and_bad_edits_keep_the_last_valid_config() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "routing.yaml", &gateway_routing(18080, 9));
    write(
        dir.path(),
        "plugin.yaml",
        &wasm_plugin("app", "hdr", "file:///p.wasm", "pluginConfig: {v: 1}"),
    );
    let mut settings = Settings::new(dir.path(), "127.0.0.1:0".parse().unwrap());
    settings.status_addr = Some("127.0.0.1:0".parse().unwrap());
    let cp = ControlPlane::start(settings).await.unwrap();
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{}", cp.addr))
        .unwrap()
        .connect_lazy();
    let id = "router~10.0.0.1~gw.app~app.svc.cluster.local";
    let client = AdsClient::new(ch.clone(), node(id, "app", &[("istio", "ingressgateway")]));
    // A gateway in another namespace: same listener, but the app plugin does not apply to it.
    let other_id = "router~10.0.0.9~gw.other~other.svc.cluster.local";
    let other = AdsClient::new(ch, node(other_id, "other", &[("istio", "ingressgateway")]));
    let mut other_lds = other.subscribe(type_url::LISTENER, vec![]);
    let mut other_cds = other.subscribe(type_url::CLUSTER, vec![]);
    next(&mut other_lds).await.reply.ack();
    next(&mut other_cds).await.reply.ack();
    let mut lds = client.subscribe(type_url::LISTENER, vec![]);
    let l = tokio::time::timeout(Duration::from_secs(10), lds.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(l.resources.len(), 1);
    l.reply.ack();
    let name = "extensions.istio.io/wasmplugin/app.hdr".to_string();
    let mut ecds = client.subscribe(type_url::EXTENSION_CONFIG, vec![name.clone()]);
    let u = next(&mut ecds).await;
    let cfg = plugin_json(&u.resources[0]);
    assert_eq!(
        cfg["typedConfig"]["config"]["configuration"]["value"],
        "{\"v\":1}"
    );
    u.reply.ack();

    // Edit: only ECDS changes.
    write(
        dir.path(),
        "plugin.yaml",
        &wasm_plugin("app", "hdr", "file:///p.wasm", "pluginConfig: {v: 2}"),
    );
    let u = next(&mut ecds).await;
    // The unaffected proxy gets nothing at all.
    for sub in [&mut other_lds, &mut other_cds] {
        assert!(
            tokio::time::timeout(Duration::from_millis(300), sub.next())
                .await
                .is_err(),
            "unaffected proxy must not be pushed"
        );
    }
    assert_eq!(
        plugin_json(&u.resources[0])["typedConfig"]["config"]["configuration"]["value"],
        "{\"v\":2}"
    );
    u.reply.ack();
    assert!(
        tokio::time::timeout(Duration::from_millis(300), lds.next())
            .await
            .is_err(),
        "no LDS push for a config edit"
    );

    // A broken edit: reported, nothing pushed, the last valid version keeps serving.
    write(
        dir.path(),
        "plugin.yaml",
        &wasm_plugin(
            "app",
            "hdr",
            "file:///p.wasm",
            "pluginConfig: {v: 3}\nsha256: nothex",
        ),
    );
    let errors = eventually(
        Duration::from_secs(10),
        "the broken file to be reported",
        || {
            let st = cp.source.status();
            async move {
                let errs: Vec<String> = st.errors().map(|e| e.to_string()).collect();
                (!errs.is_empty()).then_some(errs)
            }
        },
    )
    .await;
    assert!(
        errors[0].contains("plugin.yaml: WasmPlugin app/hdr: spec.sha256:"),
        "{errors:?}"
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(300), ecds.next())
            .await
            .is_err(),
        "bad edit pushes nothing"
    );

    // The debug endpoint shows the broken file and what the proxy holds.
    let status = http_get(cp.status_addr.unwrap(), "/debug/config_status").await;
    let plugin_file = status["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["file"].as_str().unwrap().ends_with("plugin.yaml"))
        .unwrap();
    assert_eq!(plugin_file["applied"], false);
    assert_eq!(plugin_file["serving"], 1);
    assert!(
        plugin_file["errors"][0]
            .as_str()
            .unwrap()
            .contains("spec.sha256")
    );
    let syncz = http_get(cp.status_addr.unwrap(), "/debug/syncz").await;
    let node = &syncz["nodes"][0];
    assert_eq!(node["node"], id);
    assert_eq!(
        node["acked"][type_url::EXTENSION_CONFIG],
        node["desired"][type_url::EXTENSION_CONFIG]
    );

    // Deleting the plugin removes the filter from the listener.
    std::fs::remove_file(dir.path().join("plugin.yaml")).unwrap();
    let l = tokio::time::timeout(Duration::from_secs(10), lds.next())
        .await
        .unwrap()
        .unwrap();
    let json = plugin_json(&l.resources[0]);
    let filters = &json["filterChains"][0]["filters"][0]["typedConfig"]["httpFilters"];
    assert_eq!(filters.as_array().unwrap().len(), 1, "{filters}");
    assert_eq!(filters[0]["name"], "envoy.filters.http.router");
}
