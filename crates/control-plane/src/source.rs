//! Config sources. The directory source: multi-document YAML files, watched with `notify`,
//! debounced like istiod (100 ms quiet, 1 s max), applied atomically. A broken file is reported
//! and the last valid version of its resources keeps serving; other files are not disturbed.
//! With the `kubernetes` feature, [`kubernetes::KubernetesSource`] does the same for objects
//! watched through the Kubernetes API. Both publish `Arc<Config>` through a `watch` channel and
//! answer [`ConfigSource`] for the status endpoint.

#[cfg(feature = "kubernetes")]
pub mod kubernetes;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use crate::config::{Config, Resource};
use crate::validate::{ValidationError, now_nanos, parse_file};

/// Errors of the directory source.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The directory cannot be read.
    #[error("cannot read config directory {dir}: {source}")]
    ReadDir {
        /// Directory.
        dir: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The watcher failed.
    #[error("cannot watch config directory {dir}: {source}")]
    Watch {
        /// Directory.
        dir: PathBuf,
        /// Cause.
        source: notify::Error,
    },
}

/// State of one file.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FileStatus {
    /// Errors of the current content (empty = applied).
    pub errors: Vec<ValidationError>,
    /// Warnings of the current content.
    pub warnings: Vec<ValidationError>,
    /// Resources currently served from this file (the last valid version).
    pub serving: usize,
}

/// Status of the whole source, for the CLI and logs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SourceStatus {
    /// Per file; for the Kubernetes source, per object (`k8s://<Kind>/<namespace>/<name>`) and
    /// per watched resource type with a failing watch (`k8s://<plural>.<group>/<version>`).
    pub files: BTreeMap<PathBuf, FileStatus>,
}

/// What the control plane asks of a running config source (directory or Kubernetes).
pub trait ConfigSource: Send + Sync + std::fmt::Debug {
    /// The current status (per-file or per-object errors).
    fn status(&self) -> SourceStatus;
    /// The config currently served.
    fn config(&self) -> Arc<Config>;
}

impl ConfigSource for DirectorySource {
    fn status(&self) -> SourceStatus {
        DirectorySource::status(self)
    }

    fn config(&self) -> Arc<Config> {
        DirectorySource::config(self)
    }
}

impl SourceStatus {
    /// Every error of every file.
    pub fn errors(&self) -> impl Iterator<Item = &ValidationError> {
        self.files.values().flat_map(|f| &f.errors)
    }
}

#[derive(Default)]
struct FileState {
    text: String,
    resources: Vec<Resource>,
}

#[derive(Default)]
struct State {
    files: BTreeMap<PathBuf, FileState>,
    first_seen: HashMap<(String, String, String), i128>,
    status: SourceStatus,
}

/// A watched directory of YAML files.
pub struct DirectorySource {
    dir: PathBuf,
    state: Mutex<State>,
    tx: watch::Sender<Arc<Config>>,
}

impl std::fmt::Debug for DirectorySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirectorySource")
            .field("dir", &self.dir)
            .finish()
    }
}

fn is_config_file(p: &Path) -> bool {
    matches!(
        p.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml" | "json")
    ) && !p
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with('.'))
}

fn list_files(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        if p.is_dir() {
            if !p
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with('.'))
            {
                list_files(&p, out)?;
            }
        } else if is_config_file(&p) {
            out.push(p);
        }
    }
    Ok(())
}

/// Validates every file under `path` (a file or a directory) offline.
pub fn validate_path(
    path: &Path,
) -> Result<BTreeMap<PathBuf, crate::validate::Parsed>, SourceError> {
    let mut files = Vec::new();
    if path.is_dir() {
        list_files(path, &mut files).map_err(|source| SourceError::ReadDir {
            dir: path.into(),
            source,
        })?;
    } else {
        files.push(path.to_path_buf());
    }
    files.sort();
    let now = now_nanos();
    let mut out = BTreeMap::new();
    for f in files {
        let parsed = match std::fs::read_to_string(&f) {
            Ok(text) => parse_file(&f.display().to_string(), &text, &mut |_, _, _| now),
            Err(e) => crate::validate::Parsed {
                errors: vec![ValidationError {
                    file: f.display().to_string(),
                    resource: "-".into(),
                    path: "-".into(),
                    reason: format!("cannot read: {e}"),
                }],
                ..Default::default()
            },
        };
        out.insert(f, parsed);
    }
    Ok(out)
}

impl DirectorySource {
    /// Loads `dir` once. The receiver sees every new config.
    pub fn load(
        dir: impl Into<PathBuf>,
    ) -> Result<(Arc<Self>, watch::Receiver<Arc<Config>>), SourceError> {
        let (tx, rx) = watch::channel(Arc::new(Config::default()));
        let src = Arc::new(Self {
            dir: dir.into(),
            state: Mutex::new(State::default()),
            tx,
        });
        src.rescan()?;
        Ok((src, rx))
    }

    /// The current status (per-file errors).
    pub fn status(&self) -> SourceStatus {
        self.lock().status.clone()
    }

    /// The current config.
    pub fn config(&self) -> Arc<Config> {
        self.tx.borrow().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Re-reads changed files and publishes a new config if anything changed. Returns whether it did.
    pub fn rescan(&self) -> Result<bool, SourceError> {
        let mut files = Vec::new();
        list_files(&self.dir, &mut files).map_err(|source| SourceError::ReadDir {
            dir: self.dir.clone(),
            source,
        })?;
        // Path order: resources first seen in the same scan get increasing times in this order.
        files.sort();
        let mut st = self.lock();
        let st = &mut *st;
        let before: Vec<PathBuf> = st.files.keys().cloned().collect();
        for p in &before {
            if !files.contains(p) {
                info!(file = %p.display(), "config file removed");
                st.files.remove(p);
                st.status.files.remove(p);
            }
        }
        for p in &files {
            let Ok(text) = std::fs::read_to_string(p) else {
                continue; // vanished between listing and reading; the next event handles it
            };
            if st.files.get(p).is_some_and(|f| f.text == text) {
                continue;
            }
            let now = now_nanos();
            let first_seen = &mut st.first_seen;
            let parsed = parse_file(&p.display().to_string(), &text, &mut |k, ns, n| {
                *first_seen
                    .entry((k.into(), ns.into(), n.into()))
                    .or_insert(now)
            });
            for w in &parsed.warnings {
                warn!(%w, "config warning");
            }
            let entry = st.files.entry(p.clone()).or_default();
            entry.text = text;
            if parsed.errors.is_empty() {
                entry.resources = parsed.resources;
                info!(file = %p.display(), resources = entry.resources.len(), "config file applied");
            } else {
                for e in &parsed.errors {
                    warn!(error = %e, "invalid config; the last valid version of this file keeps serving");
                }
            }
            st.status.files.insert(
                p.clone(),
                FileStatus {
                    errors: parsed.errors,
                    warnings: parsed.warnings,
                    serving: entry.resources.len(),
                },
            );
        }
        // Merge: the first file (by path) defining a resource wins.
        let mut seen: HashMap<(&'static str, String, String), PathBuf> = HashMap::new();
        let mut all = Vec::new();
        let mut dup_errors: Vec<(PathBuf, ValidationError)> = Vec::new();
        for (p, f) in &st.files {
            for r in &f.resources {
                let (k, ns, n) = r.key();
                match seen.get(&(k, ns.to_string(), n.to_string())) {
                    Some(first) => dup_errors.push((
                        p.clone(),
                        ValidationError {
                            file: p.display().to_string(),
                            resource: format!("{k} {ns}/{n}"),
                            path: "metadata.name".into(),
                            reason: format!(
                                "already defined in {}; this copy is ignored",
                                first.display()
                            ),
                        },
                    )),
                    None => {
                        seen.insert((k, ns.to_string(), n.to_string()), p.clone());
                        all.push(r.clone());
                    }
                }
            }
        }
        for (p, e) in dup_errors {
            warn!(error = %e, "duplicate resource");
            if let Some(s) = st.status.files.get_mut(&p)
                && !s.errors.contains(&e)
            {
                s.errors.push(e);
            }
        }
        // Forget first-seen times of resources that are gone.
        let live: std::collections::HashSet<(String, String, String)> = all
            .iter()
            .map(|r| {
                let (k, ns, n) = r.key();
                (k.to_string(), ns.to_string(), n.to_string())
            })
            .collect();
        st.first_seen.retain(|k, _| live.contains(k));
        let config = Config::build(all);
        let changed = self.tx.send_if_modified(|cur| {
            if **cur == config {
                false
            } else {
                *cur = Arc::new(config);
                true
            }
        });
        Ok(changed)
    }

    /// Watches the directory until the returned future is dropped: events are debounced
    /// (`quiet` without events, at most `max` after the first) and then applied by [`Self::rescan`].
    pub async fn watch(self: Arc<Self>, quiet: Duration, max: Duration) -> Result<(), SourceError> {
        let (ev_tx, mut ev_rx) = mpsc::unbounded_channel();
        let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            if res.is_ok() {
                let _ = ev_tx.send(());
            }
        })
        .map_err(|source| SourceError::Watch {
            dir: self.dir.clone(),
            source,
        })?;
        watcher
            .watch(&self.dir, RecursiveMode::Recursive)
            .map_err(|source| SourceError::Watch {
                dir: self.dir.clone(),
                source,
            })?;
        // Changes between load() and the watcher starting.
        self.rescan()?;
        while ev_rx.recv().await.is_some() {
            let deadline = tokio::time::Instant::now() + max;
            loop {
                match tokio::time::timeout_at(
                    deadline.min(tokio::time::Instant::now() + quiet),
                    ev_rx.recv(),
                )
                .await
                {
                    Ok(Some(())) => continue,
                    Ok(None) => return Ok(()),
                    Err(_) => break,
                }
            }
            if let Err(e) = self.rescan() {
                warn!(error = %e, "config rescan failed; keeping the current config");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plugin(name: &str, cfg: &str) -> String {
        format!(
            "apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nmetadata: {{name: {name}, namespace: app}}\nspec:\n  url: oci://r/{name}\n  pluginConfig: {{v: {cfg}}}\n"
        )
    }

    fn cfg_of(src: &DirectorySource, name: &str) -> Option<String> {
        src.config()
            .plugins
            .iter()
            .find(|p| p.meta.name == name)
            .and_then(|p| p.spec.plugin_config.as_ref())
            .map(|c| c["v"].to_string())
    }

    #[test]
    fn broken_file_keeps_its_last_valid_version_and_does_not_disturb_others() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.yaml"), plugin("a", "1")).unwrap();
        std::fs::write(dir.path().join("b.yaml"), plugin("b", "1")).unwrap();
        let (src, mut rx) = DirectorySource::load(dir.path()).unwrap();
        rx.borrow_and_update();
        assert_eq!(cfg_of(&src, "a").as_deref(), Some("1"));
        let created_a = src
            .config()
            .plugins
            .iter()
            .find(|p| p.meta.name == "a")
            .unwrap()
            .meta
            .created;

        // Break a.yaml and change b.yaml in the same rescan.
        std::fs::write(
            dir.path().join("a.yaml"),
            plugin("a", "2").replace("url: oci://r/a", "url: ftp://r/a"),
        )
        .unwrap();
        std::fs::write(dir.path().join("b.yaml"), plugin("b", "2")).unwrap();
        assert!(src.rescan().unwrap());
        assert!(rx.has_changed().unwrap());
        assert_eq!(
            cfg_of(&src, "a").as_deref(),
            Some("1"),
            "last valid a keeps serving"
        );
        assert_eq!(cfg_of(&src, "b").as_deref(), Some("2"), "b is applied");
        let st = src.status();
        let a = &st.files[&dir.path().join("a.yaml")];
        assert_eq!(a.serving, 1);
        assert_eq!(a.errors[0].path, "spec.url");
        assert!(a.errors[0].file.ends_with("a.yaml"));
        assert!(st.files[&dir.path().join("b.yaml")].errors.is_empty());

        // Fixing a.yaml applies it and keeps its first-seen creation time (order is stable).
        std::fs::write(dir.path().join("a.yaml"), plugin("a", "3")).unwrap();
        assert!(src.rescan().unwrap());
        assert_eq!(cfg_of(&src, "a").as_deref(), Some("3"));
        assert_eq!(
            src.config()
                .plugins
                .iter()
                .find(|p| p.meta.name == "a")
                .unwrap()
                .meta
                .created,
            created_a
        );
        assert!(src.status().errors().next().is_none());

        // Nothing changed: no new config.
        rx.borrow_and_update();
        assert!(!src.rescan().unwrap());
        assert!(!rx.has_changed().unwrap());

        // A duplicate in another file is reported; the first file (by path) wins.
        std::fs::write(dir.path().join("c.yaml"), plugin("a", "9")).unwrap();
        src.rescan().unwrap();
        assert_eq!(cfg_of(&src, "a").as_deref(), Some("3"));
        assert!(
            src.status().files[&dir.path().join("c.yaml")].errors[0]
                .reason
                .contains("already defined")
        );

        // Deleting a file removes its resources.
        std::fs::remove_file(dir.path().join("b.yaml")).unwrap();
        src.rescan().unwrap();
        assert!(cfg_of(&src, "b").is_none());
    }

    #[test]
    fn validate_path_reports_every_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ok.yaml"), plugin("a", "1")).unwrap();
        std::fs::write(
            dir.path().join("bad.yml"),
            plugin("b", "1").replace("oci://r/b", "''"),
        )
        .unwrap();
        std::fs::write(dir.path().join("notes.txt"), "ignored").unwrap();
        let r = validate_path(dir.path()).unwrap();
        assert_eq!(r.len(), 2);
        assert!(r[&dir.path().join("ok.yaml")].errors.is_empty());
        let bad = &r[&dir.path().join("bad.yml")].errors;
        assert_eq!(bad[0].path, "spec.url");
        assert_eq!(bad[0].resource, "WasmPlugin app/b");
    }
}
