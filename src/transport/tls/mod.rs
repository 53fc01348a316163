//! TLS on the service's own REST and gRPC listeners: the certificate, key and optional
//! client CA read from PEM files ([`ServerTls::load`]) and read again in place
//! ([`ServerTls::reload`], on SIGHUP) — each new connection takes the configuration in
//! force when it arrives, connections already open keep theirs. [`TlsListener`] does
//! each handshake in a task of its own, so a slow or silent client never holds up the
//! next one. Only the ring crypto provider is used, named explicitly.

mod listener;

pub use listener::TlsListener;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::config::TlsSettings;

/// Makes ring the process's default rustls provider, for the clients that take the
/// default (Redis's `rediss://`, sqlx's PostgreSQL TLS). Idempotent.
pub fn install_default_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The listener a configuration is for: they offer different protocols (ALPN).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// REST: HTTP/2 or HTTP/1.1.
    Rest,
    /// gRPC: HTTP/2 only.
    Grpc,
}

impl Protocol {
    fn alpn(self) -> Vec<Vec<u8>> {
        match self {
            Self::Rest => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
            Self::Grpc => vec![b"h2".to_vec()],
        }
    }

    /// The `listener` label of `mailledger_tls_handshake_failures_total`.
    fn label(self) -> &'static str {
        match self {
            Self::Rest => "rest",
            Self::Grpc => "grpc",
        }
    }
}

/// One of the PEM files, as error messages name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PemFile {
    /// `MAILLEDGER_TLS_CERT`.
    Certificate,
    /// `MAILLEDGER_TLS_KEY`.
    Key,
    /// `MAILLEDGER_TLS_CLIENT_CA`.
    ClientCa,
}

impl fmt::Display for PemFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Certificate => "TLS certificate (MAILLEDGER_TLS_CERT)",
            Self::Key => "TLS private key (MAILLEDGER_TLS_KEY)",
            Self::ClientCa => "TLS client CA (MAILLEDGER_TLS_CLIENT_CA)",
        })
    }
}

/// A PEM file that cannot be used, and why.
#[derive(Debug, thiserror::Error)]
#[error("{file} {}: {problem}", path.display())]
pub struct TlsError {
    /// Which file.
    pub file: PemFile,
    /// Its path, as configured.
    pub path: PathBuf,
    /// What is wrong with it.
    pub problem: String,
}

impl TlsError {
    fn new(file: PemFile, path: &Path, problem: impl Into<String>) -> Self {
        Self { file, path: path.to_owned(), problem: problem.into() }
    }
}

/// The TLS configuration of the REST and gRPC listeners; clones share it, so a reload
/// through any of them reaches both listeners.
#[derive(Clone)]
pub struct ServerTls(Arc<Shared>);

struct Shared {
    cert: PathBuf,
    key: PathBuf,
    client_ca: Option<PathBuf>,
    current: RwLock<Configs>,
}

/// The configurations in force, one per listener.
struct Configs {
    rest: Arc<ServerConfig>,
    grpc: Arc<ServerConfig>,
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls")
            .field("cert", &self.0.cert)
            .field("key", &self.0.key)
            .field("client_ca", &self.0.client_ca)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Reads the files the settings name; `None` when TLS is off.
    pub fn load(settings: &TlsSettings) -> Result<Option<Self>, TlsError> {
        let (Some(cert), Some(key)) = (&settings.cert, &settings.key) else {
            return Ok(None);
        };
        let shared = Shared {
            cert: cert.clone(),
            key: key.clone(),
            client_ca: settings.client_ca.clone(),
            current: RwLock::new(Configs::read(cert, key, settings.client_ca.as_deref())?),
        };
        Ok(Some(Self(Arc::new(shared))))
    }

    /// Reads the files again and serves the result to every new connection. When a file
    /// cannot be used, says so in the log and in the error and keeps what was in force.
    pub fn reload(&self) -> Result<(), TlsError> {
        let shared = &*self.0;
        match Configs::read(&shared.cert, &shared.key, shared.client_ca.as_deref()) {
            Ok(configs) => {
                *shared.current.write().unwrap_or_else(PoisonError::into_inner) = configs;
                tracing::info!(cert = %shared.cert.display(), "TLS certificate reloaded");
                Ok(())
            }
            Err(e) => {
                tracing::error!(error = %e, "TLS reload failed; still serving the previous certificate");
                Err(e)
            }
        }
    }

    /// Serves TLS for `protocol` on connections accepted by `tcp`.
    pub fn listener(&self, tcp: TcpListener, protocol: Protocol) -> TlsListener {
        TlsListener::new(tcp, self.clone(), protocol)
    }

    fn acceptor(&self, protocol: Protocol) -> TlsAcceptor {
        let configs = self.0.current.read().unwrap_or_else(PoisonError::into_inner);
        TlsAcceptor::from(match protocol {
            Protocol::Rest => configs.rest.clone(),
            Protocol::Grpc => configs.grpc.clone(),
        })
    }
}

impl Configs {
    fn read(cert: &Path, key: &Path, client_ca: Option<&Path>) -> Result<Self, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let chain = certificates(PemFile::Certificate, cert)?;
        let private_key = private_key(key)?;
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions");
        let builder = match client_ca {
            Some(path) => builder.with_client_cert_verifier(client_verifier(path, provider)?),
            None => builder.with_no_client_auth(),
        };
        let config = builder.with_single_cert(chain, private_key).map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => {
                TlsError::new(PemFile::Key, key, format!("does not match the certificate {}", cert.display()))
            }
            rustls::Error::InvalidCertificate(e) => TlsError::new(PemFile::Certificate, cert, e.to_string()),
            e => TlsError::new(PemFile::Key, key, e.to_string()),
        })?;
        let with_alpn = |protocol: Protocol| {
            let mut config = config.clone();
            config.alpn_protocols = protocol.alpn();
            Arc::new(config)
        };
        Ok(Self { rest: with_alpn(Protocol::Rest), grpc: with_alpn(Protocol::Grpc) })
    }
}

fn read(file: PemFile, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError::new(file, path, format!("cannot be read: {e}")))
}

fn certificates(file: PemFile, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(file, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::new(file, path, format!("not valid PEM: {e}")))?;
    if certs.is_empty() {
        return Err(TlsError::new(file, path, "no certificate in it (a PEM `BEGIN CERTIFICATE` block)"));
    }
    Ok(certs)
}

fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(&read(PemFile::Key, path)?).map_err(|e| {
        let problem = match e {
            pem::Error::NoItemsFound => "no private key in it (a PEM `BEGIN PRIVATE KEY` block)".to_owned(),
            e => format!("not valid PEM: {e}"),
        };
        TlsError::new(PemFile::Key, path, problem)
    })
}

fn client_verifier(
    path: &Path,
    provider: Arc<CryptoProvider>,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in certificates(PemFile::ClientCa, path)? {
        roots.add(cert).map_err(|e| TlsError::new(PemFile::ClientCa, path, e.to_string()))?;
    }
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .map_err(|e| TlsError::new(PemFile::ClientCa, path, e.to_string()))
}
