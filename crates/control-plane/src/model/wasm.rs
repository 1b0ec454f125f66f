//! `WasmPlugin` (extensions.istio.io/v1alpha1), field for field as istio/api `wasm.proto`.

use serde::Deserialize;

use super::WorkloadSelector;

/// `WasmPlugin.spec`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WasmPlugin {
    /// Workloads selected by labels.
    #[serde(default)]
    pub selector: Option<WorkloadSelector>,
    /// Deprecated singular form of `targetRefs`.
    #[serde(default)]
    pub target_ref: Option<PolicyTargetReference>,
    /// Gateways (Gateway API) the plugin attaches to.
    #[serde(default)]
    pub target_refs: Vec<PolicyTargetReference>,
    /// Module URL: `oci://`, `file://`, `http(s)://`; no scheme means `oci://`.
    #[serde(default)]
    pub url: String,
    /// Expected sha256 of the module (or OCI manifest digest).
    #[serde(default)]
    pub sha256: Option<String>,
    /// Pull policy.
    #[serde(default)]
    pub image_pull_policy: Option<PullPolicy>,
    /// Name of a `kubernetes.io/dockerconfigjson` Secret in the plugin's namespace.
    #[serde(default)]
    pub image_pull_secret: Option<String>,
    /// Not implemented by Istio; accepted for compatibility.
    #[serde(default)]
    pub verification_key: Option<String>,
    /// Any YAML; sent to the plugin as JSON.
    #[serde(default)]
    pub plugin_config: Option<serde_json::Map<String, serde_json::Value>>,
    /// Root id.
    #[serde(default)]
    pub plugin_name: Option<String>,
    /// Phase in the filter chain.
    #[serde(default)]
    pub phase: Option<PluginPhase>,
    /// Order within the phase, descending; unset sorts after every explicit value.
    #[serde(default)]
    pub priority: Option<i32>,
    /// VM configuration (environment).
    #[serde(default)]
    pub vm_config: Option<VmConfig>,
    /// Traffic selectors; the plugin applies if any matches.
    #[serde(default, rename = "match")]
    pub match_: Vec<TrafficSelector>,
    /// HTTP or NETWORK filter.
    #[serde(default, rename = "type")]
    pub type_: Option<PluginType>,
    /// What to do when the plugin fails.
    #[serde(default)]
    pub fail_strategy: Option<FailStrategy>,
}

/// `PolicyTargetReference`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyTargetReference {
    /// API group (`gateway.networking.k8s.io`, `networking.istio.io`, `` for core).
    #[serde(default)]
    pub group: String,
    /// Kind (`Gateway`, `GatewayClass`, `Service`, `ServiceEntry`).
    #[serde(default)]
    pub kind: String,
    /// Name.
    #[serde(default)]
    pub name: String,
    /// Must be empty.
    #[serde(default)]
    pub namespace: String,
}

/// `PullPolicy`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
pub enum PullPolicy {
    /// Default behaviour.
    #[serde(rename = "UNSPECIFIED_POLICY")]
    Unspecified,
    /// Reuse a cached module.
    IfNotPresent,
    /// Pull whenever the resource changes.
    Always,
}

/// `PluginPhase`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PluginPhase {
    /// Before Istio authentication.
    #[serde(rename = "AUTHN")]
    Authn,
    /// Before Istio authorization.
    #[serde(rename = "AUTHZ")]
    Authz,
    /// Before Istio stats.
    #[serde(rename = "STATS")]
    Stats,
    /// End of chain, before the router.
    #[serde(rename = "UNSPECIFIED_PHASE")]
    Unspecified,
}

/// `PluginType`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Hash)]
pub enum PluginType {
    /// Same as HTTP.
    #[serde(rename = "UNSPECIFIED_PLUGIN_TYPE")]
    Unspecified,
    /// HTTP filter.
    #[serde(rename = "HTTP")]
    Http,
    /// Network (L4) filter.
    #[serde(rename = "NETWORK")]
    Network,
}

/// `FailStrategy`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
pub enum FailStrategy {
    /// Fail requests when the plugin fails (default).
    #[serde(rename = "FAIL_CLOSE")]
    FailClose,
    /// Skip the plugin when it fails.
    #[serde(rename = "FAIL_OPEN")]
    FailOpen,
    /// Restart the VM for the next request after a runtime failure.
    #[serde(rename = "FAIL_RELOAD")]
    FailReload,
}

/// `VmConfig`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VmConfig {
    /// Environment variables for the VM.
    #[serde(default)]
    pub env: Vec<EnvVar>,
}

/// `EnvVar`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnvVar {
    /// Name.
    #[serde(default)]
    pub name: String,
    /// Value (INLINE only).
    #[serde(default)]
    pub value: Option<String>,
    /// Source of the value.
    #[serde(default)]
    pub value_from: Option<EnvValueSource>,
}

/// `EnvValueSource`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
pub enum EnvValueSource {
    /// The value given.
    #[serde(rename = "INLINE")]
    Inline,
    /// The proxy's own environment variable of that name.
    #[serde(rename = "HOST")]
    Host,
}

/// `WasmPlugin.TrafficSelector`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrafficSelector {
    /// Traffic direction.
    #[serde(default)]
    pub mode: Option<WorkloadMode>,
    /// Ports; empty = any.
    #[serde(default)]
    pub ports: Vec<PortSelector>,
}

/// `WorkloadMode`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
pub enum WorkloadMode {
    /// Both.
    #[serde(rename = "UNDEFINED")]
    Undefined,
    /// Outbound and gateways.
    #[serde(rename = "CLIENT")]
    Client,
    /// Inbound.
    #[serde(rename = "SERVER")]
    Server,
    /// Both.
    #[serde(rename = "CLIENT_AND_SERVER")]
    ClientAndServer,
}

/// `PortSelector`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortSelector {
    /// Port number 1..65535.
    #[serde(default)]
    pub number: u32,
}
