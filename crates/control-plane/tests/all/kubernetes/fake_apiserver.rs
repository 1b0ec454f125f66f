//! A fake Kubernetes API server speaking the list/watch protocol kube's `watcher` uses: `GET`
//! a collection returns a `<Kind>List` with `metadata.resourceVersion`; `GET ...?watch=true&
//! resourceVersion=N` streams newline-delimited `{"type":"ADDED|MODIFIED|DELETED","object":...}`
//! events after N, kept open; a watch from a compacted version gets an `ERROR` event with a 410
//! `Status`, as etcd compaction makes the real server answer. List items of built-in kinds carry
//! no `apiVersion`/`kind`, as the real server sends them. No real API server exists on this
//! machine, so this is what the Kubernetes source is tested against.

use std::collections::{BTreeMap, HashSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};

/// A served resource type.
struct Collection {
    path: &'static str,
    api_version: &'static str,
    kind: &'static str,
    plural: &'static str,
    builtin: bool,
}

const COLLECTIONS: [Collection; 6] = [
    Collection {
        path: "/apis/extensions.istio.io/v1alpha1/wasmplugins",
        api_version: "extensions.istio.io/v1alpha1",
        kind: "WasmPlugin",
        plural: "wasmplugins",
        builtin: false,
    },
    Collection {
        path: "/apis/networking.istio.io/v1/serviceentries",
        api_version: "networking.istio.io/v1",
        kind: "ServiceEntry",
        plural: "serviceentries",
        builtin: false,
    },
    Collection {
        path: "/apis/networking.istio.io/v1/gateways",
        api_version: "networking.istio.io/v1",
        kind: "Gateway",
        plural: "gateways",
        builtin: false,
    },
    Collection {
        path: "/apis/networking.istio.io/v1/virtualservices",
        api_version: "networking.istio.io/v1",
        kind: "VirtualService",
        plural: "virtualservices",
        builtin: false,
    },
    Collection {
        path: "/apis/networking.istio.io/v1/sidecars",
        api_version: "networking.istio.io/v1",
        kind: "Sidecar",
        plural: "sidecars",
        builtin: false,
    },
    Collection {
        path: "/api/v1/secrets",
        api_version: "v1",
        kind: "Secret",
        plural: "secrets",
        builtin: true,
    },
];

fn collection_of_kind(kind: &str) -> &'static Collection {
    COLLECTIONS
        .iter()
        .find(|c| c.kind == kind)
        .unwrap_or_else(|| panic!("fake API server does not serve kind {kind}"))
}

struct Event {
    rv: u64,
    plural: &'static str,
    type_: &'static str,
    object: Value,
}

#[derive(Default)]
struct Inner {
    rv: u64,
    /// (plural, namespace, name) → object.
    objects: BTreeMap<(&'static str, String, String), Value>,
    log: Vec<Event>,
    /// Watches from a resourceVersion below this get 410 Gone.
    compacted: u64,
    /// Types answered with 404 (CRD not installed).
    missing: HashSet<&'static str>,
    /// Request targets (path and query), in order.
    requests: Vec<String>,
}

struct Shared {
    inner: Mutex<Inner>,
    /// (latest resourceVersion, watch generation); a new generation ends every open watch.
    notify: watch::Sender<(u64, u64)>,
}

/// A running fake API server on 127.0.0.1.
pub(crate) struct FakeApiServer {
    /// Address.
    pub(crate) addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn meta_key(obj: &Value) -> (String, String) {
    let m = &obj["metadata"];
    (
        m["namespace"].as_str().unwrap_or("default").to_string(),
        m["name"]
            .as_str()
            .expect("object has metadata.name")
            .to_string(),
    )
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(v) => {
                        out.push(v);
                        i += 3;
                        continue;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `fieldSelector=type=...` (the only one the source sends) applied to an object.
fn selected(field_selector: Option<&str>, obj: &Value) -> bool {
    match field_selector.and_then(|f| f.strip_prefix("type=")) {
        Some(t) => obj["type"].as_str() == Some(t),
        None => true,
    }
}

type Body = BoxBody<Bytes, Infallible>;

fn json_response(code: StatusCode, v: &Value) -> Response<Body> {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(v.to_string())).boxed())
        .expect("response")
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

impl FakeApiServer {
    /// Starts serving on 127.0.0.1 with no objects.
    pub(crate) async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind fake API server");
        let addr = listener.local_addr().expect("local addr");
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner {
                rv: 100,
                ..Default::default()
            }),
            notify: watch::Sender::new((100, 0)),
        });
        let s = shared.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let s = s.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let s = s.clone();
                        async move { Ok::<_, Infallible>(handle(&s, req)) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Self { addr, shared, task }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.shared.inner.lock().expect("fake API server state")
    }

    /// A kubeconfig (YAML) pointing at this server, without credentials.
    pub(crate) fn kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://{}\nusers:\n- name: fake\n  user: {{}}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\ncurrent-context: fake\n",
            self.addr
        )
    }

    /// Answers 404 for the collection of `kind`, as when its CRD is not installed.
    pub(crate) fn set_missing(&self, kind: &str) {
        self.lock().missing.insert(collection_of_kind(kind).plural);
    }

    /// Request targets received so far.
    pub(crate) fn requests(&self) -> Vec<String> {
        self.lock().requests.clone()
    }

    /// Creates or replaces an object (JSON with apiVersion, kind, metadata): ADDED or MODIFIED.
    /// Sets resourceVersion, uid, creationTimestamp (kept on update) and managedFields, as the
    /// server does.
    pub(crate) fn apply(&self, mut obj: Value) {
        let c = collection_of_kind(obj["kind"].as_str().expect("object has a kind"));
        let (ns, name) = meta_key(&obj);
        let mut st = self.lock();
        st.rv += 1;
        let rv = st.rv;
        let old = st
            .objects
            .get(&(c.plural, ns.clone(), name.clone()))
            .cloned();
        let m = &mut obj["metadata"];
        m["namespace"] = json!(ns);
        m["resourceVersion"] = json!(rv.to_string());
        m["managedFields"] = json!([{"manager": "kubectl", "operation": "Update"}]);
        match &old {
            Some(o) => {
                m["uid"] = o["metadata"]["uid"].clone();
                m["creationTimestamp"] = o["metadata"]["creationTimestamp"].clone();
            }
            None => {
                m["uid"] = json!(format!("uid-{rv}"));
                m["creationTimestamp"] =
                    json!(format!("2024-01-01T00:{:02}:{:02}Z", rv / 60 % 60, rv % 60));
            }
        }
        st.objects.insert((c.plural, ns, name), obj.clone());
        let type_ = if old.is_some() { "MODIFIED" } else { "ADDED" };
        st.log.push(Event {
            rv,
            plural: c.plural,
            type_,
            object: obj,
        });
        drop(st);
        self.shared.notify.send_modify(|n| n.0 = rv);
    }

    /// [`Self::apply`] for each document of a YAML text.
    pub(crate) fn apply_yaml(&self, yaml: &str) {
        for doc in yaml.split("\n---\n") {
            self.apply(serde_saphyr::from_str::<Value>(doc).expect("test YAML"));
        }
    }

    /// Deletes an object: DELETED.
    pub(crate) fn delete(&self, kind: &str, ns: &str, name: &str) {
        let c = collection_of_kind(kind);
        let mut st = self.lock();
        let mut obj = st
            .objects
            .remove(&(c.plural, ns.into(), name.into()))
            .unwrap_or_else(|| panic!("no {kind} {ns}/{name} to delete"));
        st.rv += 1;
        let rv = st.rv;
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        st.log.push(Event {
            rv,
            plural: c.plural,
            type_: "DELETED",
            object: obj,
        });
        drop(st);
        self.shared.notify.send_modify(|n| n.0 = rv);
    }

    /// Deletes an object while every watch is cut, and compacts its event away: watchers that
    /// come back from their last resourceVersion get 410 Gone and must list again to notice.
    pub(crate) fn delete_unobserved(&self, kind: &str, ns: &str, name: &str) {
        let c = collection_of_kind(kind);
        let mut st = self.lock();
        st.objects
            .remove(&(c.plural, ns.into(), name.into()))
            .unwrap_or_else(|| panic!("no {kind} {ns}/{name} to delete"));
        st.rv += 1;
        st.compacted = st.rv;
        let rv = st.rv;
        drop(st);
        self.shared.notify.send_modify(|n| *n = (rv, n.1 + 1));
    }
}

fn handle(shared: &Arc<Shared>, req: Request<hyper::body::Incoming>) -> Response<Body> {
    let target = req
        .uri()
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    let path = req.uri().path().to_string();
    let query: BTreeMap<String, String> = req
        .uri()
        .query()
        .unwrap_or_default()
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), percent_decode(v)))
        .collect();
    let mut st = shared.inner.lock().expect("fake API server state");
    st.requests.push(target);
    let Some(c) = COLLECTIONS.iter().find(|c| c.path == path) else {
        return json_response(
            StatusCode::NOT_FOUND,
            &status(
                404,
                "NotFound",
                "the server could not find the requested resource",
            ),
        );
    };
    if req.method() != hyper::Method::GET {
        return json_response(
            StatusCode::METHOD_NOT_ALLOWED,
            &status(405, "MethodNotAllowed", "read only"),
        );
    }
    if st.missing.contains(c.plural) {
        return json_response(
            StatusCode::NOT_FOUND,
            &status(
                404,
                "NotFound",
                "the server could not find the requested resource",
            ),
        );
    }
    let selector = query.get("fieldSelector").cloned();
    let watching = matches!(query.get("watch").map(String::as_str), Some("true" | "1"));
    if !watching {
        let items: Vec<Value> = st
            .objects
            .iter()
            .filter(|((p, _, _), o)| *p == c.plural && selected(selector.as_deref(), o))
            .map(|(_, o)| {
                let mut o = o.clone();
                if c.builtin {
                    // Built-in list items come without type fields.
                    if let Some(m) = o.as_object_mut() {
                        m.remove("apiVersion");
                        m.remove("kind");
                    }
                }
                o
            })
            .collect();
        let list = json!({
            "apiVersion": c.api_version,
            "kind": format!("{}List", c.kind),
            "metadata": {"resourceVersion": st.rv.to_string()},
            "items": items,
        });
        return json_response(StatusCode::OK, &list);
    }
    let from: u64 = query
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(st.rv);
    let (tx, rx) = mpsc::channel::<Bytes>(16);
    if from < st.compacted {
        let gone = json!({"type": "ERROR", "object": status(410, "Expired",
            &format!("too old resource version: {from} ({})", st.compacted))});
        let _ = tx.try_send(Bytes::from(format!("{gone}\n")));
        drop(tx);
    } else {
        let shared = shared.clone();
        let plural = c.plural;
        let generation = shared.notify.borrow().1;
        tokio::spawn(async move {
            let mut notified = shared.notify.subscribe();
            let mut cursor = from;
            loop {
                let lines: Vec<Bytes> = {
                    let st = shared.inner.lock().expect("fake API server state");
                    let out = st
                        .log
                        .iter()
                        .filter(|e| e.rv > cursor && e.plural == plural)
                        .filter(|e| selected(selector.as_deref(), &e.object))
                        .map(|e| {
                            let line = json!({"type": e.type_, "object": e.object});
                            Bytes::from(format!("{line}\n"))
                        })
                        .collect();
                    cursor = st.rv;
                    out
                };
                for l in lines {
                    if tx.send(l).await.is_err() {
                        return; // client went away
                    }
                }
                if notified.changed().await.is_err() || notified.borrow().1 != generation {
                    return; // watches cut
                }
            }
        });
    }
    let body = StreamBody::new(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
    }));
    drop(st);
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(BodyExt::boxed(body))
        .expect("response")
}
