use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::google::protobuf::Any;
use futures::StreamExt;
use tokio::sync::oneshot;
use wasmesh_xds::client::{AdsClient, Backoff, Subscription, Update};
use wasmesh_xds::{AdsServer, NodeEvent, Resources, Snapshot, SnapshotCache, type_url};

fn any(name: &str, v: &[u8]) -> (String, Any) {
    (
        name.to_string(),
        Any {
            type_url: "t".into(),
            value: v.to_vec(),
        },
    )
}

fn snapshot(ecds: &[(&str, &[u8])], listeners: &[(&str, &[u8])]) -> Arc<Snapshot> {
    Arc::new(
        Snapshot::new()
            .with(
                type_url::LISTENER,
                Arc::new(Resources::new(listeners.iter().map(|(n, v)| any(n, v)))),
            )
            .with(type_url::CLUSTER, Arc::new(Resources::new([])))
            .with(
                type_url::EXTENSION_CONFIG,
                Arc::new(Resources::new(ecds.iter().map(|(n, v)| any(n, v)))),
            ),
    )
}

async fn start() -> (
    Arc<SnapshotCache>,
    tokio::sync::mpsc::UnboundedReceiver<NodeEvent>,
    String,
    oneshot::Sender<()>,
) {
    let (cache, events) = SnapshotCache::new();
    let listener = wasmesh_xds::server::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    tokio::spawn(AdsServer::new(cache.clone()).serve(listener, async {
        let _ = stop_rx.await;
    }));
    (cache, events, format!("http://{addr}"), stop_tx)
}

fn client(url: &str, id: &str) -> AdsClient {
    let ch = tonic::transport::Endpoint::from_shared(url.to_string())
        .unwrap()
        .connect_lazy();
    AdsClient::with_backoff(
        ch,
        Node {
            id: id.into(),
            ..Default::default()
        },
        Backoff {
            initial: Duration::from_millis(20),
            max: Duration::from_millis(200),
        },
    )
}

async fn next(sub: &mut Subscription) -> Update {
    tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .expect("update within 10s")
        .expect("stream open")
}

async fn event(
    events: &mut tokio::sync::mpsc::UnboundedReceiver<NodeEvent>,
    pred: impl Fn(&NodeEvent) -> bool,
) -> NodeEvent {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let e = events.recv().await.expect("events open");
            if pred(&e) {
                return e;
            }
        }
    })
    .await
    .expect("event within 10s")
}

#[tokio::test]
async fn subscribe_ack_push_and_nack() {
    let (cache, mut events, url, _stop) = start().await;
    cache.set(
        "n1",
        snapshot(&[("p1", b"v1"), ("p2", b"x")], &[("l", b"1")]),
    );
    let c = client(&url, "n1");
    let mut ecds = c.subscribe(type_url::EXTENSION_CONFIG, vec!["p1".into()]);
    let u = next(&mut ecds).await;
    assert_eq!(u.resources.len(), 1, "only the subscribed name");
    assert_eq!(u.resources[0].value, b"v1");
    let v1 = u.version.clone();
    u.reply.ack();
    let e = event(&mut events, |e| matches!(e, NodeEvent::Ack { .. })).await;
    assert!(matches!(e, NodeEvent::Ack { ref version, .. } if *version == v1));

    // A new version is pushed; NACK it: the server records it and does not resend.
    cache.set(
        "n1",
        snapshot(&[("p1", b"v2"), ("p2", b"x")], &[("l", b"1")]),
    );
    let u = next(&mut ecds).await;
    assert_eq!(u.resources[0].value, b"v2");
    let v2 = u.version.clone();
    u.reply.nack("bad wasm");
    let e = event(&mut events, |e| matches!(e, NodeEvent::Nack { .. })).await;
    match e {
        NodeEvent::Nack {
            node_id,
            version,
            message,
            ..
        } => {
            assert_eq!(node_id, "n1");
            assert_eq!(version, v2);
            assert_eq!(message, "bad wasm");
        }
        other => panic!("{other:?}"),
    }
    let st = cache.status("n1").unwrap();
    assert_eq!(
        st.acked.get(type_url::EXTENSION_CONFIG),
        Some(&v1),
        "the proxy keeps its previous version"
    );
    assert_eq!(st.nacked[type_url::EXTENSION_CONFIG].1, "bad wasm");
    assert!(
        tokio::time::timeout(Duration::from_millis(300), ecds.next())
            .await
            .is_err(),
        "no resend after NACK"
    );

    // An unrelated resource changing does not touch the LDS subscriber; same content = no push.
    let mut lds = c.subscribe(type_url::LISTENER, vec![]);
    let u = next(&mut lds).await;
    assert_eq!(u.resources.len(), 1);
    u.reply.ack();
    cache.set(
        "n1",
        snapshot(&[("p1", b"v3"), ("p2", b"x")], &[("l", b"1")]),
    );
    assert_eq!(next(&mut ecds).await.resources[0].value, b"v3");
    assert!(
        tokio::time::timeout(Duration::from_millis(300), lds.next())
            .await
            .is_err(),
        "LDS unchanged → no push"
    );
}

#[tokio::test]
async fn push_order_is_cds_eds_lds_rds_ecds() {
    let (cache, _events, url, _stop) = start().await;
    let c = client(&url, "n2");
    let mut subs = vec![
        c.subscribe(type_url::EXTENSION_CONFIG, vec!["e".into()]),
        c.subscribe(type_url::ROUTE, vec!["r".into()]),
        c.subscribe(type_url::LISTENER, vec![]),
        c.subscribe(type_url::ENDPOINT, vec!["c".into()]),
        c.subscribe(type_url::CLUSTER, vec![]),
    ];
    let all = |v: &[u8]| {
        let r = |n: &str| Arc::new(Resources::new([any(n, v)]));
        Arc::new(
            Snapshot::new()
                .with(type_url::EXTENSION_CONFIG, r("e"))
                .with(type_url::ROUTE, r("r"))
                .with(type_url::LISTENER, r("l"))
                .with(type_url::ENDPOINT, r("c"))
                .with(type_url::CLUSTER, r("c")),
        )
    };
    // First round: every subscription gets its initial version (in whatever order they arrived).
    cache.set("n2", all(b"1"));
    for s in subs.iter_mut() {
        next(s).await.reply.ack();
    }
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for (i, mut s) in subs.drain(..).enumerate() {
        let tx = tx.clone();
        tokio::spawn(async move {
            while let Some(u) = s.next().await {
                let _ = tx.send((i, std::time::Instant::now()));
                u.reply.ack();
            }
        });
    }
    // Second round: all five change at once.
    cache.set("n2", all(b"2"));
    let mut order = Vec::new();
    for _ in 0..5 {
        order.push(
            tokio::time::timeout(Duration::from_secs(10), rx.recv())
                .await
                .unwrap()
                .unwrap(),
        );
    }
    order.sort_by_key(|(_, t)| *t);
    let idx: Vec<usize> = order.iter().map(|(i, _)| *i).collect();
    assert_eq!(idx, [4, 3, 2, 1, 0], "CDS, EDS, LDS, RDS, ECDS");
}

#[tokio::test]
async fn client_resubscribes_after_the_server_drops_the_stream() {
    let (cache, mut events, url, _stop) = start().await;
    cache.set("n3", snapshot(&[], &[("l", b"1")]));
    let c = client(&url, "n3");
    let mut lds = c.subscribe(type_url::LISTENER, vec![]);
    next(&mut lds).await.reply.ack();
    // Forgetting the node closes its streams (as a control plane restart would).
    cache.remove("n3");
    event(&mut events, |e| matches!(e, NodeEvent::Disconnected { .. })).await;
    cache.set("n3", snapshot(&[], &[("l", b"2")]));
    let u = next(&mut lds).await;
    assert_eq!(u.resources[0].value, b"2");
    event(&mut events, |e| matches!(e, NodeEvent::Connected { .. })).await;
}
