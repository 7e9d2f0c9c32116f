//! Finding, starting and reaping anvil.

use std::{
    io::{BufRead, BufReader},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

/// Environment variable naming the anvil binary to use instead of the pinned npm one.
pub const ANVIL_ENV: &str = "PAYCHAN_ANVIL";

/// How long anvil may take to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// Errors finding or running anvil.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// No anvil binary.
    #[error(
        "anvil not found: set {ANVIL_ENV} or run `npm ci` at the repository root \
         (looked for {0})"
    )]
    NotFound(String),
    /// Spawning failed.
    #[error("could not start anvil at {path}: {source}")]
    Spawn {
        /// The binary.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// anvil exited or said nothing usable before listening.
    #[error("anvil did not start: {0}")]
    NotListening(String),
}

/// The npm package directory holding the native anvil for this platform.
fn npm_binary_rel() -> Option<PathBuf> {
    let os = match std::env::consts::OS {
        "linux" => "linux",
        "macos" => "darwin",
        _ => return None,
    };
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        _ => return None,
    };
    Some(PathBuf::from(format!(
        "node_modules/@foundry-rs/anvil-{os}-{arch}/bin/anvil"
    )))
}

/// Locates anvil: `$PAYCHAN_ANVIL`, else the native binary of the pinned npm package in the
/// nearest `node_modules` above the current directory or this crate. The native binary is used,
/// not the `node_modules/.bin` wrapper, so that killing the process kills anvil itself.
pub fn find_anvil() -> Result<PathBuf, ProcessError> {
    if let Some(p) = std::env::var_os(ANVIL_ENV) {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(ProcessError::NotFound(p.display().to_string()))
        };
    }
    let rel =
        npm_binary_rel().ok_or_else(|| ProcessError::NotFound("a supported platform".into()))?;
    let starts = [
        std::env::current_dir().ok(),
        Some(PathBuf::from(env!("CARGO_MANIFEST_DIR"))),
    ];
    for start in starts.into_iter().flatten() {
        for dir in start.ancestors() {
            let candidate = dir.join(&rel);
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    Err(ProcessError::NotFound(rel.display().to_string()))
}

/// A running anvil. Dropping it kills anvil and waits for it.
pub struct AnvilProcess {
    child: Child,
    watchdog: Option<(Child, ChildStdin)>,
    rpc_url: String,
    port: u16,
    /// The last lines anvil printed, for diagnostics.
    log: Arc<Mutex<Vec<String>>>,
}

impl std::fmt::Debug for AnvilProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AnvilProcess")
            .field("pid", &self.child.id())
            .field("rpc_url", &self.rpc_url)
            .finish()
    }
}

/// Lines of anvil output kept for diagnostics.
const LOG_LINES: usize = 200;

impl AnvilProcess {
    /// Starts `binary` listening on 127.0.0.1:`port` (0 picks a free port) with extra `args`, and
    /// waits until it accepts connections.
    pub async fn spawn(binary: &Path, port: u16, args: &[String]) -> Result<Self, ProcessError> {
        let mut child = Command::new(binary)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group: a terminal's Ctrl-C reaches the program that owns the chain,
            // which may still need it while shutting down (a last settlement), not anvil itself.
            // Anvil dies with its owner: `Drop`, or the watchdog below.
            .process_group(0)
            .spawn()
            .map_err(|source| ProcessError::Spawn {
                path: binary.display().to_string(),
                source,
            })?;
        let watchdog = spawn_watchdog(child.id());
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = tokio::sync::oneshot::channel::<Result<u16, String>>();
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let log_out = log.clone();
        // Drain stdout for anvil's whole life (it logs every transaction; a full pipe would
        // stall it), announcing the port when it appears.
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            if let Some(out) = stdout {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    if let Some(rest) = line.strip_prefix("Listening on ") {
                        let port = rest
                            .rsplit(':')
                            .next()
                            .and_then(|p| p.trim().parse::<u16>().ok());
                        if let (Some(tx), Some(port)) = (tx.take(), port) {
                            let _ = tx.send(Ok(port));
                        }
                    }
                    push_log(&log_out, line);
                }
            }
            if let Some(tx) = tx.take() {
                let _ = tx.send(Err("anvil exited before listening".into()));
            }
        });
        let log_err = log.clone();
        std::thread::spawn(move || {
            if let Some(err) = stderr {
                for line in BufReader::new(err).lines().map_while(Result::ok) {
                    push_log(&log_err, line);
                }
            }
        });
        let mut me = Self {
            child,
            watchdog,
            rpc_url: String::new(),
            port: 0,
            log,
        };
        match tokio::time::timeout(START_TIMEOUT, rx).await {
            Ok(Ok(Ok(port))) => {
                me.port = port;
                me.rpc_url = format!("http://127.0.0.1:{port}");
                Ok(me)
            }
            Ok(Ok(Err(e))) => Err(ProcessError::NotListening(format!(
                "{e}; output: {}",
                me.recent_output()
            ))),
            Ok(Err(_)) => Err(ProcessError::NotListening(format!(
                "output: {}",
                me.recent_output()
            ))),
            Err(_) => Err(ProcessError::NotListening(format!(
                "not listening after {START_TIMEOUT:?}; output: {}",
                me.recent_output()
            ))),
        }
    }

    /// The JSON-RPC URL.
    pub fn rpc_url(&self) -> &str {
        &self.rpc_url
    }

    /// The port anvil listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// anvil's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The last lines anvil printed.
    pub fn recent_output(&self) -> String {
        self.log.lock().map(|l| l.join("\n")).unwrap_or_default()
    }

    /// Kills anvil and waits for it (idempotent).
    pub fn kill(&mut self) {
        if let Some((mut w, stdin)) = self.watchdog.take() {
            // Stop the watchdog first so it can never signal a recycled pid.
            let _ = w.kill();
            let _ = w.wait();
            drop(stdin);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Whether anvil is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for AnvilProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

fn push_log(log: &Mutex<Vec<String>>, line: String) {
    if let Ok(mut l) = log.lock() {
        if l.len() >= LOG_LINES {
            l.remove(0);
        }
        l.push(line);
    }
}

/// A `sh` that holds a pipe from this process and kills anvil when the pipe closes, which happens
/// when this process dies by any means, including SIGKILL. Best effort: without `sh` the
/// `Drop` impl still reaps anvil on every normal exit and panic.
fn spawn_watchdog(pid: u32) -> Option<(Child, ChildStdin)> {
    let mut w = Command::new("sh")
        .args([
            "-c",
            "read _ignored; kill -9 \"$1\" 2>/dev/null",
            "paychan-anvil-watchdog",
            &pid.to_string(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        // out of the terminal's process group too, so that Ctrl-C does not end it before it acts
        .process_group(0)
        .spawn()
        .ok()?;
    let stdin = w.stdin.take()?;
    Some((w, stdin))
}
