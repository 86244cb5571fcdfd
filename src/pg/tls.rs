//! TLS for SQL sessions (rustls through tokio-postgres-rustls).
//!
//! `sslmode` follows libpq: `prefer` tries TLS and falls back to plain text, `require`
//! encrypts without checking the server's certificate, `verify-full` checks the chain against
//! `sslrootcert` (or the Mozilla roots when none is given) and the host name. Amazon RDS and
//! Aurora certificates are signed by Amazon's own CA: pass its bundle as `sslrootcert`.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use super::conn::SslMode;

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The rustls configuration for a mode other than `disable`.
pub fn client_config(mode: SslMode, root_cert: Option<&Path>) -> Result<ClientConfig, String> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup failed: {e}"))?;
    let config = match mode {
        SslMode::VerifyFull => {
            let mut roots = RootCertStore::empty();
            match root_cert {
                Some(path) => {
                    let pem = std::fs::read(path)
                        .map_err(|e| format!("cannot read sslrootcert {}: {e}", path.display()))?;
                    let certs: Vec<CertificateDer<'static>> =
                        rustls_pemfile::certs(&mut pem.as_slice())
                            .collect::<Result<_, _>>()
                            .map_err(|e| format!("sslrootcert {}: {e}", path.display()))?;
                    if certs.is_empty() {
                        return Err(format!(
                            "sslrootcert {} holds no certificate",
                            path.display()
                        ));
                    }
                    for c in certs {
                        roots
                            .add(c)
                            .map_err(|e| format!("sslrootcert {}: {e}", path.display()))?;
                    }
                }
                None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        _ => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(EncryptOnly(provider())))
            .with_no_client_auth(),
    };
    Ok(config)
}

/// libpq's `require`: the channel is encrypted, the server's identity is not checked (the
/// handshake signatures still are).
#[derive(Debug)]
struct EncryptOnly(Arc<CryptoProvider>);

impl ServerCertVerifier for EncryptOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
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
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
