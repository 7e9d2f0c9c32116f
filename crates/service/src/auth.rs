//! Bearer tokens for the surfaces that spend gas or move money (the facilitator's `/verify` and
//! `/settle`, the control plane).
//!
//! The token lives in a file that only its owner may read. On first start the file is created
//! (mode `0600`, its directory `0700` when paychan creates it) with 32 random bytes in hex, so an
//! operator never has to invent one; a client is given the same file. A token file that group or
//! others may read is refused.

use std::{
    io::{self, Read, Write},
    os::unix::fs::{DirBuilderExt, OpenOptionsExt},
    path::{Path, PathBuf},
    sync::Arc,
};

use axum::{
    Router,
    extract::Request,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};

use crate::secret::{self, SecretError};

/// The shortest token accepted from a file (hex characters): 128 bits.
pub const MIN_TOKEN_CHARS: usize = 32;

/// Why a token could not be loaded or created.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The token file is unusable.
    #[error(transparent)]
    Secret(#[from] SecretError),
    /// The token is too short to resist guessing.
    #[error("{path}: the token must be at least {MIN_TOKEN_CHARS} characters")]
    TooShort {
        /// The token file.
        path: String,
    },
    /// The token holds characters that cannot go in an HTTP header.
    #[error("{path}: the token must be printable ASCII without spaces")]
    NotPrintable {
        /// The token file.
        path: String,
    },
    /// Creating the token file failed.
    #[error("creating token file {path}: {error}")]
    Create {
        /// The token file.
        path: String,
        /// What went wrong (in the message, so not also a `source`).
        error: io::Error,
    },
}

/// A bearer token. Its `Debug` never shows the secret.
#[derive(Clone)]
pub struct BearerToken {
    secret: Arc<str>,
    path: Option<PathBuf>,
}

impl std::fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BearerToken")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl BearerToken {
    /// A token from its text (for clients given the token by other means).
    pub fn from_secret(secret: &str) -> Result<Self, AuthError> {
        Self::validated(secret.trim(), "token")
    }

    fn validated(secret: &str, origin: &str) -> Result<Self, AuthError> {
        if secret.len() < MIN_TOKEN_CHARS {
            return Err(AuthError::TooShort {
                path: origin.to_owned(),
            });
        }
        if !secret.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(AuthError::NotPrintable {
                path: origin.to_owned(),
            });
        }
        Ok(Self {
            secret: secret.into(),
            path: None,
        })
    }

    /// Reads the token in `path` (owner-only permissions required).
    pub fn load(path: &Path) -> Result<Self, AuthError> {
        let text = secret::read_secret_file(path)?;
        let mut t = Self::validated(&text, &path.display().to_string())?;
        t.path = Some(path.to_owned());
        Ok(t)
    }

    /// Reads the token in `path`, or creates the file with a new random token if it does not
    /// exist. Another process creating it at the same moment is fine: exactly one file wins and
    /// both read it.
    pub fn load_or_create(path: &Path) -> Result<Self, AuthError> {
        match std::fs::symlink_metadata(path) {
            Ok(_) => return Self::load(path),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(error) => {
                return Err(SecretError::Io {
                    path: path.display().to_string(),
                    error,
                }
                .into());
            }
        }
        let create = |error: io::Error| AuthError::Create {
            path: path.display().to_string(),
            error,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(create)?;
        }
        let token = random_hex(32).map_err(create)?;
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
        {
            Ok(mut f) => {
                f.write_all(format!("{token}\n").as_bytes())
                    .and_then(|()| f.sync_all())
                    .map_err(create)?;
                tracing::info!(target: "paychan_service", path = %path.display(), "created a new bearer token file (mode 0600)");
                Self::load(path)
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Self::load(path),
            Err(e) => Err(create(e)),
        }
    }

    /// The file the token came from, if any.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The token text, to send as `Authorization: Bearer <token>`.
    pub fn secret(&self) -> &str {
        &self.secret
    }

    /// The `Authorization` header value carrying this token.
    pub fn header_value(&self) -> HeaderValue {
        let mut v = HeaderValue::from_str(&format!("Bearer {}", self.secret))
            .unwrap_or_else(|_| HeaderValue::from_static(""));
        v.set_sensitive(true);
        v
    }

    /// Whether `headers` carry this token as `Authorization: Bearer …`, compared in constant time.
    pub fn allows(&self, headers: &HeaderMap) -> bool {
        let Some(given) = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
        else {
            return false;
        };
        constant_time_eq(given.trim().as_bytes(), self.secret.as_bytes())
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn random_hex(bytes: usize) -> io::Result<String> {
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut buf)?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// The answer to a request without the right token: `401` with `WWW-Authenticate: Bearer`, and
/// nothing about what was expected.
pub fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        axum::Json(unauthorized_body()),
    )
        .into_response()
}

fn unauthorized_body() -> std::collections::BTreeMap<&'static str, &'static str> {
    std::collections::BTreeMap::from([
        ("error", "unauthorized"),
        (
            "message",
            "this endpoint needs Authorization: Bearer <token from the server's token file>",
        ),
    ])
}

/// `router` with every route behind `token`: a request without it is answered
/// [`unauthorized`] and never reaches a handler.
pub fn require_bearer(router: Router, token: BearerToken) -> Router {
    router.layer(axum::middleware::from_fn(move |req: Request, next: Next| {
        let token = token.clone();
        async move {
            if token.allows(req.headers()) {
                next.run(req).await
            } else {
                tracing::info!(target: "paychan_service", path = %req.uri().path(), "request without a valid bearer token refused");
                unauthorized()
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn first_start_creates_an_owner_only_token_and_later_starts_read_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sub/dir/token");
        let a = BearerToken::load_or_create(&path).expect("create");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dmode = std::fs::metadata(path.parent().expect("parent"))
            .expect("meta")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(dmode, 0o700);
        assert_eq!(a.secret().len(), 64);
        let b = BearerToken::load_or_create(&path).expect("read");
        assert_eq!(a.secret(), b.secret());
        let other = BearerToken::load_or_create(&dir.path().join("t2")).expect("create");
        assert_ne!(a.secret(), other.secret(), "tokens are random");
        assert!(
            !format!("{a:?}").contains(a.secret()),
            "Debug hides the token"
        );
    }

    #[test]
    fn readable_short_or_odd_token_files_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("token");
        std::fs::write(&path, "x".repeat(40)).expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        assert!(matches!(
            BearerToken::load_or_create(&path),
            Err(AuthError::Secret(SecretError::TooOpen { .. }))
        ));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        std::fs::write(&path, "short").expect("write");
        assert!(matches!(
            BearerToken::load(&path),
            Err(AuthError::TooShort { .. })
        ));
        std::fs::write(&path, format!("{}\u{7f}", "a".repeat(40))).expect("write");
        assert!(matches!(
            BearerToken::load(&path),
            Err(AuthError::NotPrintable { .. })
        ));
    }

    #[test]
    fn only_the_exact_token_is_allowed() {
        let t = BearerToken::from_secret(&"ab".repeat(20)).expect("token");
        let mut h = HeaderMap::new();
        assert!(!t.allows(&h));
        h.insert(header::AUTHORIZATION, t.header_value());
        assert!(t.allows(&h));
        for wrong in [
            format!("Bearer {}", "ab".repeat(19)),
            format!("Bearer {}a", "ab".repeat(20)),
            format!("Basic {}", "ab".repeat(20)),
            format!("Bearer {}", "ba".repeat(20)),
            "Bearer ".to_owned(),
        ] {
            h.insert(
                header::AUTHORIZATION,
                HeaderValue::from_str(&wrong).expect("header"),
            );
            assert!(!t.allows(&h), "{wrong}");
        }
    }
}
