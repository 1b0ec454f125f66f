//! Kubernetes config source (feature `kubernetes`): lists and watches the Istio resources
//! (WasmPlugin, ServiceEntry, Gateway, VirtualService, Sidecar) and image pull Secrets through
//! the API server with kube's `watcher`, like istiod's informers. Events are debounced like the
//! directory source (100 ms quiet, 1 s max) and applied atomically. Each object is turned back
//! into the YAML document a user would write and validated by the same parser as files, so the
//! errors are the same; a bad object is reported under `k8s://<Kind>/<namespace>/<name>` and its
//! last valid version keeps serving. Secret contents are never logged.

mod objects;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::stream::{BoxStream, SelectAll};
use futures::{StreamExt, stream};
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use kube::config::{KubeConfigOptions, Kubeconfig, KubeconfigError};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use self::objects::{KindObjects, WatchedKind};
use super::{FileStatus, SourceStatus};
use crate::config::{Config, Resource};
use crate::validate::{ValidationError, now_nanos, parse_file};

pub(crate) use self::objects::DOCKER_CONFIG_JSON;

/// networking.istio.io versions we can watch: `v1` (Istio 1.22 and later, including 1.29) and
/// `v1beta1` (older releases). The API server converts, so either sees every object.
pub const NETWORKING_VERSIONS: [&str; 2] = ["v1", "v1beta1"];

/// Errors of the Kubernetes source.
#[derive(Debug, thiserror::Error)]
pub enum KubernetesError {
    /// The kubeconfig file cannot be read or used.
    #[error("cannot use kubeconfig {path}: {source}")]
    Kubeconfig {
        /// File.
        path: PathBuf,
        /// Cause.
        source: KubeconfigError,
    },
    /// No kubeconfig given and none found.
    #[error(
        "cannot find Kubernetes credentials ($KUBECONFIG, ~/.kube/config or the in-cluster \
         service account): {0}; pass --kubeconfig"
    )]
    Infer(#[source] kube::config::InferConfigError),
    /// The default kubeconfig cannot be used with the requested context.
    #[error("cannot use the default kubeconfig with context {context:?}: {source}")]
    Context {
        /// Context.
        context: String,
        /// Cause.
        source: KubeconfigError,
    },
    /// The HTTP client cannot be built (TLS material, proxy settings).
    #[error("cannot create a Kubernetes client for {url}: {source}")]
    Client {
        /// API server URL.
        url: String,
        /// Cause.
        source: kube::Error,
    },
    /// Unsupported networking.istio.io version.
    #[error(
        "networking.istio.io version {0:?} is not supported; use v1 (Istio >= 1.22) or v1beta1"
    )]
    NetworkingVersion(String),
}

/// How to reach the API server and what to watch.
#[derive(Debug, Clone)]
pub struct KubernetesSettings {
    /// Kubeconfig file; `None` = kube's inference ($KUBECONFIG, ~/.kube/config, then in-cluster).
    pub kubeconfig: Option<PathBuf>,
    /// Kubeconfig context; `None` = the current context.
    pub context: Option<String>,
    /// Namespace to watch; `None` = all namespaces (as istiod).
    pub namespace: Option<String>,
    /// networking.istio.io version to watch (see [`NETWORKING_VERSIONS`]).
    pub networking_version: String,
    /// How long start-up waits for the first complete list of every type before serving what it
    /// has (a type whose CRD is not installed never lists).
    pub sync_timeout: Duration,
}

impl Default for KubernetesSettings {
    fn default() -> Self {
        Self {
            kubeconfig: None,
            context: None,
            namespace: None,
            networking_version: "v1".into(),
            sync_timeout: Duration::from_secs(30),
        }
    }
}

fn watched_kinds(networking_version: &str) -> Result<Vec<WatchedKind>, KubernetesError> {
    if !NETWORKING_VERSIONS.contains(&networking_version) {
        return Err(KubernetesError::NetworkingVersion(
            networking_version.into(),
        ));
    }
    let kind = |group: &str, version: &str, kind: &str, plural: &str| WatchedKind {
        resource: ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk(group, version, kind),
            plural,
        ),
        field_selector: None,
    };
    let net = "networking.istio.io";
    let mut secrets = kind("", "v1", "Secret", "secrets");
    secrets.field_selector = Some(format!("type={DOCKER_CONFIG_JSON}"));
    Ok(vec![
        kind(
            "extensions.istio.io",
            "v1alpha1",
            "WasmPlugin",
            "wasmplugins",
        ),
        kind(net, networking_version, "ServiceEntry", "serviceentries"),
        kind(net, networking_version, "Gateway", "gateways"),
        kind(net, networking_version, "VirtualService", "virtualservices"),
        kind(net, networking_version, "Sidecar", "sidecars"),
        secrets,
    ])
}

async fn client(s: &KubernetesSettings) -> Result<kube::Client, KubernetesError> {
    let options = KubeConfigOptions {
        context: s.context.clone(),
        ..Default::default()
    };
    let config = match (&s.kubeconfig, &s.context) {
        (Some(path), _) => {
            let kc = Kubeconfig::read_from(path).map_err(|source| KubernetesError::Kubeconfig {
                path: path.clone(),
                source,
            })?;
            kube::Config::from_custom_kubeconfig(kc, &options)
                .await
                .map_err(|source| KubernetesError::Kubeconfig {
                    path: path.clone(),
                    source,
                })?
        }
        (None, Some(context)) => {
            kube::Config::from_kubeconfig(&options)
                .await
                .map_err(|source| KubernetesError::Context {
                    context: context.clone(),
                    source,
                })?
        }
        (None, None) => kube::Config::infer()
            .await
            .map_err(KubernetesError::Infer)?,
    };
    let url = config.cluster_url.to_string();
    kube::Client::try_from(config).map_err(|source| KubernetesError::Client { url, source })
}

#[derive(Default)]
struct ObjectState {
    text: String,
    resources: Vec<Resource>,
}

#[derive(Default)]
struct State {
    objects: BTreeMap<String, ObjectState>,
    first_seen: HashMap<(String, String, String), i128>,
    /// Per object.
    status: BTreeMap<String, FileStatus>,
    /// Per watched type whose list or watch currently fails.
    watch_errors: BTreeMap<String, String>,
}

type WatchStream = BoxStream<'static, (usize, Result<Event<DynamicObject>, watcher::Error>)>;

/// Istio resources and pull secrets watched through the Kubernetes API.
pub struct KubernetesSource {
    client: kube::Client,
    kinds: Vec<WatchedKind>,
    namespace: Option<String>,
    sync_timeout: Duration,
    state: Mutex<State>,
    tx: watch::Sender<Arc<Config>>,
    synced: watch::Sender<bool>,
}

impl std::fmt::Debug for KubernetesSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubernetesSource")
            .field("namespace", &self.namespace)
            .field(
                "kinds",
                &self
                    .kinds
                    .iter()
                    .map(|k| k.status_key())
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl KubernetesSource {
    /// Builds the client. Nothing is requested until [`Self::run`]; the receiver sees every new
    /// config.
    pub async fn connect(
        settings: &KubernetesSettings,
    ) -> Result<(Arc<Self>, watch::Receiver<Arc<Config>>), KubernetesError> {
        let kinds = watched_kinds(&settings.networking_version)?;
        let client = client(settings).await?;
        let (tx, rx) = watch::channel(Arc::new(Config::default()));
        let src = Arc::new(Self {
            client,
            kinds,
            namespace: settings.namespace.clone(),
            sync_timeout: settings.sync_timeout,
            state: Mutex::new(State::default()),
            tx,
            synced: watch::Sender::new(false),
        });
        Ok((src, rx))
    }

    /// The current status: per object, and per watched type whose watch fails.
    pub fn status(&self) -> SourceStatus {
        let st = self.lock();
        let mut files: BTreeMap<PathBuf, FileStatus> = st
            .status
            .iter()
            .map(|(k, s)| (PathBuf::from(k), s.clone()))
            .collect();
        for (key, reason) in &st.watch_errors {
            files.insert(
                PathBuf::from(key),
                FileStatus {
                    errors: vec![ValidationError {
                        file: key.clone(),
                        resource: "-".into(),
                        path: "-".into(),
                        reason: reason.clone(),
                    }],
                    ..Default::default()
                },
            );
        }
        SourceStatus { files }
    }

    /// The current config.
    pub fn config(&self) -> Arc<Config> {
        self.tx.borrow().clone()
    }

    /// Waits until every watched type has been listed once, or the sync timeout has passed
    /// (then what was listed is served). Needs [`Self::run`] to be running.
    pub async fn wait_synced(&self) {
        let mut rx = self.synced.subscribe();
        // The run loop flags it at the sync timeout at the latest; the margin covers a run loop
        // that was never started.
        let limit = self.sync_timeout + Duration::from_secs(1);
        let _ = tokio::time::timeout(limit, rx.wait_for(|s| *s)).await;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn streams(&self) -> SelectAll<WatchStream> {
        stream::select_all(self.kinds.iter().enumerate().map(|(i, k)| {
            let api: Api<DynamicObject> = match &self.namespace {
                Some(ns) => Api::namespaced_with(self.client.clone(), ns, &k.resource),
                None => Api::all_with(self.client.clone(), &k.resource),
            };
            let mut config = watcher::Config::default();
            if let Some(f) = &k.field_selector {
                config = config.fields(f);
            }
            watcher::watcher(api, config)
                .default_backoff()
                .map(move |ev| (i, ev))
                .boxed()
        }))
    }

    /// Lists and watches every type until the returned future is dropped. Events are debounced
    /// (`quiet` without events, at most `max` after the first) and then applied at once.
    pub async fn run(self: Arc<Self>, quiet: Duration, max: Duration) {
        let mut events = self.streams();
        let mut kinds: Vec<KindObjects> = self.kinds.iter().map(|_| Default::default()).collect();
        let sync_deadline = Instant::now() + self.sync_timeout;
        let mut dirty = false;
        loop {
            let synced = *self.synced.borrow();
            // Before the first sync, also wake at its deadline.
            let first = if synced {
                Ok(events.next().await)
            } else {
                tokio::time::timeout_at(sync_deadline, events.next()).await
            };
            match first {
                Ok(Some((i, ev))) => dirty |= self.on_event(&mut kinds, i, ev),
                Ok(None) => return,
                Err(_) => {}
            }
            let deadline = Instant::now() + max;
            loop {
                let wake = deadline.min(Instant::now() + quiet);
                match tokio::time::timeout_at(wake, events.next()).await {
                    Ok(Some((i, ev))) => dirty |= self.on_event(&mut kinds, i, ev),
                    Ok(None) => return,
                    Err(_) => break,
                }
            }
            let all_listed = kinds.iter().all(|k| k.synced);
            if !(synced || all_listed || Instant::now() >= sync_deadline) {
                continue; // keep the first config until every type is listed
            }
            if dirty {
                self.apply(&kinds);
                dirty = false;
            }
            if !synced {
                if !all_listed {
                    let missing: Vec<String> = self
                        .kinds
                        .iter()
                        .zip(&kinds)
                        .filter(|(_, o)| !o.synced)
                        .map(|(k, _)| k.status_key())
                        .collect();
                    warn!(
                        ?missing,
                        "serving without a complete list of these types (is the CRD installed, may we list it?)"
                    );
                }
                self.synced.send_replace(true);
            }
        }
    }

    fn on_event(
        &self,
        kinds: &mut [KindObjects],
        i: usize,
        ev: Result<Event<DynamicObject>, watcher::Error>,
    ) -> bool {
        let (Some(kind), Some(objects)) = (self.kinds.get(i), kinds.get_mut(i)) else {
            return false;
        };
        match ev {
            // etcd compacted past our resourceVersion: routine, the watcher lists again.
            Err(watcher::Error::WatchError(s)) if s.code == 410 => {
                info!(kind = %kind.status_key(), "Kubernetes watch expired (410 Gone); listing again");
                false
            }
            Err(e) => {
                warn!(kind = %kind.status_key(), error = %e, "Kubernetes list/watch failed; retrying");
                self.lock()
                    .watch_errors
                    .insert(kind.status_key(), format!("list/watch failed: {e}"));
                false
            }
            Ok(ev) => {
                if matches!(ev, Event::InitDone) {
                    self.lock().watch_errors.remove(&kind.status_key());
                }
                objects.on_event(kind, ev)
            }
        }
    }

    /// Makes the wanted objects current: changed ones are validated, bad ones keep their last
    /// valid version, and one new config is published if anything changed. Returns whether it
    /// was.
    fn apply(&self, kinds: &[KindObjects]) -> bool {
        let mut st = self.lock();
        let st = &mut *st;
        let live: HashSet<&String> = kinds.iter().flat_map(|k| k.objects.keys()).collect();
        st.objects.retain(|k, _| {
            let keep = live.contains(k);
            if !keep {
                info!(object = %k, "Kubernetes object removed");
            }
            keep
        });
        st.status.retain(|k, _| live.contains(k));
        let (mut applied, mut failed) = (0, 0);
        for (key, doc) in kinds.iter().flat_map(|k| &k.objects) {
            let text = match doc {
                Ok(text) => text,
                Err(reason) => {
                    let e = ValidationError {
                        file: key.clone(),
                        resource: "-".into(),
                        path: "-".into(),
                        reason: reason.clone(),
                    };
                    if st.status.get(key).is_some_and(|s| s.errors == [e.clone()]) {
                        continue; // already reported
                    }
                    // Forget the text so that the next good version is parsed again.
                    let serving = match st.objects.get_mut(key) {
                        Some(o) => {
                            o.text.clear();
                            o.resources.len()
                        }
                        None => 0,
                    };
                    warn!(error = %e, "invalid Kubernetes object; its last valid version keeps serving");
                    st.status.insert(
                        key.clone(),
                        FileStatus {
                            errors: vec![e],
                            warnings: Vec::new(),
                            serving,
                        },
                    );
                    failed += 1;
                    continue;
                }
            };
            if st.objects.get(key).is_some_and(|o| &o.text == text) {
                continue;
            }
            let now = now_nanos();
            let first_seen = &mut st.first_seen;
            let parsed = parse_file(key, text, &mut |k, ns, n| {
                *first_seen
                    .entry((k.into(), ns.into(), n.into()))
                    .or_insert(now)
            });
            for w in &parsed.warnings {
                warn!(%w, "config warning");
            }
            let entry = st.objects.entry(key.clone()).or_default();
            entry.text = text.clone();
            if parsed.errors.is_empty() {
                entry.resources = parsed.resources;
                debug!(object = %key, "Kubernetes object applied");
                applied += 1;
            } else {
                for e in &parsed.errors {
                    warn!(error = %e, "invalid Kubernetes object; its last valid version keeps serving");
                }
                failed += 1;
            }
            st.status.insert(
                key.clone(),
                FileStatus {
                    errors: parsed.errors,
                    warnings: parsed.warnings,
                    serving: entry.resources.len(),
                },
            );
        }
        let all: Vec<Resource> = st
            .objects
            .values()
            .flat_map(|o| o.resources.iter().cloned())
            .collect();
        let names: HashSet<(String, String, String)> = all
            .iter()
            .map(|r| {
                let (k, ns, n) = r.key();
                (k.to_string(), ns.to_string(), n.to_string())
            })
            .collect();
        st.first_seen.retain(|k, _| names.contains(k));
        let config = Config::build(all);
        let changed = self.tx.send_if_modified(|cur| {
            if **cur == config {
                false
            } else {
                *cur = Arc::new(config);
                true
            }
        });
        info!(
            objects = st.objects.len(),
            applied, failed, changed, "Kubernetes config applied"
        );
        changed
    }
}

impl super::ConfigSource for KubernetesSource {
    fn status(&self) -> SourceStatus {
        KubernetesSource::status(self)
    }

    fn config(&self) -> Arc<Config> {
        KubernetesSource::config(self)
    }
}
