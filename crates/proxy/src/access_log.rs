//! Access logs in Envoy's default format, to stdout, stderr or a file.

use std::io::Write;
use std::sync::{Arc, Mutex};

use prost::Message;

use crate::config::{ConfigError, check};
use crate::filter::StreamInfo;
use crate::pb::Any;

const FILE: &str = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog";
const STDOUT: &str =
    "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog";
const STDERR: &str =
    "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StderrAccessLog";

/// Where log lines go.
#[derive(Clone)]
pub enum AccessLog {
    /// Process stdout.
    Stdout,
    /// Process stderr.
    Stderr,
    /// An append-only file.
    File(String, Arc<Mutex<std::fs::File>>),
}

impl std::fmt::Debug for AccessLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AccessLog::Stdout => f.write_str("Stdout"),
            AccessLog::Stderr => f.write_str("Stderr"),
            AccessLog::File(p, _) => write!(f, "File({p})"),
        }
    }
}

impl AccessLog {
    /// Builds a logger from its `typed_config` at `path`.
    pub fn build(any: &Any, path: &str) -> Result<Self, ConfigError> {
        check::check_any(any, path)?;
        match any.type_url.as_str() {
            STDOUT => Ok(AccessLog::Stdout),
            STDERR => Ok(AccessLog::Stderr),
            FILE => {
                let cfg = envoy_types::pb::envoy::extensions::access_loggers::file::v3::FileAccessLog::decode(
                    any.value.as_slice(),
                )
                .map_err(|e| ConfigError::invalid(path, e))?;
                if cfg.path == "/dev/stdout" {
                    return Ok(AccessLog::Stdout);
                }
                if cfg.path == "/dev/stderr" {
                    return Ok(AccessLog::Stderr);
                }
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&cfg.path)
                    .map_err(|e| {
                        ConfigError::invalid(format!("{path}.path"), format!("{}: {e}", cfg.path))
                    })?;
                Ok(AccessLog::File(cfg.path, Arc::new(Mutex::new(file))))
            }
            other => Err(ConfigError::unsupported(
                path,
                format!("access logger {other:?} (file, stdout, stderr are)"),
            )),
        }
    }

    /// Writes one line.
    pub fn write(&self, line: &str) {
        let r = match self {
            AccessLog::Stdout => std::io::stdout().lock().write_all(line.as_bytes()),
            AccessLog::Stderr => std::io::stderr().lock().write_all(line.as_bytes()),
            AccessLog::File(_, f) => match f.lock() {
                Ok(mut f) => f.write_all(line.as_bytes()),
                Err(_) => Ok(()),
            },
        };
        if let Err(e) = r {
            tracing::debug!(error = %e, "access log write failed");
        }
    }
}

fn or_dash(v: Option<&str>) -> &str {
    match v {
        Some(s) if !s.is_empty() => s,
        _ => "-",
    }
}

/// Envoy's `%START_TIME%`: `2026-11-25T17:40:01.123Z`.
pub fn format_start_time(t: std::time::SystemTime) -> String {
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86400, secs % 86400);
    let (h, m, s) = (rem / 3600, (rem % 3600) / 60, rem % 60);
    // Civil from days (Howard Hinnant's algorithm).
    let z = i64::try_from(days).unwrap_or(0) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.{:03}Z",
        d.subsec_millis()
    )
}

/// One line in Envoy's default format:
/// `[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" %RESPONSE_CODE%
/// %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%
/// "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" "%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%"`
pub fn default_format(info: &StreamInfo, req: &RequestSummary) -> String {
    let protocol = match info.protocol {
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_11 => "HTTP/1.1",
        http::Version::HTTP_2 => "HTTP/2",
        http::Version::HTTP_3 => "HTTP/3",
        _ => "-",
    };
    let upstream_time = info
        .upstream_service_time
        .map(|d| d.as_millis().to_string());
    let upstream_host = info.upstream_host.map(|a| a.to_string());
    format!(
        "[{}] \"{} {} {}\" {} {} {} {} {} {} \"{}\" \"{}\" \"{}\" \"{}\" \"{}\"\n",
        format_start_time(info.start_time),
        or_dash(req.method.as_deref()),
        or_dash(req.original_path.as_deref().or(req.path.as_deref())),
        protocol,
        info.response_code.unwrap_or(0),
        info.response_flags,
        info.bytes_received,
        info.bytes_sent,
        info.duration.map_or(0, |d| d.as_millis()),
        or_dash(upstream_time.as_deref()),
        or_dash(req.forwarded_for.as_deref()),
        or_dash(req.user_agent.as_deref()),
        or_dash(info.request_id.as_deref()),
        or_dash(req.authority.as_deref()),
        or_dash(upstream_host.as_deref()),
    )
}

/// The request headers the default format prints, captured before the request goes upstream.
#[derive(Debug, Clone, Default)]
pub struct RequestSummary {
    /// `:method`.
    pub method: Option<String>,
    /// `:path`.
    pub path: Option<String>,
    /// `x-envoy-original-path`.
    pub original_path: Option<String>,
    /// `x-forwarded-for`.
    pub forwarded_for: Option<String>,
    /// `user-agent`.
    pub user_agent: Option<String>,
    /// `:authority`.
    pub authority: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_is_iso8601_utc() {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(1_764_092_401_123);
        assert_eq!(format_start_time(t), "2025-11-25T17:40:01.123Z");
    }
}
