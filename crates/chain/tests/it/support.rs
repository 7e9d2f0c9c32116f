//! Shared test setup: a dev chain, fast configurations, signed payloads, polling helpers, and a
//! TCP proxy that can play a dead RPC node.

use std::{
    future::Future,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use alloy::{
    primitives::{Address, B256, Bytes, U256},
    providers::Provider,
};
use paychan_chain::{ChainConfig, ChainReader, Relayer, RetryPolicy, TxKey};
use paychan_core::{
    batch::{
        BatchDomain, ChannelConfig, ClaimEntry, ClaimRow, ClaimVoucher,
        eip712::{Eip712Domain, ReceiveWithAuthorization, deposit_nonce},
    },
    sig::LocalSigner,
};
use paychan_devchain::{DevChain, ERC3009_COLLECTOR, ESCROW, Role};
use paychan_store::{JournalEntry, JournalState, MemStore, Store};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpSocket, TcpStream},
    task::AbortHandle,
};

/// A dev chain and what tests need around it.
pub struct Env {
    pub chain: DevChain,
    pub token: Address,
    pub domain: BatchDomain,
}

impl Env {
    pub async fn start() -> Env {
        // RUST_LOG=paychan::chain=debug shows what the adapter does
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let chain = DevChain::start().await.unwrap();
        let token = chain.contracts().token;
        let domain = BatchDomain::new(chain.chain_id(), ESCROW);
        Env {
            chain,
            token,
            domain,
        }
    }

    /// Fast settings against `url` (the chain itself unless a proxy is in between).
    pub fn config_for(&self, url: &str) -> ChainConfig {
        ChainConfig {
            poll_interval: Duration::from_millis(20),
            bump_after: Duration::from_secs(2),
            rpc_timeout: Duration::from_secs(2),
            confirm_timeout: Some(Duration::from_secs(30)),
            retry: RetryPolicy {
                initial_backoff: Duration::from_millis(25),
                max_backoff: Duration::from_millis(200),
                attempts: 6,
            },
            ..ChainConfig::dev(url)
        }
    }

    pub fn config(&self) -> ChainConfig {
        self.config_for(self.chain.rpc_url())
    }

    pub async fn reader(&self) -> ChainReader {
        ChainReader::connect(self.config()).await.unwrap()
    }

    pub fn key(&self, role: Role) -> LocalSigner {
        LocalSigner::from_bytes(&self.chain.account(role).key).unwrap()
    }

    pub fn tx_key(&self, role: Role) -> TxKey {
        TxKey::from_secret(&self.chain.account(role).key).unwrap()
    }

    pub fn addr(&self, role: Role) -> Address {
        self.chain.account(role).address
    }

    /// A relayer sending from the `Relayer` dev account.
    pub async fn relayer<S: Store>(&self, store: S) -> Relayer<S> {
        Relayer::new(self.reader().await, store, self.tx_key(Role::Relayer))
    }

    /// A channel from `payer` to the dev receiver.
    pub fn channel(&self, payer: Role, salt: u64) -> ChannelConfig {
        ChannelConfig {
            payer: self.addr(payer),
            payer_authorizer: self.addr(payer),
            receiver: self.addr(Role::Receiver),
            receiver_authorizer: self.addr(Role::ReceiverAuthorizer),
            token: self.token,
            withdraw_delay: 900,
            salt: paychan_devchain::salt(salt),
        }
    }

    /// The payer's ERC-3009 `collectorData` for depositing `amount` into `config`.
    pub async fn deposit_data(
        &self,
        payer: Role,
        config: &ChannelConfig,
        amount: u128,
        salt: u64,
    ) -> Bytes {
        let channel_id = self.domain.channel_id(config);
        let salt = U256::from(salt);
        let valid_before = U256::from(self.chain.block_timestamp().await.unwrap() + 3600);
        let auth = ReceiveWithAuthorization {
            from: config.payer,
            to: ERC3009_COLLECTOR,
            value: U256::from(amount),
            valid_after: U256::ZERO,
            valid_before,
            nonce: deposit_nonce(channel_id, salt),
        };
        let token_domain = Eip712Domain::new("USD Coin", "2", self.chain.chain_id(), self.token);
        let sig = self
            .key(payer)
            .sign_digest(&auth.digest(&token_domain))
            .unwrap();
        paychan_bindings::convert::erc3009_collector_data(
            U256::ZERO,
            valid_before,
            salt,
            &sig.to_bytes(),
        )
    }

    /// Claim rows (vouchers signed by each channel's payer up to `total`) and the receiver
    /// authorizer's batch signature.
    pub fn claim_rows(&self, claims: &[(Role, ChannelConfig, u128)]) -> (Vec<ClaimRow>, Bytes) {
        let mut rows = Vec::new();
        let mut entries = Vec::new();
        for (payer, config, total) in claims {
            let id = self.domain.channel_id(config);
            let sig = self
                .key(*payer)
                .sign_digest(&self.domain.voucher_digest(id, *total))
                .unwrap();
            rows.push(ClaimRow {
                voucher: ClaimVoucher {
                    channel: *config,
                    max_claimable_amount: *total,
                },
                signature: sig.to_bytes().to_vec().into(),
                total_claimed: *total,
            });
            entries.push(ClaimEntry {
                channel_id: id,
                max_claimable_amount: *total,
                total_claimed: *total,
            });
        }
        let batch = self
            .key(Role::ReceiverAuthorizer)
            .sign_digest(&self.domain.claim_batch_digest(&entries))
            .unwrap();
        (rows, batch.to_bytes().to_vec().into())
    }

    /// The receiver authorizer's `Refund` signature.
    pub fn refund_sig(&self, config: &ChannelConfig, nonce: U256, amount: u128) -> Bytes {
        let id = self.domain.channel_id(config);
        self.key(Role::ReceiverAuthorizer)
            .sign_digest(&self.domain.refund_digest(id, nonce, amount))
            .unwrap()
            .to_bytes()
            .to_vec()
            .into()
    }

    pub async fn balance(&self, who: Address) -> u128 {
        self.chain.token_balance(who).await.unwrap().to::<u128>()
    }

    /// Transactions sent so far by `who` (its mined nonce).
    pub async fn nonce(&self, who: Address) -> u64 {
        self.chain
            .provider()
            .get_transaction_count(who)
            .await
            .unwrap()
    }
}

/// A fresh in-memory store.
pub fn mem() -> MemStore {
    MemStore::new()
}

/// Polls `f` every 20 ms until it returns `Some`, failing after `secs` seconds.
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

/// The journal entry `id` once it is `Sent` with at least `hashes` hashes.
pub async fn sent_with<S: Store>(store: &S, id: u64, hashes: usize) -> (B256, u64, Vec<B256>) {
    eventually("a sent journal entry", 20, || async {
        match store.journal_entry(id).await.unwrap() {
            Some(JournalEntry {
                state:
                    JournalState::Sent {
                        tx_hash,
                        nonce,
                        all_hashes,
                    },
                ..
            }) if all_hashes.len() >= hashes => Some((tx_hash, nonce, all_hashes)),
            _ => None,
        }
    })
    .await
}

pub fn confirmed(e: &JournalEntry) -> (B256, u64, u64) {
    match e.state {
        JournalState::Confirmed {
            tx_hash,
            block,
            gas_used,
        } => (tx_hash, block, gas_used),
        ref other => panic!("journal entry {} is not confirmed: {other:?}", e.id),
    }
}

// ---- a TCP proxy that can die ------------------------------------------------------------------

struct ProxyState {
    target: SocketAddr,
    /// Kill the proxy at the next request containing this string; `true`: forward it first.
    trip: Mutex<Option<(String, bool)>>,
    tripped: AtomicBool,
    /// Set the moment the proxy trips: nothing more goes through, either way.
    dead: AtomicBool,
    tasks: Mutex<Vec<AbortHandle>>,
}

/// A TCP proxy in front of the node. `kill` closes the port and every connection (a dead
/// node: connection refused); `revive` opens the same port again. `trip_on` kills it in the
/// middle of a chosen JSON-RPC call.
pub struct Proxy {
    addr: SocketAddr,
    state: Arc<ProxyState>,
}

impl Proxy {
    pub async fn start(target_url: &str) -> Proxy {
        let target: SocketAddr = target_url
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .parse()
            .unwrap();
        let state = Arc::new(ProxyState {
            target,
            trip: Mutex::new(None),
            tripped: AtomicBool::new(false),
            dead: AtomicBool::new(false),
            tasks: Mutex::new(Vec::new()),
        });
        let addr = listen(state.clone(), "127.0.0.1:0".parse().unwrap()).await;
        Proxy { addr, state }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn revive(&self) {
        listen(self.state.clone(), self.addr).await;
        self.state.dead.store(false, Ordering::SeqCst);
    }

    /// Arms a kill at the next request containing `needle`; `forward`: let the node receive it
    /// (and answer) first, then drop the answer.
    pub fn trip_on(&self, needle: &str, forward: bool) {
        self.state.tripped.store(false, Ordering::SeqCst);
        *self.state.trip.lock().unwrap() = Some((needle.to_owned(), forward));
    }

    pub fn tripped(&self) -> bool {
        self.state.tripped.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        kill(&self.state);
    }
}

fn kill(state: &ProxyState) {
    for t in state.tasks.lock().unwrap().drain(..) {
        t.abort();
    }
}

async fn listen(state: Arc<ProxyState>, at: SocketAddr) -> SocketAddr {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_reuseaddr(true).unwrap();
    socket.bind(at).unwrap();
    let listener = socket.listen(64).unwrap();
    let addr = listener.local_addr().unwrap();
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
                let _ = serve(st2, client).await;
            });
            st.tasks.lock().unwrap().push(h.abort_handle());
        }
    });
    state.tasks.lock().unwrap().push(handle.abort_handle());
    addr
}

async fn serve(state: Arc<ProxyState>, client: TcpStream) -> std::io::Result<()> {
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
                return Ok::<_, std::io::Error>(false);
            }
            let chunk = &buf[..n];
            let trip = {
                let mut t = st.trip.lock().unwrap();
                match &*t {
                    Some((needle, forward))
                        if String::from_utf8_lossy(chunk).contains(needle.as_str()) =>
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
                return Ok::<_, std::io::Error>(());
            }
            if st_down.dead.load(Ordering::SeqCst) {
                // the node's answer goes nowhere
                continue;
            }
            cw.write_all(&buf[..n]).await?;
        }
    });
    {
        let mut tasks = state.tasks.lock().unwrap();
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
