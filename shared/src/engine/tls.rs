//! TLS client settings shared by every engine: rustls, verified against the
//! system roots plus the PEM bundle named by `ROTOR_CA_BUNDLE` (for servers
//! with a private CA, such as RDS's regional bundle).
//!
//! The root store is built on first use, not at start-up: loading the
//! system's certificates costs several milliseconds of cold start that a
//! createSecret step (which never connects to a database) should not pay.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use crate::error::{Error, Result};

/// Where trust comes from.
#[derive(Debug, Default)]
pub struct TlsSettings {
    ca_bundle: Option<PathBuf>,
    config: OnceLock<std::result::Result<Arc<rustls::ClientConfig>, String>>,
}

impl Clone for TlsSettings {
    fn clone(&self) -> Self {
        TlsSettings::with_ca_bundle(self.ca_bundle.clone())
    }
}

impl TlsSettings {
    /// Reads `ROTOR_CA_BUNDLE`.
    pub fn from_env() -> Self {
        TlsSettings::with_ca_bundle(
            std::env::var_os("ROTOR_CA_BUNDLE")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from),
        )
    }

    pub fn with_ca_bundle(ca_bundle: Option<PathBuf>) -> Self {
        TlsSettings {
            ca_bundle,
            config: OnceLock::new(),
        }
    }

    /// The PEM bundle named by `ROTOR_CA_BUNDLE`, if any.
    pub fn ca_bundle(&self) -> Option<&std::path::Path> {
        self.ca_bundle.as_deref()
    }

    /// The rustls client configuration, built once.
    pub fn client_config(&self) -> Result<Arc<rustls::ClientConfig>> {
        self.config
            .get_or_init(|| self.build().map(Arc::new))
            .clone()
            .map_err(Error::Config)
    }

    fn build(&self) -> std::result::Result<rustls::ClientConfig, String> {
        let mut roots = rustls::RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        let (added, _ignored) = roots.add_parsable_certificates(native.certs);
        if let Some(path) = &self.ca_bundle {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .and_then(|iter| iter.collect())
                .map_err(|e| {
                    format!(
                        "ROTOR_CA_BUNDLE={}: cannot read PEM certificates ({e}); point it at a readable PEM file",
                        path.display()
                    )
                })?;
            if certs.is_empty() {
                return Err(format!(
                    "ROTOR_CA_BUNDLE={} holds no PEM certificate",
                    path.display()
                ));
            }
            for cert in certs {
                roots.add(cert).map_err(|e| {
                    format!(
                        "ROTOR_CA_BUNDLE={}: unusable certificate ({e})",
                        path.display()
                    )
                })?;
            }
        } else if added == 0 {
            return Err(
                "no system root certificates found and ROTOR_CA_BUNDLE is not set; set it to your database's CA bundle".into(),
            );
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        Ok(rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth())
    }
}
