//! `normalize_path` (istiod sets it on every connection manager): the request path made
//! canonical before routing and the filters, as Envoy's `PathUtil::canonicalPath` (Chromium's
//! URL canonicalizer) makes it, checked against Envoy 1.40: percent-encoded unreserved
//! characters are decoded (`%7e` → `~`, other escapes stay as written), `\` becomes `/`, and
//! `.` and `..` segments are removed (RFC 3986 §5.2.4; `%2E%2E` is `..`). Doubled slashes and
//! the query stay.

/// The canonical form of `path` (no query), or `None` when it is already canonical.
pub(crate) fn canonical(path: &str) -> Option<String> {
    let b = path.as_bytes();
    let needs = b
        .iter()
        .enumerate()
        .any(|(i, &c)| c == b'%' || c == b'\\' || (c == b'.' && (i == 0 || b[i - 1] == b'/')));
    if !needs {
        return None;
    }
    let mut decoded = String::with_capacity(path.len());
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'%'
            && let Some(v) = b
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            && (v.is_ascii_alphanumeric() || matches!(v, b'-' | b'.' | b'_' | b'~'))
        {
            decoded.push(char::from(v));
            i += 3;
            continue;
        }
        let start = i;
        i += 1;
        while i < b.len() && b[i] != b'%' {
            i += 1;
        }
        decoded.push_str(&path[start..i].replace('\\', "/"));
    }
    let out = remove_dot_segments(&decoded);
    (out != path).then_some(out)
}

/// RFC 3986 §5.2.4 on an absolute path.
fn remove_dot_segments(path: &str) -> String {
    let mut segments: Vec<&str> = Vec::new();
    let parts: Vec<&str> = path.split('/').skip(1).collect();
    for (i, seg) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        match *seg {
            "." => {
                if last {
                    segments.push("");
                }
            }
            ".." => {
                segments.pop();
                if last {
                    segments.push("");
                }
            }
            s => segments.push(s),
        }
    }
    let mut out = String::with_capacity(path.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::canonical;

    /// What Envoy 1.40 sent upstream for each path with `normalize_path: true`.
    #[test]
    fn normalizes_as_envoy_does() {
        for (path, envoy) in [
            ("/a/./b/../c", "/a/c"),
            ("/%7euser/%41%2f%2Fx", "/~user/A%2f%2Fx"),
            ("/a\\b", "/a/b"),
            ("/../x", "/x"),
            ("/a%2e%2e/b", "/a../b"),
            ("/a/%2E%2E/b", "/b"),
            ("/a/b/..", "/a/"),
        ] {
            assert_eq!(canonical(path).as_deref(), Some(envoy), "{path}");
        }
        for same in ["//x//y", "/%zz", "/a%20b", "/a/b.c", "/"] {
            assert_eq!(canonical(same), None, "{same}");
        }
    }
}
