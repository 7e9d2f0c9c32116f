//! TLS for a listener: a certificate chain and its private key, read from PEM files.
//!
//! rustls with the ring provider, TLS 1.2 and 1.3 only, ALPN `h2` then `http/1.1` (gRPC needs
//! `h2`; the HTTP listeners speak both). The private key file must be owner-only, like every
//! secret paychan reads ([`crate::secret`]). A TLS handshake must finish within the listener's
//! header-read timeout, so a client cannot hold a connection open by handshaking slowly.

use std::{path::Path, sync::Arc};

use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use tokio_rustls::{TlsAcceptor, rustls};

use crate::secret::{SecretError, read_secret_file};

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The certificate file could not be read.
    #[error("TLS certificate {path}: {error}")]
    ReadCert {
        /// The file.
        path: String,
        /// Why.
        error: std::io::Error,
    },
    /// The certificate file holds no PEM certificate.
    #[error("TLS certificate {path}: no PEM certificate in it")]
    NoCert {
        /// The file.
        path: String,
    },
    /// The key file was refused or unreadable.
    #[error("TLS key: {0}")]
    Key(#[from] SecretError),
    /// The key file holds no PEM private key.
    #[error("TLS key {path}: no PEM private key in it (PKCS#8, PKCS#1 or SEC1)")]
    NoKey {
        /// The file.
        path: String,
    },
    /// rustls refused the pair (the key does not match the certificate, an unsupported key).
    #[error("TLS certificate {cert} and key {key}: {error}")]
    Config {
        /// The certificate file.
        cert: String,
        /// The key file.
        key: String,
        /// rustls's reason.
        error: rustls::Error,
    },
}

/// A listener's TLS configuration. Its `Debug` shows the certificate file, never the key.
#[derive(Clone)]
pub struct Tls {
    acceptor: TlsAcceptor,
    cert: String,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("cert", &self.cert)
            .finish_non_exhaustive()
    }
}

impl Tls {
    /// TLS from a PEM certificate chain (leaf first) and a PEM private key (owner-only file).
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let cert_name = cert.display().to_string();
        let pem = std::fs::read(cert).map_err(|error| TlsError::ReadCert {
            path: cert_name.clone(),
            error,
        })?;
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
            .filter_map(Result::ok)
            .collect();
        if chain.is_empty() {
            return Err(TlsError::NoCert { path: cert_name });
        }
        let key_name = key.display().to_string();
        let key_pem = read_secret_file(key)?;
        let private =
            PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|_| TlsError::NoKey {
                path: key_name.clone(),
            })?;
        Self::from_der(chain, private)
            .map_err(|error| TlsError::Config {
                cert: cert_name.clone(),
                key: key_name,
                error,
            })
            .map(|acceptor| Self {
                acceptor,
                cert: cert_name,
            })
    }

    fn from_der(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<TlsAcceptor, rustls::Error> {
        // rustls 0.23.48 deprecates the ring provider for lacking post-quantum key exchange
        // (that is aws-lc-rs, which needs cmake and a C toolchain to build). ring is what
        // tonic's TLS uses here too; classical ECDHE is what every client offers today.
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(chain, key)?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(TlsAcceptor::from(Arc::new(config)))
    }

    pub(crate) fn acceptor(&self) -> &TlsAcceptor {
        &self.acceptor
    }
}
