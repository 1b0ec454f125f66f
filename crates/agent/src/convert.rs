//! ECDS conversion, as Istio's `pkg/wasm/convert.go`: remote Wasm code becomes a local file
//! from the cache; `ISTIO_META_*` VM env entries are consumed and stripped; a fetch failure
//! turns the resource into an RBAC filter of the same name (allow-all for FAIL_OPEN,
//! deny-all otherwise). Anything else (local code, other filters) is forwarded byte for byte;
//! a Wasm filter with no code at all is malformed and NACKed.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::core::v3::{
    AsyncDataSource, DataSource, TypedExtensionConfig, async_data_source, data_source,
};
use envoy_types::pb::envoy::config::rbac::v3::Rbac as RbacRules;
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac as HttpRbac;
use envoy_types::pb::envoy::extensions::filters::http::wasm::v3::Wasm as HttpWasm;
use envoy_types::pb::envoy::extensions::filters::network::rbac::v3::Rbac as NetworkRbac;
use envoy_types::pb::envoy::extensions::wasm::v3::{
    FailurePolicy, PluginConfig, VmConfig, plugin_config,
};
use envoy_types::pb::google::protobuf::Any;
use prost::Message;
use tracing::error;

use crate::cache::{CacheError, GetOptions, ModuleCache, PullPolicy};
use crate::fetch::{PullSecret, redact_url};
use crate::metrics::ConversionResult;

/// `model.ExtensionConfigurationType`: the ECDS type URL.
pub const ECDS_TYPE_URL: &str = "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig";
/// HTTP Wasm filter.
pub const HTTP_WASM_TYPE_URL: &str =
    "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm";
/// Network Wasm filter.
pub const NETWORK_WASM_TYPE_URL: &str =
    "type.googleapis.com/envoy.extensions.filters.network.wasm.v3.Wasm";
/// HTTP RBAC filter (the fallback).
pub const HTTP_RBAC_TYPE_URL: &str =
    "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC";
/// Network RBAC filter (the fallback).
pub const NETWORK_RBAC_TYPE_URL: &str =
    "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC";

/// Env keys istiod sets for the agent (`pkg/model/wasm.go`).
pub const PULL_SECRET_ENV: &str = "ISTIO_META_WASM_IMAGE_PULL_SECRET";
pub const PULL_POLICY_ENV: &str = "ISTIO_META_WASM_IMAGE_PULL_POLICY";
pub const RESOURCE_VERSION_ENV: &str = "ISTIO_META_WASM_PLUGIN_RESOURCE_VERSION";
const ISTIO_META_PREFIX: &str = "ISTIO_META_";
/// Fetch deadline when the remote source has no `http_uri.timeout` (Istio's default).
const DEFAULT_FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// A malformed ECDS resource: the agent NACKs the response (no fallback can be built).
#[derive(Debug, Clone, thiserror::Error)]
pub enum ConvertError {
    #[error("cannot decode ECDS resource of type {type_url}: {reason}")]
    Unmarshal { type_url: String, reason: String },
    #[error("ECDS resource {resource} has no typed_config")]
    NoTypedConfig { resource: String },
    /// Istio's `tryUnmarshal` message: no `config`, no `vm_config` or no `code`.
    #[error("no remote and local load found in Wasm {filter} filter of ECDS resource {resource}")]
    NoCode {
        resource: String,
        /// `HTTP` or `Network`.
        filter: &'static str,
    },
}

/// Why the module of a remote Wasm config could not be made local (leads to the RBAC fallback).
#[derive(Debug, Clone, thiserror::Error)]
pub enum RewriteError {
    #[error(
        "missing image pulling secret (the secret named by imagePullSecret was not found or is empty)"
    )]
    MissingPullSecret,
    #[error("remote code has no http_uri")]
    NoHttpUri,
    #[error(transparent)]
    Cache(#[from] CacheError),
}

/// What happened to one resource.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Not a Wasm config with remote code: forwarded untouched (except stripped env).
    Passthrough,
    /// Remote code rewritten to a local file.
    Rewritten {
        resource: String,
        url: String,
        path: String,
    },
    /// The fetch failed; the resource is an RBAC filter now.
    Fallback {
        resource: String,
        plugin: String,
        url: String,
        error: RewriteError,
        fail_open: bool,
    },
}

/// A converted resource.
#[derive(Debug, Clone)]
pub struct Converted {
    /// The resource to send to the proxy.
    pub resource: Any,
    /// ECDS resource name, when it could be read.
    pub name: String,
    /// What happened.
    pub outcome: Outcome,
}

/// Converts ECDS resources using a module cache.
#[derive(Debug, Clone)]
pub struct Converter {
    cache: ModuleCache,
    enabled: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum WasmKind {
    Http,
    Network,
}

fn decode_err(type_url: &str, e: impl std::fmt::Display) -> ConvertError {
    ConvertError::Unmarshal {
        type_url: type_url.to_owned(),
        reason: e.to_string(),
    }
}

fn pack<M: Message>(type_url: &str, m: &M) -> Any {
    Any {
        type_url: type_url.to_owned(),
        value: m.encode_to_vec(),
    }
}

/// The fallback filter Istio substitutes on a fetch failure.
pub fn fallback_filter(name: &str, network: bool, fail_open: bool) -> TypedExtensionConfig {
    let prefix = if fail_open {
        "wasm-default-allow"
    } else {
        "wasm-default-deny"
    };
    // No rules: allow all. Empty ALLOW rules (no policy matches): deny all.
    let rules = (!fail_open).then(RbacRules::default);
    let typed = if network {
        pack(
            NETWORK_RBAC_TYPE_URL,
            &NetworkRbac {
                rules,
                stat_prefix: prefix.into(),
                ..Default::default()
            },
        )
    } else {
        pack(
            HTTP_RBAC_TYPE_URL,
            &HttpRbac {
                rules,
                rules_stat_prefix: prefix.into(),
                ..Default::default()
            },
        )
    };
    TypedExtensionConfig {
        name: name.to_owned(),
        typed_config: Some(typed),
    }
}

fn is_fail_open(pc: &PluginConfig) -> bool {
    #[allow(deprecated)] // `fail_open` is how Istio < 1.25 says FAIL_OPEN.
    let legacy = pc.fail_open;
    match FailurePolicy::try_from(pc.failure_policy) {
        Ok(FailurePolicy::FailOpen) => true,
        Ok(FailurePolicy::Unspecified) | Err(_) => legacy,
        _ => false,
    }
}

/// Values consumed from the VM env; the `ISTIO_META_*` keys are removed from `vm`.
struct IstioEnv {
    secret: Option<Result<PullSecret, RewriteError>>,
    policy: PullPolicy,
    resource_version: String,
}

/// Reads the agent's `ISTIO_META_WASM_*` entries from a VM env map.
fn istio_env_from(kv: &HashMap<String, String>) -> IstioEnv {
    IstioEnv {
        secret: kv.get(PULL_SECRET_ENV).map(|s| {
            if s.is_empty() {
                Err(RewriteError::MissingPullSecret)
            } else {
                Ok(PullSecret(s.as_bytes().to_vec()))
            }
        }),
        policy: kv
            .get(PULL_POLICY_ENV)
            .map(|p| PullPolicy::parse(p))
            .unwrap_or_default(),
        resource_version: kv.get(RESOURCE_VERSION_ENV).cloned().unwrap_or_default(),
    }
}

fn take_istio_env(vm: &mut VmConfig) -> IstioEnv {
    let Some(vars) = vm.environment_variables.as_mut() else {
        return istio_env_from(&HashMap::new());
    };
    let env = istio_env_from(&vars.key_values);
    vars.key_values
        .retain(|k, _| !k.starts_with(ISTIO_META_PREFIX));
    if vars.key_values.is_empty() && vars.host_env_keys.is_empty() {
        vm.environment_variables = None;
    }
    env
}

impl Converter {
    /// A converter fetching through `cache`.
    pub fn new(cache: ModuleCache) -> Self {
        Self {
            cache,
            enabled: true,
        }
    }

    /// Istio's `ISTIO_AGENT_ENABLE_WASM_REMOTE_LOAD_CONVERSION`: when off, ECDS is forwarded
    /// untouched (the proxy fetches remote code itself, which Envoy cannot do for `oci://`).
    pub fn with_conversion(mut self, enabled: bool) -> Self {
        self.enabled = enabled;
        self
    }

    /// The cache used.
    pub fn cache(&self) -> &ModuleCache {
        &self.cache
    }

    /// Converts all resources of one ECDS response in parallel. An error means a resource is
    /// malformed and the whole response must be NACKed. Records
    /// `wasm_config_conversion_duration` once for the response, as Istio's
    /// `MaybeConvertWasmExtensionConfig`.
    pub async fn convert_all(&self, resources: &[Any]) -> Result<Vec<Converted>, ConvertError> {
        let start = Instant::now();
        let out = futures::future::join_all(resources.iter().map(|r| self.convert_one(r)))
            .await
            .into_iter()
            .collect();
        if self.enabled {
            self.cache
                .metrics()
                .conversion_duration(start.elapsed().as_millis());
        }
        out
    }

    /// Converts one ECDS resource (an `Any` holding a `TypedExtensionConfig`).
    pub async fn convert_one(&self, resource: &Any) -> Result<Converted, ConvertError> {
        if !self.enabled {
            return Ok(Converted {
                resource: resource.clone(),
                name: String::new(),
                outcome: Outcome::Passthrough,
            });
        }
        let result = self.convert_inner(resource).await;
        let label = match &result {
            Ok(Converted {
                outcome: Outcome::Rewritten { .. },
                ..
            }) => ConversionResult::Success,
            Ok(Converted {
                outcome: Outcome::Passthrough,
                ..
            }) => ConversionResult::NoRemoteLoad,
            Ok(Converted {
                outcome:
                    Outcome::Fallback {
                        error: RewriteError::NoHttpUri,
                        ..
                    },
                ..
            }) => ConversionResult::MissRemoteFetchHint,
            Ok(Converted {
                outcome: Outcome::Fallback { .. },
                ..
            }) => ConversionResult::FetchFailure,
            Err(_) => ConversionResult::UnmarshalFailure,
        };
        self.cache.metrics().conversion(label);
        if let Ok(Converted {
            outcome:
                Outcome::Fallback {
                    resource,
                    plugin,
                    url,
                    error: e,
                    fail_open,
                },
            ..
        }) = &result
        {
            error!(resource = %resource, plugin = %plugin, url = %url, reason = %e,
                "error in converting the wasm config to local: applying {} RBAC filter",
                if *fail_open { "allow" } else { "deny" });
        }
        result
    }

    async fn convert_inner(&self, resource: &Any) -> Result<Converted, ConvertError> {
        let passthrough = |name: String| Converted {
            resource: resource.clone(),
            name,
            outcome: Outcome::Passthrough,
        };
        if resource.type_url != ECDS_TYPE_URL {
            return Ok(passthrough(String::new()));
        }
        let mut ec = TypedExtensionConfig::decode(resource.value.as_slice())
            .map_err(|e| decode_err(&resource.type_url, e))?;
        let name = ec.name.clone();
        let Some(typed) = ec.typed_config.as_ref() else {
            return Err(ConvertError::NoTypedConfig { resource: name });
        };
        let kind = match typed.type_url.as_str() {
            HTTP_WASM_TYPE_URL => WasmKind::Http,
            NETWORK_WASM_TYPE_URL => WasmKind::Network,
            typed_struct::UDPA | typed_struct::XDS => {
                let typed = typed.clone();
                return self.convert_typed_struct(ec, typed, resource).await;
            }
            _ => return Ok(passthrough(name)),
        };
        // Both Wasm filter messages are `{ PluginConfig config = 1; }`.
        let mut wasm =
            HttpWasm::decode(typed.value.as_slice()).map_err(|e| decode_err(&typed.type_url, e))?;
        let type_url = typed.type_url.clone();
        let no_code = |resource: String| ConvertError::NoCode {
            resource,
            filter: match kind {
                WasmKind::Http => "HTTP",
                WasmKind::Network => "Network",
            },
        };
        let Some(pc) = wasm.config.as_mut() else {
            return Err(no_code(name));
        };
        let plugin = pc.name.clone();
        let fail_open = is_fail_open(pc);
        let Some(plugin_config::Vm::VmConfig(vm)) = pc.vm.as_mut() else {
            return Err(no_code(name));
        };
        let remote = match vm.code.as_ref().and_then(|c| c.specifier.as_ref()) {
            Some(async_data_source::Specifier::Remote(r)) => r.clone(),
            // Local code is forwarded as received, `ISTIO_META_*` env included (Istio's
            // `tryUnmarshal` leaves it alone).
            Some(async_data_source::Specifier::Local(_)) => return Ok(passthrough(name)),
            None => return Err(no_code(name)),
        };
        let env = take_istio_env(vm);
        let target = Target {
            name: name.clone(),
            plugin,
            network: kind == WasmKind::Network,
            fail_open,
            url: remote
                .http_uri
                .as_ref()
                .map(|u| u.uri.clone())
                .unwrap_or_default(),
        };
        let timeout = remote
            .http_uri
            .as_ref()
            .and_then(|u| u.timeout.as_ref())
            .and_then(|d| {
                (d.seconds >= 0 && d.nanos >= 0)
                    .then(|| Duration::new(d.seconds as u64, d.nanos as u32))
            });
        let has_uri = remote.http_uri.is_some();
        let path = match self
            .fetch_local(&target, env, has_uri, &remote.sha256, timeout)
            .await
        {
            Ok(p) => p,
            Err(e) => return Ok(target.fallback(e)),
        };
        let path_s = path;
        vm.code = Some(AsyncDataSource {
            specifier: Some(async_data_source::Specifier::Local(DataSource {
                specifier: Some(data_source::Specifier::Filename(path_s.clone())),
                ..Default::default()
            })),
        });
        ec.typed_config = Some(pack(&type_url, &wasm));
        Ok(Converted {
            resource: pack(ECDS_TYPE_URL, &ec),
            name: name.clone(),
            outcome: Outcome::Rewritten {
                resource: name,
                url: redact_url(&target.url).into_owned(),
                path: path_s,
            },
        })
    }

    /// A Wasm config wrapped in a `TypedStruct` (EnvoyFilter style): same conversion on the
    /// JSON form; the result stays a `TypedStruct`.
    async fn convert_typed_struct(
        &self,
        mut ec: TypedExtensionConfig,
        typed: Any,
        original: &Any,
    ) -> Result<Converted, ConvertError> {
        let name = ec.name.clone();
        let passthrough = || Converted {
            resource: original.clone(),
            name: name.clone(),
            outcome: Outcome::Passthrough,
        };
        let mut ts = typed_struct::TypedStruct::decode(typed.value.as_slice())
            .map_err(|e| decode_err(&typed.type_url, e))?;
        let network = match ts.type_url.as_str() {
            HTTP_WASM_TYPE_URL => false,
            NETWORK_WASM_TYPE_URL => true,
            _ => return Ok(passthrough()),
        };
        let no_code = || ConvertError::NoCode {
            resource: name.clone(),
            filter: if network { "Network" } else { "HTTP" },
        };
        let Some(value) = ts.value.as_mut() else {
            return Err(no_code());
        };
        let Some(plugin) = typed_struct::read(value) else {
            return Err(no_code());
        };
        let (uri, sha256, timeout) = match plugin.code {
            typed_struct::Code::None => return Err(no_code()),
            // Forwarded as received, as Istio does.
            typed_struct::Code::Local => return Ok(passthrough()),
            typed_struct::Code::Remote {
                uri,
                sha256,
                timeout,
            } => (uri, sha256, timeout),
        };
        let target = Target {
            name: name.clone(),
            plugin: plugin.name,
            network,
            fail_open: plugin.fail_open,
            url: uri.clone().unwrap_or_default(),
        };
        let path = match self
            .fetch_local(&target, plugin.env, uri.is_some(), &sha256, timeout)
            .await
        {
            Ok(p) => p,
            Err(e) => return Ok(target.fallback(e)),
        };
        if let Some(value) = ts.value.as_mut() {
            typed_struct::set_local_code(value, &path);
        }
        ec.typed_config = Some(pack(&typed.type_url, &ts));
        Ok(Converted {
            resource: pack(ECDS_TYPE_URL, &ec),
            name: name.clone(),
            outcome: Outcome::Rewritten {
                resource: name,
                url: redact_url(&target.url).into_owned(),
                path,
            },
        })
    }

    /// Fetches the module through the cache; returns the local path.
    async fn fetch_local(
        &self,
        t: &Target,
        env: IstioEnv,
        has_uri: bool,
        sha256: &str,
        timeout: Option<Duration>,
    ) -> Result<String, RewriteError> {
        let secret = env.secret.transpose()?;
        if !has_uri {
            return Err(RewriteError::NoHttpUri);
        }
        let timeout = timeout
            .filter(|d| !d.is_zero())
            .unwrap_or(DEFAULT_FETCH_TIMEOUT);
        // "nil" is how old istiod said "no checksum".
        let sha = if sha256 == "nil" { "" } else { sha256 };
        let opts = GetOptions {
            checksum: Some(sha.to_owned()).filter(|s| !s.is_empty()),
            resource_name: t.name.clone(),
            resource_version: env.resource_version,
            timeout,
            pull_secret: secret,
            pull_policy: env.policy,
        };
        match self.cache.get(&t.url, &opts).await {
            Ok(p) => Ok(p.to_string_lossy().into_owned()),
            Err(e) => {
                self.cache.release(&t.name);
                Err(e.into())
            }
        }
    }
}

/// The resource being converted, for the fallback and for logs.
struct Target {
    name: String,
    plugin: String,
    network: bool,
    fail_open: bool,
    url: String,
}

impl Target {
    fn fallback(&self, error: RewriteError) -> Converted {
        let fb = fallback_filter(&self.name, self.network, self.fail_open);
        Converted {
            resource: pack(ECDS_TYPE_URL, &fb),
            name: self.name.clone(),
            outcome: Outcome::Fallback {
                resource: self.name.clone(),
                plugin: self.plugin.clone(),
                url: redact_url(&self.url).into_owned(),
                error,
                fail_open: self.fail_open,
            },
        }
    }
}

mod typed_struct;

#[cfg(test)]
mod tests;
