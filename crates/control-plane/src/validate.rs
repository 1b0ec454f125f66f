//! Parsing and validation: multi-document YAML → validated [`Resource`]s, or every error found,
//! each naming the file, the resource, the field path and the reason.

mod go_url;
mod networking;
mod time;
pub(crate) mod wasm;
mod yaml_path;

use std::fmt;
use std::hash::{DefaultHasher, Hash, Hasher};

use serde::de::DeserializeOwned;

use crate::config::Resource;
use crate::model::{Document, Header};

pub(crate) use networking::{decode_base64, parse_default_endpoint, parse_duration_ms};
pub use time::parse_rfc3339_nanos;

/// One validation error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ValidationError {
    /// File path.
    pub file: String,
    /// `Kind namespace/name`, or `document N` when the header is unreadable.
    pub resource: String,
    /// Field path, e.g. `spec.match[0].ports[1].number` (or `line L column C` for YAML errors).
    pub path: String,
    /// Why it is invalid.
    pub reason: String,
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {}: {}: {}",
            self.file, self.resource, self.path, self.reason
        )
    }
}

/// Collects errors for one resource.
pub(crate) struct Errors<'a> {
    file: &'a str,
    resource: String,
    pub(crate) list: Vec<ValidationError>,
    /// Non-fatal findings (istiod webhook warnings).
    pub(crate) warnings: Vec<ValidationError>,
}

impl<'a> Errors<'a> {
    fn new(file: &'a str, resource: String) -> Self {
        Self {
            file,
            resource,
            list: Vec::new(),
            warnings: Vec::new(),
        }
    }

    pub(crate) fn add(&mut self, path: impl Into<String>, reason: impl Into<String>) {
        self.list.push(ValidationError {
            file: self.file.to_string(),
            resource: self.resource.clone(),
            path: path.into(),
            reason: reason.into(),
        });
    }

    pub(crate) fn warn(&mut self, path: impl Into<String>, reason: impl Into<String>) {
        self.warnings.push(ValidationError {
            file: self.file.to_string(),
            resource: self.resource.clone(),
            path: path.into(),
            reason: reason.into(),
        });
    }
}

/// Result of parsing one file.
#[derive(Debug, Default)]
pub struct Parsed {
    /// Valid resources (only meaningful if `errors` is empty: a file is applied whole or not at all).
    pub resources: Vec<Resource>,
    /// Errors.
    pub errors: Vec<ValidationError>,
    /// Warnings (the resource is still applied).
    pub warnings: Vec<ValidationError>,
}

/// Splits YAML text into documents at `---` lines; returns (first line number, text).
fn split_documents(text: &str) -> Vec<(usize, String)> {
    let mut docs = Vec::new();
    let mut cur = String::new();
    let mut start = 1;
    for (i, line) in text.lines().enumerate() {
        if line.starts_with("---") && line[3..].trim().is_empty() {
            docs.push((start, std::mem::take(&mut cur)));
            start = i + 2;
            continue;
        }
        if line.trim_end() == "..." {
            continue;
        }
        cur.push_str(line);
        cur.push('\n');
    }
    docs.push((start, cur));
    docs.into_iter()
        .filter(|(_, d)| {
            d.lines()
                .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        })
        .collect()
}

fn hash_text(s: &str) -> String {
    let mut h = DefaultHasher::new();
    s.hash(&mut h);
    format!("{:016x}", h.finish())
}

fn yaml_error(
    file: &str,
    resource: &str,
    first_line: usize,
    doc: &str,
    e: &serde_saphyr::Error,
) -> ValidationError {
    let path = match e.location() {
        Some(loc) => {
            let (line, col) = (loc.line() as usize, loc.column() as usize);
            let at = format!("line {} column {col}", line + first_line - 1);
            match yaml_path::path_at(doc, line, col) {
                Some(p) => format!("{p} ({at})"),
                None => at,
            }
        }
        None => format!("document starting at line {first_line}"),
    };
    ValidationError {
        file: file.to_string(),
        resource: resource.to_string(),
        path,
        reason: first_line_of(&e.to_string()),
    }
}

fn first_line_of(s: &str) -> String {
    let line = s.lines().next().unwrap_or_default().trim();
    let line = line.strip_prefix("error: ").unwrap_or(line);
    // serde-saphyr repeats its (document-relative) location; we report the file-relative one.
    match line.strip_prefix("line ").and_then(|r| r.split_once(": ")) {
        Some((loc, rest)) if loc.contains(" column ") => rest.to_string(),
        _ => line.to_string(),
    }
}

fn typed<T: DeserializeOwned>(
    file: &str,
    resource: &str,
    first_line: usize,
    doc: &str,
) -> Result<T, ValidationError> {
    serde_saphyr::from_str_with_options::<T>(doc, yaml_options())
        .map_err(|e| yaml_error(file, resource, first_line, doc, &e))
}

/// YAML read as kubectl reads it (sigs.k8s.io/yaml, YAML 1.1 scalars): `010` is octal 8, as the
/// API server would store it, not YAML 1.2's decimal 10.
fn yaml_options() -> serde_saphyr::Options {
    let mut o = serde_saphyr::Options::default();
    o.legacy_octal_numbers = true;
    o
}

/// Parses and validates every document of `text` (from `file`). `first_seen(kind, namespace, name)`
/// gives the creation time (Unix nanos) of resources without `metadata.creationTimestamp`.
pub fn parse_file(
    file: &str,
    text: &str,
    first_seen: &mut dyn FnMut(&str, &str, &str) -> i128,
) -> Parsed {
    let mut out = Parsed::default();
    for (n, (first_line, doc)) in split_documents(text).into_iter().enumerate() {
        let header: Header = match typed(file, &format!("document {}", n + 1), first_line, &doc) {
            Ok(h) => h,
            Err(e) => {
                out.errors.push(e);
                continue;
            }
        };
        let resource = format!(
            "{} {}/{}",
            if header.kind.is_empty() {
                "<no kind>"
            } else {
                &header.kind
            },
            header.metadata.namespace(),
            header.metadata.name
        );
        let mut errs = Errors::new(file, resource.clone());
        let hash = hash_text(&doc);
        let created = match &header.metadata.creation_timestamp {
            Some(ts) => match parse_rfc3339_nanos(ts) {
                Some(t) => t,
                None => {
                    errs.add(
                        "metadata.creationTimestamp",
                        format!("{ts:?} is not an RFC 3339 time"),
                    );
                    0
                }
            },
            None => first_seen(
                &header.kind,
                header.metadata.namespace(),
                &header.metadata.name,
            ),
        };
        validate_meta(&header, &mut errs);
        let api = header.api_version.as_str();
        let res = match header.kind.as_str() {
            "WasmPlugin" => {
                check_api(&mut errs, api, &["extensions.istio.io/v1alpha1"]);
                typed::<Document<crate::model::WasmPlugin>>(file, &resource, first_line, &doc)
                    .map(|d| wasm::validate(d, created, &hash, &mut errs))
            }
            "ServiceEntry" | "Gateway" | "VirtualService" | "Sidecar" => {
                check_api(
                    &mut errs,
                    api,
                    &[
                        "networking.istio.io/v1",
                        "networking.istio.io/v1beta1",
                        "networking.istio.io/v1alpha3",
                    ],
                );
                networking::parse(
                    &header.kind,
                    file,
                    &resource,
                    first_line,
                    &doc,
                    created,
                    &hash,
                    &mut errs,
                )
            }
            "Secret" => {
                check_api(&mut errs, api, &["v1"]);
                typed::<crate::model::Secret>(file, &resource, first_line, &doc)
                    .map(|s| networking::validate_secret(s, created, &hash, &mut errs))
            }
            "" => {
                errs.add("kind", "missing");
                continue_with(&mut out, errs);
                continue;
            }
            other => {
                errs.add(
                    "kind",
                    format!(
                        "unsupported kind {other:?}; supported: WasmPlugin, ServiceEntry, Gateway, \
                         VirtualService, Sidecar, Secret"
                    ),
                );
                continue_with(&mut out, errs);
                continue;
            }
        };
        match res {
            Ok(Some(r)) if errs.list.is_empty() => out.resources.push(r),
            Ok(_) => {}
            Err(e) => errs.list.push(e),
        }
        continue_with(&mut out, errs);
    }
    // Duplicates within one file.
    let mut seen = std::collections::BTreeSet::new();
    for r in &out.resources {
        let (k, ns, name) = r.key();
        if !seen.insert((k, ns.to_string(), name.to_string())) {
            out.errors.push(ValidationError {
                file: file.to_string(),
                resource: format!("{k} {ns}/{name}"),
                path: "metadata.name".into(),
                reason: "defined twice in this file".into(),
            });
        }
    }
    out
}

fn continue_with(out: &mut Parsed, errs: Errors<'_>) {
    out.errors.extend(errs.list);
    out.warnings.extend(errs.warnings);
}

fn check_api(errs: &mut Errors<'_>, api: &str, allowed: &[&str]) {
    if !allowed.contains(&api) {
        errs.add(
            "apiVersion",
            format!("{api:?} is not supported; use one of {allowed:?}"),
        );
    }
}

/// DNS-1123 label: lowercase alphanumerics and '-', starts and ends alphanumeric, ≤ 63.
pub(crate) fn is_dns1123_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// DNS-1123 subdomain: dot-separated labels, ≤ 253.
pub(crate) fn is_dns1123_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns1123_label)
}

fn validate_meta(h: &Header, errs: &mut Errors<'_>) {
    if h.metadata.name.is_empty() {
        errs.add("metadata.name", "required");
    } else if !is_dns1123_subdomain(&h.metadata.name) {
        errs.add(
            "metadata.name",
            format!(
                "{:?} is not a valid name (lowercase letters, digits, '-', '.')",
                h.metadata.name
            ),
        );
    }
    if let Some(ns) = &h.metadata.namespace
        && !is_dns1123_label(ns)
    {
        errs.add(
            "metadata.namespace",
            format!("{ns:?} is not a valid namespace (DNS-1123 label)"),
        );
    }
}

/// Unix time now in nanoseconds.
pub fn now_nanos() -> i128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests;
