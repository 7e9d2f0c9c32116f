//! The control plane over TLS: a client trusting the certificate is served (and still needs the
//! token); a plaintext client, or one trusting another certificate, is not.

use std::os::unix::fs::PermissionsExt;

use paychan_control::{ControlClient, ControlConfig, ControlPlane};
use paychan_service::{BearerToken, Limits, Tls};
use tokio::sync::oneshot;
use tonic::Code;

use crate::support::*;

fn certificate(
    dir: &std::path::Path,
    name: &str,
) -> (std::path::PathBuf, std::path::PathBuf, String) {
    let ck =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .unwrap();
    let (cert, key) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    );
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    (cert, key, ck.cert.pem())
}

#[tokio::test]
async fn over_tls_only_a_client_trusting_the_certificate_and_holding_the_token_is_served() {
    let env = Env::start().await;
    let (cert, key, pem) = certificate(env.dir.path(), "control");
    let token = BearerToken::load_or_create(&env.dir.path().join("control.token")).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let plane = ControlPlane::new(env.engine.clone(), None, ControlConfig::default());
    let limits = Limits {
        tls: Some(Tls::from_pem_files(&cert, &key).unwrap()),
        ..Limits::default()
    };
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(paychan_control::serve_with(
        listener,
        plane,
        token.clone(),
        limits,
        async move {
            let _ = stopped.await;
        },
    ));

    let mut c = ControlClient::connect_tls(&addr, &token, pem.as_bytes())
        .await
        .unwrap();
    let health = c.health().await.unwrap();
    assert!(health.serving, "{health:?}");
    assert_eq!(
        c.list_channels(list_all(0, String::new()))
            .await
            .unwrap()
            .channels
            .len(),
        0
    );

    // the token is still required over TLS
    let wrong = BearerToken::from_secret(&"f".repeat(64)).unwrap();
    let mut w = ControlClient::connect_tls(&addr, &wrong, pem.as_bytes())
        .await
        .unwrap();
    assert_eq!(w.health().await.unwrap_err().code(), Code::Unauthenticated);

    // plaintext, or trusting another certificate: no call goes through
    let plain = ControlClient::connect(&addr, &token).await;
    if let Ok(mut p) = plain {
        assert!(p.health().await.is_err());
    }
    let (_, _, other) = certificate(env.dir.path(), "other");
    let untrusting = ControlClient::connect_tls(&addr, &token, other.as_bytes()).await;
    if let Ok(mut u) = untrusting {
        assert!(u.health().await.is_err());
    }

    let _ = stop.send(());
    task.await.unwrap().unwrap();
}
