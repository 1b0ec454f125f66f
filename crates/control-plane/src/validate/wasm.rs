//! WasmPlugin validation: istiod's webhook (`ValidateWasmPlugin`) plus the CRD schema rules.

use std::collections::BTreeSet;
use std::sync::Arc;

use super::{Errors, go_url};
use crate::config::{Meta, Plugin, Resource, WASM_PLUGIN_RESOURCE_PREFIX};
use crate::model::Document;
use crate::model::wasm::{EnvValueSource, PluginPhase, PluginType, WasmPlugin};
use crate::select::canonical_group;

/// `validateWasmPluginURL`'s schemes ("" is defaulted to `oci` later).
const SCHEMES: [&str; 5] = ["", "file", "http", "https", "oci"];

/// `allowedTargetRefs` as istiod prints it (`%v` of `[]config.GroupVersionKind`).
const ALLOWED_TARGET_REFS: &str = "[core/v1/Service networking.istio.io/v1/ServiceEntry \
     gateway.networking.k8s.io/v1/Gateway gateway.networking.k8s.io/v1/GatewayClass]";

/// istiod's `strictParseURL`: `url.ParseRequestURI`, and only if that fails, again with
/// `http://` in front (so `registry/x` passes as `http://registry/x`, while `localhost:5000/x`
/// parses the first time, with the scheme `localhost`); either way `url.Parse` must accept the
/// string that parsed.
pub(crate) fn strict_parse_url(url: &str) -> Result<go_url::GoUrl, String> {
    match go_url::parse_request_uri(url) {
        Ok(u) => match go_url::parse(url) {
            Ok(_) => Ok(u),
            Err(e) => Err(format!("failed to strict parse url: {e}")),
        },
        Err(first) => {
            let with_http = format!("http://{url}");
            let u = go_url::parse_request_uri(&with_http)
                .map_err(|_| format!("failed to parse url: {first}"))?;
            go_url::parse(&with_http).map_err(|e| format!("failed to strict parse url: {e}"))?;
            Ok(u)
        }
    }
}

/// Where the module comes from, as istiod's `convertToWasmPluginWrapper` / `buildDataSource`
/// derive it: `url.Parse`, scheme `oci` when empty, `u.String()` for remote URLs; for the `file`
/// scheme the original string without a leading `file://`. `Err` is the reason istiod discards
/// the plugin.
pub(crate) fn module_source(url: &str) -> Result<(String, Option<String>), go_url::UrlError> {
    let mut u = go_url::parse(url)?;
    if u.scheme.is_empty() {
        u.set_scheme("oci");
    }
    let local =
        (u.scheme == "file").then(|| url.strip_prefix("file://").unwrap_or(url).to_string());
    Ok((u.to_string(), local))
}

fn validate_sha256(sha: &str) -> Option<&'static str> {
    if sha.is_empty() {
        None
    } else if sha.len() != 64 {
        Some("sha256 field must be 64 characters long")
    } else if !sha
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        Some("sha256 field must match [a-f0-9]{64} pattern")
    } else {
        None
    }
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
    if let Some(sel) = &spec.selector {
        if sel.match_labels.is_empty() {
            errs.warn(
                "spec.selector.matchLabels",
                "workload selector specified without labels",
            );
        }
        // Webhook `validateWorkloadSelector` plus the CRD's value maxLength 63 and maxProperties;
        // label syntax itself is not checked by either.
        if sel.match_labels.len() > 4096 {
            errs.add("spec.selector.matchLabels", "at most 4096 labels");
        }
        for (k, v) in &sel.match_labels {
            let kv = format!("{k}={v}");
            if k.is_empty() {
                errs.add(
                    "spec.selector.matchLabels",
                    format!("empty key is not supported in selector: {kv:?}"),
                );
            }
            if k.contains('*') || v.contains('*') {
                errs.add(
                    format!("spec.selector.matchLabels.{k}"),
                    format!("wildcard is not supported in selector: {kv:?}"),
                );
            }
            if v.chars().count() > 63 {
                errs.add(
                    format!("spec.selector.matchLabels.{k}"),
                    "label value may have at most 63 characters",
                );
            }
        }
    }
    if spec.target_refs.len() > 16 {
        errs.add("spec.targetRefs", "at most 16 items");
    }
    let refs = spec
        .target_ref
        .iter()
        .map(|r| ("spec.targetRef".to_string(), r))
        .chain(
            spec.target_refs
                .iter()
                .enumerate()
                .map(|(i, r)| (format!("spec.targetRefs[{i}]"), r)),
        );
    for (path, r) in refs {
        if r.name.is_empty() {
            errs.add(format!("{path}.name"), "targetRef name must be set");
        }
        if !r.namespace.is_empty() {
            errs.add(
                format!("{path}.namespace"),
                "targetRef namespace must not be set; cross namespace referencing is not supported",
            );
        }
        let ok = matches!(
            (canonical_group(&r.group), r.kind.as_str()),
            ("core", "Service")
                | ("networking.istio.io", "ServiceEntry")
                | ("gateway.networking.k8s.io", "Gateway")
                | ("gateway.networking.k8s.io", "GatewayClass")
        );
        if !ok {
            errs.add(
                format!("{path}.kind"),
                format!(
                    "targetRef must be to one of {ALLOWED_TARGET_REFS} but was {}/{}",
                    r.group, r.kind
                ),
            );
        }
    }
    if spec.url.is_empty() {
        errs.add("spec.url", "url field needs to be set");
    } else {
        match strict_parse_url(&spec.url) {
            Err(e) => errs.add("spec.url", e),
            Ok(u) if !SCHEMES.contains(&u.scheme.as_str()) => errs.add(
                "spec.url",
                format!("url contains unsupported scheme: {}", u.scheme),
            ),
            Ok(_) => {}
        }
    }
    // A sha256 that differs from an `@sha256:` digest in the url is accepted: istiod leaves the
    // check to the agent, which fails the pull.
    if let Some(reason) = spec.sha256.as_deref().and_then(validate_sha256) {
        errs.add("spec.sha256", reason);
    }
    if let Some(s) = &spec.image_pull_secret {
        if s.is_empty() {
            errs.add(
                "spec.imagePullSecret",
                "must not be empty (CRD minLength 1)",
            );
        } else if s.len() > 253 {
            errs.add(
                "spec.imagePullSecret",
                "imagePullSecret field must be less than 253 characters long",
            );
        }
    }
    if let Some(n) = &spec.plugin_name {
        if n.is_empty() {
            errs.add("spec.pluginName", "must not be empty (CRD minLength 1)");
        } else if n.len() > 256 {
            errs.add(
                "spec.pluginName",
                "pluginName field must be less than 255 characters long",
            );
        }
    }
    if let Some(vm) = &spec.vm_config {
        if vm.env.len() > 256 {
            errs.add("spec.vmConfig.env", "at most 256 items");
        }
        let mut names = BTreeSet::new();
        for (i, e) in vm.env.iter().enumerate() {
            let p = format!("spec.vmConfig.env[{i}]");
            if e.name.is_empty() {
                errs.add(format!("{p}.name"), "spec.vmConfig.env invalid");
            } else if e.name.len() > 256 {
                errs.add(
                    format!("{p}.name"),
                    "env.name field must be less than 255 characters long",
                );
            } else if !names.insert(e.name.as_str()) {
                errs.add(format!("{p}.name"), "duplicate env");
            }
            // The CRD rule is on presence (`has(self.value)`), stricter than the webhook's `!= ""`.
            if e.value_from == Some(EnvValueSource::Host) && e.value.is_some() {
                errs.add(
                    format!("{p}.value"),
                    "value may only be set when valueFrom is INLINE",
                );
            }
            if e.value.as_ref().is_some_and(|v| v.chars().count() > 2048) {
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
                    format!(
                        "spec.Match[{i}].Ports[{j}] is out of range: {}",
                        port.number
                    ),
                );
            } else if !ports.insert(port.number) {
                // CRD: ports is a list-map keyed by number.
                errs.add(&p, format!("duplicate port {}", port.number));
            }
        }
    }
    if !errs.list.is_empty() {
        return None;
    }
    let meta = Meta::from_object(&doc.metadata, created, hash);
    // istiod validates with ParseRequestURI (+ the http:// retry) but builds config with
    // url.Parse; a url only the former accepts (`127.0.0.1:5000/x`) is dropped with a warning.
    let (url, local_file) = match module_source(&spec.url) {
        Ok(v) => v,
        Err(e) => {
            let reason = format!(
                "wasmplugin {}/{} discarded due to failure to parse URL: {e}",
                meta.namespace, meta.name
            );
            tracing::warn!(plugin = %format!("{}/{}", meta.namespace, meta.name), url = %spec.url, "{reason}");
            errs.warn("spec.url", reason);
            return None;
        }
    };
    let plugin = Plugin {
        resource_name: format!(
            "{WASM_PLUGIN_RESOURCE_PREFIX}{}.{}",
            meta.namespace, meta.name
        ),
        url,
        local_file,
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
