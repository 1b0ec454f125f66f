//! Converting between the proxy's `http` types and the header maps plugins see, with Envoy's
//! pseudo-headers: `:authority`, `:path`, `:method`, `:scheme` for HTTP/1.1 requests (`Host`
//! becomes `:authority`; h2: `:method`, `:path`, `:scheme`, `:authority`), `:status` for
//! responses.

use http::header::{HOST, HeaderName, HeaderValue};
use http::{Method, StatusCode, Uri};
use wasm_host::{Change, HeaderMap};

/// The entries a plugin sees for a request head, borrowed (no allocation); `:scheme` is the
/// request's, else `https` on a TLS connection (`tls`), else `http`.
fn request_entries(
    parts: &http::request::Parts,
    tls: bool,
) -> impl Iterator<Item = (&[u8], &[u8])> {
    let authority: &[u8] = parts
        .uri
        .authority()
        .map(|a| a.as_str().as_bytes())
        .or_else(|| parts.headers.get(HOST).map(HeaderValue::as_bytes))
        .unwrap_or_default();
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let authority = (&b":authority"[..], authority);
    let path = (&b":path"[..], path.as_bytes());
    let method = (&b":method"[..], parts.method.as_str().as_bytes());
    let edited = parts.extensions.get::<PseudoState>();
    let scheme = (
        &b":scheme"[..],
        match edited.and_then(|e| e.scheme.as_ref()) {
            Some(s) => s.as_ref(),
            None => parts
                .uri
                .scheme_str()
                .unwrap_or(if tls { "https" } else { "http" })
                .as_bytes(),
        },
    );
    // Envoy keeps an h2 request's pseudo-headers in the order they came; the h2 codec does not
    // tell it, so the order curl and nghttp2 send is used. HTTP/1.1: Envoy's codec order. A
    // plugin's edits may have moved them (a replaced one goes to the end of the pseudo-headers).
    let all = [authority, path, method, scheme];
    let order = match edited {
        Some(e) => e.order,
        None => default_pseudo_order(parts.version),
    };
    order.map(|i| all[usize::from(i) % 4]).into_iter().chain(
        parts
            .headers
            .iter()
            .filter(|(k, _)| *k != HOST)
            .map(|(k, v)| (k.as_str().as_bytes(), v.as_bytes())),
    )
}

/// Request pseudo-headers as a plugin's edits left them: their order (indices into
/// `:authority`, `:path`, `:method`, `:scheme`) and the `:scheme` it set (a request extension;
/// only requests whose pseudo-headers a plugin edited carry it).
#[derive(Debug, Clone)]
pub(crate) struct PseudoState {
    order: [u8; 4],
    scheme: Option<bytes::Bytes>,
}

fn default_pseudo_order(version: http::Version) -> [u8; 4] {
    if version == http::Version::HTTP_2 {
        [2, 1, 3, 0]
    } else {
        [0, 1, 2, 3]
    }
}

/// The pseudo-header order and `:scheme` of a plugin's map, kept with the request.
fn keep_pseudo_state(map: &HeaderMap, parts: &mut http::request::Parts) {
    const NAMES: [&[u8]; 4] = [b":authority", b":path", b":method", b":scheme"];
    let mut order = Vec::with_capacity(4);
    for (k, _) in map.iter() {
        if let Some(i) = NAMES.iter().position(|n| *n == k)
            && !order.contains(&(i as u8))
        {
            order.push(i as u8);
        }
    }
    for i in default_pseudo_order(parts.version) {
        if !order.contains(&i) {
            order.push(i);
        }
    }
    let mut fixed = [0u8; 4];
    fixed.copy_from_slice(&order[..4]);
    let scheme = map.get(b":scheme");
    let default_order = fixed == default_pseudo_order(parts.version)
        && parts.extensions.get::<PseudoState>().is_none();
    let scheme_as_parsed = match (scheme, parts.uri.scheme_str()) {
        (None, _) => true,
        (Some(s), Some(u)) => u.as_bytes() == s,
        // (HTTP/1.1: plain `http` needs nothing kept; on TLS `https` is kept, reading the same)
        (Some(s), None) => s == b"http",
    };
    // The common case (a plugin that edited only regular headers): nothing kept.
    if default_order && scheme_as_parsed {
        return;
    }
    parts.extensions.insert(PseudoState {
        order: fixed,
        scheme: scheme.map(bytes::Bytes::copy_from_slice),
    });
}

/// The entries a plugin sees for response headers with status `code`, borrowed.
fn response_entries<'a>(
    code: Option<&'a StatusCode>,
    h: &'a http::HeaderMap,
) -> impl Iterator<Item = (&'a [u8], &'a [u8])> {
    code.map(|c| (&b":status"[..], c.as_str().as_bytes()))
        .into_iter()
        .chain(h.iter().map(|(k, v)| (k.as_str().as_bytes(), v.as_bytes())))
}

/// Request head → plugin map (plain text).
#[cfg(test)]
pub(crate) fn request_map(parts: &http::request::Parts) -> HeaderMap {
    request_map_on(parts, false)
}

/// Request head → plugin map, for a request that came over TLS when `tls`.
pub(crate) fn request_map_on(parts: &http::request::Parts, tls: bool) -> HeaderMap {
    HeaderMap::from_lowercase_entries(request_entries(parts, tls))
}

/// The plugin's edits of a request map → request head: only the edits when they can be
/// applied in place, else the whole map.
pub(crate) fn apply_request(map: &HeaderMap, parts: &mut http::request::Parts) {
    match apply_edits(map, &mut parts.headers) {
        Some(false) => {}
        Some(true) => apply_request_pseudo(map, parts),
        None => apply_request_map(map, parts),
    }
}

/// The plugin's edits of a response map → response head.
pub(crate) fn apply_response(map: &HeaderMap, parts: &mut http::response::Parts) {
    match apply_edits(map, &mut parts.headers) {
        Some(false) => {}
        Some(true) => apply_status(map, parts),
        None => apply_response_map(map, parts),
    }
}

/// The plugin's edits of a trailers map → trailers.
pub(crate) fn apply_trailers(map: &HeaderMap, h: &mut http::HeaderMap) {
    if apply_edits(map, h).is_none() {
        apply_trailers_map(map, h);
    }
}

/// Applies the logged edits of regular headers to `out` in order; says whether a
/// pseudo-header was edited too. `None` (nothing done) when they cannot be applied in place:
/// no log (the plugin set all pairs), or a removal of a present header or a pseudo-header
/// (`http::HeaderMap` does not keep the order of the others on removal; Envoy does).
fn apply_edits(map: &HeaderMap, out: &mut http::HeaderMap) -> Option<bool> {
    let changes = map.changes()?;
    let mut pseudo = false;
    for c in changes.clone() {
        match c {
            Change::Remove(k) if k.first() == Some(&b':') => return None,
            Change::Remove(k) => {
                if HeaderName::from_bytes(k).is_ok_and(|n| out.contains_key(n)) {
                    return None;
                }
            }
            Change::Add(k, _) | Change::Replace(k, _) => pseudo |= k.first() == Some(&b':'),
        }
    }
    for c in changes {
        let (k, v, replace) = match c {
            Change::Add(k, v) => (k, v, false),
            Change::Replace(k, v) => (k, v, true),
            Change::Remove(_) => continue,
        };
        if k.first() == Some(&b':') {
            continue;
        }
        match (HeaderName::from_bytes(k), HeaderValue::from_bytes(v)) {
            (Ok(k), Ok(v)) if replace => {
                // Envoy's setCopy moves a replaced header to the end.
                crate::header_order::remove(out, &[k.as_str()]);
                out.append(k, v);
            }
            (Ok(k), Ok(v)) => {
                out.append(k, v);
            }
            _ => invalid_header(k),
        }
    }
    Some(pseudo)
}

fn invalid_header(k: &[u8]) {
    tracing::warn!(header = %String::from_utf8_lossy(k), "plugin set an invalid header; dropped");
}

/// Plugin map → request head. Invalid names or values are dropped with a log line, as a
/// codec would refuse them.
pub(crate) fn apply_request_map(map: &HeaderMap, parts: &mut http::request::Parts) {
    parts.headers.clear();
    apply_request_pseudo(map, parts);
    append_regular(map, &mut parts.headers);
}

/// The request pseudo-headers of a plugin map → method, URI and `Host`.
fn apply_request_pseudo(map: &HeaderMap, parts: &mut http::request::Parts) {
    keep_pseudo_state(map, parts);
    if let Some(m) = map.get(b":method").and_then(|m| Method::from_bytes(m).ok()) {
        parts.method = m;
    }
    let authority = map.get_str(":authority").unwrap_or_default().to_string();
    let path = map.get_str(":path").unwrap_or("/").to_string();
    let had_authority = parts.uri.authority().is_some();
    let uri = if had_authority {
        let scheme = map.get_str(":scheme").unwrap_or("http");
        format!("{scheme}://{authority}{path}")
    } else {
        path
    };
    match uri.parse::<Uri>() {
        Ok(u) => parts.uri = u,
        Err(e) => {
            tracing::warn!(uri = %uri, error = %e, "plugin set an invalid :path/:authority; keeping the old one")
        }
    }
    if authority.is_empty() {
        crate::header_order::remove(&mut parts.headers, &["host"]);
    } else if let Ok(v) = HeaderValue::from_str(&authority) {
        parts.headers.insert(HOST, v);
    }
}

/// Response head → plugin map.
pub(crate) fn response_map(parts: &http::response::Parts) -> HeaderMap {
    let code = if parts.extensions.get::<MissingStatus>().is_some() {
        None
    } else {
        Some(parts.status)
    };
    response_with_code(code, &parts.headers)
}

/// Response headers with status `code` (`:status` only if known) → plugin map.
pub(crate) fn response_with_code(code: Option<StatusCode>, h: &http::HeaderMap) -> HeaderMap {
    HeaderMap::from_lowercase_entries(response_entries(code.as_ref(), h))
}

/// Plugin map → response head.
pub(crate) fn apply_response_map(map: &HeaderMap, parts: &mut http::response::Parts) {
    apply_status(map, parts);
    parts.headers.clear();
    append_regular(map, &mut parts.headers);
}

/// A response head whose `:status` a plugin removed (a response extension): the next plugins
/// see no `:status`, and unless one sets it again the proxy answers 502, as Envoy does.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MissingStatus;

fn apply_status(map: &HeaderMap, parts: &mut http::response::Parts) {
    match map.get(b":status") {
        Some(s) => {
            if let Ok(s) = StatusCode::from_bytes(s) {
                parts.status = s;
                parts.extensions.remove::<MissingStatus>();
            }
        }
        None => {
            parts.extensions.insert(MissingStatus);
        }
    }
}

/// Trailers both ways (no pseudo-headers).
pub(crate) fn trailers_map(h: &http::HeaderMap) -> HeaderMap {
    HeaderMap::from_lowercase_entries(h.iter().map(|(k, v)| (k.as_str().as_bytes(), v.as_bytes())))
}

pub(crate) fn apply_trailers_map(map: &HeaderMap, h: &mut http::HeaderMap) {
    h.clear();
    append_regular(map, h);
}

fn append_regular(map: &HeaderMap, out: &mut http::HeaderMap) {
    for (k, v) in map.iter() {
        if k.first() == Some(&b':') {
            continue;
        }
        match (HeaderName::from_bytes(k), HeaderValue::from_bytes(v)) {
            (Ok(k), Ok(v)) => {
                out.append(k, v);
            }
            _ => invalid_header(k),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_round_trip_with_envoy_pseudo_headers() {
        let req = http::Request::builder()
            .method("POST")
            .uri("/a?b=1")
            .header("host", "example.com")
            .header("x-a", "1")
            .header("x-a", "2")
            .body(())
            .expect("request");
        let (mut parts, ()) = req.into_parts();
        let m = request_map(&parts);
        let keys: Vec<&[u8]> = m.iter().map(|(k, _)| k).collect();
        assert_eq!(
            keys,
            vec![
                &b":authority"[..],
                b":path",
                b":method",
                b":scheme",
                b"x-a",
                b"x-a"
            ]
        );
        assert_eq!(m.get_str(":authority"), Some("example.com"));
        let mut m2 = m.clone();
        m2.replace(b":path", b"/new");
        m2.replace(b":authority", b"other.com");
        m2.add(b"bad header", b"x");
        apply_request_map(&m2, &mut parts);
        assert_eq!(parts.uri.to_string(), "/new");
        assert_eq!(
            parts.headers.get("host").and_then(|v| v.to_str().ok()),
            Some("other.com")
        );
        assert_eq!(parts.headers.get_all("x-a").iter().count(), 2);
        assert_eq!(parts.method, Method::POST);
    }

    fn request(headers: &[(&str, &str)]) -> http::request::Parts {
        let mut b = http::Request::builder().method("GET").uri("/a");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).expect("request").into_parts().0
    }

    fn names(h: &http::HeaderMap) -> Vec<&str> {
        h.iter().map(|(k, _)| k.as_str()).collect()
    }

    #[test]
    fn edits_apply_in_place_and_match_a_full_rebuild() {
        let base = [("host", "a.com"), ("x-1", "1"), ("x-2", "2"), ("x-3", "3")];
        type Edit = Box<dyn Fn(&mut HeaderMap)>;
        let cases: Vec<Edit> = vec![
            Box::new(|m| m.add(b"x-new", b"v")),
            Box::new(|m| m.add(b"x-1", b"again")),
            Box::new(|m| m.replace(b"x-2", b"two")),
            Box::new(|m| m.replace(b":path", b"/b?q=1")),
            Box::new(|m| m.replace(b":authority", b"b.com")),
            Box::new(|m| m.remove(b"x-absent")),
            // Removing a present header falls back to the rebuild (keeps the others' order).
            Box::new(|m| m.remove(b"x-1")),
            Box::new(|m| {
                m.remove(b"x-2");
                m.add(b"x-2", b"last");
            }),
            Box::new(|m| m.set_entries([(":path", "/all"), ("x-only", "1")])),
            Box::new(|m| m.add(b"bad header", b"x")),
        ];
        for (i, edit) in cases.iter().enumerate() {
            let mut in_place = request(&base);
            let mut rebuilt = request(&base);
            let mut m = request_map(&in_place);
            edit(&mut m);
            apply_request(&m, &mut in_place);
            apply_request_map(&m, &mut rebuilt);
            assert_eq!(in_place.uri, rebuilt.uri, "case {i}");
            assert_eq!(
                names(&in_place.headers),
                names(&rebuilt.headers),
                "case {i}"
            );
            assert_eq!(in_place.headers, rebuilt.headers, "case {i}");
            // Same headers as the plugin left (http::HeaderMap groups a name's values).
            let sorted = |m: &HeaderMap| {
                let mut v: Vec<(Vec<u8>, Vec<u8>)> = m.clone().into_entries();
                v.retain(|(k, _)| k.first() != Some(&b':'));
                v.sort();
                v
            };
            let fresh = request_map(&in_place);
            assert_eq!(sorted(&fresh), sorted(&valid_only(&m)), "case {i}");
        }
    }

    /// The map without entries a codec refuses (what the proxy keeps of it).
    fn valid_only(m: &HeaderMap) -> HeaderMap {
        HeaderMap::from_entries(m.iter().filter(|(k, v)| {
            k.first() == Some(&b':')
                || (HeaderName::from_bytes(k).is_ok() && HeaderValue::from_bytes(v).is_ok())
        }))
    }

    #[test]
    fn response_status_is_a_pseudo_header() {
        let (mut parts, ()) = http::Response::builder()
            .status(200)
            .header("server", "x")
            .body(())
            .expect("resp")
            .into_parts();
        let mut m = response_map(&parts);
        assert_eq!(m.get_str(":status"), Some("200"));
        m.replace(b":status", b"418");
        m.remove(b"server");
        apply_response_map(&m, &mut parts);
        assert_eq!(parts.status.as_u16(), 418);
        assert!(parts.headers.get("server").is_none());
    }
}
