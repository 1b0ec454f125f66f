//! Wasm configs wrapped in `udpa.type.v1.TypedStruct` / `xds.type.v3.TypedStruct` (how
//! EnvoyFilter users write them): read and rewrite the proto3 JSON form in place.

use std::collections::HashMap;
use std::time::Duration;

use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};

use super::{ISTIO_META_PREFIX, IstioEnv, istio_env_from};

pub(super) const UDPA: &str = "type.googleapis.com/udpa.type.v1.TypedStruct";
pub(super) const XDS: &str = "type.googleapis.com/xds.type.v3.TypedStruct";

/// `udpa.type.v1.TypedStruct` and `xds.type.v3.TypedStruct` share this layout.
#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct TypedStruct {
    #[prost(string, tag = "1")]
    pub(super) type_url: String,
    #[prost(message, optional, tag = "2")]
    pub(super) value: Option<Struct>,
}

pub(super) enum Code {
    None,
    Local,
    Remote {
        uri: Option<String>,
        sha256: String,
        timeout: Option<Duration>,
    },
}

pub(super) struct Plugin {
    pub(super) name: String,
    pub(super) fail_open: bool,
    pub(super) env: IstioEnv,
    pub(super) code: Code,
}

fn field<'a>(s: &'a Struct, k: &str) -> Option<&'a Kind> {
    s.fields.get(k).and_then(|v| v.kind.as_ref())
}

fn obj<'a>(s: &'a Struct, k: &str) -> Option<&'a Struct> {
    match field(s, k)? {
        Kind::StructValue(v) => Some(v),
        _ => None,
    }
}

fn obj_mut<'a>(s: &'a mut Struct, k: &str) -> Option<&'a mut Struct> {
    match s.fields.get_mut(k)?.kind.as_mut()? {
        Kind::StructValue(v) => Some(v),
        _ => None,
    }
}

fn string(s: &Struct, k: &str) -> Option<String> {
    match field(s, k)? {
        Kind::StringValue(v) => Some(v.clone()),
        _ => None,
    }
}

/// A proto3 JSON duration (`"30s"`, `"1.5s"`).
fn duration(s: &str) -> Option<Duration> {
    let secs: f64 = s.strip_suffix('s')?.parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs))
}

fn fail_open(config: &Struct) -> bool {
    match field(config, "failure_policy") {
        Some(Kind::StringValue(p)) if p != "UNSPECIFIED" => p == "FAIL_OPEN",
        Some(Kind::NumberValue(n)) if *n != 0.0 => *n == 3.0,
        _ => matches!(field(config, "fail_open"), Some(Kind::BoolValue(true))),
    }
}

/// Reads the plugin out of a Wasm filter's JSON and strips the `ISTIO_META_*` VM env entries.
/// `None` when there is no `config.vm_config` (a malformed Wasm config).
pub(super) fn read(value: &mut Struct) -> Option<Plugin> {
    let config = obj_mut(value, "config")?;
    let name = string(config, "name").unwrap_or_default();
    let fail_open = fail_open(config);
    let vm = obj_mut(config, "vm_config")?;
    let mut kv = HashMap::new();
    let mut env_empty = false;
    if let Some(vars) = obj_mut(vm, "environment_variables") {
        if let Some(values) = obj_mut(vars, "key_values") {
            for (k, v) in &values.fields {
                if let Some(Kind::StringValue(s)) = &v.kind {
                    kv.insert(k.clone(), s.clone());
                }
            }
            values
                .fields
                .retain(|k, _| !k.starts_with(ISTIO_META_PREFIX));
        }
        let no_values = obj(vars, "key_values").is_none_or(|v| v.fields.is_empty());
        let no_host = match field(vars, "host_env_keys") {
            Some(Kind::ListValue(l)) => l.values.is_empty(),
            _ => true,
        };
        env_empty = no_values && no_host;
    }
    if env_empty {
        vm.fields.remove("environment_variables");
    }
    let code = match obj(vm, "code") {
        Some(c) if obj(c, "local").is_some() => Code::Local,
        Some(c) => match obj(c, "remote") {
            Some(r) => {
                let http_uri = obj(r, "http_uri");
                Code::Remote {
                    uri: http_uri.and_then(|h| string(h, "uri")),
                    sha256: string(r, "sha256").unwrap_or_default(),
                    timeout: http_uri
                        .and_then(|h| string(h, "timeout"))
                        .and_then(|t| duration(&t)),
                }
            }
            None => Code::None,
        },
        None => Code::None,
    };
    Some(Plugin {
        name,
        fail_open,
        env: istio_env_from(&kv),
        code,
    })
}

/// Points `config.vm_config.code` at a local file.
pub(super) fn set_local_code(value: &mut Struct, path: &str) {
    let Some(vm) = obj_mut(value, "config").and_then(|c| obj_mut(c, "vm_config")) else {
        return;
    };
    let string = |v: &str| Value {
        kind: Some(Kind::StringValue(v.to_owned())),
    };
    let object = |k: &str, v: Value| Value {
        kind: Some(Kind::StructValue(Struct {
            fields: HashMap::from([(k.to_owned(), v)]),
        })),
    };
    let code = object("local", object("filename", string(path)));
    vm.fields.insert("code".to_owned(), code);
}
