//! HTTP(S) module fetcher, as Istio's `pkg/wasm/httpfetcher.go`: per-request timeout,
//! retries with backoff on 5xx and transport errors, a size limit, gzip/tar unpacking and
//! the SSRF guard.

use std::net::IpAddr;
use std::sync::Arc;

use futures::StreamExt;
use tracing::debug;

use super::ssrf::{GuardedResolver, is_blocked};
use super::{FetchError, FetchOptions, redact_url, unbox};

/// Downloads modules over HTTP(S). Cheap to clone.
#[derive(Debug, Clone)]
pub struct HttpFetcher {
    secure: reqwest::Client,
    insecure: reqwest::Client,
    opts: Arc<FetchOptions>,
}

/// Statuses that are not worth retrying even though they are 5xx (as Istio).
fn retryable_status(status: u16) -> bool {
    status >= 500 && !matches!(status, 501 | 505 | 511)
}

impl HttpFetcher {
    /// Builds the two clients (verifying and, for listed insecure hosts, not verifying TLS).
    pub fn new(opts: FetchOptions) -> Result<Self, FetchError> {
        let extra = Arc::new(opts.blocked_networks.clone());
        let build = |insecure: bool| {
            let extra_redirect = extra.clone();
            reqwest::Client::builder()
                .timeout(opts.http_request_timeout)
                .no_proxy()
                .dns_resolver(GuardedResolver {
                    extra: extra.clone(),
                })
                .tls_danger_accept_invalid_certs(insecure)
                .redirect(reqwest::redirect::Policy::custom(move |attempt| {
                    if attempt.previous().len() >= 10 {
                        return attempt.error("too many redirects");
                    }
                    match literal_ip(attempt.url()) {
                        Some(ip) if is_blocked(ip, &extra_redirect) => {
                            attempt.error(format!("redirect to blocked address {ip}"))
                        }
                        _ => attempt.follow(),
                    }
                }))
                .build()
                .map_err(|e| FetchError::Client(e.to_string()))
        };
        Ok(Self {
            secure: build(false)?,
            insecure: build(true)?,
            opts: Arc::new(opts),
        })
    }

    /// Fetches `url`, retrying, and returns the unpacked body (not yet checked for the Wasm magic).
    pub async fn fetch(&self, url: &str) -> Result<Vec<u8>, FetchError> {
        self.fetch_with_progress(url, None).await
    }

    /// [`HttpFetcher::fetch`], reporting each attempt's download to `progress`.
    pub async fn fetch_with_progress(
        &self,
        url: &str,
        progress: Option<&super::Progress>,
    ) -> Result<Vec<u8>, FetchError> {
        let parsed = reqwest::Url::parse(url).map_err(|e| FetchError::InvalidUrl {
            url: redact_url(url).into_owned(),
            reason: e.to_string(),
        })?;
        if let Some(ip) = literal_ip(&parsed)
            && is_blocked(ip, &self.opts.blocked_networks)
        {
            return Err(FetchError::BlockedAddress {
                url: redact_url(url).into_owned(),
                addr: ip,
            });
        }
        let host = match (parsed.host_str(), parsed.port()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.to_owned(),
            _ => String::new(),
        };
        let client = if self.opts.insecure_registries.contains(&host) {
            &self.insecure
        } else {
            &self.secure
        };
        let attempts = self.opts.http_max_attempts.max(1);
        let mut backoff = self.opts.http_initial_backoff;
        let mut last = String::new();
        for attempt in 1..=attempts {
            match self.attempt(client, parsed.clone(), url, progress).await {
                Ok(body) => {
                    // gunzip/untar of up to max_module_size: off the async workers.
                    let (max, u) = (self.opts.max_module_size, url.to_owned());
                    return tokio::task::spawn_blocking(move || {
                        unbox::unbox_if_possible(body, max, &u)
                    })
                    .await
                    .unwrap_or_else(|e| {
                        Err(FetchError::Unpack {
                            url: redact_url(url).into_owned(),
                            reason: e.to_string(),
                        })
                    });
                }
                Err(Attempt::Fatal(e)) => return Err(e),
                Err(Attempt::Retry(reason)) => {
                    debug!(url = %redact_url(url), attempt, %reason, "wasm module download attempt failed");
                    last = reason;
                }
            }
            if attempt < attempts {
                tokio::time::sleep(backoff).await;
                backoff = backoff.mul_f64(1.5).min(self.opts.http_max_backoff);
            }
        }
        Err(FetchError::HttpExhausted {
            url: redact_url(url).into_owned(),
            attempts,
            last,
        })
    }

    async fn attempt(
        &self,
        client: &reqwest::Client,
        parsed: reqwest::Url,
        url: &str,
        progress: Option<&super::Progress>,
    ) -> Result<Vec<u8>, Attempt> {
        let resp = client
            .get(parsed)
            .send()
            .await
            .map_err(|e| Attempt::Retry(error_chain(&e.without_url())))?;
        let status = resp.status().as_u16();
        if retryable_status(status) {
            return Err(Attempt::Retry(format!("HTTP status {status}")));
        }
        if status != 200 {
            return Err(Attempt::Fatal(FetchError::HttpStatus {
                url: redact_url(url).into_owned(),
                status,
            }));
        }
        let max = self.opts.max_module_size;
        if resp.content_length().is_some_and(|l| l > max) {
            return Err(Attempt::Fatal(FetchError::TooLarge {
                url: redact_url(url).into_owned(),
                max,
            }));
        }
        let total = resp.content_length();
        let mut body = Vec::new();
        let mut stream = resp.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| Attempt::Retry(error_chain(&e.without_url())))?;
            if (body.len() + chunk.len()) as u64 > max {
                return Err(Attempt::Fatal(FetchError::TooLarge {
                    url: redact_url(url).into_owned(),
                    max,
                }));
            }
            body.extend_from_slice(&chunk);
            if let Some(p) = progress {
                p(body.len() as u64, total);
            }
        }
        Ok(body)
    }
}

enum Attempt {
    Retry(String),
    Fatal(FetchError),
}

fn literal_ip(url: &reqwest::Url) -> Option<IpAddr> {
    let host = url.host_str()?;
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()
}

/// The error and its sources on one line (reqwest's own Display hides the cause).
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        let s = s.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        src = s_source(src);
    }
    out
}

fn s_source<'a>(
    e: Option<&'a (dyn std::error::Error + 'static)>,
) -> Option<&'a (dyn std::error::Error + 'static)> {
    e.and_then(|e| e.source())
}
