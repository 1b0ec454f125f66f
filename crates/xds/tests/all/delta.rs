//! Delta ADS against a raw tonic client: per-resource updates, subscribe, removal, and
//! `initial_resource_versions` (no resend of what the client already has).

use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse,
};
use envoy_types::pb::google::protobuf::Any;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use wasmesh_xds::{AdsServer, Resources, Snapshot, SnapshotCache, type_url};

fn snap(ecds: &[(&str, &[u8])]) -> Arc<Snapshot> {
    let items = ecds.iter().map(|(n, v)| {
        (
            n.to_string(),
            Any {
                type_url: "t".into(),
                value: v.to_vec(),
            },
        )
    });
    let l = [(
        "l".to_string(),
        Any {
            type_url: "t".into(),
            value: b"l".to_vec(),
        },
    )];
    Arc::new(
        Snapshot::new()
            .with(type_url::EXTENSION_CONFIG, Arc::new(Resources::new(items)))
            .with(type_url::LISTENER, Arc::new(Resources::new(l))),
    )
}

struct Stream {
    tx: mpsc::UnboundedSender<DeltaDiscoveryRequest>,
    rx: tonic::Streaming<DeltaDiscoveryResponse>,
}

impl Stream {
    async fn open(url: &str, first: DeltaDiscoveryRequest) -> Self {
        let mut client = AggregatedDiscoveryServiceClient::connect(url.to_string())
            .await
            .unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        tx.send(first).unwrap();
        let rx = client
            .delta_aggregated_resources(UnboundedReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        Self { tx, rx }
    }

    async fn next(&mut self) -> DeltaDiscoveryResponse {
        tokio::time::timeout(Duration::from_secs(10), self.rx.message())
            .await
            .expect("response")
            .unwrap()
            .unwrap()
    }

    fn send(&self, r: DeltaDiscoveryRequest) {
        self.tx.send(r).unwrap();
    }
}

fn names(r: &DeltaDiscoveryResponse) -> Vec<(String, Vec<u8>)> {
    r.resources
        .iter()
        .map(|x| (x.name.clone(), x.resource.clone().unwrap().value))
        .collect()
}

#[tokio::test]
async fn delta_subscribe_update_remove_and_initial_versions() {
    let (cache, _events) = SnapshotCache::new();
    let listener = wasmesh_xds::server::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(AdsServer::new(cache.clone()).serve(listener, std::future::pending()));
    cache.set("d", snap(&[("a", b"1"), ("b", b"x")]));

    let node = Node {
        id: "d".into(),
        ..Default::default()
    };
    let mut s = Stream::open(
        &url,
        DeltaDiscoveryRequest {
            node: Some(node.clone()),
            type_url: type_url::EXTENSION_CONFIG.into(),
            resource_names_subscribe: vec!["a".into()],
            ..Default::default()
        },
    )
    .await;
    let r = s.next().await;
    assert_eq!(names(&r), [("a".to_string(), b"1".to_vec())]);
    let ack = |r: &DeltaDiscoveryResponse| DeltaDiscoveryRequest {
        type_url: r.type_url.clone(),
        response_nonce: r.nonce.clone(),
        ..Default::default()
    };
    s.send(ack(&r));

    // Only the changed resource is sent; b (unsubscribed) changing sends nothing.
    cache.set("d", snap(&[("a", b"2"), ("b", b"y")]));
    let r = s.next().await;
    assert_eq!(names(&r), [("a".to_string(), b"2".to_vec())]);
    s.send(ack(&r));
    cache.set("d", snap(&[("a", b"2"), ("b", b"z")]));
    assert!(
        tokio::time::timeout(Duration::from_millis(300), s.rx.message())
            .await
            .is_err()
    );

    // Subscribing to b sends b only.
    s.send(DeltaDiscoveryRequest {
        type_url: type_url::EXTENSION_CONFIG.into(),
        resource_names_subscribe: vec!["b".into()],
        ..Default::default()
    });
    let r = s.next().await;
    assert_eq!(names(&r), [("b".to_string(), b"z".to_vec())]);
    s.send(ack(&r));

    // Removing a from the snapshot tells the client.
    cache.set("d", snap(&[("b", b"z")]));
    let r = s.next().await;
    assert!(r.resources.is_empty());
    assert_eq!(r.removed_resources, ["a"]);
    let st = cache.status("d").unwrap();
    assert!(st.acked.contains_key(type_url::EXTENSION_CONFIG));

    // A wildcard LDS stream that already holds the current listener gets an empty first answer.
    let mut w = Stream::open(
        &url,
        DeltaDiscoveryRequest {
            node: Some(node),
            type_url: type_url::LISTENER.into(),
            ..Default::default()
        },
    )
    .await;
    let r = w.next().await;
    assert_eq!(names(&r), [("l".to_string(), b"l".to_vec())]);
    let version = r.resources[0].version.clone();
    let mut w2 = Stream::open(
        &url,
        DeltaDiscoveryRequest {
            node: Some(Node {
                id: "d".into(),
                ..Default::default()
            }),
            type_url: type_url::LISTENER.into(),
            initial_resource_versions: [("l".to_string(), version)].into(),
            ..Default::default()
        },
    )
    .await;
    let r = w2.next().await;
    assert!(
        r.resources.is_empty() && r.removed_resources.is_empty(),
        "{r:?}"
    );
}
