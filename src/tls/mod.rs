//! TLS: the listener's `wss://` (and the client side of `rediss://`),
//! rustls on ring, driven from the same readiness events as plain TCP, no
//! threads, no blocking.
//!
//! `session` is one server connection's TLS state without I/O (rustls'
//! unbuffered API, buffers shared by the thread, leftovers only per
//! connection); `stream` puts a session over a client's socket as its
//! transport. This file loads certificates and keys into rustls' settings.

#[cfg(feature = "redis")]
mod client;
mod session;
mod stream;
#[cfg(any(test, feature = "testing"))]
pub mod test_peer;

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};

#[cfg(feature = "redis")]
pub use client::TlsClientStream;
#[cfg(any(test, feature = "testing"))]
pub use session::TlsSession;
pub use stream::TlsStream;

/// The server's TLS settings from PEM files: a certificate chain (leaf
/// first) and its private key. With `client_ca`, clients must present a
/// certificate chained to one of the CA certificates in that file.
pub fn server_config(cert: &Path, key: &Path, client_ca: Option<&Path>) -> Result<Arc<ServerConfig>, String> {
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("--tls-cert {}: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!("--tls-cert {}: no certificate in the file", cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("--tls-key {}: {e}", key.display()))?;
    let client_roots = match client_ca {
        None => None,
        Some(path) => {
            let bad = |e: &dyn std::fmt::Display| format!("--tls-client-ca {}: {e}", path.display());
            let mut roots = RootCertStore::empty();
            for ca in CertificateDer::pem_file_iter(path).map_err(|e| bad(&e))? {
                roots.add(ca.map_err(|e| bad(&e))?).map_err(|e| bad(&e))?;
            }
            if roots.is_empty() {
                return Err(bad(&"no certificate in the file"));
            }
            Some(roots)
        }
    };
    build_server_config(certs, key, client_roots)
}

/// TLS 1.2 and 1.3 with ring's safe defaults, ALPN `http/1.1`; client
/// certificates checked against `client_roots` when given.
fn build_server_config(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    client_roots: Option<RootCertStore>,
) -> Result<Arc<ServerConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?;
    let builder = match client_roots {
        None => builder.with_no_client_auth(),
        Some(roots) => {
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| format!("--tls-client-ca: {e}"))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(certs, key).map_err(|e| format!("--tls-cert/--tls-key: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    // Resumption by stateless tickets (ChaCha20-Poly1305 under keys that
    // rotate every 6 hours, kept in memory only) instead of a server-side
    // cache: a burst of connections leaves no session state behind (the
    // default cache of 256 sessions, allocated among the burst's buffers,
    // kept 3 MiB of heap pages from going back to the system).
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.ticketer = rustls::crypto::ring::Ticketer::new().map_err(|e| format!("TLS tickets: {e}"))?;
    Ok(Arc::new(config))
}

/// The client side, for `rediss://`: servers are checked against the PEM
/// certificates in `ca_file` (a system bundle, or a private CA).
#[cfg(feature = "redis")]
pub fn client_config(ca_file: &Path) -> Result<Arc<rustls::ClientConfig>, String> {
    let bad = |e: &dyn std::fmt::Display| format!("rediss:// trust store {}: {e}", ca_file.display());
    let mut roots = RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(ca_file).map_err(|e| bad(&e))?;
    // A system bundle may hold a certificate webpki cannot use: skip it.
    roots.add_parsable_certificates(certs.flatten());
    if roots.is_empty() {
        return Err(bad(&"no usable certificate in the file"));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}
