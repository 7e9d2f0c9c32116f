//! [`ControlClient`]: the generated client with the bearer token on every call, and typed
//! helpers for the calls the CLI makes.

use alloy_primitives::B256;
use paychan_service::BearerToken;
use tonic::{
    Request, Status, Streaming,
    metadata::{AsciiMetadataValue, MetadataValue},
    service::{Interceptor, interceptor::InterceptedService},
    transport::{Channel, Endpoint},
};

use crate::{
    Error, Result,
    convert::b256,
    proto::{self, channel_control_client::ChannelControlClient},
};

/// Puts `authorization: Bearer <token>` on every call.
#[derive(Clone)]
pub struct BearerAuth {
    value: AsciiMetadataValue,
}

impl std::fmt::Debug for BearerAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BearerAuth").finish_non_exhaustive()
    }
}

impl BearerAuth {
    /// The interceptor for `token`.
    pub fn new(token: &BearerToken) -> Self {
        // A token is printable ASCII without spaces (checked when it was loaded), so the value
        // is always valid; an empty one would only be refused by the server.
        let mut value = MetadataValue::try_from(format!("Bearer {}", token.secret()))
            .unwrap_or_else(|_| MetadataValue::from_static(""));
        value.set_sensitive(true);
        Self { value }
    }
}

impl Interceptor for BearerAuth {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        request
            .metadata_mut()
            .insert("authorization", self.value.clone());
        Ok(request)
    }
}

/// The generated client, authenticated.
pub type RawClient = ChannelControlClient<InterceptedService<Channel, BearerAuth>>;

/// A control plane client.
#[derive(Debug, Clone)]
pub struct ControlClient {
    inner: RawClient,
}

impl ControlClient {
    /// Connects to the control plane at `addr` (`host:port`, or a `http://` URI) with `token`.
    pub async fn connect(addr: &str, token: &BearerToken) -> Result<Self> {
        let uri = if addr.contains("://") {
            addr.to_owned()
        } else {
            format!("http://{addr}")
        };
        let endpoint = Endpoint::from_shared(uri).map_err(|e| Error::Address {
            addr: addr.to_owned(),
            reason: e.to_string(),
        })?;
        let channel = endpoint.connect().await?;
        Ok(Self::with_channel(channel, token))
    }

    /// Connects over TLS to the control plane at `addr` (`host:port`, or a `https://` URI),
    /// trusting the PEM certificate(s) `ca_pem` (the server's own certificate, if self-signed).
    /// The certificate must name the host of `addr`.
    pub async fn connect_tls(addr: &str, token: &BearerToken, ca_pem: &[u8]) -> Result<Self> {
        let uri = match addr.split_once("://") {
            Some((_, rest)) => format!("https://{rest}"),
            None => format!("https://{addr}"),
        };
        let bad = |reason: String| Error::Address {
            addr: addr.to_owned(),
            reason,
        };
        let tls = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(ca_pem));
        let endpoint = Endpoint::from_shared(uri)
            .map_err(|e| bad(e.to_string()))?
            .tls_config(tls)
            .map_err(|e| bad(e.to_string()))?;
        let channel = endpoint.connect().await?;
        Ok(Self::with_channel(channel, token))
    }

    /// A client over an existing channel.
    pub fn with_channel(channel: Channel, token: &BearerToken) -> Self {
        Self {
            inner: ChannelControlClient::with_interceptor(channel, BearerAuth::new(token)),
        }
    }

    /// The generated client, for calls with every field set by hand.
    pub fn raw(&mut self) -> &mut RawClient {
        &mut self.inner
    }

    /// `ListChannels`.
    pub async fn list_channels(
        &mut self,
        request: proto::ListChannelsRequest,
    ) -> Result<proto::ListChannelsResponse, Status> {
        Ok(self.inner.list_channels(request).await?.into_inner())
    }

    /// `GetChannel` of `id`.
    pub async fn channel(&mut self, id: B256) -> Result<proto::Channel, Status> {
        let r = self
            .inner
            .get_channel(proto::GetChannelRequest {
                channel_id: b256(&id),
            })
            .await?
            .into_inner();
        r.channel
            .ok_or_else(|| Status::internal("GetChannel answered without a channel"))
    }

    /// `WatchEvents`: every event after `after_sequence` of `stream_id` (when resuming), or only
    /// new ones (`None`).
    pub async fn watch(
        &mut self,
        after_sequence: Option<u64>,
        stream_id: &str,
    ) -> Result<Streaming<proto::ChannelEvent>, Status> {
        Ok(self
            .inner
            .watch_events(proto::WatchEventsRequest {
                after_sequence,
                stream_id: stream_id.to_owned(),
                channel_ids: Vec::new(),
            })
            .await?
            .into_inner())
    }

    /// `ClaimNow` of `ids`, or of every channel with unclaimed charges when `ids` is empty.
    pub async fn claim(&mut self, ids: &[B256]) -> Result<proto::RoundReport, Status> {
        let r = self
            .inner
            .claim_now(proto::ClaimNowRequest {
                channel_ids: ids.iter().map(b256).collect(),
                all: ids.is_empty(),
            })
            .await?
            .into_inner();
        r.report
            .ok_or_else(|| Status::internal("ClaimNow answered without a report"))
    }

    /// `SettleNow`.
    pub async fn settle(&mut self) -> Result<proto::RoundReport, Status> {
        let r = self
            .inner
            .settle_now(proto::SettleNowRequest {})
            .await?
            .into_inner();
        r.report
            .ok_or_else(|| Status::internal("SettleNow answered without a report"))
    }

    /// `RefundChannel` of `id`.
    pub async fn refund(&mut self, id: B256) -> Result<proto::RefundChannelResponse, Status> {
        Ok(self
            .inner
            .refund_channel(proto::RefundChannelRequest {
                channel_id: b256(&id),
            })
            .await?
            .into_inner())
    }

    /// `GetStats`.
    pub async fn stats(&mut self) -> Result<proto::GetStatsResponse, Status> {
        Ok(self
            .inner
            .get_stats(proto::GetStatsRequest {})
            .await?
            .into_inner())
    }

    /// `Health`.
    pub async fn health(&mut self) -> Result<proto::HealthResponse, Status> {
        Ok(self
            .inner
            .health(proto::HealthRequest {})
            .await?
            .into_inner())
    }
}
