//! Validation of the routing subset (ServiceEntry, Gateway, VirtualService, Sidecar) and Secrets.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;

use super::{Errors, ValidationError, typed};
use crate::config::{Meta, Named, Resource};
use crate::model::networking::{Resolution, StringMatch};
use crate::model::{Document, Gateway, Secret, ServiceEntry, Sidecar, VirtualService};

/// Parses a Go-style duration (`5s`, `1.5s`, `100ms`, `1m`) into milliseconds.
pub(crate) fn parse_duration_ms(s: &str) -> Option<u64> {
    let (num, unit) = s
        .find(|c: char| c.is_ascii_alphabetic())
        .map(|i| s.split_at(i))?;
    let n: f64 = num.parse().ok()?;
    let mult = match unit {
        "ms" => 1.0,
        "s" => 1000.0,
        "m" => 60_000.0,
        "h" => 3_600_000.0,
        _ => return None,
    };
    (n >= 0.0).then(|| (n * mult).round() as u64)
}

fn port_ok(errs: &mut Errors<'_>, path: String, n: u32) {
    if !(1..=65535).contains(&n) {
        errs.add(
            path,
            format!("port number {n} must be in the range 1..65535"),
        );
    }
}

fn http_protocol(p: &str) -> bool {
    matches!(p.to_ascii_uppercase().as_str(), "HTTP" | "HTTP2" | "GRPC")
}

#[allow(clippy::too_many_arguments)]
pub(super) fn parse(
    kind: &str,
    file: &str,
    resource: &str,
    first_line: usize,
    doc: &str,
    created: i128,
    hash: &str,
    errs: &mut Errors<'_>,
) -> Result<Option<Resource>, ValidationError> {
    Ok(match kind {
        "ServiceEntry" => {
            let d: Document<ServiceEntry> = typed(file, resource, first_line, doc)?;
            service_entry(&d.spec, errs);
            named(&d, created, hash).map(Resource::ServiceEntry)
        }
        "Gateway" => {
            let d: Document<Gateway> = typed(file, resource, first_line, doc)?;
            gateway(&d.spec, errs);
            named(&d, created, hash).map(Resource::Gateway)
        }
        "VirtualService" => {
            let d: Document<VirtualService> = typed(file, resource, first_line, doc)?;
            virtual_service(&d.spec, errs);
            named(&d, created, hash).map(Resource::VirtualService)
        }
        _ => {
            let d: Document<Sidecar> = typed(file, resource, first_line, doc)?;
            sidecar(&d.spec, errs);
            named(&d, created, hash).map(Resource::Sidecar)
        }
    }
    .filter(|_| errs.list.is_empty()))
}

fn named<T: Clone>(d: &Document<T>, created: i128, hash: &str) -> Option<Arc<Named<T>>> {
    Some(Arc::new(Named {
        meta: Meta::from_object(&d.metadata, created, hash),
        spec: d.spec.clone(),
    }))
}

fn service_entry(s: &ServiceEntry, errs: &mut Errors<'_>) {
    if s.hosts.is_empty() {
        errs.add("spec.hosts", "at least one host is required");
    }
    for (i, h) in s.hosts.iter().enumerate() {
        if h.is_empty() || h.contains('/') || h.contains(char::is_whitespace) {
            errs.add(
                format!("spec.hosts[{i}]"),
                format!("{h:?} is not a valid host name"),
            );
        }
        if h.starts_with('*') {
            errs.add(
                format!("spec.hosts[{i}]"),
                "wildcard hosts are not supported by wasmesh",
            );
        }
    }
    if s.ports.is_empty() {
        errs.add("spec.ports", "at least one port is required");
    }
    let mut numbers = BTreeSet::new();
    let mut names = BTreeSet::new();
    for (i, p) in s.ports.iter().enumerate() {
        port_ok(errs, format!("spec.ports[{i}].number"), p.number);
        if !numbers.insert(p.number) {
            errs.add(
                format!("spec.ports[{i}].number"),
                format!("duplicate port {}", p.number),
            );
        }
        if let Some(n) = &p.name
            && !names.insert(n.clone())
        {
            errs.add(
                format!("spec.ports[{i}].name"),
                format!("duplicate port name {n:?}"),
            );
        }
        if let Some(proto) = &p.protocol
            && !http_protocol(proto)
            && !proto.eq_ignore_ascii_case("TCP")
        {
            errs.add(
                format!("spec.ports[{i}].protocol"),
                format!("protocol {proto:?} is not supported (HTTP, HTTP2, GRPC, TCP)"),
            );
        }
        if let Some(t) = p.target_port {
            port_ok(errs, format!("spec.ports[{i}].targetPort"), t);
        }
    }
    match s.resolution {
        None => errs.add("spec.resolution", "required: STATIC or DNS"),
        Some(Resolution::Static) => {
            if s.endpoints.is_empty() {
                errs.add(
                    "spec.endpoints",
                    "STATIC resolution needs at least one endpoint",
                );
            }
            for (i, e) in s.endpoints.iter().enumerate() {
                if e.address.parse::<IpAddr>().is_err() {
                    errs.add(
                        format!("spec.endpoints[{i}].address"),
                        format!(
                            "{:?} is not an IP address (required by STATIC resolution)",
                            e.address
                        ),
                    );
                }
            }
        }
        Some(Resolution::Dns) => {}
    }
    for (i, e) in s.endpoints.iter().enumerate() {
        if e.address.is_empty() {
            errs.add(format!("spec.endpoints[{i}].address"), "required");
        }
        for (name, port) in &e.ports {
            port_ok(errs, format!("spec.endpoints[{i}].ports.{name}"), *port);
            if !names.contains(name) {
                errs.add(
                    format!("spec.endpoints[{i}].ports.{name}"),
                    format!("no port named {name:?} in spec.ports"),
                );
            }
        }
    }
}

fn gateway(g: &Gateway, errs: &mut Errors<'_>) {
    if g.servers.is_empty() {
        errs.add("spec.servers", "at least one server is required");
    }
    for (i, s) in g.servers.iter().enumerate() {
        port_ok(
            errs,
            format!("spec.servers[{i}].port.number"),
            s.port.number,
        );
        if !http_protocol(&s.port.protocol) {
            errs.add(
                format!("spec.servers[{i}].port.protocol"),
                format!(
                    "protocol {:?} is not supported; wasmesh gateways serve HTTP and HTTP2",
                    s.port.protocol
                ),
            );
        }
        if s.hosts.is_empty() {
            errs.add(
                format!("spec.servers[{i}].hosts"),
                "at least one host is required",
            );
        }
        if let Some(b) = &s.bind
            && b.parse::<IpAddr>().is_err()
        {
            errs.add(
                format!("spec.servers[{i}].bind"),
                format!("{b:?} is not an IP address"),
            );
        }
    }
}

fn string_match(errs: &mut Errors<'_>, path: String, m: &StringMatch) {
    let n = [&m.exact, &m.prefix, &m.regex]
        .iter()
        .filter(|v| v.is_some())
        .count();
    if n != 1 {
        errs.add(&path, "exactly one of exact, prefix or regex is required");
    }
    if let Some(r) = &m.regex
        && let Err(e) = regex::Regex::new(r)
    {
        errs.add(
            format!("{path}.regex"),
            format!("invalid regular expression: {e}"),
        );
    }
}

fn virtual_service(v: &VirtualService, errs: &mut Errors<'_>) {
    if v.hosts.is_empty() {
        errs.add("spec.hosts", "at least one host is required");
    }
    if v.http.is_empty() {
        errs.add(
            "spec.http",
            "at least one HTTP route is required (tcp and tls routes are not supported)",
        );
    }
    for (i, r) in v.http.iter().enumerate() {
        let p = format!("spec.http[{i}]");
        for (j, m) in r.match_.iter().enumerate() {
            if let Some(u) = &m.uri {
                string_match(errs, format!("{p}.match[{j}].uri"), u);
            }
            if let Some(u) = &m.method {
                string_match(errs, format!("{p}.match[{j}].method"), u);
            }
            for (h, u) in &m.headers {
                string_match(errs, format!("{p}.match[{j}].headers.{h}"), u);
            }
        }
        if r.route.is_empty() {
            errs.add(format!("{p}.route"), "at least one destination is required");
        }
        let weights: Vec<u32> = r.route.iter().map(|d| d.weight.unwrap_or(0)).collect();
        if r.route.len() > 1 && weights.iter().sum::<u32>() == 0 {
            errs.add(
                format!("{p}.route"),
                "weights are required when there are several destinations",
            );
        }
        for (j, d) in r.route.iter().enumerate() {
            if d.destination.host.is_empty() {
                errs.add(format!("{p}.route[{j}].destination.host"), "required");
            }
            if let Some(port) = &d.destination.port {
                port_ok(
                    errs,
                    format!("{p}.route[{j}].destination.port.number"),
                    port.number,
                );
            }
        }
        if let Some(t) = &r.timeout
            && parse_duration_ms(t).is_none()
        {
            errs.add(
                format!("{p}.timeout"),
                format!("{t:?} is not a duration (e.g. 5s, 100ms)"),
            );
        }
        if let Some(retry) = &r.retries
            && let Some(t) = &retry.per_try_timeout
            && parse_duration_ms(t).is_none()
        {
            errs.add(
                format!("{p}.retries.perTryTimeout"),
                format!("{t:?} is not a duration"),
            );
        }
        if let Some(rw) = &r.rewrite
            && rw.uri.as_deref().is_some_and(|u| !u.starts_with('/'))
        {
            errs.add(format!("{p}.rewrite.uri"), "must start with '/'");
        }
    }
}

fn sidecar(s: &Sidecar, errs: &mut Errors<'_>) {
    for (i, l) in s.ingress.iter().enumerate() {
        port_ok(
            errs,
            format!("spec.ingress[{i}].port.number"),
            l.port.number,
        );
        if !http_protocol(&l.port.protocol) {
            errs.add(
                format!("spec.ingress[{i}].port.protocol"),
                format!(
                    "protocol {:?} is not supported (HTTP, HTTP2, GRPC)",
                    l.port.protocol
                ),
            );
        }
        if parse_default_endpoint(&l.default_endpoint).is_none() {
            errs.add(
                format!("spec.ingress[{i}].defaultEndpoint"),
                format!(
                    "{:?} must be IP:PORT (e.g. 127.0.0.1:8080)",
                    l.default_endpoint
                ),
            );
        }
    }
}

/// `127.0.0.1:8080` → (ip, port).
pub(crate) fn parse_default_endpoint(s: &str) -> Option<(String, u32)> {
    let addr: std::net::SocketAddr = s.parse().ok()?;
    Some((addr.ip().to_string(), u32::from(addr.port())))
}

pub(super) fn validate_secret(
    s: Secret,
    created: i128,
    hash: &str,
    errs: &mut Errors<'_>,
) -> Option<Resource> {
    for (k, v) in &s.data {
        if decode_base64(v).is_none() {
            errs.add(format!("data.{k}"), "not valid base64");
        }
    }
    if !errs.list.is_empty() {
        return None;
    }
    Some(Resource::Secret(Arc::new(Named {
        meta: Meta::from_object(&s.metadata, created, hash),
        spec: s,
    })))
}

/// Standard base64 (with or without padding, whitespace ignored).
pub(crate) fn decode_base64(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut buf = 0u32;
    let mut bits = 0;
    for c in s.bytes().filter(|c| !c.is_ascii_whitespace()) {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            b'=' => continue,
            _ => return None,
        };
        buf = (buf << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((buf >> bits) as u8);
        }
    }
    Some(out)
}
