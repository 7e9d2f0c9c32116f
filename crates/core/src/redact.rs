//! Redaction of secrets that travel inside error text: RPC and upstream URLs often embed an API
//! key in their userinfo, path or query (`https://eth.example/v2/<key>`), and HTTP client errors
//! quote the URL they failed on. Anything that reaches a log line goes through [`redact_urls`];
//! nothing of an outside failure's text reaches a client at all.

/// `text` with every URL cut down to its scheme and host (`https://eth.example/…`): userinfo,
/// port, path, query and fragment are replaced by `…`. Text without URLs is returned unchanged.
pub fn redact_urls(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        // The scheme: the ASCII letters, digits, `+`, `-`, `.` just before `://`.
        let head = &rest[..at];
        let scheme_start = head
            .char_indices()
            .rev()
            .take_while(|(_, c)| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
            .last()
            .map_or(at, |(i, _)| i);
        out.push_str(&head[..scheme_start]);
        let after = &rest[at + 3..];
        let end = after
            .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | ')' | '>' | '<' | ','))
            .unwrap_or(after.len());
        let authority_and_more = &after[..end];
        let authority = authority_and_more
            .split(['/', '?', '#'])
            .next()
            .unwrap_or_default();
        let host_port = authority.rsplit('@').next().unwrap_or_default();
        let host = if host_port.starts_with('[') {
            host_port.split(']').next().map_or("", |h| h).to_owned() + "]"
        } else {
            host_port.split(':').next().unwrap_or_default().to_owned()
        };
        let scheme = &head[scheme_start..];
        if scheme.is_empty() {
            out.push_str("://");
        } else {
            out.push_str(scheme);
            out.push_str("://");
            out.push_str(&host);
            if host.len() < authority_and_more.len() {
                out.push('…');
            }
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::redact_urls;

    #[test]
    fn keys_in_urls_are_cut() {
        let cases = [
            (
                "error sending request for url (https://base-mainnet.example.com/v2/SECRETKEY)",
                "error sending request for url (https://base-mainnet.example.com…)",
            ),
            (
                "rpc http://user:SECRET@node.local:8545/?apikey=SECRET failed",
                "rpc http://node.local… failed",
            ),
            ("wss://[::1]:8546/SECRET", "wss://[::1]…"),
            ("https://host.example", "https://host.example"),
            ("no url here", "no url here"),
            (
                "two: http://a/SECRET, http://b/SECRET",
                "two: http://a…, http://b…",
            ),
        ];
        for (input, want) in cases {
            let got = redact_urls(input);
            assert_eq!(got, want, "{input}");
            assert!(!got.contains("SECRET"), "{got}");
        }
    }
}
