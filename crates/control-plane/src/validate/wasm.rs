//! WasmPlugin validation: istiod's webhook (`ValidateWasmPlugin`) plus the CRD schema rules.

use std::collections::BTreeSet;
use std::sync::Arc;

use super::Errors;
use crate::config::{Meta, Plugin, Resource, WASM_PLUGIN_RESOURCE_PREFIX};
use crate::model::Document;
use crate::model::wasm::{EnvValueSource, PluginPhase, PluginType, WasmPlugin};

/// URL schemes accepted (no scheme = `oci`).
const SCHEMES: [&str; 4] = ["oci", "file", "http", "https"];

/// Splits `scheme://rest`. A URL without `://` has no scheme (so `localhost:5000/x` is OCI,
/// where istiod would take `localhost` as a scheme and the agent would fail later).
pub(crate) fn split_scheme(url: &str) -> (Option<&str>, &str) {
    match url.split_once("://") {
        Some((s, rest))
            if !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'-' || b == b'.') =>
        {
            (Some(s), rest)
        }
        _ => (None, url),
    }
}

/// The URL with the scheme defaulted to `oci://`, as istiod does at config-generation time.
pub(crate) fn normalize_url(url: &str) -> String {
    match split_scheme(url) {
        (Some(_), _) => url.to_string(),
        (None, rest) => format!("oci://{rest}"),
    }
}

/// A Kubernetes label value: empty, or ≤ 63 of `[A-Za-z0-9._-]` starting and ending alphanumeric.
pub(crate) fn is_label_value(v: &str) -> bool {
    v.is_empty()
        || (v.len() <= 63
            && v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            && v.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
            && v.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric()))
}

/// A Kubernetes label key: `[prefix/]name`, prefix a DNS subdomain, name a non-empty label value.
pub(crate) fn is_label_key(k: &str) -> bool {
    let (prefix, name) = match k.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    !name.is_empty() && is_label_value(name) && prefix.is_none_or(super::is_dns1123_subdomain)
}

fn is_sha256(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

pub(super) fn validate(
    doc: Document<WasmPlugin>,
    created: i128,
    hash: &str,
    errs: &mut Errors<'_>,
) -> Option<Resource> {
    let spec = &doc.spec;
    let set = [
        spec.selector.is_some(),
        spec.target_ref.is_some(),
        !spec.target_refs.is_empty(),
    ];
    if set.iter().filter(|b| **b).count() > 1 {
        errs.add(
            "spec",
            "only one of targetRefs or workloadSelector can be set",
        );
    }
    if spec.target_ref.is_some() && !spec.target_refs.is_empty() {
        errs.add(
            "spec.targetRef",
            "targetRef and targetRefs cannot both be set",
        );
    }
    if let Some(sel) = &spec.selector {
        if sel.match_labels.is_empty() {
            errs.warn(
                "spec.selector.matchLabels",
                "workload selector specified without labels",
            );
        }
        for (k, v) in &sel.match_labels {
            if k.is_empty() {
                errs.add(
                    "spec.selector.matchLabels",
                    "empty key is not supported in selector",
                );
            }
            if k.contains('*') || v.contains('*') {
                errs.add(
                    format!("spec.selector.matchLabels.{k}"),
                    "wildcard is not supported in selector",
                );
            } else if !k.is_empty() && !is_label_key(k) {
                errs.add(
                    format!("spec.selector.matchLabels.{k}"),
                    "invalid label key: [prefix/]name, name at most 63 alphanumerics, '-', '_' or '.', starting and ending alphanumeric",
                );
            } else if !is_label_value(v) {
                errs.add(
                    format!("spec.selector.matchLabels.{k}"),
                    format!("invalid label value {v:?}: at most 63 alphanumerics, '-', '_' or '.', starting and ending alphanumeric"),
                );
            }
        }
    }
    if spec.target_refs.len() > 16 {
        errs.add("spec.targetRefs", "at most 16 items");
    }
    let refs: Vec<(String, _)> = match &spec.target_ref {
        Some(r) => vec![("spec.targetRef".to_string(), r)],
        None => spec
            .target_refs
            .iter()
            .enumerate()
            .map(|(i, r)| (format!("spec.targetRefs[{i}]"), r))
            .collect(),
    };
    for (path, r) in refs {
        if r.name.is_empty() {
            errs.add(format!("{path}.name"), "required");
        }
        if !r.namespace.is_empty() {
            errs.add(
                format!("{path}.namespace"),
                "cross namespace referencing is not currently supported",
            );
        }
        let ok = matches!(
            (r.group.as_str(), r.kind.as_str()),
            ("", "Service")
                | ("networking.istio.io", "ServiceEntry")
                | ("gateway.networking.k8s.io", "Gateway")
                | ("gateway.networking.k8s.io", "GatewayClass")
        );
        if !ok {
            errs.add(
                format!("{path}.kind"),
                format!(
                    "group {:?} kind {:?} is not supported; use Gateway or GatewayClass \
                     (gateway.networking.k8s.io), Service (core) or ServiceEntry (networking.istio.io)",
                    r.group, r.kind
                ),
            );
        }
    }
    if spec.url.is_empty() {
        errs.add("spec.url", "url field needs to be set");
    } else {
        if let (Some(s), rest) = split_scheme(&spec.url) {
            {
                if !SCHEMES.contains(&s) {
                    errs.add(
                        "spec.url",
                        format!(
                            "unsupported scheme {s:?}; use oci://, file://, http:// or https://"
                        ),
                    );
                } else if rest.is_empty() {
                    errs.add("spec.url", format!("{s}:// URL without a location"));
                } else if s == "file" && !rest.starts_with('/') {
                    errs.add(
                        "spec.url",
                        "file:// URLs need an absolute path (file:///path/to/plugin.wasm)",
                    );
                }
            }
        }
        if spec.url.contains(char::is_whitespace) {
            errs.add("spec.url", "contains whitespace");
        }
    }
    if let Some(sha) = &spec.sha256
        && !sha.is_empty()
    {
        if !is_sha256(sha) {
            errs.add(
                "spec.sha256",
                "must be 64 lowercase hexadecimal characters (pattern ^[a-f0-9]{64}$)",
            );
        } else if let Some((_, digest)) = spec.url.split_once("@sha256:")
            && digest != sha
        {
            errs.add(
                "spec.sha256",
                format!("does not match the digest in spec.url (sha256:{digest})"),
            );
        }
    }
    if let Some(s) = &spec.image_pull_secret
        && (s.is_empty() || s.len() > 253)
    {
        errs.add("spec.imagePullSecret", "must be 1 to 253 characters");
    }
    if let Some(n) = &spec.plugin_name
        && (n.is_empty() || n.len() > 256)
    {
        errs.add("spec.pluginName", "must be 1 to 256 characters");
    }
    if let Some(vm) = &spec.vm_config {
        if vm.env.len() > 256 {
            errs.add("spec.vmConfig.env", "at most 256 items");
        }
        let mut names = BTreeSet::new();
        for (i, e) in vm.env.iter().enumerate() {
            let p = format!("spec.vmConfig.env[{i}]");
            if e.name.is_empty() {
                errs.add(
                    format!("{p}.name"),
                    "spec.vmConfig.env invalid: name is required",
                );
            } else if e.name.len() > 256 {
                errs.add(format!("{p}.name"), "at most 256 characters");
            } else if !names.insert(e.name.as_str()) {
                errs.add(
                    format!("{p}.name"),
                    format!("duplicate env name {:?}", e.name),
                );
            }
            if e.value_from == Some(EnvValueSource::Host) && e.value.is_some() {
                errs.add(
                    format!("{p}.value"),
                    "value may only be set when valueFrom is INLINE",
                );
            }
            if e.value.as_ref().is_some_and(|v| v.len() > 2048) {
                errs.add(format!("{p}.value"), "at most 2048 characters");
            }
        }
    }
    for (i, m) in spec.match_.iter().enumerate() {
        let mut ports = BTreeSet::new();
        for (j, port) in m.ports.iter().enumerate() {
            let p = format!("spec.match[{i}].ports[{j}].number");
            if !(1..=65535).contains(&port.number) {
                errs.add(
                    &p,
                    format!("port number {} must be in the range 1..65535", port.number),
                );
            } else if !ports.insert(port.number) {
                errs.add(&p, format!("duplicate port {}", port.number));
            }
        }
    }
    if !errs.list.is_empty() {
        return None;
    }
    let meta = Meta::from_object(&doc.metadata, created, hash);
    let plugin = Plugin {
        resource_name: format!(
            "{WASM_PLUGIN_RESOURCE_PREFIX}{}.{}",
            meta.namespace, meta.name
        ),
        url: normalize_url(&spec.url),
        type_: match spec.type_ {
            Some(PluginType::Network) => PluginType::Network,
            _ => PluginType::Http,
        },
        phase: spec.phase.unwrap_or(PluginPhase::Unspecified),
        meta,
        spec: doc.spec,
    };
    Some(Resource::WasmPlugin(Arc::new(plugin)))
}
