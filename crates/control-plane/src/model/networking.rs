//! The routing subset: ServiceEntry, Gateway, VirtualService, Sidecar (networking.istio.io) and
//! Secret (v1). Fields outside the documented subset are rejected by name.

use std::collections::BTreeMap;

use serde::Deserialize;

/// `ServiceEntry.spec`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceEntry {
    /// Hosts (FQDNs).
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Ports.
    #[serde(default)]
    pub ports: Vec<ServicePort>,
    /// `MESH_EXTERNAL` / `MESH_INTERNAL` (accepted, no effect).
    #[serde(default)]
    pub location: Option<String>,
    /// `STATIC` or `DNS`.
    #[serde(default)]
    pub resolution: Option<Resolution>,
    /// Endpoints.
    #[serde(default)]
    pub endpoints: Vec<WorkloadEntry>,
}

/// `ServicePort`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServicePort {
    /// Port number.
    #[serde(default)]
    pub number: u32,
    /// `HTTP`, `HTTP2`, `GRPC`, `TCP`.
    #[serde(default)]
    pub protocol: Option<String>,
    /// Name.
    #[serde(default)]
    pub name: Option<String>,
    /// Endpoint port when endpoints do not name one.
    #[serde(default)]
    pub target_port: Option<u32>,
}

/// `ServiceEntry.Resolution` (supported subset).
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
pub enum Resolution {
    /// Endpoints are IPs (EDS).
    #[serde(rename = "STATIC")]
    Static,
    /// Endpoints are resolved by DNS (STRICT_DNS cluster).
    #[serde(rename = "DNS")]
    Dns,
}

/// `WorkloadEntry` as used in `ServiceEntry.endpoints`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadEntry {
    /// IP or hostname.
    #[serde(default)]
    pub address: String,
    /// Port name → endpoint port.
    #[serde(default)]
    pub ports: BTreeMap<String, u32>,
    /// Labels (accepted, no effect).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Load-balancing weight.
    #[serde(default)]
    pub weight: Option<u32>,
}

/// `Gateway.spec` (networking.istio.io).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Gateway {
    /// Gateway proxies selected by labels.
    #[serde(default)]
    pub selector: BTreeMap<String, String>,
    /// Servers.
    #[serde(default)]
    pub servers: Vec<Server>,
}

/// `Gateway.Server` (HTTP only).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Server {
    /// Port.
    #[serde(default)]
    pub port: GatewayPort,
    /// Hosts (`*`, `ns/host`, `host`).
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Bind address.
    #[serde(default)]
    pub bind: Option<String>,
    /// Name.
    #[serde(default)]
    pub name: Option<String>,
}

/// `Port`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GatewayPort {
    /// Number.
    #[serde(default)]
    pub number: u32,
    /// Protocol (`HTTP`, `HTTP2`).
    #[serde(default)]
    pub protocol: String,
    /// Name.
    #[serde(default)]
    pub name: String,
    /// Accepted, no effect.
    #[serde(default)]
    pub target_port: Option<u32>,
}

/// `VirtualService.spec`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VirtualService {
    /// Hosts.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Gateways (`name` or `ns/name`); `mesh` for sidecars. Empty = `mesh`.
    #[serde(default)]
    pub gateways: Vec<String>,
    /// HTTP routes.
    #[serde(default)]
    pub http: Vec<HttpRoute>,
}

/// `HTTPRoute`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRoute {
    /// Name.
    #[serde(default)]
    pub name: Option<String>,
    /// Matches (any).
    #[serde(default, rename = "match")]
    pub match_: Vec<HttpMatchRequest>,
    /// Weighted destinations.
    #[serde(default)]
    pub route: Vec<HttpRouteDestination>,
    /// Rewrite.
    #[serde(default)]
    pub rewrite: Option<HttpRewrite>,
    /// Timeout (`5s`, `100ms`).
    #[serde(default)]
    pub timeout: Option<String>,
    /// Retries.
    #[serde(default)]
    pub retries: Option<HttpRetry>,
}

/// `HTTPMatchRequest`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpMatchRequest {
    /// Name.
    #[serde(default)]
    pub name: Option<String>,
    /// URI.
    #[serde(default)]
    pub uri: Option<StringMatch>,
    /// Headers.
    #[serde(default)]
    pub headers: BTreeMap<String, StringMatch>,
    /// Method.
    #[serde(default)]
    pub method: Option<StringMatch>,
}

/// `StringMatch` (exactly one of).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StringMatch {
    /// Exact.
    #[serde(default)]
    pub exact: Option<String>,
    /// Prefix.
    #[serde(default)]
    pub prefix: Option<String>,
    /// RE2 regex.
    #[serde(default)]
    pub regex: Option<String>,
}

/// `HTTPRouteDestination`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRouteDestination {
    /// Destination.
    #[serde(default)]
    pub destination: Destination,
    /// Weight.
    #[serde(default)]
    pub weight: Option<u32>,
}

/// `Destination`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Destination {
    /// Service host (a ServiceEntry host).
    #[serde(default)]
    pub host: String,
    /// Port; required when the service has several.
    #[serde(default)]
    pub port: Option<PortSelectorNumber>,
}

/// `PortSelector`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortSelectorNumber {
    /// Number.
    #[serde(default)]
    pub number: u32,
}

/// `HTTPRewrite`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRewrite {
    /// Path prefix replacement.
    #[serde(default)]
    pub uri: Option<String>,
    /// Host header.
    #[serde(default)]
    pub authority: Option<String>,
}

/// `HTTPRetry`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRetry {
    /// Attempts.
    #[serde(default)]
    pub attempts: u32,
    /// Per-try timeout.
    #[serde(default)]
    pub per_try_timeout: Option<String>,
    /// Envoy retry_on.
    #[serde(default)]
    pub retry_on: Option<String>,
}

/// `Sidecar.spec` (ingress only).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Sidecar {
    /// Workloads selected.
    #[serde(default)]
    pub workload_selector: Option<SidecarSelector>,
    /// Inbound listeners.
    #[serde(default)]
    pub ingress: Vec<IstioIngressListener>,
}

/// `WorkloadSelector` as spelled in Sidecar (`labels`).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SidecarSelector {
    /// Labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// `IstioIngressListener`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IstioIngressListener {
    /// Port.
    #[serde(default)]
    pub port: GatewayPort,
    /// Bind address.
    #[serde(default)]
    pub bind: Option<String>,
    /// `127.0.0.1:PORT`, `0.0.0.0:PORT` or `[::1]:PORT`.
    #[serde(default)]
    pub default_endpoint: String,
}

/// `v1/Secret` (only what pull secrets need). Not a `spec` document.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Secret {
    /// apiVersion (`v1`).
    pub api_version: String,
    /// `Secret`.
    pub kind: String,
    /// Metadata.
    #[serde(default)]
    pub metadata: super::ObjectMeta,
    /// Type, e.g. `kubernetes.io/dockerconfigjson`.
    #[serde(default, rename = "type")]
    pub type_: Option<String>,
    /// Base64 values.
    #[serde(default)]
    pub data: BTreeMap<String, String>,
    /// Plain values.
    #[serde(default)]
    pub string_data: BTreeMap<String, String>,
    /// Accepted.
    #[serde(default)]
    pub immutable: Option<bool>,
}
