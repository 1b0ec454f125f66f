//! The `x-forwarded-client-cert` value Envoy's connection manager builds for
//! `APPEND_FORWARD` and `SANITIZE_SET` (`ConnectionManagerUtility::mutateXfccRequestHeader`):
//! `By=<our URI SAN>;Hash=<sha256 of the client certificate>` then the
//! `set_current_client_cert_details` the config asks for, `;`-separated.

use std::sync::Arc;

use base64::Engine as _;
use sha2::Digest as _;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

/// A detail of the client certificate `set_current_client_cert_details` adds, in Envoy's order
/// (cert, chain, subject, URI, DNS).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detail {
    /// `Cert="<URL-encoded PEM>"`.
    Cert,
    /// `Chain="<URL-encoded PEM chain>"`.
    Chain,
    /// `Subject="<RFC 2253 subject>"`.
    Subject,
    /// `URI=<SAN>` for each URI SAN (`URI=` when none).
    Uri,
    /// `DNS=<SAN>` for each DNS SAN.
    Dns,
}

impl Detail {
    /// The details `set_current_client_cert_details` asks for, in Envoy's order.
    pub fn from_config(
        c: &envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::SetCurrentClientCertDetails,
    ) -> Vec<Detail> {
        let mut v = Vec::new();
        if c.cert {
            v.push(Detail::Cert);
        }
        if c.chain {
            v.push(Detail::Chain);
        }
        if c.subject.as_ref().is_some_and(|b| b.value) {
            v.push(Detail::Subject);
        }
        if c.uri {
            v.push(Detail::Uri);
        }
        if c.dns {
            v.push(Detail::Dns);
        }
        v
    }
}

/// How the connection manager sets the header from the client's certificate.
#[derive(Debug, Clone)]
pub struct SetCurrent {
    /// `APPEND_FORWARD` (append to the client's header) rather than `SANITIZE_SET` (replace).
    pub append: bool,
    /// Our certificate's URI SANs (`By=`).
    pub by: Vec<String>,
    /// The details asked for.
    pub details: Vec<Detail>,
}

impl SetCurrent {
    /// The new element for a client's certificate chain (DER, the client's own first).
    pub fn element(&self, chain: &[Vec<u8>]) -> String {
        let peer_der = chain.first().map(Vec::as_slice).unwrap_or_default();
        let mut parts: Vec<String> = self.by.iter().map(|u| format!("By={u}")).collect();
        parts.push(format!(
            "Hash={}",
            hex::encode(sha2::Sha256::digest(peer_der))
        ));
        let (uris, dns, subject) = match X509Certificate::from_der(peer_der) {
            Ok((_, cert)) => {
                let (u, d) = sans(peer_der);
                (u, d, rfc2253(&cert))
            }
            Err(_) => (Vec::new(), Vec::new(), String::new()),
        };
        for d in &self.details {
            match d {
                Detail::Subject => parts.push(format!("Subject=\"{subject}\"")),
                Detail::Uri if uris.is_empty() => parts.push("URI=".into()),
                Detail::Uri => parts.extend(uris.iter().map(|u| format!("URI={u}"))),
                Detail::Dns => parts.extend(dns.iter().map(|d| format!("DNS={d}"))),
                Detail::Cert => parts.push(format!("Cert=\"{}\"", url_encode(&pem(peer_der)))),
                Detail::Chain => {
                    let all: String = chain.iter().map(|c| pem(c)).collect();
                    parts.push(format!("Chain=\"{}\"", url_encode(&all)));
                }
            }
        }
        parts.join(";")
    }
}

/// What Envoy's `connection.*` properties tell of one certificate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CertFacts {
    /// The subject, RFC 2253 (`subject_*_certificate`).
    pub subject: String,
    /// The first URI SAN (`uri_san_*_certificate`).
    pub uri_san: Option<String>,
    /// The first DNS SAN (`dns_san_*_certificate`).
    pub dns_san: Option<String>,
    /// SHA-256 of the DER, lower-case hex (`sha256_peer_certificate_digest`).
    pub sha256: String,
}

impl CertFacts {
    /// The facts of a DER certificate (`None` if it does not parse).
    pub fn from_der(der: &[u8]) -> Option<Self> {
        let (_, cert) = X509Certificate::from_der(der).ok()?;
        let (uris, dns) = sans(der);
        Some(Self {
            subject: rfc2253(&cert),
            uri_san: uris.into_iter().next(),
            dns_san: dns.into_iter().next(),
            sha256: hex::encode(sha2::Sha256::digest(der)),
        })
    }
}

/// A downstream TLS connection as plugins see it (`connection.*`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFacts {
    /// `TLSv1.3` or `TLSv1.2` (`connection.tls_version`).
    pub version: &'static str,
    /// The client's certificate, when it presented one (`connection.mtls`).
    pub peer: Option<CertFacts>,
    /// The listener's own certificate.
    pub local: Option<Arc<CertFacts>>,
}

/// (URI SANs, DNS SANs) of a certificate.
pub fn sans(der: &[u8]) -> (Vec<String>, Vec<String>) {
    let Ok((_, cert)) = X509Certificate::from_der(der) else {
        return (Vec::new(), Vec::new());
    };
    let (mut uris, mut dns) = (Vec::new(), Vec::new());
    if let Ok(Some(ext)) = cert.subject_alternative_name() {
        for n in &ext.value.general_names {
            match n {
                GeneralName::URI(u) => uris.push((*u).to_string()),
                GeneralName::DNSName(d) => dns.push((*d).to_string()),
                _ => {}
            }
        }
    }
    (uris, dns)
}

/// The subject as RFC 2253 writes it (last RDN first, `,`-separated), as OpenSSL's
/// `XN_FLAG_RFC2253` prints it.
fn rfc2253(cert: &X509Certificate<'_>) -> String {
    let rdns: Vec<String> = cert
        .subject()
        .iter_rdn()
        .map(|rdn| {
            rdn.iter()
                .map(|atv| {
                    let oid = atv.attr_type();
                    let dotted = oid.to_id_string();
                    let key = short_name(&dotted).map_or(dotted.clone(), str::to_string);
                    let value = atv.as_str().unwrap_or_default();
                    format!("{key}={}", escape_rfc2253(value))
                })
                .collect::<Vec<_>>()
                .join("+")
        })
        .collect();
    rdns.into_iter().rev().collect::<Vec<_>>().join(",")
}

/// OpenSSL's short name of a name attribute (what `XN_FLAG_RFC2253` prints).
fn short_name(oid: &str) -> Option<&'static str> {
    Some(match oid {
        "2.5.4.3" => "CN",
        "2.5.4.6" => "C",
        "2.5.4.7" => "L",
        "2.5.4.8" => "ST",
        "2.5.4.9" => "street",
        "2.5.4.10" => "O",
        "2.5.4.11" => "OU",
        "2.5.4.4" => "SN",
        "2.5.4.42" => "GN",
        "2.5.4.12" => "title",
        "2.5.4.5" => "serialNumber",
        "1.2.840.113549.1.9.1" => "emailAddress",
        "0.9.2342.19200300.100.1.25" => "DC",
        "0.9.2342.19200300.100.1.1" => "UID",
        _ => return None,
    })
}

fn escape_rfc2253(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for (i, c) in v.chars().enumerate() {
        let edge = i == 0 && (c == ' ' || c == '#') || i + 1 == v.chars().count() && c == ' ';
        if edge || matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn pem(der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// Percent-encoding of everything but unreserved characters.
fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
