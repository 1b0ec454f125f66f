//! The one request-path error: what went wrong and on which side, from which the local reply
//! (status, body, `%RESPONSE_CODE_DETAILS%`) and the Envoy response flags are derived.

use http::StatusCode;

use crate::response_flags::ResponseFlags;

/// Which side of the proxy an error came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorSide {
    /// The upstream host or the path to it.
    Upstream,
    /// The client.
    Downstream,
    /// The proxy itself (config, filters).
    Internal,
}

/// What went wrong on a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ErrorKind {
    /// No route matched the request.
    NoRoute,
    /// The route names a cluster that does not exist.
    NoCluster(String),
    /// The cluster has no healthy endpoint.
    NoHealthyUpstream,
    /// Connecting to the upstream failed (with the OS reason, e.g. `Connection refused`).
    ConnectFailure(String),
    /// The upstream did not answer within the route timeout.
    UpstreamTimeout,
    /// The upstream reset or closed the connection before the response headers.
    UpstreamReset(String),
    /// The upstream sent something that is not HTTP.
    UpstreamProtocol(String),
    /// The request body exceeded a filter's buffer limit.
    RequestTooLarge,
    /// The response body exceeded a filter's buffer limit.
    ResponseTooLarge,
    /// The client sent a malformed request.
    DownstreamProtocol(String),
    /// A bug or an impossible state in the proxy.
    Internal(String),
}

/// A request-path error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind:?}")]
pub struct ProxyError {
    /// What went wrong.
    pub kind: ErrorKind,
    /// How many upstream attempts were made before giving up (0 if none).
    pub attempts: u32,
}

impl ProxyError {
    /// An error of `kind` after no retry.
    pub fn new(kind: ErrorKind) -> Self {
        Self { kind, attempts: 1 }
    }

    /// Which side the error came from.
    pub fn side(&self) -> ErrorSide {
        match self.kind {
            ErrorKind::NoHealthyUpstream
            | ErrorKind::ConnectFailure(_)
            | ErrorKind::UpstreamTimeout
            | ErrorKind::UpstreamReset(_)
            | ErrorKind::UpstreamProtocol(_)
            | ErrorKind::ResponseTooLarge => ErrorSide::Upstream,
            ErrorKind::RequestTooLarge | ErrorKind::DownstreamProtocol(_) => ErrorSide::Downstream,
            ErrorKind::NoRoute | ErrorKind::NoCluster(_) | ErrorKind::Internal(_) => {
                ErrorSide::Internal
            }
        }
    }

    /// Whether a retry policy may retry it (`connect-failure`, `reset`, `5xx`-class).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self.kind,
            ErrorKind::ConnectFailure(_) | ErrorKind::UpstreamReset(_)
        )
    }

    /// The status Envoy replies with.
    pub fn status(&self) -> StatusCode {
        match self.kind {
            ErrorKind::NoRoute => StatusCode::NOT_FOUND,
            ErrorKind::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            ErrorKind::RequestTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorKind::DownstreamProtocol(_) => StatusCode::BAD_REQUEST,
            ErrorKind::ResponseTooLarge | ErrorKind::Internal(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
            ErrorKind::NoCluster(_)
            | ErrorKind::NoHealthyUpstream
            | ErrorKind::ConnectFailure(_)
            | ErrorKind::UpstreamReset(_) => StatusCode::SERVICE_UNAVAILABLE,
            // Envoy's `return_502_for_upstream_protocol_errors` (on by default).
            ErrorKind::UpstreamProtocol(_) => StatusCode::BAD_GATEWAY,
        }
    }

    /// An h2 upstream reset the stream (RST_STREAM), rather than the connection ending: the
    /// reason Envoy names (`remote reset`, or `remote refused stream reset`).
    fn remote_reset(&self) -> Option<&'static str> {
        match &self.kind {
            ErrorKind::UpstreamReset(why) if why.contains("stream error received") => {
                Some(if why.contains("refused stream") {
                    "remote refused stream reset"
                } else {
                    "remote reset"
                })
            }
            _ => None,
        }
    }

    /// Envoy's response flag for it.
    pub fn response_flags(&self) -> ResponseFlags {
        match self.kind {
            ErrorKind::NoRoute => ResponseFlags::NO_ROUTE_FOUND,
            ErrorKind::NoCluster(_) => ResponseFlags::NO_CLUSTER_FOUND,
            ErrorKind::NoHealthyUpstream => ResponseFlags::NO_HEALTHY_UPSTREAM,
            ErrorKind::ConnectFailure(_) => ResponseFlags::UPSTREAM_CONNECTION_FAILURE,
            ErrorKind::UpstreamTimeout => ResponseFlags::UPSTREAM_REQUEST_TIMEOUT,
            ErrorKind::UpstreamReset(_) if self.remote_reset().is_some() => {
                ResponseFlags::UPSTREAM_REMOTE_RESET
            }
            ErrorKind::UpstreamReset(_) => ResponseFlags::UPSTREAM_CONNECTION_TERMINATION,
            ErrorKind::UpstreamProtocol(_) => ResponseFlags::UPSTREAM_PROTOCOL_ERROR,
            ErrorKind::DownstreamProtocol(_) => ResponseFlags::DOWNSTREAM_PROTOCOL_ERROR,
            ErrorKind::RequestTooLarge | ErrorKind::ResponseTooLarge | ErrorKind::Internal(_) => {
                ResponseFlags::default()
            }
        }
    }

    fn reset_reason(&self) -> String {
        match &self.kind {
            // Envoy 1.40 prints the transport failure reason only in the details.
            ErrorKind::ConnectFailure(why) if why.contains("timed out") => {
                "connection timeout".to_string()
            }
            ErrorKind::ConnectFailure(_) => "remote connection failure".to_string(),
            ErrorKind::UpstreamReset(_) => self
                .remote_reset()
                .unwrap_or("connection termination")
                .to_string(),
            ErrorKind::UpstreamProtocol(_) => "protocol error".to_string(),
            _ => String::new(),
        }
    }

    /// Envoy's upstream transport failure reason (`upstream.transport_failure_reason`,
    /// `%UPSTREAM_TRANSPORT_FAILURE_REASON%`): set when the connection could not be made.
    pub fn transport_failure_reason(&self) -> Option<String> {
        match &self.kind {
            ErrorKind::ConnectFailure(why) if !why.contains("timed out") => {
                Some(format!("delayed connect error: {why}"))
            }
            _ => None,
        }
    }

    /// The local reply body Envoy sends.
    pub fn body(&self) -> String {
        match &self.kind {
            ErrorKind::NoRoute | ErrorKind::NoCluster(_) | ErrorKind::Internal(_) => String::new(),
            ErrorKind::NoHealthyUpstream => "no healthy upstream".to_string(),
            ErrorKind::UpstreamTimeout => "upstream request timeout".to_string(),
            ErrorKind::RequestTooLarge => "Payload Too Large".to_string(),
            ErrorKind::ResponseTooLarge => "Internal Server Error".to_string(),
            ErrorKind::DownstreamProtocol(_) => "Bad Request".to_string(),
            ErrorKind::ConnectFailure(_)
            | ErrorKind::UpstreamReset(_)
            | ErrorKind::UpstreamProtocol(_) => {
                let retried = if self.attempts > 1 {
                    "retried and the latest "
                } else {
                    ""
                };
                format!(
                    "upstream connect error or disconnect/reset before headers. {retried}reset reason: {}",
                    self.reset_reason()
                )
            }
        }
    }

    /// Envoy's `%RESPONSE_CODE_DETAILS%`.
    pub fn details(&self) -> String {
        match &self.kind {
            ErrorKind::NoRoute => "route_not_found".to_string(),
            ErrorKind::NoCluster(_) => "cluster_not_found".to_string(),
            ErrorKind::NoHealthyUpstream => "no_healthy_upstream".to_string(),
            ErrorKind::UpstreamTimeout => "response_timeout".to_string(),
            ErrorKind::RequestTooLarge => "request_payload_too_large".to_string(),
            ErrorKind::ResponseTooLarge => "response_payload_too_large".to_string(),
            ErrorKind::DownstreamProtocol(_) => "http1.codec_error".to_string(),
            ErrorKind::Internal(_) => "internal_error".to_string(),
            ErrorKind::ConnectFailure(why) => format!(
                "upstream_reset_before_response_started{{remote_connection_failure|delayed_connect_error:_{}}}",
                why.replace(' ', "_")
            ),
            ErrorKind::UpstreamReset(_) => format!(
                "upstream_reset_before_response_started{{{}}}",
                self.reset_reason().replace(' ', "_")
            ),
            ErrorKind::UpstreamProtocol(_) => {
                "upstream_reset_before_response_started{protocol_error}".to_string()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_drives_status_and_flags() {
        let e = ProxyError::new(ErrorKind::NoHealthyUpstream);
        assert_eq!(e.status(), 503);
        assert_eq!(e.response_flags().to_string(), "UH");
        assert_eq!(e.body(), "no healthy upstream");
        assert_eq!(e.side(), ErrorSide::Upstream);
        let e = ProxyError::new(ErrorKind::UpstreamTimeout);
        assert_eq!(
            (e.status().as_u16(), e.response_flags().to_string()),
            (504, "UT".into())
        );
        let e = ProxyError {
            kind: ErrorKind::ConnectFailure("Connection refused".into()),
            attempts: 2,
        };
        assert!(
            e.body()
                .contains("retried and the latest reset reason: remote connection failure")
        );
        assert!(e.is_retryable());
    }
}
