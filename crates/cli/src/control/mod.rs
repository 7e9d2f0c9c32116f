//! The operator's and the payer's commands:
//!
//! | module | what |
//! | --- | --- |
//! | this file | `paychan channel …` and `paychan stats`: clients of the gRPC control plane; exit codes |
//! | [`payer`] | `paychan payer …`: a payer's own channel transactions, on chain |
//! | [`output`] | tables for people, JSON for scripts |
//! | [`serve`] | the control plane started inside `paychan serve` and `paychan dev` |
//! | [`dev`] | `paychan dev`'s funded payer keys and `--info-file` |
//!
//! Settings come from the server's config file (`--config`), then the environment, then flags,
//! each overriding the one before.

pub(crate) mod dev;
pub(crate) mod output;
pub(crate) mod payer;
pub(crate) mod serve;

use std::{path::PathBuf, time::Duration};

use clap::{Args, Subcommand, ValueEnum};
use futures_util::StreamExt;
use paychan_control::{ControlClient, proto};
use paychan_service::BearerToken;
use tonic::Code;

use crate::config::DEFAULT_CONTROL_LISTEN;

/// What the exit codes mean, shown in `--help`.
pub(crate) const EXIT_CODES: &str = "\
Exit codes:
  0  done
  1  any other failure
  2  bad command line (usage)
  3  the server or chain could not be reached (UNAVAILABLE, connection refused)
  4  not authorized: no or wrong token, unreadable token or key file (UNAUTHENTICATED)
  5  a value was refused (INVALID_ARGUMENT, OUT_OF_RANGE)
  6  no such channel (NOT_FOUND)
  7  cannot be done now: nothing to refund, no settlement scheduler, a transaction the escrow \
would refuse (FAILED_PRECONDITION)
  8  a transaction was sent but not confirmed in time, or reverted (DEADLINE_EXCEEDED, ABORTED)
  9  a claim or settle round finished but left something undone (see its report)";

/// A failure with the exit code scripts see.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) code: i32,
    pub(crate) message: String,
}

impl Failure {
    pub(crate) fn new(code: i32, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Self::new(1, format!("{e:#}"))
    }
}

impl From<tonic::Status> for Failure {
    fn from(s: tonic::Status) -> Self {
        let code = match s.code() {
            Code::Unavailable => 3,
            Code::Unauthenticated | Code::PermissionDenied => 4,
            Code::InvalidArgument | Code::OutOfRange => 5,
            Code::NotFound => 6,
            Code::FailedPrecondition => 7,
            Code::DeadlineExceeded | Code::Aborted => 8,
            _ => 1,
        };
        Self::new(code, format!("{:?}: {}", s.code(), s.message()))
    }
}

/// `Result` of a command.
pub(crate) type Outcome<T = ()> = Result<T, Failure>;

/// Prints `r`'s failure and exits with its code.
pub(crate) fn exit(r: Outcome) -> ! {
    match r {
        Ok(()) => std::process::exit(0),
        Err(f) => {
            eprintln!("paychan: {}", f.message);
            std::process::exit(f.code)
        }
    }
}

/// Where the control plane is and how to authenticate.
#[derive(Args, Debug, Clone)]
pub(crate) struct Conn {
    /// The server's configuration file: its `[control]` listen address and token file (default
    /// `<data_dir>/control.token`) are used unless given otherwise.
    #[arg(
        long,
        short,
        global = true,
        env = "PAYCHAN_CONFIG",
        value_name = "PATH"
    )]
    pub(crate) config: Option<PathBuf>,
    /// The control plane's address, `host:port` (default: the config file's, else
    /// 127.0.0.1:9403).
    #[arg(
        long,
        global = true,
        env = "PAYCHAN_GRPC_ADDR",
        value_name = "HOST:PORT"
    )]
    pub(crate) grpc_addr: Option<String>,
    /// The file holding the control plane's bearer token (default: the config file's).
    #[arg(
        long,
        global = true,
        env = "PAYCHAN_GRPC_TOKEN_FILE",
        value_name = "PATH"
    )]
    pub(crate) token_file: Option<PathBuf>,
    /// Connect over TLS, trusting this PEM certificate (the server's own, or its CA's).
    /// Default: the config file's `control.tls_cert_file`, if it has one; else plaintext.
    #[arg(long, global = true, env = "PAYCHAN_GRPC_CA_FILE", value_name = "PATH")]
    pub(crate) grpc_ca_file: Option<PathBuf>,
    /// Print JSON (one object; `channel watch`: one object a line) instead of tables.
    #[arg(long, global = true)]
    pub(crate) json: bool,
}

impl Conn {
    /// The address, token file and TLS trust anchor: flags and environment first, then the
    /// config file, then defaults.
    fn resolve(&self) -> Outcome<(String, PathBuf, Option<PathBuf>)> {
        let from_file = match &self.config {
            Some(p) => Some(crate::config::control_of(p).map_err(Failure::from)?),
            None => None,
        };
        let addr = self
            .grpc_addr
            .clone()
            .or_else(|| {
                from_file
                    .as_ref()
                    .and_then(|c| c.as_ref().map(|c| c.listen.to_string()))
            })
            .unwrap_or_else(|| DEFAULT_CONTROL_LISTEN.to_owned());
        let token_file = match (&self.token_file, &from_file) {
            (Some(t), _) => t.clone(),
            (None, Some(Some(c))) => c.token_file.clone(),
            (None, Some(None)) => {
                return Err(Failure::new(
                    5,
                    "the config file turns the control plane off ([control] listen = \"off\")",
                ));
            }
            (None, None) => {
                return Err(Failure::new(
                    2,
                    "which token? pass --token-file (or PAYCHAN_GRPC_TOKEN_FILE), or --config with the server's configuration",
                ));
            }
        };
        let ca = self.grpc_ca_file.clone().or_else(|| {
            from_file
                .as_ref()
                .and_then(|c| c.as_ref().and_then(|c| c.tls.as_ref().map(|t| t.0.clone())))
        });
        Ok((addr, token_file, ca))
    }

    /// A connected, authenticated client.
    pub(crate) async fn client(&self) -> Outcome<ControlClient> {
        let (addr, token_file, ca) = self.resolve()?;
        let token = BearerToken::load(&token_file).map_err(|e| {
            Failure::new(4, format!("the token file {}: {e}", token_file.display()))
        })?;
        let connected = match &ca {
            Some(ca) => {
                let pem = std::fs::read(ca).map_err(|e| {
                    Failure::new(2, format!("the certificate file {}: {e}", ca.display()))
                })?;
                ControlClient::connect_tls(&addr, &token, &pem).await
            }
            None => ControlClient::connect(&addr, &token).await,
        };
        connected.map_err(|e| Failure::new(3, format!("{e} (is the server running at {addr}?)")))
    }
}

/// `paychan channel …`.
#[derive(Args, Debug)]
#[command(after_long_help = EXIT_CODES)]
pub(crate) struct ChannelArgs {
    #[command(flatten)]
    pub(crate) conn: Conn,
    #[command(subcommand)]
    pub(crate) command: ChannelCommand,
}

/// A channel state, for `--state`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum StateArg {
    /// A balance and no pending timed withdrawal.
    Open,
    /// The payer started a timed withdrawal.
    Withdrawing,
    /// No balance left.
    Empty,
}

impl From<StateArg> for proto::ChannelState {
    fn from(s: StateArg) -> Self {
        match s {
            StateArg::Open => Self::Open,
            StateArg::Withdrawing => Self::Withdrawing,
            StateArg::Empty => Self::Empty,
        }
    }
}

#[derive(Subcommand, Debug)]
pub(crate) enum ChannelCommand {
    /// Channels in the server's store, in channel-id order.
    List {
        /// Only channels of this payer (an address).
        #[arg(long, value_name = "ADDRESS")]
        payer: Option<String>,
        /// Only channels in this state.
        #[arg(long, value_enum)]
        state: Option<StateArg>,
        /// Only channels with more than this unclaimed (atomic units).
        #[arg(long, value_name = "AMOUNT")]
        unclaimed_above: Option<String>,
        /// Channels per page (1 to 1000; the server's default is 100).
        #[arg(long, value_name = "N")]
        page_size: Option<u32>,
        /// Start at this page (a `next_page_token` printed before) and print one page only.
        #[arg(long, value_name = "TOKEN", conflicts_with = "all_pages")]
        page_token: Option<String>,
        /// Follow every page to the end (default: the first page only).
        #[arg(long)]
        all_pages: bool,
    },
    /// One channel: balance, charged, claimed, last voucher, withdrawal.
    Show {
        /// The channel id (0x and 64 hex digits).
        channel_id: String,
    },
    /// Channel events as they happen (charged, claimed, settled, refunded, withdrawals…), until
    /// interrupted or --count events.
    Watch {
        /// Resume: every event after this sequence number (0: all the server still holds).
        #[arg(long, value_name = "SEQ")]
        after: Option<u64>,
        /// The stream id the events before were of (printed with every event); a resume against
        /// a restarted server then fails (exit 5) instead of replaying other events.
        #[arg(long, value_name = "ID", requires = "after")]
        stream_id: Option<String>,
        /// Only events of this channel; repeat for several (settles are always shown).
        #[arg(long = "channel", value_name = "CHANNEL_ID")]
        channels: Vec<String>,
        /// Stop after this many events.
        #[arg(long, value_name = "N")]
        count: Option<u64>,
    },
    /// Claim the latest vouchers on chain now: of the channels named, or of every channel with
    /// unclaimed charges (--all). Waits for confirmation.
    Claim {
        /// Channel ids to claim.
        #[arg(value_name = "CHANNEL_ID", required_unless_present = "all")]
        channel_ids: Vec<String>,
        /// Every channel with unclaimed charges.
        #[arg(long, conflicts_with = "channel_ids")]
        all: bool,
    },
    /// Sweep claimed funds to the receiver on chain now. Waits for confirmation.
    Settle,
    /// Cooperative close: claim everything charged and refund the rest of the balance to the
    /// payer, in one transaction. Waits for confirmation.
    Refund {
        /// The channel id.
        channel_id: String,
    },
}

/// `paychan stats`.
#[derive(Args, Debug)]
#[command(after_long_help = EXIT_CODES)]
pub(crate) struct StatsArgs {
    #[command(flatten)]
    pub(crate) conn: Conn,
}

/// Runs `paychan channel …`.
pub(crate) async fn channel(a: ChannelArgs) -> Outcome {
    let json = a.conn.json;
    let mut c = a.conn.client().await?;
    match a.command {
        ChannelCommand::List {
            payer,
            state,
            unclaimed_above,
            page_size,
            page_token,
            all_pages,
        } => {
            let mut req = proto::ListChannelsRequest {
                payer: payer.unwrap_or_default(),
                state: state
                    .map_or(proto::ChannelState::Unspecified, Into::into)
                    .into(),
                unclaimed_above: unclaimed_above.unwrap_or_default(),
                page_size: page_size.unwrap_or(0),
                page_token: page_token.unwrap_or_default(),
            };
            let mut channels = Vec::new();
            let next = loop {
                let page = c.list_channels(req.clone()).await?;
                channels.extend(page.channels);
                if !all_pages || page.next_page_token.is_empty() {
                    break page.next_page_token;
                }
                req.page_token = page.next_page_token;
            };
            let page = proto::ListChannelsResponse {
                channels,
                next_page_token: next,
            };
            output::list(&page, json);
        }
        ChannelCommand::Show { channel_id } => {
            let r = c
                .raw()
                .get_channel(proto::GetChannelRequest { channel_id })
                .await?
                .into_inner();
            let ch = r
                .channel
                .ok_or_else(|| Failure::new(1, "the server answered without a channel"))?;
            output::channel(&ch, json);
        }
        ChannelCommand::Watch {
            after,
            stream_id,
            channels,
            count,
        } => watch(&mut c, after, stream_id, channels, count, json).await?,
        ChannelCommand::Claim { channel_ids, all } => {
            let req = proto::ClaimNowRequest { channel_ids, all };
            let what = if all {
                "claiming every channel with unclaimed charges".to_owned()
            } else {
                format!("claiming {} channel(s)", req.channel_ids.len())
            };
            let r = waiting(&what, c.raw().claim_now(req)).await?.into_inner();
            let report = r
                .report
                .ok_or_else(|| Failure::new(1, "the server answered without a report"))?;
            output::report(&report, json);
            if !report.clean {
                return Err(Failure::new(9, "the claim round left something undone"));
            }
        }
        ChannelCommand::Settle => {
            let r = waiting(
                "settling claimed funds to the receiver",
                c.raw().settle_now(proto::SettleNowRequest {}),
            )
            .await?
            .into_inner();
            let report = r
                .report
                .ok_or_else(|| Failure::new(1, "the server answered without a report"))?;
            output::report(&report, json);
            if !report.clean {
                return Err(Failure::new(9, "the settle round left something undone"));
            }
        }
        ChannelCommand::Refund { channel_id } => {
            let r = waiting(
                "refunding (claim what was charged, return the rest)",
                c.raw()
                    .refund_channel(proto::RefundChannelRequest { channel_id }),
            )
            .await?
            .into_inner();
            output::refund(&r, json);
        }
    }
    Ok(())
}

/// Runs `paychan stats`.
pub(crate) async fn stats(a: StatsArgs) -> Outcome {
    let mut c = a.conn.client().await?;
    let s = c.stats().await?;
    let h = c.health().await?;
    output::stats(&s, &h, a.conn.json);
    Ok(())
}

async fn watch(
    c: &mut ControlClient,
    after: Option<u64>,
    stream_id: Option<String>,
    channels: Vec<String>,
    count: Option<u64>,
    json: bool,
) -> Outcome {
    let mut stream = c
        .raw()
        .watch_events(proto::WatchEventsRequest {
            after_sequence: after,
            stream_id: stream_id.unwrap_or_default(),
            channel_ids: channels,
        })
        .await?
        .into_inner();
    let mut seen = 0u64;
    if count == Some(0) {
        return Ok(());
    }
    while let Some(item) = stream.next().await {
        let ev = item?;
        output::event(&ev, json);
        seen += 1;
        if count.is_some_and(|n| seen >= n) {
            return Ok(());
        }
    }
    Err(Failure::new(3, "the server ended the event stream"))
}

/// Runs `call`, telling stderr every few seconds that it is still waiting for the chain.
pub(crate) async fn waiting<T>(what: &str, call: impl std::future::Future<Output = T>) -> T {
    eprintln!("{what}: waiting for the chain to confirm…");
    let started = std::time::Instant::now();
    let mut call = std::pin::pin!(call);
    let mut tick = tokio::time::interval(Duration::from_secs(3));
    tick.tick().await;
    loop {
        tokio::select! {
            r = &mut call => {
                eprintln!("{what}: done in {:.1?}", started.elapsed());
                return r;
            }
            _ = tick.tick() => eprintln!("{what}: still waiting ({}s)", started.elapsed().as_secs()),
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn statuses_map_to_the_documented_exit_codes() {
        for (code, want) in [
            (Code::Unavailable, 3),
            (Code::Unauthenticated, 4),
            (Code::PermissionDenied, 4),
            (Code::InvalidArgument, 5),
            (Code::OutOfRange, 5),
            (Code::NotFound, 6),
            (Code::FailedPrecondition, 7),
            (Code::DeadlineExceeded, 8),
            (Code::Aborted, 8),
            (Code::Internal, 1),
            (Code::Unknown, 1),
        ] {
            let f = Failure::from(tonic::Status::new(code, "why"));
            assert_eq!(f.code, want, "{code:?}");
            assert!(f.message.ends_with(": why"), "{}", f.message);
            assert!(
                EXIT_CODES.contains(&format!("\n  {want}  ")),
                "{want} is documented"
            );
        }
    }

    /// Every argument of every command, recursively, has a help text.
    fn all_documented(cmd: &clap::Command, path: &str) {
        for a in cmd.get_arguments() {
            let id = a.get_id().as_str();
            if a.is_hide_set() || id == "help" || id == "version" {
                continue;
            }
            assert!(a.get_help().is_some(), "{path} {id} has no --help text");
        }
        for sub in cmd.get_subcommands() {
            assert!(
                sub.get_about().is_some(),
                "{path} {} has no about",
                sub.get_name()
            );
            all_documented(sub, &format!("{path} {}", sub.get_name()));
        }
    }

    #[test]
    fn the_command_line_is_consistent_and_every_flag_is_documented() {
        let cli = crate::Cli::command();
        cli.clone().debug_assert();
        for name in ["channel", "stats", "payer", "dev"] {
            let sub = cli
                .find_subcommand(name)
                .unwrap_or_else(|| panic!("{name}"));
            all_documented(sub, name);
        }
    }
}
