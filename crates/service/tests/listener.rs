//! The hardened listener over real loopback sockets, as an abusive client would meet it.

use std::time::Duration;

use axum::{Router, routing::get};
use paychan_service::{Limits, serve};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::oneshot,
};

struct Running {
    addr: std::net::SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

async fn start(limits: Limits) -> Running {
    let app = Router::new().route("/", get(|| async { "ok" })).route(
        "/slow",
        get(|| async {
            tokio::time::sleep(Duration::from_millis(600)).await;
            "slow"
        }),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(serve(listener, app, limits, async {
        let _ = rx.await;
    }));
    Running {
        addr,
        stop: Some(tx),
        task,
    }
}

/// Reads until the peer closes or `limit` passes; returns what was read and whether it closed.
async fn read_until_closed(s: &mut TcpStream, limit: Duration) -> (String, bool) {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&out).into(), true),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => return (String::from_utf8_lossy(&out).into(), false),
        }
    }
}

fn short() -> Limits {
    Limits {
        header_read_timeout: Duration::from_millis(300),
        idle_timeout: Duration::from_millis(400),
        ..Limits::default()
    }
}

#[tokio::test]
async fn a_slow_request_head_is_cut_off() {
    let srv = start(short()).await;
    let mut s = TcpStream::connect(srv.addr).await.expect("connect");
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("write");
    // The head never ends: the server closes the connection instead of waiting forever.
    let (text, closed) = read_until_closed(&mut s, Duration::from_secs(5)).await;
    assert!(closed, "connection left open: {text:?}");
    assert!(!text.contains("200 OK"), "{text}");
}

#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed() {
    let srv = start(short()).await;
    let mut s = TcpStream::connect(srv.addr).await.expect("connect");
    let (_, closed) = read_until_closed(&mut s, Duration::from_secs(5)).await;
    assert!(closed);
}

#[tokio::test]
async fn keep_alive_serves_many_requests_then_an_idle_connection_closes() {
    let srv = start(short()).await;
    let mut s = TcpStream::connect(srv.addr).await.expect("connect");
    for _ in 0..50 {
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("write");
        let mut buf = vec![0u8; 1024];
        let n = s.read(&mut buf).await.expect("read");
        let text = String::from_utf8_lossy(&buf[..n]);
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        assert!(text.ends_with("ok"), "{text}");
    }
    let (_, closed) = read_until_closed(&mut s, Duration::from_secs(5)).await;
    assert!(closed, "an idle kept-alive connection stays open");
}

#[tokio::test]
async fn requests_past_the_in_flight_cap_get_503_with_retry_after() {
    let srv = start(Limits {
        max_in_flight: 2,
        retry_after_secs: 7,
        ..Limits::default()
    })
    .await;
    let client = reqwest::Client::new();
    let url = format!("http://{}/slow", srv.addr);
    let reqs: Vec<_> = (0..6).map(|_| client.get(&url).send()).collect();
    let answers = futures_join(reqs).await;
    let ok = answers.iter().filter(|(s, _)| *s == 200).count();
    let busy: Vec<_> = answers.iter().filter(|(s, _)| *s == 503).collect();
    assert_eq!(ok, 2, "{answers:?}");
    assert_eq!(busy.len(), 4, "{answers:?}");
    assert!(
        busy.iter().all(|(_, r)| r.as_deref() == Some("7")),
        "{answers:?}"
    );
    // Capacity comes back once the slow requests end.
    let again = client.get(&url).send().await.expect("send");
    assert_eq!(again.status(), 200);
}

#[tokio::test]
async fn connections_past_the_cap_get_503_and_are_closed() {
    let srv = start(Limits {
        max_connections: 2,
        ..short()
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(srv.addr).await.expect("connect");
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("write");
        let mut buf = vec![0u8; 1024];
        let n = s.read(&mut buf).await.expect("read");
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
        held.push(s);
    }
    let mut third = TcpStream::connect(srv.addr).await.expect("connect");
    third
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let (text, closed) = read_until_closed(&mut third, Duration::from_secs(5)).await;
    assert!(text.starts_with("HTTP/1.1 503"), "{text}");
    assert!(
        text.to_ascii_lowercase().contains("retry-after: 1"),
        "{text}"
    );
    assert!(closed);
}

#[tokio::test]
async fn shutdown_lets_a_request_in_flight_finish() {
    let mut srv = start(Limits::default()).await;
    let url = format!("http://{}/slow", srv.addr);
    let pending = tokio::spawn(async move { reqwest::get(&url).await?.text().await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let _ = srv.stop.take().map(|s| s.send(()));
    let body = pending.await.expect("join").expect("request finished");
    assert_eq!(body, "slow");
    srv.task.await.expect("join").expect("serve ended cleanly");
    assert!(
        TcpStream::connect(srv.addr).await.is_err(),
        "still accepting"
    );
}

async fn futures_join(
    reqs: Vec<
        impl std::future::Future<Output = reqwest::Result<reqwest::Response>> + Send + 'static,
    >,
) -> Vec<(u16, Option<String>)> {
    let mut set = tokio::task::JoinSet::new();
    for f in reqs {
        set.spawn(async move {
            let r = f.await.expect("send");
            let retry = r
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            (r.status().as_u16(), retry)
        });
    }
    let mut out = Vec::new();
    while let Some(r) = set.join_next().await {
        out.push(r.expect("join"));
    }
    out
}
