//! The part of Go's `net/url` istiod runs on a WasmPlugin `url`: `Parse`, `ParseRequestURI` and
//! `URL.String`. istiod's webhook accepts or rejects a URL, and its config generation defaults
//! the scheme or drops the plugin, by what these functions do, including their quirks
//! (`localhost:5000/x` has the scheme `localhost`; `127.0.0.1:5000/x` does not parse at all), so
//! we follow the Go code rather than RFC 3986 or the `url` crate.

use std::fmt;

/// A parse error, displayed as Go's `*url.Error`: `parse "<url>": <reason>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) struct UrlError {
    url: String,
    reason: String,
}

impl fmt::Display for UrlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "parse {}: {}",
            go_quote(self.url.as_bytes()),
            self.reason
        )
    }
}

/// Go's `url.URL` (decoded parts as bytes: `%ff` need not be UTF-8).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct GoUrl {
    /// Lowercased scheme.
    pub(crate) scheme: String,
    opaque: String,
    user: Option<(Vec<u8>, Option<Vec<u8>>)>,
    host: Vec<u8>,
    path: Vec<u8>,
    raw_path: String,
    omit_host: bool,
    force_query: bool,
    raw_query: String,
    fragment: Vec<u8>,
    raw_fragment: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Path,
    Host,
    Zone,
    UserPassword,
    Fragment,
}

/// `url.Parse`.
pub(crate) fn parse(raw: &str) -> Result<GoUrl, UrlError> {
    let (u, frag) = raw.split_once('#').unwrap_or((raw, ""));
    let mut url = parse_inner(u, false).map_err(|reason| UrlError {
        url: u.to_string(),
        reason,
    })?;
    if !frag.is_empty() {
        url.set_fragment(frag).map_err(|reason| UrlError {
            url: raw.to_string(),
            reason,
        })?;
    }
    Ok(url)
}

/// `url.ParseRequestURI`.
pub(crate) fn parse_request_uri(raw: &str) -> Result<GoUrl, UrlError> {
    parse_inner(raw, true).map_err(|reason| UrlError {
        url: raw.to_string(),
        reason,
    })
}

fn parse_inner(raw: &str, via_request: bool) -> Result<GoUrl, String> {
    if raw.bytes().any(|b| b < 0x20 || b == 0x7f) {
        return Err("net/url: invalid control character in URL".into());
    }
    if raw.is_empty() && via_request {
        return Err("empty url".into());
    }
    let mut url = GoUrl::default();
    if raw == "*" {
        url.path = b"*".to_vec();
        return Ok(url);
    }
    let (scheme, mut rest) = get_scheme(raw)?;
    url.scheme = scheme.to_ascii_lowercase();
    if rest.ends_with('?') && rest.matches('?').count() == 1 {
        url.force_query = true;
        rest = &rest[..rest.len() - 1];
    } else if let Some((r, q)) = rest.split_once('?') {
        rest = r;
        url.raw_query = q.to_string();
    }
    if !rest.starts_with('/') {
        if !url.scheme.is_empty() {
            // Rootless paths are opaque (RFC 3986).
            url.opaque = rest.to_string();
            return Ok(url);
        }
        if via_request {
            return Err("invalid URI for request".into());
        }
        let segment = rest.split('/').next().unwrap_or_default();
        if segment.contains(':') {
            return Err("first path segment in URL cannot contain colon".into());
        }
    }
    if (!url.scheme.is_empty() || !via_request && !rest.starts_with("///"))
        && rest.starts_with("//")
    {
        let mut authority = &rest[2..];
        rest = "";
        if let Some(i) = authority.find('/') {
            rest = &authority[i..];
            authority = &authority[..i];
        }
        let (user, host) = parse_authority(authority)?;
        url.user = user;
        url.host = host;
    } else if !url.scheme.is_empty() && rest.starts_with('/') {
        url.omit_host = true;
    }
    url.set_path(rest)?;
    Ok(url)
}

/// `scheme:rest` when `raw` starts with `[a-zA-Z][a-zA-Z0-9+-.]*:`.
fn get_scheme(raw: &str) -> Result<(&str, &str), String> {
    for (i, c) in raw.bytes().enumerate() {
        match c {
            b'a'..=b'z' | b'A'..=b'Z' => {}
            b'0'..=b'9' | b'+' | b'-' | b'.' if i > 0 => {}
            b':' if i == 0 => return Err("missing protocol scheme".into()),
            b':' => return Ok((&raw[..i], &raw[i + 1..])),
            _ => return Ok(("", raw)),
        }
    }
    Ok(("", raw))
}

type UserInfo = Option<(Vec<u8>, Option<Vec<u8>>)>;

fn parse_authority(authority: &str) -> Result<(UserInfo, Vec<u8>), String> {
    let Some(i) = authority.rfind('@') else {
        return Ok((None, parse_host(authority)?));
    };
    let host = parse_host(&authority[i + 1..])?;
    let userinfo = &authority[..i];
    if !userinfo.chars().all(|c| {
        c.is_ascii_alphanumeric()
            || matches!(
                c,
                '-' | '.'
                    | '_'
                    | ':'
                    | '~'
                    | '!'
                    | '$'
                    | '&'
                    | '\''
                    | '('
                    | ')'
                    | '*'
                    | '+'
                    | ','
                    | ';'
                    | '='
                    | '%'
                    | '@'
            )
    }) {
        return Err("net/url: invalid userinfo".into());
    }
    let user = match userinfo.split_once(':') {
        None => (unescape(userinfo, Mode::UserPassword)?, None),
        Some((u, p)) => (
            unescape(u, Mode::UserPassword)?,
            Some(unescape(p, Mode::UserPassword)?),
        ),
    };
    Ok((Some(user), host))
}

fn parse_host(host: &str) -> Result<Vec<u8>, String> {
    if host.starts_with('[') {
        let Some(i) = host.rfind(']') else {
            return Err("missing ']' in host".into());
        };
        let colon_port = &host[i + 1..];
        if !valid_optional_port(colon_port) {
            return Err(format!(
                "invalid port {} after host",
                go_quote(colon_port.as_bytes())
            ));
        }
        if let Some(zone) = host[..i].find("%25") {
            let mut out = unescape(&host[..zone], Mode::Host)?;
            out.extend(unescape(&host[zone..i], Mode::Zone)?);
            out.extend(unescape(&host[i..], Mode::Host)?);
            return Ok(out);
        }
    } else if let Some(i) = host.rfind(':') {
        let colon_port = &host[i..];
        if !valid_optional_port(colon_port) {
            return Err(format!(
                "invalid port {} after host",
                go_quote(colon_port.as_bytes())
            ));
        }
    }
    unescape(host, Mode::Host)
}

fn valid_optional_port(port: &str) -> bool {
    port.is_empty()
        || port
            .strip_prefix(':')
            .is_some_and(|d| d.bytes().all(|b| b.is_ascii_digit()))
}

impl GoUrl {
    fn set_path(&mut self, p: &str) -> Result<(), String> {
        self.path = unescape(p, Mode::Path)?;
        self.raw_path = if escape(&self.path, Mode::Path) == p {
            String::new()
        } else {
            p.to_string()
        };
        Ok(())
    }

    fn set_fragment(&mut self, f: &str) -> Result<(), String> {
        self.fragment = unescape(f, Mode::Fragment)?;
        self.raw_fragment = if escape(&self.fragment, Mode::Fragment) == f {
            String::new()
        } else {
            f.to_string()
        };
        Ok(())
    }

    fn escaped_path(&self) -> String {
        if !self.raw_path.is_empty()
            && valid_encoded(&self.raw_path, Mode::Path)
            && unescape(&self.raw_path, Mode::Path).is_ok_and(|p| p == self.path)
        {
            return self.raw_path.clone();
        }
        if self.path == b"*" {
            return "*".into();
        }
        escape(&self.path, Mode::Path)
    }

    fn escaped_fragment(&self) -> String {
        if !self.raw_fragment.is_empty()
            && valid_encoded(&self.raw_fragment, Mode::Fragment)
            && unescape(&self.raw_fragment, Mode::Fragment).is_ok_and(|f| f == self.fragment)
        {
            return self.raw_fragment.clone();
        }
        escape(&self.fragment, Mode::Fragment)
    }

    /// Sets the scheme (istiod: `u.Scheme = "oci"` when empty).
    pub(crate) fn set_scheme(&mut self, scheme: &str) {
        self.scheme = scheme.to_string();
    }
}

/// `URL.String`.
impl fmt::Display for GoUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buf = String::new();
        if !self.scheme.is_empty() {
            buf.push_str(&self.scheme);
            buf.push(':');
        }
        if !self.opaque.is_empty() {
            buf.push_str(&self.opaque);
        } else {
            let no_authority = self.host.is_empty() && self.user.is_none();
            let omitted = self.omit_host && no_authority;
            if (!self.scheme.is_empty() || !no_authority) && !omitted {
                if !self.host.is_empty() || !self.path.is_empty() || self.user.is_some() {
                    buf.push_str("//");
                }
                if let Some((user, password)) = &self.user {
                    buf.push_str(&escape(user, Mode::UserPassword));
                    if let Some(p) = password {
                        buf.push(':');
                        buf.push_str(&escape(p, Mode::UserPassword));
                    }
                    buf.push('@');
                }
                buf.push_str(&escape(&self.host, Mode::Host));
            }
            let path = self.escaped_path();
            if !path.is_empty() && !path.starts_with('/') && !self.host.is_empty() {
                buf.push('/');
            }
            if buf.is_empty() && path.split('/').next().is_some_and(|s| s.contains(':')) {
                buf.push_str("./");
            }
            buf.push_str(&path);
        }
        if self.force_query || !self.raw_query.is_empty() {
            buf.push('?');
            buf.push_str(&self.raw_query);
        }
        if !self.fragment.is_empty() {
            buf.push('#');
            buf.push_str(&self.escaped_fragment());
        }
        f.write_str(&buf)
    }
}

fn should_escape(c: u8, mode: Mode) -> bool {
    if c.is_ascii_alphanumeric() {
        return false;
    }
    if matches!(mode, Mode::Host | Mode::Zone)
        && matches!(
            c,
            b'!' | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
                | b':'
                | b'['
                | b']'
                | b'<'
                | b'>'
                | b'"'
        )
    {
        return false;
    }
    match c {
        b'-' | b'_' | b'.' | b'~' => return false,
        b'$' | b'&' | b'+' | b',' | b'/' | b':' | b';' | b'=' | b'?' | b'@' => match mode {
            Mode::Path => return c == b'?',
            Mode::UserPassword => return matches!(c, b'@' | b'/' | b'?' | b':'),
            Mode::Fragment => return false,
            Mode::Host | Mode::Zone => {}
        },
        _ => {}
    }
    if mode == Mode::Fragment && matches!(c, b'!' | b'(' | b')' | b'*') {
        return false;
    }
    true
}

fn unhex(c: u8) -> u8 {
    match c {
        b'0'..=b'9' => c - b'0',
        b'a'..=b'f' => c - b'a' + 10,
        b'A'..=b'F' => c - b'A' + 10,
        _ => 0,
    }
}

fn unescape(s: &str, mode: Mode) -> Result<Vec<u8>, String> {
    let b = s.as_bytes();
    let escape_error = |from: usize| {
        let end = (from + 3).min(b.len());
        format!("invalid URL escape {}", go_quote(&b[from..end]))
    };
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                if i + 2 >= b.len()
                    || !b[i + 1].is_ascii_hexdigit()
                    || !b[i + 2].is_ascii_hexdigit()
                {
                    return Err(escape_error(i));
                }
                let v = unhex(b[i + 1]) << 4 | unhex(b[i + 2]);
                let pct25 = &b[i..i + 3] == b"%25";
                // In a host, %-encoding may only spell non-ASCII bytes (and %25 for IPv6 zones).
                if mode == Mode::Host && unhex(b[i + 1]) < 8 && !pct25 {
                    return Err(escape_error(i));
                }
                if mode == Mode::Zone && !pct25 && v != b' ' && should_escape(v, Mode::Host) {
                    return Err(escape_error(i));
                }
                out.push(v);
                i += 3;
            }
            c => {
                if matches!(mode, Mode::Host | Mode::Zone) && c < 0x80 && should_escape(c, mode) {
                    return Err(format!(
                        "invalid character {} in host name",
                        go_quote(&b[i..i + 1])
                    ));
                }
                out.push(c);
                i += 1;
            }
        }
    }
    Ok(out)
}

fn escape(s: &[u8], mode: Mode) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(s.len());
    for &c in s {
        if should_escape(c, mode) {
            out.push('%');
            out.push(HEX[usize::from(c >> 4)] as char);
            out.push(HEX[usize::from(c & 15)] as char);
        } else {
            out.push(c as char);
        }
    }
    out
}

fn valid_encoded(s: &str, mode: Mode) -> bool {
    s.bytes().all(|c| {
        matches!(
            c,
            b'!' | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
                | b':'
                | b'@'
                | b'['
                | b']'
                | b'%'
        ) || !should_escape(c, mode)
    })
}

/// Go's `strconv.Quote` for the strings that appear in URL errors (ASCII control bytes as
/// `\xNN`, invalid UTF-8 as `\xNN`).
fn go_quote(b: &[u8]) -> String {
    let mut out = String::from("\"");
    for chunk in b.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\u{7}' => out.push_str("\\a"),
                '\u{8}' => out.push_str("\\b"),
                '\u{c}' => out.push_str("\\f"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                '\u{b}' => out.push_str("\\v"),
                c if (c as u32) < 0x20 || c == '\u{7f}' => {
                    out.push_str(&format!("\\x{:02x}", c as u32));
                }
                c => out.push(c),
            }
        }
        for byte in chunk.invalid() {
            out.push_str(&format!("\\x{byte:02x}"));
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn string_of(raw: &str) -> String {
        parse(raw).unwrap().to_string()
    }

    #[test]
    fn schemes_as_go_reads_them() {
        assert_eq!(parse("localhost:5000/x").unwrap().scheme, "localhost");
        assert_eq!(parse("ftp:x/y").unwrap().scheme, "ftp");
        assert_eq!(parse("HTTPS://example.com/x.wasm").unwrap().scheme, "https");
        assert_eq!(parse("test.com/test").unwrap().scheme, "");
        assert_eq!(parse("registry-1.docker.io/a/b:v1").unwrap().scheme, "");
        assert_eq!(
            parse("127.0.0.1:5000/x").unwrap_err().to_string(),
            "parse \"127.0.0.1:5000/x\": first path segment in URL cannot contain colon"
        );
        assert_eq!(
            parse(":x").unwrap_err().to_string(),
            "parse \":x\": missing protocol scheme"
        );
    }

    #[test]
    fn parse_request_uri_needs_a_scheme_or_an_absolute_path() {
        assert_eq!(
            parse_request_uri("test.com/test").unwrap_err().to_string(),
            "parse \"test.com/test\": invalid URI for request"
        );
        assert!(parse_request_uri("/abs").is_ok());
        assert_eq!(
            parse_request_uri("").unwrap_err().to_string(),
            "parse \"\": empty url"
        );
        assert_eq!(
            parse_request_uri("oci://x y").unwrap_err().to_string(),
            "parse \"oci://x y\": invalid character \" \" in host name"
        );
        assert_eq!(
            parse_request_uri("oci://h:p/x").unwrap_err().to_string(),
            "parse \"oci://h:p/x\": invalid port \":p\" after host"
        );
        assert_eq!(
            parse_request_uri("oci://h/%zz").unwrap_err().to_string(),
            "parse \"oci://h/%zz\": invalid URL escape \"%zz\""
        );
        assert_eq!(
            parse_request_uri("oci://h/\tx").unwrap_err().to_string(),
            "parse \"oci://h/\\tx\": net/url: invalid control character in URL"
        );
    }

    #[test]
    fn string_reassembles_like_go() {
        for (raw, want) in [
            ("HTTPS://example.com/x.wasm", "https://example.com/x.wasm"),
            ("oci://", "oci:"),
            ("http://", "http:"),
            ("file:///opt/a.wasm", "file:///opt/a.wasm"),
            ("file://plugin.wasm", "file://plugin.wasm"),
            ("oci://r/a b", "oci://r/a%20b"),
            ("oci://r/a%2Fb", "oci://r/a%2Fb"),
            ("oci://r/x@sha256:abc", "oci://r/x@sha256:abc"),
            ("oci://u:p@r:5000/x?q=1#f g", "oci://u:p@r:5000/x?q=1#f%20g"),
            ("oci:/x", "oci:/x"),
            ("localhost:5000/x", "localhost:5000/x"),
            ("test.com/test", "test.com/test"),
            ("https://[::1]:8080/x", "https://[::1]:8080/x"),
        ] {
            assert_eq!(string_of(raw), want, "{raw}");
        }
        let mut u = parse("test.com/test").unwrap();
        u.set_scheme("oci");
        assert_eq!(u.to_string(), "oci://test.com/test");
    }
}
