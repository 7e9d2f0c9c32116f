//! A TCP proxy in front of the dev chain's RPC port that can play a dead node, for tests of what
//! paychan does when its RPC node goes away: [`RpcProxy::trip_on`] kills it (connection refused,
//! every open connection cut) in the middle of a chosen JSON-RPC call, optionally after the node
//! received the call; [`RpcProxy::revive`] opens the same port again.
//!
//! Also [`eventually`], the polling helper those tests wait with.

use std::{
    future::Future,
    io,
    net::SocketAddr,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpSocket, TcpStream},
    task::AbortHandle,
};

/// Polls `f` every 20 ms until it returns `Some`; panics after `secs` seconds naming `what`.
pub async fn eventually<T, F, Fut>(what: &str, secs: u64, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

struct ProxyState {
    target: SocketAddr,
    /// Kill the proxy at the next request containing all these strings; `true`: forward it first.
    trip: Mutex<Option<(Vec<String>, bool)>>,
    tripped: AtomicBool,
    /// Set the moment the proxy trips: nothing more goes through, either way.
    dead: AtomicBool,
    tasks: Mutex<Vec<AbortHandle>>,
}

/// A lock that a panicked holder does not poison for the others (the state stays consistent:
/// every critical section is a single assignment or drain).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A TCP proxy in front of a node's RPC port; see the module docs.
pub struct RpcProxy {
    addr: SocketAddr,
    state: Arc<ProxyState>,
}

impl RpcProxy {
    /// Starts a proxy on a free loopback port in front of `target_url` (`http://host:port`).
    pub async fn start(target_url: &str) -> io::Result<Self> {
        let target: SocketAddr = target_url
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .parse()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let state = Arc::new(ProxyState {
            target,
            trip: Mutex::new(None),
            tripped: AtomicBool::new(false),
            dead: AtomicBool::new(false),
            tasks: Mutex::new(Vec::new()),
        });
        let addr = listen(state.clone(), SocketAddr::from(([127, 0, 0, 1], 0)))?;
        Ok(Self { addr, state })
    }

    /// The proxy's RPC URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Opens the same port again after a trip.
    pub fn revive(&self) -> io::Result<()> {
        listen(self.state.clone(), self.addr)?;
        self.state.dead.store(false, Ordering::SeqCst);
        Ok(())
    }

    /// Arms a kill at the next request containing every one of `needles`; `forward`: let the
    /// node receive it (and answer) first, then drop the answer.
    pub fn trip_on(&self, needles: &[&str], forward: bool) {
        self.state.tripped.store(false, Ordering::SeqCst);
        *lock(&self.state.trip) =
            Some((needles.iter().map(|s| (*s).to_owned()).collect(), forward));
    }

    /// Whether the armed kill has happened.
    pub fn tripped(&self) -> bool {
        self.state.tripped.load(Ordering::SeqCst)
    }
}

impl Drop for RpcProxy {
    fn drop(&mut self) {
        kill(&self.state);
    }
}

fn kill(state: &ProxyState) {
    for t in lock(&state.tasks).drain(..) {
        t.abort();
    }
}

fn listen(state: Arc<ProxyState>, at: SocketAddr) -> io::Result<SocketAddr> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(at)?;
    let listener = socket.listen(64)?;
    let addr = listener.local_addr()?;
    let st = state.clone();
    let handle = tokio::spawn(async move {
        loop {
            let Ok((client, _)) = listener.accept().await else {
                continue;
            };
            if st.dead.load(Ordering::SeqCst) {
                continue;
            }
            let st2 = st.clone();
            let h = tokio::spawn(async move {
                // A connection that fails just ends; the client sees it closed.
                let _ = serve(st2, client).await;
            });
            lock(&st.tasks).push(h.abort_handle());
        }
    });
    lock(&state.tasks).push(handle.abort_handle());
    Ok(addr)
}

async fn serve(state: Arc<ProxyState>, client: TcpStream) -> io::Result<()> {
    let server = TcpStream::connect(state.target).await?;
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let st = state.clone();
    let st_down = state.clone();
    let up = tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = cr.read(&mut buf).await?;
            if n == 0 {
                return Ok::<_, io::Error>(false);
            }
            let chunk = &buf[..n];
            let trip = {
                let text = String::from_utf8_lossy(chunk);
                let mut t = lock(&st.trip);
                match &*t {
                    Some((needles, forward))
                        if needles.iter().all(|n| text.contains(n.as_str())) =>
                    {
                        let fw = *forward;
                        *t = None;
                        Some(fw)
                    }
                    _ => None,
                }
            };
            match trip {
                Some(forward) => {
                    st.dead.store(true, Ordering::SeqCst);
                    if forward {
                        sw.write_all(chunk).await?;
                        // the rest of this request, if it came in more than one chunk (the
                        // client sends nothing more on this connection until it is answered)
                        while let Ok(Ok(n)) =
                            tokio::time::timeout(Duration::from_millis(50), cr.read(&mut buf)).await
                        {
                            if n == 0 {
                                break;
                            }
                            sw.write_all(&buf[..n]).await?;
                        }
                    }
                    return Ok(true);
                }
                None if st.dead.load(Ordering::SeqCst) => return Ok(false),
                None => sw.write_all(chunk).await?,
            }
        }
    });
    let down = tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = sr.read(&mut buf).await?;
            if n == 0 {
                return Ok::<_, io::Error>(());
            }
            if st_down.dead.load(Ordering::SeqCst) {
                // the node's answer goes nowhere
                continue;
            }
            cw.write_all(&buf[..n]).await?;
        }
    });
    {
        let mut tasks = lock(&state.tasks);
        tasks.push(up.abort_handle());
        tasks.push(down.abort_handle());
    }
    if let Ok(Ok(true)) = up.await {
        // The node got the request (if forwarded) and answers into the void; give it time to
        // process it, then die.
        tokio::time::sleep(Duration::from_millis(100)).await;
        down.abort();
        state.tripped.store(true, Ordering::SeqCst);
        kill(&state);
    }
    Ok(())
}
