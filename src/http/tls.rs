//! The TLS configuration of the federation listener (the client API is routed there too); its
//! accept loop is `listener::serve`'s.

use std::{path::Path, sync::Arc};

use rustls::ServerConfig;
use rustls_pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};

use crate::error::{Error, Result};

/// Loads a PEM certificate chain and private key into a rustls server configuration.
pub fn load_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect())
        .map_err(|error| {
            Error::Config(format!(
                "invalid configuration key `tls_cert`: {}: {error}",
                cert.display()
            ))
        })?;
    if chain.is_empty() {
        return Err(Error::Config(format!(
            "invalid configuration key `tls_cert`: {} holds no certificate",
            cert.display()
        )));
    }
    let private_key = PrivateKeyDer::from_pem_file(key).map_err(|error| {
        Error::Config(format!(
            "invalid configuration key `tls_key`: {}: {error}",
            key.display()
        ))
    })?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| Error::Config(format!("tls: {error}")))?
        .with_no_client_auth()
        .with_single_cert(chain, private_key)
        .map_err(|error| Error::Config(format!("invalid configuration key `tls_key`: {error}")))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
