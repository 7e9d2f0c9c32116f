//! The settler's errors.

/// Errors of the settlement scheduler.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The policy or configuration is unusable.
    #[error("invalid settlement policy: {0}")]
    Policy(String),

    /// The chain adapter failed (RPC, relayer, journal).
    #[error(transparent)]
    Chain(#[from] paychan_chain::Error),

    /// The store failed.
    #[error(transparent)]
    Store(#[from] paychan_store::Error),

    /// Signing a claim batch failed (never contains key material).
    #[error("signing a claim batch failed: {0}")]
    Sign(String),

    /// A task of the settler panicked or was cancelled.
    #[error("settler task failed: {0}")]
    Task(String),
}

/// `Result` with the settler's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Whether the chain could not be reached (the next round retries).
    pub fn is_transport(&self) -> bool {
        matches!(self, Error::Chain(e) if e.is_transport())
    }
}
