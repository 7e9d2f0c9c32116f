//! The listener with TLS, over real loopback sockets: a client that trusts the certificate is
//! served; plaintext, a silent client and bad key material are not.

#![allow(clippy::unwrap_used)]

use std::{os::unix::fs::PermissionsExt, path::PathBuf, sync::Arc, time::Duration};

use axum::{Router, routing::get};
use paychan_service::{Limits, Tls, TlsError, serve};
use rustls_pki_types::{CertificateDer, ServerName, pem::PemObject};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use tokio_rustls::{TlsConnector, rustls};

struct Material {
    _dir: tempfile::TempDir,
    cert: PathBuf,
    key: PathBuf,
    cert_pem: String,
}

fn material() -> Material {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    let cert_pem = ck.cert.pem();
    std::fs::write(&cert, &cert_pem).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    Material {
        _dir: dir,
        cert,
        key,
        cert_pem,
    }
}

async fn start(tls: Tls) -> std::net::SocketAddr {
    let app = Router::new().route("/", get(|| async { "ok over tls" }));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let limits = Limits {
        header_read_timeout: Duration::from_millis(400),
        tls: Some(tls),
        ..Limits::default()
    };
    tokio::spawn(serve(listener, app, limits, std::future::pending()));
    addr
}

fn connector(cert_pem: &str) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(cert_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    TlsConnector::from(Arc::new(config))
}

async fn read_all<S: AsyncReadExt + Unpin>(s: &mut S) -> String {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn a_client_trusting_the_certificate_is_served_and_plaintext_is_not() {
    let m = material();
    let addr = start(Tls::from_pem_files(&m.cert, &m.key).unwrap()).await;

    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let mut s = connector(&m.cert_pem).connect(name, tcp).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let answer = read_all(&mut s).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("ok over tls"), "{answer}");

    // plaintext HTTP to the TLS port gets no HTTP answer
    let mut plain = TcpStream::connect(addr).await.unwrap();
    plain
        .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let answer = read_all(&mut plain).await;
    assert!(!answer.contains("HTTP/1.1"), "{answer}");

    // a client that never starts its handshake is closed after the header-read timeout
    let mut silent = TcpStream::connect(addr).await.unwrap();
    let mut buf = [0u8; 16];
    let closed = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut buf)).await;
    assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "{closed:?}");

    // a client that does not trust the certificate fails its handshake
    let other = material();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    assert!(connector(&other.cert_pem).connect(name, tcp).await.is_err());
}

#[test]
fn bad_key_material_is_refused_with_the_file_named() {
    let m = material();
    // a key others may read
    std::fs::set_permissions(&m.key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let e = Tls::from_pem_files(&m.cert, &m.key).unwrap_err();
    assert!(matches!(e, TlsError::Key(_)), "{e}");
    assert!(e.to_string().contains(&m.key.display().to_string()), "{e}");
    std::fs::set_permissions(&m.key, std::fs::Permissions::from_mode(0o600)).unwrap();
    // a certificate file with no certificate
    std::fs::write(&m.cert, "not a certificate").unwrap();
    let e = Tls::from_pem_files(&m.cert, &m.key).unwrap_err();
    assert!(matches!(e, TlsError::NoCert { .. }), "{e}");
    // another pair's key
    let other = material();
    std::fs::write(&m.cert, &other.cert_pem).unwrap();
    let e = Tls::from_pem_files(&m.cert, &m.key).unwrap_err();
    assert!(matches!(e, TlsError::Config { .. }), "{e}");
    // a missing certificate file
    let e = Tls::from_pem_files(&m.cert.with_extension("missing"), &m.key).unwrap_err();
    assert!(matches!(e, TlsError::ReadCert { .. }), "{e}");
    // the key's text never appears in an error
    let key_text = std::fs::read_to_string(&m.key).unwrap();
    std::fs::write(&m.key, key_text.replace("PRIVATE KEY", "PRIVATE KEX")).unwrap();
    let e = Tls::from_pem_files(&other.cert, &m.key).unwrap_err();
    assert!(matches!(e, TlsError::NoKey { .. }), "{e}");
    assert!(!e.to_string().contains("MII"), "{e}");
}
