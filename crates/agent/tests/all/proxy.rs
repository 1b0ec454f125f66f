//! The ADS proxy between a stand-in proxy (a gRPC client) and a fake control plane.

use envoy_types::pb::envoy::extensions::wasm::v3::FailurePolicy;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use envoy_types::pb::google::rpc::Status as RpcStatus;
use test_support::fake_ads::{FakeAds, type_url};
use wasmesh_agent::ListenAddr;
use wasmesh_agent::xds_proxy::AGENT_NONCE_PREFIX;

use crate::registry::{Format, Options, Registry, module};
use crate::util::{
    AdsClient, Seen, eventually, init_logs, inspect, listener, start_agent, wasm_plugin,
};

fn tcp0() -> ListenAddr {
    ListenAddr::Tcp("127.0.0.1:0".parse().expect("addr"))
}

fn agent_addr(a: &wasmesh_agent::Agent) -> std::net::SocketAddr {
    match a.listen_addr() {
        ListenAddr::Tcp(s) => *s,
        ListenAddr::Unix(_) => unreachable!("tcp"),
    }
}

#[tokio::test]
async fn ecds_is_rewritten_to_a_local_file_and_the_rest_is_forwarded() -> anyhow::Result<()> {
    init_logs();
    let reg = Registry::start(Options {
        tls: false,
        auth: false,
    })
    .await?;
    let digest = reg
        .push("p/ok", "v1", Format::WasmArtifact, &module(1))
        .await?;
    let fake = FakeAds::start().await?;
    let lds = listener("l1", 1, "f", "c");
    fake.set(type_url::LISTENER, vec![lds.clone()]);
    let (name, ecds) = wasm_plugin(
        "ok",
        &reg.url("p/ok", "v1"),
        &digest,
        "{}",
        FailurePolicy::FailClosed,
        &[],
    );
    fake.set(type_url::ECDS, vec![(name.clone(), ecds)]);
    let dir = tempfile::tempdir()?;
    let agent = start_agent(tcp0(), fake.addr(), dir.path(), &reg.host).await?;
    let mut proxy = AdsClient::connect(agent_addr(&agent)).await?;

    proxy.subscribe(type_url::LISTENER, &[], true).await;
    let r = proxy.recv().await;
    assert_eq!(
        (r.type_url.as_str(), r.resources.clone()),
        (type_url::LISTENER, vec![lds.1.clone()]),
        "LDS untouched"
    );
    proxy.ack(&r, &[]).await;

    proxy.subscribe(type_url::ECDS, &[&name], false).await;
    let e = proxy.recv().await;
    let (n, seen) = inspect(&e.resources[0]);
    assert_eq!(n, name);
    let Seen::LocalFile(path) = seen else {
        panic!("not rewritten: {seen:?}")
    };
    assert_eq!(std::fs::read(&path)?, module(1));
    proxy.ack(&e, &[&name]).await;

    // The control plane sees the node first, and the proxy's ACKs with its own nonces.
    eventually!(10, "the ECDS ACK reaches the control plane", async {
        fake.requests().iter().any(|q| {
            q.type_url == type_url::ECDS
                && q.response_nonce == e.nonce
                && q.version_info == e.version_info
        })
    });
    assert!(fake.requests()[0].node.is_some());
    // NACKs are forwarded.
    proxy
        .send(DiscoveryRequest {
            version_info: r.version_info.clone(),
            type_url: type_url::LISTENER.into(),
            response_nonce: r.nonce.clone(),
            error_detail: Some(RpcStatus {
                code: 3,
                message: "bad listener".into(),
                details: vec![],
            }),
            ..Default::default()
        })
        .await;
    eventually!(10, "the NACK reaches the control plane", async {
        fake.nacks().iter().any(|q| {
            q.error_detail
                .as_ref()
                .is_some_and(|d| d.message == "bad listener")
        })
    });
    // Metrics as istio-agent's.
    let metrics = reqwest::get(format!(
        "http://{}/metrics",
        agent.metrics_addr().expect("metrics")
    ))
    .await?
    .text()
    .await?;
    for want in [
        "# TYPE istio_agent_wasm_remote_fetch_count counter\n",
        "\nistio_agent_wasm_remote_fetch_count{result=\"success\"} 1\n",
        "\nistio_agent_wasm_config_conversion_count{result=\"success\"} 1\n",
        "\nistio_agent_wasm_cache_lookup_count{hit=\"false\"} 1\n",
        "\nistio_agent_wasm_cache_entries 1\n",
        "\nistio_agent_wasm_config_conversion_duration_bucket{le=\"1.0\"}",
        "\nistio_agent_wasm_config_conversion_duration_count 1\n",
    ] {
        assert!(metrics.contains(want), "missing {want} in:\n{metrics}");
    }
    assert!(!metrics.contains("_total"), "{metrics}");
    agent.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_plain_http_registry_on_loopback_is_used_without_insecure_registries()
-> anyhow::Result<()> {
    // As istio-agent (go-containerregistry): 127.0.0.1 may be reached over plain HTTP without
    // WASM_INSECURE_REGISTRIES.
    init_logs();
    let reg = Registry::start(Options {
        tls: false,
        auth: false,
    })
    .await?;
    let digest = reg
        .push("p/plainhttp", "v1", Format::OciImage, &module(21))
        .await?;
    let fake = FakeAds::start().await?;
    let (name, ecds) = wasm_plugin(
        "plainhttp",
        &reg.url("p/plainhttp", "v1"),
        &digest,
        "{}",
        FailurePolicy::FailClosed,
        &[],
    );
    fake.set(type_url::ECDS, vec![(name.clone(), ecds)]);
    let dir = tempfile::tempdir()?;
    let agent = start_agent(tcp0(), fake.addr(), dir.path(), "").await?;
    let mut proxy = AdsClient::connect(agent_addr(&agent)).await?;
    proxy.subscribe(type_url::ECDS, &[&name], true).await;
    let e = proxy.recv().await;
    let (n, seen) = inspect(&e.resources[0]);
    assert_eq!(n, name);
    let Seen::LocalFile(path) = seen else {
        panic!("not rewritten (RBAC fallback?): {seen:?}")
    };
    assert_eq!(std::fs::read(&path)?, module(21));
    let metrics = reqwest::get(format!(
        "http://{}/metrics",
        agent.metrics_addr().expect("metrics")
    ))
    .await?
    .text()
    .await?;
    assert!(
        metrics.contains("\nistio_agent_wasm_remote_fetch_count{result=\"success\"} 1\n"),
        "{metrics}"
    );
    agent.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_failed_fetch_falls_back_to_rbac_then_the_plugin_arrives_by_background_retry()
-> anyhow::Result<()> {
    init_logs();
    let reg = Registry::start(Options {
        tls: false,
        auth: false,
    })
    .await?;
    let fake = FakeAds::start().await?;
    let (closed, ecds_closed) = wasm_plugin(
        "closed",
        &reg.url("p/later", "v1"),
        "",
        "{}",
        FailurePolicy::FailClosed,
        &[],
    );
    let (open, ecds_open) = wasm_plugin(
        "open",
        &reg.url("p/never", "v1"),
        "",
        "{}",
        FailurePolicy::FailOpen,
        &[],
    );
    fake.set(
        type_url::ECDS,
        vec![(closed.clone(), ecds_closed), (open.clone(), ecds_open)],
    );
    let dir = tempfile::tempdir()?;
    let agent = start_agent(tcp0(), fake.addr(), dir.path(), &reg.host).await?;
    let mut proxy = AdsClient::connect(agent_addr(&agent)).await?;
    proxy
        .subscribe(type_url::ECDS, &[&closed, &open], true)
        .await;
    let e = proxy.recv().await;
    let seen: Vec<_> = e.resources.iter().map(inspect).collect();
    assert_eq!(
        seen,
        vec![
            (closed.clone(), Seen::Rbac { deny: true }),
            (open.clone(), Seen::Rbac { deny: false })
        ]
    );
    assert!(
        !e.nonce.starts_with(AGENT_NONCE_PREFIX),
        "the control plane's own nonce is kept"
    );
    proxy.ack(&e, &[&closed, &open]).await;

    // The registry gets the module: the agent's background retry sends the real plugin.
    reg.push("p/later", "v1", Format::OciImage, &module(9))
        .await?;
    let r = proxy.recv().await;
    assert!(r.nonce.starts_with(AGENT_NONCE_PREFIX), "{}", r.nonce);
    assert_eq!(r.resources.len(), 1);
    let (n, seen) = inspect(&r.resources[0]);
    assert_eq!(n, closed);
    let Seen::LocalFile(path) = seen else {
        panic!("{seen:?}")
    };
    assert_eq!(std::fs::read(path)?, module(9));
    proxy.ack(&r, &[&closed, &open]).await;
    // The proxy's ACK of the agent's own response never reaches the control plane.
    proxy.subscribe(type_url::LISTENER, &[], false).await;
    eventually!(10, "a later request reaches the control plane", async {
        fake.requests()
            .iter()
            .any(|q| q.type_url == type_url::LISTENER)
    });
    assert!(
        fake.requests()
            .iter()
            .all(|q| !q.response_nonce.starts_with(AGENT_NONCE_PREFIX))
    );
    agent.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_control_plane_restart_keeps_the_proxy_stream_and_resubscribes() -> anyhow::Result<()> {
    init_logs();
    let fake = FakeAds::start().await?;
    fake.set(type_url::LISTENER, vec![listener("before", 1, "f", "c")]);
    let dir = tempfile::tempdir()?;
    let agent = start_agent(tcp0(), fake.addr(), dir.path(), "").await?;
    let mut proxy = AdsClient::connect(agent_addr(&agent)).await?;
    proxy.subscribe(type_url::LISTENER, &[], true).await;
    let r = proxy.recv().await;
    proxy.ack(&r, &[]).await;
    eventually!(10, "ACK seen", async { fake.requests().len() >= 2 });

    let addr = fake.addr();
    fake.shutdown().await;
    let fake2 = FakeAds::start_on(addr).await?;
    fake2.set(type_url::LISTENER, vec![listener("after", 1, "f", "c")]);
    // Same proxy stream: the agent reconnected and replayed the subscription.
    let r2 = proxy.recv().await;
    assert_eq!(r2.resources, vec![listener("after", 1, "f", "c").1]);
    let first = &fake2.requests()[0];
    assert!(
        first.node.is_some(),
        "the replayed subscription carries the node"
    );
    assert_eq!(
        (first.type_url.as_str(), first.version_info.as_str()),
        (type_url::LISTENER, r.version_info.as_str())
    );
    agent.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_wasm_filter_without_code_is_nacked_as_istio_agent_does() -> anyhow::Result<()> {
    use envoy_types::pb::envoy::config::core::v3::TypedExtensionConfig;
    use envoy_types::pb::envoy::extensions::filters::http::wasm::v3::Wasm;
    use wasmesh_agent::convert::{ECDS_TYPE_URL, HTTP_WASM_TYPE_URL};
    init_logs();
    let fake = FakeAds::start().await?;
    let name = "extensions.istio.io/wasmplugin/default.nocode".to_string();
    // A Wasm HTTP filter with no `config` at all.
    let ec = TypedExtensionConfig {
        name: name.clone(),
        typed_config: Some(crate::util::pack(
            HTTP_WASM_TYPE_URL,
            &Wasm { config: None },
        )),
    };
    fake.set(
        type_url::ECDS,
        vec![(name.clone(), crate::util::pack(ECDS_TYPE_URL, &ec))],
    );
    let dir = tempfile::tempdir()?;
    let agent = start_agent(tcp0(), fake.addr(), dir.path(), "").await?;
    let mut proxy = AdsClient::connect(agent_addr(&agent)).await?;
    proxy.subscribe(type_url::ECDS, &[&name], true).await;
    eventually!(10, "the agent NACKs the Wasm filter without code", async {
        fake.nacks().iter().any(|q| {
            q.type_url == type_url::ECDS
                && q.error_detail.as_ref().is_some_and(|d| {
                    d.message
                        .contains("no remote and local load found in Wasm HTTP filter")
                })
        })
    });
    // Nothing reached the proxy.
    assert!(
        tokio::time::timeout(std::time::Duration::from_millis(300), proxy.recv())
            .await
            .is_err(),
        "the malformed ECDS was forwarded"
    );
    agent.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_malformed_ecds_response_is_nacked_to_the_control_plane() -> anyhow::Result<()> {
    init_logs();
    let fake = FakeAds::start().await?;
    let name = "extensions.istio.io/wasmplugin/default.bad".to_string();
    let garbage = envoy_types::pb::google::protobuf::Any {
        type_url: type_url::ECDS.into(),
        value: vec![0xff; 3],
    };
    fake.set(type_url::ECDS, vec![(name.clone(), garbage)]);
    let dir = tempfile::tempdir()?;
    let agent = start_agent(tcp0(), fake.addr(), dir.path(), "").await?;
    let mut proxy = AdsClient::connect(agent_addr(&agent)).await?;
    proxy.subscribe(type_url::ECDS, &[&name], true).await;
    eventually!(10, "the agent NACKs the bad ECDS", async {
        fake.nacks().iter().any(|q| {
            q.type_url == type_url::ECDS
                && q.error_detail
                    .as_ref()
                    .is_some_and(|d| d.message.contains("cannot decode"))
        })
    });
    // The next (good) version is the first ECDS the proxy sees.
    let (_, good) = crate::util::wasm_plugin(
        "bad",
        "oci://127.0.0.1:1/x:v1",
        "",
        "{}",
        FailurePolicy::FailOpen,
        &[],
    );
    fake.set(type_url::ECDS, vec![(name.clone(), good)]);
    let r = proxy.recv().await;
    assert_eq!(r.version_info, fake.version(type_url::ECDS));
    assert_eq!(inspect(&r.resources[0]).1, Seen::Rbac { deny: false });
    agent.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn delta_ecds_is_rewritten_and_a_control_plane_restart_is_invisible_to_the_proxy()
-> anyhow::Result<()> {
    use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;
    use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
    init_logs();
    let reg = Registry::start(Options {
        tls: false,
        auth: false,
    })
    .await?;
    let digest = reg.push("p/delta", "v1", Format::Cncf, &module(3)).await?;
    let fake = FakeAds::start().await?;
    let lds = listener("l1", 1, "f", "c");
    fake.set(type_url::LISTENER, vec![lds.clone()]);
    let (name, ecds) = wasm_plugin(
        "delta",
        &reg.url("p/delta", "v1"),
        &digest,
        "{}",
        FailurePolicy::FailClosed,
        &[],
    );
    fake.set(type_url::ECDS, vec![(name.clone(), ecds)]);
    let dir = tempfile::tempdir()?;
    let agent = start_agent(tcp0(), fake.addr(), dir.path(), &reg.host).await?;

    let mut client =
        AggregatedDiscoveryServiceClient::connect(format!("http://{}", agent_addr(&agent))).await?;
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let mut stream = client
        .delta_aggregated_resources(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    tx.send(DeltaDiscoveryRequest {
        node: Some(crate::util::node()),
        type_url: type_url::LISTENER.into(),
        ..Default::default()
    })
    .await?;
    let l = recv_delta(&mut stream).await?.expect("open");
    assert_eq!(
        l.resources[0].resource.as_ref(),
        Some(&lds.1),
        "LDS untouched"
    );
    tx.send(DeltaDiscoveryRequest {
        type_url: type_url::ECDS.into(),
        resource_names_subscribe: vec![name.clone()],
        ..Default::default()
    })
    .await?;
    let e = recv_delta(&mut stream).await?.expect("open");
    assert_eq!(e.resources.len(), 1);
    assert_eq!(e.resources[0].name, name);
    let (_, seen) = inspect(e.resources[0].resource.as_ref().expect("resource"));
    let Seen::LocalFile(path) = seen else {
        panic!("{seen:?}")
    };
    assert_eq!(std::fs::read(path)?, module(3));
    tx.send(DeltaDiscoveryRequest {
        type_url: type_url::ECDS.into(),
        response_nonce: e.nonce.clone(),
        ..Default::default()
    })
    .await?;
    eventually!(10, "the delta ACK reaches the control plane", async {
        fake.delta_requests()
            .iter()
            .any(|q| q.response_nonce == e.nonce)
    });
    assert!(fake.delta_requests()[0].node.is_some());
    // The control plane restarts: the proxy's delta stream stays open, the agent resubscribes
    // with the versions the proxy holds and the new instance's resources flow.
    let addr = fake.addr();
    fake.shutdown().await;
    let fake2 = FakeAds::start_on(addr).await?;
    let after = listener("after", 1, "f", "c");
    fake2.set(type_url::LISTENER, vec![after.clone()]);
    let r = recv_delta(&mut stream)
        .await?
        .expect("the proxy stream is still open");
    assert_eq!(r.resources[0].resource.as_ref(), Some(&after.1));
    eventually!(10, "the ECDS subscription is replayed", async {
        fake2.delta_requests().iter().any(|q| {
            q.type_url == type_url::ECDS
                && q.resource_names_subscribe == vec![name.clone()]
                && q.initial_resource_versions.get(&name) == Some(&e.resources[0].version)
        })
    });
    assert!(
        fake2.delta_requests()[0].node.is_some(),
        "the replay carries the node"
    );
    agent.shutdown().await;
    Ok(())
}

async fn recv_delta(
    s: &mut tonic::Streaming<
        envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryResponse,
    >,
) -> Result<
    Option<envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryResponse>,
    tonic::Status,
> {
    tokio::time::timeout(std::time::Duration::from_secs(20), s.message())
        .await
        .expect("a response within 20s")
}

#[tokio::test]
async fn a_restarted_agent_serves_cached_modules_with_the_registry_gone() -> anyhow::Result<()> {
    init_logs();
    let reg = Registry::start(Options {
        tls: false,
        auth: false,
    })
    .await?;
    let digest = reg
        .push("p/keep", "v1", Format::WasmArtifact, &module(11))
        .await?;
    let url = reg.url("p/keep", "v1");
    let host = reg.host.clone();
    let fake = FakeAds::start().await?;
    let (name, ecds) = wasm_plugin("keep", &url, "", "{}", FailurePolicy::FailClosed, &[]);
    fake.set(type_url::ECDS, vec![(name.clone(), ecds)]);
    let dir = tempfile::tempdir()?;
    let first_path = {
        let agent = start_agent(tcp0(), fake.addr(), dir.path(), &host).await?;
        let mut proxy = AdsClient::connect(agent_addr(&agent)).await?;
        proxy.subscribe(type_url::ECDS, &[&name], true).await;
        let (_, seen) = inspect(&proxy.recv().await.resources[0]);
        agent.shutdown().await;
        seen
    };
    let Seen::LocalFile(path) = &first_path else {
        panic!("{first_path:?}")
    };
    assert!(path.ends_with(&format!("{digest}.wasm")));
    drop(reg);
    // A new agent on the same cache dir: the index maps the tagged URL to its digest.
    let agent = start_agent(tcp0(), fake.addr(), dir.path(), &host).await?;
    let mut proxy = AdsClient::connect(agent_addr(&agent)).await?;
    proxy.subscribe(type_url::ECDS, &[&name], true).await;
    let (_, seen) = inspect(&proxy.recv().await.resources[0]);
    assert_eq!(
        seen, first_path,
        "served from the cache, no registry needed"
    );
    assert_eq!(
        agent
            .metrics()
            .remote_fetch_count(wasmesh_agent::metrics::FetchResult::Success),
        0
    );
    agent.shutdown().await;
    Ok(())
}
