//! The control plane in the server process: `paychan serve` and `paychan dev` start it beside
//! the paid port, over the same engine and settlement scheduler.

use std::{net::SocketAddr, path::PathBuf};

use alloy_primitives::Address;
use anyhow::{Context, Result};
use paychan_chain::ChainReader;
use paychan_control::{ControlConfig, ControlPlane};
use paychan_engine::{Engine, PaymentFacilitator, SystemClock};
use paychan_service::BearerToken;
use paychan_settle::Settler;
use paychan_store::SledStore;
use tokio::{sync::oneshot, task::JoinHandle};

use crate::config::ControlSettings;

/// A control plane serving in the background.
pub(crate) struct Running {
    /// Where it listens.
    pub(crate) addr: SocketAddr,
    /// The bearer token file callers present.
    pub(crate) token_file: PathBuf,
    stop: oneshot::Sender<()>,
    task: JoinHandle<paychan_control::Result<()>>,
}

impl Running {
    /// Stops it (open `WatchEvents` streams end `UNAVAILABLE`) and waits for it.
    pub(crate) async fn stop(self) {
        let _ = self.stop.send(());
        match self.task.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::error!(target: "paychan", error = %e, "the control plane failed")
            }
            Err(e) => {
                tracing::error!(target: "paychan", error = %e, "the control plane task failed")
            }
        }
    }
}

/// Starts the control plane of `engine` (and `settler`, which enables claim, settle and refund)
/// on `settings.listen`, creating the token file (owner-only) on first start. Settles of
/// `receivers` are reported on the event stream.
pub(crate) async fn start<F: PaymentFacilitator>(
    settings: &ControlSettings,
    engine: Engine<SledStore, ChainReader, F>,
    settler: Option<Settler<SledStore, ChainReader, F, SystemClock>>,
    receivers: Vec<Address>,
) -> Result<Running> {
    let token_file = settings.token_file.clone();
    if let Some(dir) = token_file.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let token = BearerToken::load_or_create(&token_file)
        .with_context(|| format!("the control token file {}", token_file.display()))?;
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("binding the control plane {}", settings.listen))?;
    let addr = listener.local_addr()?;
    if settler.is_none() {
        tracing::info!(target: "paychan", "no settlement scheduler: the control plane cannot claim, settle or refund");
    }
    let plane = ControlPlane::new(
        engine,
        settler,
        ControlConfig {
            receivers,
            ..ControlConfig::default()
        },
    );
    let limits = paychan_service::Limits {
        tls: match &settings.tls {
            Some((cert, key)) => Some(
                paychan_service::Tls::from_pem_files(cert, key)
                    .context("the control plane's TLS")?,
            ),
            None => None,
        },
        ..paychan_service::Limits::default()
    };
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(paychan_control::serve_with(
        listener,
        plane,
        token,
        limits,
        async move {
            let _ = stopped.await;
        },
    ));
    Ok(Running {
        addr,
        token_file,
        stop,
        task,
    })
}

/// Where a started server listens, once it does.
#[derive(Debug, Clone)]
pub(crate) struct Serving {
    /// The paid port.
    pub(crate) addr: SocketAddr,
    /// The operator listener (`/metrics`, `/health`), if on.
    pub(crate) operator_addr: Option<SocketAddr>,
    /// The gRPC control plane, if on.
    pub(crate) grpc_addr: Option<SocketAddr>,
    /// Its bearer token file.
    pub(crate) grpc_token_file: Option<PathBuf>,
}
