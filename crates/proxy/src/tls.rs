//! TLS transport sockets with rustls (aws-lc-rs): `DownstreamTlsContext` for listeners,
//! `UpstreamTlsContext` for clusters; certificates and keys from files or inline PEM; ALPN.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use crate::config::{ConfigError, data_source};
use crate::pb::{core, tls};

/// Type URL of `DownstreamTlsContext`.
pub const DOWNSTREAM_TLS_TYPE_URL: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext";
/// Type URL of `UpstreamTlsContext`.
pub const UPSTREAM_TLS_TYPE_URL: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext";

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn pem(ds: Option<&core::DataSource>, path: &str) -> Result<Vec<u8>, ConfigError> {
    let ds = ds.ok_or_else(|| ConfigError::invalid(path, "required"))?;
    Ok(data_source(ds, path)?.into_bytes())
}

fn certs(bytes: &[u8], path: &str) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let certs = CertificateDer::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ConfigError::invalid(path, format!("bad PEM certificate: {e}")))?;
    if certs.is_empty() {
        return Err(ConfigError::invalid(path, "no PEM certificate found"));
    }
    Ok(certs)
}

fn roots(
    ctx: &tls::CommonTlsContext,
    path: &str,
) -> Result<Option<rustls::RootCertStore>, ConfigError> {
    use tls::common_tls_context::ValidationContextType as V;
    match &ctx.validation_context_type {
        None => Ok(None),
        Some(V::ValidationContext(v)) => {
            let vpath = format!("{path}.validation_context.trusted_ca");
            let bytes = pem(v.trusted_ca.as_ref(), &vpath)?;
            let mut store = rustls::RootCertStore::empty();
            for c in certs(&bytes, &vpath)? {
                store.add(c).map_err(|e| ConfigError::invalid(&vpath, e))?;
            }
            Ok(Some(store))
        }
        Some(_) => Err(ConfigError::unsupported(
            path,
            "validation context kind (validation_context is)",
        )),
    }
}

fn cert_and_key(
    ctx: &tls::CommonTlsContext,
    path: &str,
) -> Result<Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>, ConfigError> {
    match ctx.tls_certificates.as_slice() {
        [] => Ok(None),
        [c] => {
            let cpath = format!("{path}.tls_certificates[0]");
            let chain = certs(
                &pem(
                    c.certificate_chain.as_ref(),
                    &format!("{cpath}.certificate_chain"),
                )?,
                &cpath,
            )?;
            let kpath = format!("{cpath}.private_key");
            let key = PrivateKeyDer::from_pem_slice(&pem(c.private_key.as_ref(), &kpath)?)
                .map_err(|e| ConfigError::invalid(&kpath, format!("bad PEM private key: {e}")))?;
            Ok(Some((chain, key)))
        }
        _ => Err(ConfigError::unsupported(
            format!("{path}.tls_certificates"),
            "more than one certificate",
        )),
    }
}

/// A listener's own certificate (the first of its chain), DER.
pub fn local_cert(
    ctx: &tls::DownstreamTlsContext,
    path: &str,
) -> Result<Option<Vec<u8>>, ConfigError> {
    let Some(common) = &ctx.common_tls_context else {
        return Ok(None);
    };
    Ok(cert_and_key(common, &format!("{path}.common_tls_context"))?
        .and_then(|(chain, _)| chain.first().map(|c| c.as_ref().to_vec())))
}

/// The URI subject alternative names of a listener's own certificate (the `By=` of the
/// `x-forwarded-client-cert` Envoy builds).
pub fn local_uri_sans(
    ctx: &tls::DownstreamTlsContext,
    path: &str,
) -> Result<Vec<String>, ConfigError> {
    let Some(common) = &ctx.common_tls_context else {
        return Ok(Vec::new());
    };
    Ok(
        match cert_and_key(common, &format!("{path}.common_tls_context"))? {
            Some((chain, _)) => chain
                .first()
                .map(|c| crate::xfcc::sans(c.as_ref()).0)
                .unwrap_or_default(),
            None => Vec::new(),
        },
    )
}

/// A listener's TLS server config.
pub fn server_config(
    ctx: &tls::DownstreamTlsContext,
    path: &str,
) -> Result<Arc<rustls::ServerConfig>, ConfigError> {
    let cpath = format!("{path}.common_tls_context");
    let common = ctx
        .common_tls_context
        .as_ref()
        .ok_or_else(|| ConfigError::invalid(&cpath, "required"))?;
    let (chain, key) = cert_and_key(common, &cpath)?
        .ok_or_else(|| ConfigError::invalid(format!("{cpath}.tls_certificates"), "required"))?;
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| ConfigError::invalid(path, e))?;
    let require = ctx
        .require_client_certificate
        .as_ref()
        .is_some_and(|b| b.value);
    let builder = match roots(common, &cpath)? {
        Some(store) => {
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(store),
                provider(),
            );
            let verifier = if require {
                verifier
            } else {
                verifier.allow_unauthenticated()
            };
            builder.with_client_cert_verifier(
                verifier
                    .build()
                    .map_err(|e| ConfigError::invalid(&cpath, e))?,
            )
        }
        None if require => {
            return Err(ConfigError::invalid(
                format!("{path}.require_client_certificate"),
                "needs common_tls_context.validation_context.trusted_ca",
            ));
        }
        None => builder.with_no_client_auth(),
    };
    let mut cfg = builder
        .with_single_cert(chain, key)
        .map_err(|e| ConfigError::invalid(&cpath, e))?;
    cfg.alpn_protocols = common
        .alpn_protocols
        .iter()
        .map(|p| p.as_bytes().to_vec())
        .collect();
    Ok(Arc::new(cfg))
}

/// A cluster's TLS client config and the SNI to send.
pub fn client_config(
    ctx: &tls::UpstreamTlsContext,
    path: &str,
) -> Result<(Arc<rustls::ClientConfig>, Option<ServerName<'static>>), ConfigError> {
    let cpath = format!("{path}.common_tls_context");
    let default = tls::CommonTlsContext::default();
    let common = ctx.common_tls_context.as_ref().unwrap_or(&default);
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| ConfigError::invalid(path, e))?;
    let builder = match roots(common, &cpath)? {
        Some(store) => builder.with_root_certificates(store),
        None => {
            // Envoy does not verify the upstream without a validation context.
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NoVerify(provider())))
        }
    };
    let mut cfg = match cert_and_key(common, &cpath)? {
        Some((chain, key)) => builder
            .with_client_auth_cert(chain, key)
            .map_err(|e| ConfigError::invalid(&cpath, e))?,
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = common
        .alpn_protocols
        .iter()
        .map(|p| p.as_bytes().to_vec())
        .collect();
    let sni = if ctx.sni.is_empty() {
        None
    } else {
        Some(
            ServerName::try_from(ctx.sni.clone())
                .map_err(|e| ConfigError::invalid(format!("{path}.sni"), e))?,
        )
    };
    Ok((Arc::new(cfg), sni))
}

/// Accepts any server certificate (Envoy's behaviour without a validation context), still
/// checking handshake signatures.
#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
