//! How much a request costs: the route's maximum (fixed pricing), or a price per token read from
//! the `usage` object of an OpenAI-style answer (per-token pricing). Pure: no I/O.
//!
//! **Usage.** Chat completions and completions report `usage.prompt_tokens` and
//! `usage.completion_tokens`; embeddings `usage.prompt_tokens` only; the responses API
//! `usage.input_tokens` and `usage.output_tokens`, at the top of a JSON answer or under
//! `response` in its streamed `response.completed` event. Every stock OpenAI-compatible server
//! (vLLM, llama.cpp's server, TGI, Ollama's `/v1`, OpenAI) answers in one of these shapes.
//! A `usage` that is absent, `null`, or holds no non-negative integer count is not usable: the
//! route's [`Fallback`] prices the request.
//!
//! **The cap.** A charge never exceeds the request's maximum, which is the offer's `amount` (the
//! most a voucher reserves for one request). Where the request names its own output limit
//! (`max_tokens`, `max_completion_tokens`, or `max_output_tokens`), output tokens beyond it are
//! not charged either: an upstream cannot bill more output than the caller allowed. Input tokens
//! are not known before the upstream has tokenised the prompt, so they have no request-side cap
//! beyond the offer's `amount`.
//!
//! **Streams.** Usage arrives in the last chunk of a stream (the gateway asks for it with
//! `stream_options.include_usage`). A stream that ends without it — the upstream broke it off,
//! or the client went away — is charged for what was delivered: the fixed part and one output
//! token per content-bearing chunk passed on (OpenAI-compatible servers stream about one token a
//! chunk), input tokens not at all (they are only known from usage). See [`StreamMeter`].

use serde::Deserialize;

/// How a paid route is priced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Pricing {
    /// The route's maximum, unless the upstream sets less (an `x-paychan-charge` header or a
    /// [`crate::Charge`] extension); charged as of the response head.
    #[default]
    Fixed,
    /// From the answer's token usage; charged when the answer is complete.
    PerToken(TokenPrices),
    /// By chunks of a streamed answer, the offer's `amount` a chunk, each chunk paid by a voucher
    /// of its own that the client posts mid-stream (the long-stream mode, [`crate::renew`]).
    Chunked(ChunkTerms),
}

/// How a streamed answer is cut into paid chunks. The price of a chunk is the route's offer
/// `amount` (what one voucher reserves).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkTerms {
    /// Units (tokens) in a chunk: content-bearing events of an OpenAI-style stream, or every
    /// data event of any other event stream ([`StreamMeter::units`]).
    pub tokens: u64,
    /// How long a paused stream waits for the next chunk's voucher, seconds.
    pub voucher_wait_secs: u64,
}

impl ChunkTerms {
    /// The charge for `units` of a chunk priced `chunk_price`: the whole price for a full chunk,
    /// else prorated and rounded down (the payer never pays for a unit it did not get).
    pub fn prorate(&self, chunk_price: u128, units: u64) -> u128 {
        if units >= self.tokens {
            return chunk_price;
        }
        // units < tokens, so the quotient is below chunk_price; saturating only guards the
        // product against a chunk price near u128::MAX.
        chunk_price.saturating_mul(u128::from(units)) / u128::from(self.tokens.max(1))
    }
}

/// Per-token prices, atomic units of the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenPrices {
    /// Per input (prompt) token.
    pub input: u128,
    /// Per output (completion) token.
    pub output: u128,
    /// Per request, on top of the tokens.
    pub fixed: u128,
    /// The price of an answer without usable usage.
    pub fallback: Fallback,
}

/// What an answer without usable `usage` costs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Fallback {
    /// The request's maximum (the safe side for the provider; the default).
    #[default]
    Max,
    /// This price (capped at the maximum).
    Fixed(u128),
}

/// Token counts of one answer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Input (prompt) tokens.
    pub input: u64,
    /// Output (completion) tokens.
    pub output: u64,
}

#[derive(Deserialize)]
struct RawUsage {
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
}

impl RawUsage {
    fn usage(&self) -> Option<Usage> {
        let input = self.prompt_tokens.or(self.input_tokens);
        let output = self.completion_tokens.or(self.output_tokens);
        if input.is_none() && output.is_none() {
            return None;
        }
        Some(Usage {
            input: input.unwrap_or(0),
            output: output.unwrap_or(0),
        })
    }
}

/// The parts of an answer (or of one streamed event) that carry usage; everything else is
/// skipped without being built.
#[derive(Deserialize)]
struct WithUsage {
    #[serde(default, deserialize_with = "lenient")]
    usage: Option<RawUsage>,
    #[serde(default, deserialize_with = "lenient")]
    response: Option<Inner>,
}

#[derive(Deserialize)]
struct Inner {
    #[serde(default, deserialize_with = "lenient")]
    usage: Option<RawUsage>,
}

/// A field of the wrong shape reads as absent rather than failing the whole answer.
fn lenient<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::de::DeserializeOwned,
{
    let v = serde_json::Value::deserialize(d)?;
    Ok(serde_json::from_value(v).ok())
}

/// The usage in an answer body or a streamed event's data: `Err(())` if it is not JSON at all
/// (a malformed answer), `Ok(None)` if it is JSON without usable usage.
#[allow(clippy::result_unit_err)]
pub fn usage_of(json: &[u8]) -> Result<Option<Usage>, ()> {
    let w: WithUsage = serde_json::from_slice(json).map_err(|_| ())?;
    Ok(usable(w.usage.as_ref(), w.response.as_ref()))
}

/// The usable usage of an answer or event: its own, else its `response`'s.
fn usable(usage: Option<&RawUsage>, response: Option<&Inner>) -> Option<Usage> {
    usage
        .and_then(RawUsage::usage)
        .or_else(|| response.and_then(|r| r.usage.as_ref().and_then(RawUsage::usage)))
}

/// What the gateway reads from a JSON request body.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RequestTerms {
    /// The request's output-token limit, if it names one.
    pub max_output: Option<u64>,
    /// `stream: true`.
    pub stream: bool,
}

/// Reads a request body's terms and, for a streamed chat or completions request, asks the
/// upstream for usage in the stream (`stream_options.include_usage = true`); returns the body
/// to send (`None`: unchanged). A body that is not a JSON object is left alone.
pub fn request_terms(body: &[u8]) -> (RequestTerms, Option<Vec<u8>>) {
    let Ok(serde_json::Value::Object(mut obj)) = serde_json::from_slice(body) else {
        return (RequestTerms::default(), None);
    };
    let max_output = ["max_completion_tokens", "max_tokens", "max_output_tokens"]
        .iter()
        .filter_map(|k| obj.get(*k).and_then(serde_json::Value::as_u64))
        .min();
    let stream = obj.get("stream").and_then(serde_json::Value::as_bool) == Some(true);
    let terms = RequestTerms { max_output, stream };
    // Only chat completions (`messages`) and completions (`prompt`) take `stream_options`; the
    // responses API always reports usage in its final event and refuses unknown fields.
    let wants_options = stream && (obj.contains_key("messages") || obj.contains_key("prompt"));
    let include = |o: &serde_json::Map<String, serde_json::Value>| {
        o.get("stream_options")
            .and_then(|s| s.get("include_usage"))
            .and_then(serde_json::Value::as_bool)
            == Some(true)
    };
    if !wants_options || include(&obj) {
        return (terms, None);
    }
    let options = obj
        .entry("stream_options")
        .or_insert_with(|| serde_json::Value::Object(serde_json::Map::new()));
    if !options.is_object() {
        *options = serde_json::Value::Object(serde_json::Map::new());
    }
    if let Some(o) = options.as_object_mut() {
        o.insert("include_usage".into(), serde_json::Value::Bool(true));
    }
    (terms, serde_json::to_vec(&obj).ok())
}

impl TokenPrices {
    /// The charge for an answer with `usage` (`None`: none usable), under the request's terms,
    /// never above `max`.
    pub fn charge(&self, usage: Option<Usage>, terms: &RequestTerms, max: u128) -> u128 {
        let Some(u) = usage else {
            return match self.fallback {
                Fallback::Max => max,
                Fallback::Fixed(p) => p.min(max),
            };
        };
        let output = terms.max_output.map_or(u.output, |m| u.output.min(m));
        self.price(u.input, output).min(max)
    }

    /// `fixed + input × in + output × out`, saturating (then capped by the caller).
    fn price(&self, input: u64, output: u64) -> u128 {
        self.fixed
            .saturating_add(self.input.saturating_mul(u128::from(input)))
            .saturating_add(self.output.saturating_mul(u128::from(output)))
    }

    /// The charge for a stream that ended without usage after `chunks` content-bearing chunks:
    /// the fixed part and one output token a chunk (capped by the request's output limit), never
    /// above `max`.
    pub fn delivered(&self, chunks: u64, terms: &RequestTerms, max: u128) -> u128 {
        let output = terms.max_output.map_or(chunks, |m| chunks.min(m));
        self.price(0, output).min(max)
    }
}

/// Reads a server-sent-events stream as it passes: the last usable usage, and how many events
/// carried content. Lines are split across chunks at any byte; a line longer than
/// [`StreamMeter::MAX_LINE`] is skipped (no usage event is that long).
#[derive(Debug, Default)]
pub struct StreamMeter {
    line: Vec<u8>,
    overlong: bool,
    /// The last usable usage seen.
    pub usage: Option<Usage>,
    /// Events whose data carried generated content.
    pub content_chunks: u64,
    /// Events of another shape than OpenAI's (see [`StreamMeter::units`]).
    pub other_events: u64,
    /// The event being read had data of another shape than OpenAI's.
    other_in_event: bool,
}

/// One streamed event's data, read once for both its usage and its content. The nested fields
/// are lenient, so that one of the wrong shape costs only what it carried.
#[derive(Deserialize)]
struct Event {
    #[serde(default, deserialize_with = "lenient")]
    usage: Option<RawUsage>,
    #[serde(default, deserialize_with = "lenient")]
    response: Option<Inner>,
    #[serde(default, deserialize_with = "lenient")]
    choices: Option<Vec<ChunkChoice>>,
    #[serde(rename = "type")]
    kind: Option<serde_json::Value>,
    delta: Option<serde_json::Value>,
    object: Option<serde_json::Value>,
}

impl Event {
    /// An OpenAI-style event (chat or completions chunk, responses API event, or a usage-only
    /// chunk), as opposed to any other JSON.
    fn is_openai(&self) -> bool {
        self.choices.is_some()
            || self.usage.is_some()
            || self.response.is_some()
            || self
                .object
                .as_ref()
                .and_then(serde_json::Value::as_str)
                .is_some_and(|o| o.starts_with("chat.completion") || o == "text_completion")
            || self
                .kind
                .as_ref()
                .and_then(serde_json::Value::as_str)
                .is_some_and(|k| k.starts_with("response."))
    }
}

#[derive(Deserialize)]
struct ChunkChoice {
    delta: Option<Delta>,
    text: Option<String>,
}

#[derive(Deserialize)]
struct Delta {
    content: Option<String>,
    reasoning_content: Option<String>,
}

impl StreamMeter {
    /// Longest line read, bytes.
    pub const MAX_LINE: usize = 1 << 20;

    /// Feeds the next bytes of the stream.
    pub fn feed(&mut self, bytes: &[u8]) {
        let mut rest = bytes;
        while let Some(i) = rest.iter().position(|&b| b == b'\n') {
            if !self.overlong && self.line.len() + i <= Self::MAX_LINE {
                self.line.extend_from_slice(&rest[..i]);
                let line = std::mem::take(&mut self.line);
                self.line_done(&line);
                self.line = line;
            } else {
                // An overlong line carries something: in a chunked stream it is a unit.
                self.other_in_event = true;
            }
            self.line.clear();
            self.overlong = false;
            rest = &rest[i + 1..];
        }
        if self.overlong || self.line.len() + rest.len() > Self::MAX_LINE {
            self.overlong = true;
            self.line.clear();
        } else {
            self.line.extend_from_slice(rest);
        }
    }

    /// Units delivered, for chunked pricing: content-bearing events of an OpenAI-style stream
    /// (a chat, completions or responses chunk that carries no content, such as the usage
    /// chunk, is free), plus every event of any other shape that carries data (a stream that is
    /// not OpenAI's is counted by its events, so that it is never free), never `[DONE]`.
    pub fn units(&self) -> u64 {
        self.content_chunks.saturating_add(self.other_events)
    }

    /// Ends the stream: an event the upstream did not close with a blank line still counts.
    pub fn finish(&mut self) {
        if !self.line.is_empty() && !self.overlong {
            let line = std::mem::take(&mut self.line);
            self.line_done(&line);
        }
        self.line_done(b"");
    }

    fn line_done(&mut self, line: &[u8]) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            if std::mem::take(&mut self.other_in_event) {
                self.other_events += 1;
            }
            return;
        }
        let Some(data) = line.strip_prefix(b"data:") else {
            return;
        };
        let data = data.strip_prefix(b" ").unwrap_or(data);
        if data == b"[DONE]" {
            return;
        }
        let Ok(c) = serde_json::from_slice::<Event>(data) else {
            self.other_in_event = true;
            return;
        };
        if !c.is_openai() {
            self.other_in_event = true;
            return;
        }
        if let Some(u) = usable(c.usage.as_ref(), c.response.as_ref()) {
            self.usage = Some(u);
        }
        let chat = c.choices.iter().flatten().any(|ch| {
            ch.delta.as_ref().is_some_and(|d| {
                d.content.as_deref().is_some_and(|s| !s.is_empty())
                    || d.reasoning_content
                        .as_deref()
                        .is_some_and(|s| !s.is_empty())
            }) || ch.text.as_deref().is_some_and(|s| !s.is_empty())
        });
        // the responses API streams `response.output_text.delta` events
        let responses = c.kind.as_ref().and_then(serde_json::Value::as_str)
            == Some("response.output_text.delta")
            && c.delta
                .as_ref()
                .and_then(|d| d.as_str())
                .is_some_and(|s| !s.is_empty());
        if chat || responses {
            self.content_chunks += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prices(fallback: Fallback) -> TokenPrices {
        TokenPrices {
            input: 3,
            output: 7,
            fixed: 100,
            fallback,
        }
    }

    #[test]
    fn usage_is_read_from_every_openai_shape() {
        let chat = br#"{"id":"x","choices":[{"message":{"content":"hi"}}],"usage":{"prompt_tokens":12,"completion_tokens":5,"total_tokens":17}}"#;
        assert_eq!(
            usage_of(chat),
            Ok(Some(Usage {
                input: 12,
                output: 5
            }))
        );
        let embeddings =
            br#"{"data":[{"embedding":[0.1,0.2]}],"usage":{"prompt_tokens":8,"total_tokens":8}}"#;
        assert_eq!(
            usage_of(embeddings),
            Ok(Some(Usage {
                input: 8,
                output: 0
            }))
        );
        let responses = br#"{"object":"response","usage":{"input_tokens":9,"output_tokens":4}}"#;
        assert_eq!(
            usage_of(responses),
            Ok(Some(Usage {
                input: 9,
                output: 4
            }))
        );
        let completed = br#"{"type":"response.completed","response":{"usage":{"input_tokens":2,"output_tokens":3}}}"#;
        assert_eq!(
            usage_of(completed),
            Ok(Some(Usage {
                input: 2,
                output: 3
            }))
        );
        // JSON without usable usage, and not JSON at all
        for none in [
            &br#"{"choices":[]}"#[..],
            br#"{"usage":null}"#,
            br#"{"usage":{"prompt_tokens":-1}}"#,
            br#"{"usage":{"prompt_tokens":"12"}}"#,
            br#"{"usage":{}}"#,
            br#"[1,2]"#,
        ] {
            assert_eq!(
                usage_of(none),
                Ok(None),
                "{}",
                String::from_utf8_lossy(none)
            );
        }
        assert_eq!(usage_of(b"<html>502</html>"), Err(()));
        assert_eq!(usage_of(br#"{"usage":{"prompt_tokens":1"#), Err(()));
    }

    #[test]
    fn charges_follow_usage_the_output_limit_and_the_cap() {
        let p = prices(Fallback::Max);
        let u = Some(Usage {
            input: 10,
            output: 20,
        });
        let free = RequestTerms::default();
        assert_eq!(p.charge(u, &free, 1_000_000), 100 + 30 + 140);
        // output beyond the request's own limit is not charged
        let limited = RequestTerms {
            max_output: Some(5),
            stream: false,
        };
        assert_eq!(p.charge(u, &limited, 1_000_000), 100 + 30 + 35);
        // never above the maximum, even when the arithmetic overflows
        assert_eq!(p.charge(u, &free, 200), 200);
        let huge = Some(Usage {
            input: u64::MAX,
            output: u64::MAX,
        });
        let p_huge = TokenPrices {
            input: u128::MAX / 2,
            ..p.clone()
        };
        assert_eq!(p_huge.charge(huge, &free, 12_345), 12_345);
        // no usage: the fallback
        assert_eq!(p.charge(None, &free, 5_000), 5_000);
        assert_eq!(prices(Fallback::Fixed(42)).charge(None, &free, 5_000), 42);
        assert_eq!(
            prices(Fallback::Fixed(9_000)).charge(None, &free, 5_000),
            5_000
        );
        // a broken-off stream: the fixed part and one output token per chunk
        assert_eq!(p.delivered(4, &free, 1_000), 100 + 28);
        assert_eq!(p.delivered(4, &limited, 1_000), 100 + 28);
        assert_eq!(p.delivered(400, &limited, 1_000), 100 + 35);
        assert_eq!(p.delivered(400, &free, 1_000), 1_000);
    }

    #[test]
    fn request_terms_are_read_and_streams_ask_for_usage() {
        let (t, body) = request_terms(br#"{"model":"m","messages":[],"max_tokens":64}"#);
        assert_eq!(
            t,
            RequestTerms {
                max_output: Some(64),
                stream: false
            }
        );
        assert_eq!(body, None);
        let (t, body) =
            request_terms(br#"{"model":"m","prompt":"x","stream":true,"max_completion_tokens":9,"max_tokens":20}"#);
        assert_eq!(
            t,
            RequestTerms {
                max_output: Some(9),
                stream: true
            }
        );
        let v: serde_json::Value = serde_json::from_slice(&body.unwrap()).unwrap();
        assert_eq!(v["stream_options"]["include_usage"], true);
        assert_eq!(v["prompt"], "x");
        // kept options, and a wrong-shaped one replaced
        let (_, body) = request_terms(
            br#"{"messages":[],"stream":true,"stream_options":{"continuous_usage_stats":true}}"#,
        );
        let v: serde_json::Value = serde_json::from_slice(&body.unwrap()).unwrap();
        assert_eq!(v["stream_options"]["include_usage"], true);
        assert_eq!(v["stream_options"]["continuous_usage_stats"], true);
        let (_, body) = request_terms(br#"{"messages":[],"stream":true,"stream_options":7}"#);
        let v: serde_json::Value = serde_json::from_slice(&body.unwrap()).unwrap();
        assert_eq!(v["stream_options"]["include_usage"], true);
        // already asked: unchanged; the responses API: unchanged; not JSON: unchanged
        let asked = br#"{"messages":[],"stream":true,"stream_options":{"include_usage":true}}"#;
        assert_eq!(request_terms(asked).1, None);
        let (t, body) = request_terms(br#"{"input":"x","stream":true,"max_output_tokens":3}"#);
        assert_eq!((t.max_output, t.stream, body), (Some(3), true, None));
        assert_eq!(request_terms(b"not json"), (RequestTerms::default(), None));
    }

    #[test]
    fn the_stream_meter_finds_usage_and_counts_content_across_any_split() {
        let stream = concat!(
            "data: {\"choices\":[{\"delta\":{\"role\":\"assistant\"}}],\"usage\":null}\n\n",
            "data: {\"choices\":[{\"delta\":{\"content\":\"Hel\"}}],\"usage\":null}\n\n",
            ": a comment\r\n",
            "data: {\"choices\":[{\"delta\":{\"content\":\"lo\"}}],\"usage\":null}\r\n\r\n",
            "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":2}}\n\n",
            "data: [DONE]\n\n",
        )
        .as_bytes();
        for split in [1, 2, 3, 7, 64, stream.len()] {
            let mut m = StreamMeter::default();
            for c in stream.chunks(split) {
                m.feed(c);
            }
            assert_eq!(m.content_chunks, 2, "split {split}");
            assert_eq!(
                m.usage,
                Some(Usage {
                    input: 7,
                    output: 2
                }),
                "split {split}"
            );
        }
        // broken off before the usage chunk
        let mut m = StreamMeter::default();
        let usage_line = b"data: {\"choices\":[]";
        let cut = stream
            .windows(usage_line.len())
            .position(|w| w == usage_line)
            .unwrap();
        m.feed(&stream[..cut + 30]);
        assert_eq!((m.content_chunks, m.usage), (2, None));
        // responses API events
        let mut m = StreamMeter::default();
        m.feed(b"event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"a\"}\n\n");
        m.feed(b"data: {\"type\":\"response.completed\",\"response\":{\"usage\":{\"input_tokens\":1,\"output_tokens\":1}}}\n\n");
        assert_eq!(
            (m.content_chunks, m.usage),
            (
                1,
                Some(Usage {
                    input: 1,
                    output: 1
                })
            )
        );
        // an overlong line is skipped, the next one is read
        let mut m = StreamMeter::default();
        m.feed(b"data: ");
        m.feed(&vec![b'x'; StreamMeter::MAX_LINE + 10]);
        m.feed(b"\ndata: {\"choices\":[{\"text\":\"t\"}]}\n");
        assert_eq!(m.content_chunks, 1);
    }

    #[test]
    fn units_count_openai_content_and_every_other_event_never_done() {
        let mut m = StreamMeter::default();
        // OpenAI chunks: only those with content count; the usage chunk and role chunk are free
        m.feed(b"data: {\"object\":\"chat.completion.chunk\",\"choices\":[{\"delta\":{\"role\":\"assistant\"}}]}\n\n");
        m.feed(b"data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n");
        m.feed(
            b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1}}\n\n",
        );
        assert_eq!(m.units(), 1);
        // another shape: every event with data is a unit, however many data lines it has
        m.feed(b"event: data\ndata: {\"token\":\"x\",\"index\":0}\n\n");
        m.feed(b"data: plain text\ndata: more\n\n");
        m.feed(b": comment only\n\n");
        m.feed(b"data: [DONE]\n\n");
        assert_eq!(m.units(), 3);
        // an overlong line is a unit, not a free pass
        m.feed(b"data: ");
        m.feed(&vec![b'x'; StreamMeter::MAX_LINE + 1]);
        m.feed(b"\n\n");
        assert_eq!(m.units(), 4);
        // an event the stream ends without closing still counts
        m.feed(b"data: {\"token\":\"y\"}");
        assert_eq!(m.units(), 4);
        m.finish();
        assert_eq!(m.units(), 5);
    }

    #[test]
    fn a_partial_chunk_is_prorated_down_and_a_full_one_is_the_price() {
        let t = ChunkTerms {
            tokens: 100,
            voucher_wait_secs: 30,
        };
        assert_eq!(t.prorate(1_000, 100), 1_000);
        assert_eq!(t.prorate(1_000, 250), 1_000);
        assert_eq!(t.prorate(1_000, 37), 370);
        assert_eq!(t.prorate(999, 1), 9); // 9.99 rounds down
        assert_eq!(t.prorate(1_000, 0), 0);
        assert_eq!(t.prorate(u128::MAX, 99), u128::MAX / 100);
    }
}
