//! TLS for `mqtts://` links: rustls with the ring provider, the broker
//! verified against `broker.ca_file` (or the system's roots), and an
//! optional client certificate for brokers that require mutual TLS.

use super::BrokerConfig;
use crate::config::ConfigError;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;
use std::sync::Arc;

/// The rustls client settings `config` asks for.
pub fn client_config(config: &BrokerConfig) -> Result<Arc<rustls::ClientConfig>, ConfigError> {
    let mut roots = rustls::RootCertStore::empty();
    match &config.ca_file {
        Some(file) => {
            for cert in certificates(file, "broker.ca_file")? {
                roots.add(cert).map_err(|e| {
                    invalid(format!(
                        "broker.ca_file {}: not a usable CA certificate: {e}",
                        file.display()
                    ))
                })?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                // a system root rustls cannot parse is skipped, as browsers do
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                return Err(invalid(
                    "mqtts:// with no broker.ca_file, and this system has no trusted root certificates: set broker.ca_file to the CA that signed the broker's certificate".into(),
                ));
            }
        }
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| invalid(format!("TLS: {e}")))?
    .with_root_certificates(roots);
    let tls = match (&config.cert_file, &config.key_file) {
        (Some(cert), Some(key)) => {
            let chain = certificates(cert, "broker.cert_file")?;
            let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
                invalid(format!(
                    "broker.key_file {}: no private key in PEM form ({e})",
                    key.display()
                ))
            })?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| invalid(format!("broker.cert_file and broker.key_file: {e}")))?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(Arc::new(tls))
}

/// The certificates in the PEM file `file` (the setting `what` names it).
fn certificates(file: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let text = std::fs::read(file)
        .map_err(|e| invalid(format!("cannot read {what} {}: {e}", file.display())))?;
    let certs = CertificateDer::pem_slice_iter(&text)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            invalid(format!(
                "{what} {}: not PEM certificates ({e})",
                file.display()
            ))
        })?;
    if certs.is_empty() {
        return Err(invalid(format!(
            "{what} {} holds no certificate (expected PEM: -----BEGIN CERTIFICATE-----)",
            file.display()
        )));
    }
    Ok(certs)
}

fn invalid(message: String) -> ConfigError {
    ConfigError::Invalid(message)
}
