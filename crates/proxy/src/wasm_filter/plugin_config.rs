//! From Envoy's `envoy.extensions.wasm.v3.PluginConfig` to a compiled [`wasm_host::Plugin`]:
//! code from a local file or inline bytes, configuration from `StringValue`/`BytesValue` (or
//! the raw bytes of any other message, as Envoy's `anyToBytes`), environment variables, the
//! failure policy. Compilation happens here, at config time, never on the request path.

use envoy_types::pb::envoy::config::core::v3::http_uri::HttpUpstreamType;
use std::sync::{Arc, OnceLock};

use envoy_types::pb::envoy::config::core::v3::{AsyncDataSource, async_data_source, data_source};
use envoy_types::pb::envoy::extensions::wasm::v3::{
    FailurePolicy as PbPolicy, PluginConfig as PbPlugin, plugin_config,
};
use prost::Message;
use wasm_host::{
    FailurePolicy, NodeInfo as HostNode, Plugin, PluginConfig, PropertyValue, Runtime,
    RuntimeConfig,
};

use crate::config::ConfigError;
use crate::filter::{BuildContext, NodeInfo};
use crate::pb::Any;

/// When set, plugins with no `failure_policy` get FAIL_RELOAD instead of Envoy's FAIL_CLOSED
/// (Envoy's crashed VMs otherwise stay dead until the config changes: envoy#16726).
static DEFAULT_FAIL_RELOAD: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// Makes FAIL_RELOAD the default failure policy of every plugin that sets none.
pub fn set_default_fail_reload(on: bool) {
    DEFAULT_FAIL_RELOAD.store(on, std::sync::atomic::Ordering::Relaxed);
}

/// Where the process-wide runtime compiles modules; read once, when it is first built.
static COMPILER: std::sync::Mutex<wasm_host::Compiler> =
    std::sync::Mutex::new(wasm_host::Compiler::InProcess);

/// Makes the runtime compile modules with `compiler` (the `wasmesh` binary passes a child
/// process of itself, keeping Cranelift out of the proxy). Call before the first plugin loads.
pub fn set_compiler(compiler: wasm_host::Compiler) {
    *COMPILER.lock().unwrap_or_else(|e| e.into_inner()) = compiler;
}

const STRING_VALUE: &str = "type.googleapis.com/google.protobuf.StringValue";
const BYTES_VALUE: &str = "type.googleapis.com/google.protobuf.BytesValue";

/// The process-wide Wasm runtime (one engine, one module cache). The precompiled-module cache
/// directory comes from `WASMESH_WASM_CACHE_DIR` when set; the compiler from [`set_compiler`].
pub fn runtime() -> Result<&'static Runtime, ConfigError> {
    static RT: OnceLock<Result<Runtime, String>> = OnceLock::new();
    RT.get_or_init(|| {
        let cache_dir = std::env::var_os("WASMESH_WASM_CACHE_DIR").map(std::path::PathBuf::from);
        let compiler = COMPILER.lock().unwrap_or_else(|e| e.into_inner()).clone();
        Runtime::new(RuntimeConfig {
            cache_dir,
            compiler,
            ..Default::default()
        })
        .map_err(|e| e.to_string())
    })
    .as_ref()
    .map_err(|e| ConfigError::Invalid {
        path: "wasm runtime".into(),
        reason: e.clone(),
    })
}

fn invalid(cx: &BuildContext, field: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        path: format!("{}.{field}", cx.field_path),
        reason: reason.into(),
    }
}

/// `anyToBytes`: StringValue and BytesValue give their value, anything else its bytes.
fn any_bytes(any: &Option<Any>) -> Vec<u8> {
    let Some(any) = any else { return Vec::new() };
    match any.type_url.as_str() {
        STRING_VALUE => prost_types_string(&any.value),
        BYTES_VALUE => wrapped_bytes(&any.value),
        _ => any.value.clone(),
    }
}

fn prost_types_string(value: &[u8]) -> Vec<u8> {
    String::decode(value)
        .map(String::into_bytes)
        .unwrap_or_default()
}

fn wrapped_bytes(value: &[u8]) -> Vec<u8> {
    Vec::<u8>::decode(value).unwrap_or_default()
}

fn code_bytes(cx: &BuildContext, code: &Option<AsyncDataSource>) -> Result<Vec<u8>, ConfigError> {
    let field = "vm_config.code";
    let Some(AsyncDataSource {
        specifier: Some(spec),
    }) = code
    else {
        return Err(invalid(
            cx,
            field,
            "no code: set local.filename or local.inline_bytes",
        ));
    };
    match spec {
        async_data_source::Specifier::Local(ds) => match &ds.specifier {
            Some(data_source::Specifier::Filename(path)) => std::fs::read(path).map_err(|e| {
                invalid(
                    cx,
                    &format!("{field}.local.filename"),
                    format!("cannot read {path}: {e}"),
                )
            }),
            Some(data_source::Specifier::InlineBytes(b)) => Ok(b.clone()),
            Some(data_source::Specifier::InlineString(s)) => Ok(s.clone().into_bytes()),
            Some(data_source::Specifier::EnvironmentVariable(_)) | None => {
                Err(ConfigError::Unsupported {
                    path: format!("{}.{field}.local", cx.field_path),
                    detail: "only filename, inline_bytes and inline_string are supported".into(),
                })
            }
        },
        async_data_source::Specifier::Remote(r) => {
            // (fetched by `prefetch_remote` already: from the cache now)
            let endpoint = cx.cluster_endpoints.get(remote_cluster(r)).copied();
            super::remote_code::fetch(r, endpoint)
                .map(|(code, _)| code)
                .map_err(|e| invalid(cx, &format!("{field}.remote"), e))
        }
    }
}

pub(crate) fn struct_value(v: &envoy_types::pb::google::protobuf::Value) -> PropertyValue {
    use envoy_types::pb::google::protobuf::value::Kind;
    match &v.kind {
        Some(Kind::StringValue(s)) => PropertyValue::string(s.clone()),
        Some(Kind::NumberValue(n)) => PropertyValue::Double(*n),
        Some(Kind::BoolValue(b)) => PropertyValue::Bool(*b),
        Some(Kind::StructValue(s)) => PropertyValue::Map(
            s.fields
                .iter()
                .map(|(k, v)| (k.clone().into_bytes(), struct_value(v)))
                .collect(),
        ),
        Some(Kind::ListValue(l)) => {
            PropertyValue::List(l.values.iter().map(struct_value).collect())
        }
        Some(Kind::NullValue(_)) | None => PropertyValue::Bytes(Vec::new()),
    }
}

/// The node as the Wasm host presents it (`xds.node.*`).
pub(crate) fn host_node(node: &NodeInfo) -> HostNode {
    use envoy_types::pb::envoy::config::core::v3::Node;
    let metadata = node
        .metadata
        .as_ref()
        .map(|m| {
            m.fields
                .iter()
                .map(|(k, v)| (k.clone(), struct_value(v)))
                .collect()
        })
        .unwrap_or_default();
    let proto = Node {
        id: node.id.clone(),
        cluster: node.cluster.clone(),
        metadata: node.metadata.clone(),
        ..Default::default()
    }
    .encode_to_vec();
    HostNode {
        id: node.id.clone(),
        cluster: node.cluster.clone(),
        metadata,
        proto,
    }
}

/// Builds and compiles the plugin, then starts it once on a throw-away VM (Envoy's canary),
/// so a plugin that rejects its configuration fails the config, not the first request.
/// The FAIL_RELOAD backoff: `reload_config.backoff` (base, max), default 1 s base like Envoy.
pub(crate) fn reload_backoff(pb: &PbPlugin) -> wasm_host::Backoff {
    let dur = |d: &envoy_types::pb::google::protobuf::Duration| {
        std::time::Duration::new(d.seconds.max(0) as u64, d.nanos.max(0) as u32)
    };
    let b = pb.reload_config.as_ref().and_then(|r| r.backoff.as_ref());
    let base = b
        .and_then(|b| b.base_interval.as_ref())
        .map(dur)
        .unwrap_or(std::time::Duration::from_secs(1));
    let max = b
        .and_then(|b| b.max_interval.as_ref())
        .map(dur)
        .unwrap_or(base * 10);
    wasm_host::Backoff::new(base, max)
}

pub(crate) fn build_plugin(pb: &PbPlugin, cx: &BuildContext) -> Result<Arc<Plugin>, ConfigError> {
    let Some(plugin_config::Vm::VmConfig(vm)) = &pb.vm else {
        return Err(invalid(cx, "vm_config", "missing vm_config"));
    };
    if !vm.runtime.is_empty() && !vm.runtime.starts_with("envoy.wasm.runtime.") {
        return Err(invalid(
            cx,
            "vm_config.runtime",
            format!("unknown runtime {:?}", vm.runtime),
        ));
    }
    let code = code_bytes(cx, &vm.code)?;
    let rt = runtime()?;
    let module = rt
        .compile(&code)
        .map_err(|e| invalid(cx, "vm_config.code", format!("plugin {:?}: {e}", pb.name)))?;
    let mut env = Vec::new();
    if let Some(vars) = &vm.environment_variables {
        for key in &vars.host_env_keys {
            if let Ok(v) = std::env::var(key) {
                env.push((key.clone(), v));
            }
        }
        let mut kv: Vec<_> = vars
            .key_values
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        kv.sort();
        env.extend(kv);
    }
    let failure_policy = failure_policy(pb);
    let config = PluginConfig {
        name: pb.name.clone(),
        root_id: pb.root_id.clone(),
        vm_id: vm.vm_id.clone(),
        vm_configuration: any_bytes(&vm.configuration),
        configuration: any_bytes(&pb.configuration),
        env,
        failure_policy,
        limits: Default::default(),
        node: Arc::new(host_node(&cx.node)),
    };
    let plugin = Plugin::with_metrics(rt, module, config, cx.stats.plugin_metrics().clone());
    plugin
        .instantiate(Box::new(wasm_host::NullHost))
        .map_err(|e| {
            invalid(
                cx,
                "configuration",
                format!("plugin {:?} failed to start: {e}", pb.name),
            )
        })?;
    Ok(plugin)
}

/// The cluster `remote` code is fetched through (`http_uri.cluster`).
fn remote_cluster(r: &envoy_types::pb::envoy::config::core::v3::RemoteDataSource) -> &str {
    match r
        .http_uri
        .as_ref()
        .and_then(|u| u.http_upstream_type.as_ref())
    {
        Some(HttpUpstreamType::Cluster(c)) => c.as_str(),
        None => "",
    }
}

/// Envoy's `remote` code: fetched (or found in the cache) now, counting Envoy's
/// `wasm.remote_load_*` stats. `Err` is why it could not be loaded; `Ok(false)`: not remote.
pub(crate) fn prefetch_remote(pb: &PbPlugin, cx: &BuildContext) -> Result<bool, String> {
    // Envoy's remote-load stats exist (at 0) once any Wasm plugin is configured.
    let c = |n: &str| {
        cx.stats
            .counter(&format!("wasm.{n}"), &format!("envoy_wasm_{n}"), &[])
    };
    let entries = cx.stats.gauge(
        "wasm.remote_load_cache_entries",
        "envoy_wasm_remote_load_cache_entries",
        &[],
    );
    for n in ["remote_load_cache_hits", "remote_load_cache_negative_hits"] {
        let _ = c(n);
    }
    let (hits, misses, failures, successes) = (
        c("remote_load_cache_hits"),
        c("remote_load_cache_misses"),
        c("remote_load_fetch_failures"),
        c("remote_load_fetch_successes"),
    );
    let Some(plugin_config::Vm::VmConfig(vm)) = &pb.vm else {
        return Ok(false);
    };
    let Some(async_data_source::Specifier::Remote(r)) =
        vm.code.as_ref().and_then(|c| c.specifier.as_ref())
    else {
        return Ok(false);
    };
    let cluster = remote_cluster(r);
    let endpoint = cx.cluster_endpoints.get(cluster).copied();
    if endpoint.is_none() && !cx.cluster_names.iter().any(|n| n == cluster) {
        return Err(format!("unknown cluster {cluster:?}"));
    }
    if super::remote_code::recently_failed(r) {
        c("remote_load_cache_negative_hits").inc();
        return Err("fetch failed recently (cached failure)".into());
    }
    match super::remote_code::fetch(r, endpoint) {
        Ok((_, true)) => {
            hits.inc();
            Ok(true)
        }
        Ok((_, false)) => {
            misses.inc();
            successes.inc();
            entries.set(super::remote_code::cached() as i64);
            Ok(true)
        }
        Err(e) => {
            misses.inc();
            failures.inc();
            entries.set(super::remote_code::cached() as i64);
            let uri = r.http_uri.as_ref().map_or("", |u| u.uri.as_str());
            Err(format!("cannot fetch {uri} from cluster {cluster:?}: {e}"))
        }
    }
}

/// The plugin's failure policy (`failure_policy`, the legacy `fail_open`, the proxy default).
pub(crate) fn failure_policy(pb: &PbPlugin) -> FailurePolicy {
    match PbPolicy::try_from(pb.failure_policy).unwrap_or(PbPolicy::Unspecified) {
        PbPolicy::FailOpen => FailurePolicy::FailOpen,
        PbPolicy::FailReload => FailurePolicy::FailReload,
        PbPolicy::FailClosed => FailurePolicy::FailClosed,
        PbPolicy::Unspecified if legacy_fail_open(pb) => FailurePolicy::FailOpen,
        PbPolicy::Unspecified if DEFAULT_FAIL_RELOAD.load(std::sync::atomic::Ordering::Relaxed) => {
            FailurePolicy::FailReload
        }
        PbPolicy::Unspecified => FailurePolicy::FailClosed,
    }
}

/// The deprecated `fail_open` flag, still honoured when `failure_policy` is unset (as Envoy).
#[allow(deprecated, reason = "Envoy still honours the deprecated field")]
pub(crate) fn legacy_fail_open(pb: &PbPlugin) -> bool {
    pb.fail_open
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_to_bytes_like_envoy() {
        let sv = Any {
            type_url: STRING_VALUE.into(),
            value: "{\"a\":1}".to_string().encode_to_vec(),
        };
        assert_eq!(any_bytes(&Some(sv)), b"{\"a\":1}");
        let bv = Any {
            type_url: BYTES_VALUE.into(),
            value: b"\x01\x02".to_vec().encode_to_vec(),
        };
        assert_eq!(any_bytes(&Some(bv)), b"\x01\x02");
        let other = Any {
            type_url: "type.googleapis.com/x.Y".into(),
            value: vec![8, 1],
        };
        assert_eq!(any_bytes(&Some(other)), vec![8, 1]);
        assert!(any_bytes(&None).is_empty());
    }
}
