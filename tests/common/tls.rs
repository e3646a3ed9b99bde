//! A certificate authority made at run time for federation tests, and leaf certificates it
//! issues for servers on loopback addresses.
//!
//! Every test that needs TLS makes its own `TestCa`, so nothing secret is checked in and no
//! certificate expires. Servers under test (Synapse, Plait) are given a chain and key from
//! `TestCa::issue` and trust only `TestCa::write_ca`'s file for outgoing federation.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

/// A self-signed CA whose key stays in memory for the life of the test.
pub struct TestCa {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
    /// Numbers the files `issue` writes, so two certificates for one address never clash.
    issued: AtomicU32,
}

impl TestCa {
    /// Makes a fresh CA with an ECDSA P-256 key.
    pub fn new() -> Self {
        let mut params = CertificateParams::default();
        // A name of its own, so a certificate from another test's CA fails as an unknown
        // issuer rather than as a bad signature from a CA of the same name.
        let name = format!("Plait test CA {:016x}", rand::random::<u64>());
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().expect("generate CA key");
        let cert = params.self_signed(&key).expect("self-sign CA");
        Self {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
            issued: AtomicU32::new(0),
        }
    }

    /// The CA certificate as PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Writes the CA certificate to `dir/test-ca.pem` and returns that path.
    pub fn write_ca(&self, dir: &Path) -> PathBuf {
        let path = dir.join("test-ca.pem");
        std::fs::write(&path, &self.cert_pem).expect("write CA certificate");
        path
    }

    /// Issues a server certificate for `ip` and `dns_names` and returns `(chain_pem, key_pem)`:
    /// the leaf followed by the CA, and the leaf's PKCS#8 key.
    pub fn issue_pem(&self, ip: IpAddr, dns_names: &[&str]) -> (String, String) {
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, ip.to_string());
        params.subject_alt_names = std::iter::once(SanType::IpAddress(ip))
            .chain(
                dns_names
                    .iter()
                    .map(|name| SanType::DnsName((*name).try_into().expect("DNS name is ASCII"))),
            )
            .collect();
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().expect("generate leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign leaf");
        (
            format!("{}{}", cert.pem(), self.cert_pem),
            key.serialize_pem(),
        )
    }

    /// Issues a server certificate like `issue_pem` and writes it into `dir`.
    /// Returns `(cert_chain_path, key_path)`.
    pub fn issue(&self, ip: IpAddr, dns_names: &[&str], dir: &Path) -> (PathBuf, PathBuf) {
        let (chain_pem, key_pem) = self.issue_pem(ip, dns_names);
        let number = self.issued.fetch_add(1, Ordering::Relaxed);
        let chain_path = dir.join(format!("tls-{ip}-{number}.crt"));
        let key_path = dir.join(format!("tls-{ip}-{number}.key"));
        std::fs::write(&chain_path, chain_pem).expect("write certificate chain");
        std::fs::write(&key_path, key_pem).expect("write private key");
        (chain_path, key_path)
    }

    /// A TLS acceptor with a certificate from this CA for `ip`, for fake servers that tests
    /// stand up (an origin of media, a remote server that misbehaves).
    pub fn acceptor(&self, ip: IpAddr) -> tokio_rustls::TlsAcceptor {
        use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
        let (chain_pem, key_pem) = self.issue_pem(ip, &[]);
        let chain = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .expect("parse the chain");
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).expect("parse the key");
        let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("the certificate and key match");
        tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config))
    }

    /// An HTTP client that trusts this CA and nothing else, for talking to federation
    /// listeners the way another homeserver would.
    pub fn https_client(&self) -> reqwest::Client {
        let ca = reqwest::Certificate::from_pem(self.cert_pem.as_bytes()).expect("parse CA PEM");
        reqwest::Client::builder()
            .tls_certs_only([ca])
            .build()
            .expect("build HTTPS client")
    }
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}
