//! The Istio resources we read, as serde structs mirroring the user's YAML exactly.
//! Unknown fields are rejected (an unsupported field is an error naming it).

pub mod networking;
pub mod wasm;

use std::collections::BTreeMap;

use serde::Deserialize;

pub use networking::{Gateway, Secret, ServiceEntry, Sidecar, VirtualService};
pub use wasm::WasmPlugin;

/// Kubernetes object metadata. Fields we do not use (managedFields, ownerReferences, ...) are
/// accepted and ignored, as `kubectl get -o yaml` output carries them.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    /// Name (required).
    #[serde(default)]
    pub name: String,
    /// Namespace; defaults to `default`.
    #[serde(default)]
    pub namespace: Option<String>,
    /// Labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Annotations.
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// RFC 3339 creation time; first-seen time when absent.
    #[serde(default)]
    pub creation_timestamp: Option<String>,
    /// Kubernetes resourceVersion; a content hash when absent.
    #[serde(default)]
    pub resource_version: Option<String>,
}

impl ObjectMeta {
    /// The namespace, `default` when unset.
    pub fn namespace(&self) -> &str {
        self.namespace.as_deref().unwrap_or("default")
    }
}

/// `apiVersion`/`kind`/`metadata` of any document, read before the typed parse.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Header {
    /// e.g. `extensions.istio.io/v1alpha1`.
    #[serde(default)]
    pub api_version: String,
    /// e.g. `WasmPlugin`.
    #[serde(default)]
    pub kind: String,
    /// Metadata.
    #[serde(default)]
    pub metadata: ObjectMeta,
}

/// A whole document of kind `T` (`apiVersion`, `kind`, `metadata`, `spec`).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Document<S> {
    /// apiVersion.
    pub api_version: String,
    /// kind.
    pub kind: String,
    /// metadata.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// spec.
    pub spec: S,
    /// status is accepted (from `kubectl get -o yaml`) and ignored.
    #[serde(default)]
    pub status: Option<serde_json::Value>,
}

/// Istio's `WorkloadSelector` / label selector.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadSelector {
    /// Labels that must all be present on the workload.
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
}
