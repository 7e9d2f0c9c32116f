//! The request target, parsed once, and routing that fails closed.
//!
//! Every request on the paid port goes through [`normalize`] before anything else looks at it:
//! route matching, the upstream URL and the proxied request all use the one path it returns. A
//! target that two programs could read as two different paths is refused with `400` instead of
//! being cleaned up, because "cleaning up" is exactly where a paid route and an upstream disagree:
//!
//! | refused | why |
//! | --- | --- |
//! | absolute-form (`POST http://host/…`), authority-form (`CONNECT host:port`), asterisk-form (`OPTIONS *`), a path not starting with `/` | the target names a host or no path: a proxy's job, never ours |
//! | an empty segment (`//`) | upstreams merge slashes, URL joins treat `//x` as a host |
//! | a `.` or `..` segment, raw or percent-encoded (`%2e`, `.%2E`, …) | upstreams and URL libraries resolve them |
//! | `%2F` `%5C` (encoded `/` `\`), a raw `\` | some upstreams decode or convert them into separators |
//! | `%00` and control characters, raw or encoded | C strings and logs end or split there |
//! | `%25` (an encoded `%`) | a second decoding would reopen every rule above |
//! | `;`, raw or encoded | path parameters: some frameworks drop `;…` from a segment |
//! | percent-encoded non-ASCII bytes | Unicode normalisation can turn them into `/` or `.` |
//! | a malformed percent escape | every decoder reads it differently |
//!
//! What is left is normalised: escapes of unreserved characters (`A-Z a-z 0-9 - . _ ~`) are
//! decoded, other escapes get upper-case hex. Then routing fails closed ([`Routes::decide`]): a
//! paid route (method and path) is paid, a configured free route is free, a paid path with another
//! method is `405`, and everything else is `404`: nothing reaches the upstream unpaid unless the
//! configuration says so.

use axum::http::{Method, Uri, Version};

/// Why a request target was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    /// Not origin-form (`/path?query`).
    #[error("the request target must be a path starting with / (origin-form)")]
    NotOriginForm,
    /// `//` in the path.
    #[error("empty path segment (//)")]
    EmptySegment,
    /// A `.` or `..` segment.
    #[error("dot segment (. or ..) in the path")]
    DotSegment,
    /// `%2F`, `%5C` or a raw `\`.
    #[error("encoded or backslash path separator")]
    Separator,
    /// NUL or another control character.
    #[error("control character in the path")]
    Control,
    /// `%25`.
    #[error("encoded percent sign (%25) in the path")]
    EncodedPercent,
    /// `;`.
    #[error("path parameter (;) in the path")]
    PathParameter,
    /// A percent-encoded byte above 0x7f.
    #[error("percent-encoded non-ASCII byte in the path")]
    NonAscii,
    /// `%` not followed by two hex digits.
    #[error("malformed percent escape in the path")]
    BadEscape,
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// One segment, normalised (unreserved escapes decoded, the rest upper-case), appended to `out`.
fn push_segment(seg: &str, out: &mut String) -> Result<(), TargetError> {
    let start = out.len();
    let bytes = seg.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let (Some(hi), Some(lo)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            ) else {
                return Err(TargetError::BadEscape);
            };
            let d = hi * 16 + lo;
            match d {
                b'/' | b'\\' => return Err(TargetError::Separator),
                b'%' => return Err(TargetError::EncodedPercent),
                b';' => return Err(TargetError::PathParameter),
                0..=0x1f | 0x7f => return Err(TargetError::Control),
                0x80..=0xff => return Err(TargetError::NonAscii),
                d if is_unreserved(d) => out.push(char::from(d)),
                d => {
                    out.push('%');
                    out.push_str(&format!("{d:02X}"));
                }
            }
            i += 3;
            continue;
        }
        match b {
            b'\\' => return Err(TargetError::Separator),
            b';' => return Err(TargetError::PathParameter),
            0..=0x1f | 0x7f => return Err(TargetError::Control),
            0x80..=0xff => return Err(TargetError::NonAscii),
            _ => out.push(char::from(b)),
        }
        i += 1;
    }
    if matches!(&out[start..], "." | "..") {
        return Err(TargetError::DotSegment);
    }
    Ok(())
}

/// The normalised path of a raw path (no query), or why it is refused.
pub fn normalize_path(raw: &str) -> Result<String, TargetError> {
    let Some(rest) = raw.strip_prefix('/') else {
        return Err(TargetError::NotOriginForm);
    };
    let mut out = String::with_capacity(raw.len());
    let mut segments = rest.split('/').peekable();
    while let Some(seg) = segments.next() {
        // An empty last segment is a trailing slash (or the root); anywhere else it is `//`.
        if seg.is_empty() && segments.peek().is_some() {
            return Err(TargetError::EmptySegment);
        }
        out.push('/');
        push_segment(seg, &mut out)?;
    }
    Ok(out)
}

/// The request target as one normalised `path?query`, or why it is refused.
///
/// HTTP/1 requests must be origin-form. HTTP/2 requests carry scheme and authority as
/// pseudo-headers, so only their path is judged; `CONNECT` is refused on every version.
pub fn normalize(method: &Method, version: Version, uri: &Uri) -> Result<String, TargetError> {
    if *method == Method::CONNECT {
        return Err(TargetError::NotOriginForm);
    }
    let h1 = version < Version::HTTP_2;
    if h1 && (uri.scheme().is_some() || uri.authority().is_some()) {
        return Err(TargetError::NotOriginForm);
    }
    let path = normalize_path(uri.path())?;
    Ok(match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path,
    })
}

/// A route pattern: a method (any when `None`) and a path; a trailing `*` makes it a prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutePattern {
    /// The method, or any.
    pub method: Option<Method>,
    /// The path, normalised; `*` at the end matches any rest.
    pub path: String,
}

impl RoutePattern {
    /// A pattern, refusing a path that [`normalize_path`] would not leave as it is (it could
    /// never match a request).
    pub fn new(method: Option<Method>, path: &str) -> Result<Self, TargetError> {
        let body = path.strip_suffix('*').unwrap_or(path);
        // A prefix may end anywhere in a segment ("/v1/chat*"); judge it as a whole path.
        let judged = normalize_path(body)?;
        if judged != body {
            return Err(TargetError::BadEscape);
        }
        Ok(Self {
            method,
            path: path.to_owned(),
        })
    }

    /// Whether `path` (normalised, no query) matches, ignoring the method.
    pub fn path_matches(&self, path: &str) -> bool {
        match self.path.strip_suffix('*') {
            Some(prefix) => path.starts_with(prefix),
            None => path == self.path,
        }
    }

    /// Whether `method` and `path` match.
    pub fn matches(&self, method: &Method, path: &str) -> bool {
        self.method.as_ref().is_none_or(|m| m == method) && self.path_matches(path)
    }
}

/// What routing decided for a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Paid: the index of the paid route.
    Paid(usize),
    /// Free: a configured free route.
    Free,
    /// A paid path with another method: `405` with these methods allowed.
    WrongMethod(Vec<Method>),
    /// No route: `404`.
    NotFound,
}

/// Decides a request by its method and normalised path: paid routes first (in order), then free
/// routes, then `405` for a paid path with another method, else `404`.
pub fn decide<'a>(
    paid: impl Iterator<Item = &'a RoutePattern> + Clone,
    free: &[RoutePattern],
    method: &Method,
    path: &str,
) -> Decision {
    if let Some(i) = paid.clone().position(|r| r.matches(method, path)) {
        return Decision::Paid(i);
    }
    if free.iter().any(|r| r.matches(method, path)) {
        return Decision::Free;
    }
    let allowed: Vec<Method> = paid
        .filter(|r| r.path_matches(path))
        .filter_map(|r| r.method.clone())
        .collect();
    if allowed.is_empty() {
        Decision::NotFound
    } else {
        Decision::WrongMethod(allowed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_paths_pass_unchanged() {
        for p in [
            "/",
            "/v1/chat/completions",
            "/v1/models/",
            "/a-b_c~d.e/f",
            "/v1/x%20y",
            "/..a/b..",
            "/.well-known/x",
        ] {
            assert_eq!(normalize_path(p).as_deref(), Ok(p), "{p}");
        }
    }

    #[test]
    fn escapes_are_normalised() {
        assert_eq!(
            normalize_path("/v1/%63hat/completions").as_deref(),
            Ok("/v1/chat/completions")
        );
        assert_eq!(normalize_path("/x%3a%2A").as_deref(), Ok("/x%3A%2A"));
        assert_eq!(normalize_path("/%7Euser").as_deref(), Ok("/~user"));
    }

    #[test]
    fn ambiguous_paths_are_refused() {
        use TargetError as E;
        let cases: &[(&str, E)] = &[
            ("//v1/chat/completions", E::EmptySegment),
            ("/v1//chat", E::EmptySegment),
            ("/v1/./chat", E::DotSegment),
            ("/x/../v1/chat", E::DotSegment),
            ("/v1/chat/%2e/completions", E::DotSegment),
            ("/v1/%2E%2E/v1", E::DotSegment),
            ("/v1/.%2e/v1", E::DotSegment),
            ("/v1/chat/.", E::DotSegment),
            ("/..", E::DotSegment),
            ("/v1%2fchat", E::Separator),
            ("/v1%2Fchat", E::Separator),
            ("/v1%5cchat", E::Separator),
            ("/v1\\chat", E::Separator),
            ("/v1/chat%00", E::Control),
            ("/v1/chat%0d%0a", E::Control),
            ("/v1/%252e%252e/x", E::EncodedPercent),
            ("/v1/chat;x=1", E::PathParameter),
            ("/v1/chat%3bx", E::PathParameter),
            ("/v1/%c0%ae%c0%ae/x", E::NonAscii),
            ("/v1/%ef%bc%8fchat", E::NonAscii),
            ("/v1/%", E::BadEscape),
            ("/v1/%2", E::BadEscape),
            ("/v1/%zz", E::BadEscape),
            ("v1/chat", E::NotOriginForm),
            ("*", E::NotOriginForm),
            ("http://127.0.0.1:8545/", E::NotOriginForm),
        ];
        for (p, want) in cases {
            assert_eq!(normalize_path(p).as_ref(), Err(want), "{p}");
        }
    }

    #[test]
    fn absolute_and_authority_forms_are_refused_on_http1() {
        let abs: Uri = "http://127.0.0.1:8545/".parse().expect("uri");
        assert_eq!(
            normalize(&Method::POST, Version::HTTP_11, &abs),
            Err(TargetError::NotOriginForm)
        );
        let auth: Uri = "127.0.0.1:8545".parse().expect("uri");
        assert_eq!(
            normalize(&Method::CONNECT, Version::HTTP_11, &auth),
            Err(TargetError::NotOriginForm)
        );
        // HTTP/2 carries scheme and authority in every request; its path is what counts.
        let h2: Uri = "http://paychan.test/v1/x?a=1".parse().expect("uri");
        assert_eq!(
            normalize(&Method::POST, Version::HTTP_2, &h2).as_deref(),
            Ok("/v1/x?a=1")
        );
        let h2bad: Uri = "http://paychan.test/v1/../x".parse().expect("uri");
        assert!(normalize(&Method::POST, Version::HTTP_2, &h2bad).is_err());
    }

    #[test]
    fn normalising_twice_changes_nothing() {
        for p in ["/v1/%63hat", "/a%20b/%7e", "/v1/chat/completions/"] {
            let once = normalize_path(p).expect("ok");
            assert_eq!(normalize_path(&once).as_deref(), Ok(once.as_str()), "{p}");
        }
    }

    #[test]
    fn routing_fails_closed() {
        let paid = [
            RoutePattern::new(Some(Method::POST), "/v1/chat/completions").expect("route"),
            RoutePattern::new(None, "/v1/embeddings").expect("route"),
        ];
        let free = [RoutePattern::new(Some(Method::GET), "/v1/models*").expect("route")];
        let d = |m: Method, p: &str| decide(paid.iter(), &free, &m, p);
        assert_eq!(d(Method::POST, "/v1/chat/completions"), Decision::Paid(0));
        assert_eq!(d(Method::GET, "/v1/embeddings"), Decision::Paid(1));
        assert_eq!(d(Method::GET, "/v1/models/abc"), Decision::Free);
        assert_eq!(
            d(Method::GET, "/v1/chat/completions"),
            Decision::WrongMethod(vec![Method::POST])
        );
        assert_eq!(d(Method::POST, "/v1/models"), Decision::NotFound);
        assert_eq!(d(Method::POST, "/v1/chat/completions/"), Decision::NotFound);
        assert_eq!(d(Method::POST, "/V1/chat/completions"), Decision::NotFound);
        assert_eq!(d(Method::GET, "/"), Decision::NotFound);
    }

    #[test]
    fn patterns_that_could_never_match_are_refused() {
        assert!(RoutePattern::new(None, "/v1//x").is_err());
        assert!(RoutePattern::new(None, "/v1/%63hat").is_err());
        assert!(RoutePattern::new(None, "v1").is_err());
        assert!(RoutePattern::new(None, "/v1/*").is_ok());
        assert!(RoutePattern::new(None, "/*").is_ok());
    }
}
