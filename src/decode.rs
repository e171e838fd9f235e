//! Bounded decoding of the YAML and JSON documents nodelet reads from files
//! and URLs: static pod manifests, the manifest URL's body, the
//! KubeletConfiguration and the KubeProxyConfiguration.
//!
//! A YAML loader holds every event of a document before it builds anything,
//! so a small hostile file can take far more memory than its size. The
//! bounds:
//! - **size**: at most [`MAX_DOCUMENT_BYTES`] (1.5 MiB, the largest object
//!   etcd stores: no pod the apiserver could hold is larger); files and
//!   bodies are read only that far.
//! - **nesting**: at most [`MAX_DEPTH`] levels of flow collections (`[`,
//!   `{`), checked by a scan before the parser runs: deeply nested input
//!   was the costliest (1 MB of `[` took 160 MiB and 3 s to refuse).
//! - **aliases**: the YAML parser's own repetition limit refuses documents
//!   whose aliases expand past a multiple of their size.
//! - JSON (a document starting with `{` or `[`) is read by a JSON parser,
//!   which streams and stops at 128 levels.
//!
//! Measured worst case for a document within the bounds: about 90 times its
//! size while it is decoded (a wide flow list of empty lists), so 135 MiB.

use std::io::Read;

use serde_json::Value;

/// The largest document nodelet decodes (etcd's 1.5 MiB request limit).
pub const MAX_DOCUMENT_BYTES: usize = 3 << 19;
/// The deepest flow nesting nodelet decodes.
pub const MAX_DEPTH: usize = 100;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("larger than {max} bytes (the most nodelet reads)")]
    TooLarge { max: usize },
    #[error("nested deeper than {max} levels at line {line}")]
    TooDeep { max: usize, line: usize },
    #[error("{0}")]
    Syntax(String),
}

/// Reads at most [`MAX_DOCUMENT_BYTES`] from `r`; more is an error.
pub fn read_capped(r: impl Read) -> Result<Vec<u8>, std::io::Error> {
    let mut buf = Vec::new();
    let cap = u64::try_from(MAX_DOCUMENT_BYTES).unwrap_or(u64::MAX).saturating_add(1);
    r.take(cap).read_to_end(&mut buf)?;
    if buf.len() > MAX_DOCUMENT_BYTES {
        return Err(std::io::Error::other(DecodeError::TooLarge { max: MAX_DOCUMENT_BYTES }));
    }
    Ok(buf)
}

/// Reads the file at `path` within the size bound.
pub fn read_file(path: &std::path::Path) -> Result<Vec<u8>, std::io::Error> {
    read_capped(std::fs::File::open(path)?)
}

/// The deepest flow nesting of a YAML or JSON text, and the line where it
/// first passes `max` (quoted strings and comments skipped). A heuristic:
/// it may count a bracket inside a plain or block scalar, which only
/// matters for text with `max` unclosed brackets.
pub fn flow_depth_exceeds(bytes: &[u8], max: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut line = 1usize;
    let mut quote: Option<u8> = None;
    let mut prev = b'\n';
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match quote {
            Some(q) => {
                if b == b'\\' && q == b'"' {
                    i = i.saturating_add(1);
                } else if b == q {
                    quote = None;
                }
            }
            None => match b {
                b'"' | b'\'' if matches!(prev, b' ' | b'\t' | b'\n' | b'[' | b'{' | b',' | b':' | b'-') => quote = Some(b),
                b'#' if matches!(prev, b' ' | b'\t' | b'\n') => {
                    while bytes.get(i.saturating_add(1)).is_some_and(|c| *c != b'\n') {
                        i = i.saturating_add(1);
                    }
                }
                b'[' | b'{' => {
                    depth = depth.saturating_add(1);
                    if depth > max {
                        return Some(line);
                    }
                }
                b']' | b'}' => depth = depth.saturating_sub(1),
                _ => {}
            },
        }
        if b == b'\n' {
            line = line.saturating_add(1);
        }
        prev = b;
        i = i.saturating_add(1);
    }
    None
}

/// Decodes one YAML or JSON document within the bounds.
pub fn document(bytes: &[u8]) -> Result<Value, DecodeError> {
    if bytes.len() > MAX_DOCUMENT_BYTES {
        return Err(DecodeError::TooLarge { max: MAX_DOCUMENT_BYTES });
    }
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    if matches!(first, Some(b'{' | b'[')) {
        // JSON streams; YAML's flow style (`{a: b}`) is not JSON and falls
        // through to the YAML parser.
        if let Ok(v) = serde_json::from_slice::<Value>(bytes) {
            return Ok(v);
        }
    }
    if let Some(line) = flow_depth_exceeds(bytes, MAX_DEPTH) {
        return Err(DecodeError::TooDeep { max: MAX_DEPTH, line });
    }
    serde_yaml::from_slice::<Value>(bytes).map_err(|e| DecodeError::Syntax(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_documents_decode() {
        let yaml = b"a: [1, {b: \"[[[[\"}]\n# [[[[ a comment\nc: 'it''s [ fine'\nd: |\n  if [ -f x ]; then echo; fi\n";
        let v = document(yaml).unwrap();
        assert_eq!(v["a"][1]["b"], "[[[[");
        assert_eq!(document(br#"{"kind": "Pod", "spec": {"containers": []}}"#).unwrap()["kind"], "Pod");
        assert_eq!(document(b"{kind: Pod}").unwrap()["kind"], "Pod", "YAML flow style is not JSON");
    }

    #[test]
    fn hostile_documents_are_refused_cheaply() {
        let deep = "[".repeat(1_000_000);
        let t = std::time::Instant::now();
        assert_eq!(document(deep.as_bytes()), Err(DecodeError::TooDeep { max: MAX_DEPTH, line: 1 }));
        assert!(t.elapsed() < std::time::Duration::from_secs(1));
        let deep_json = "[".repeat(10_000) + &"]".repeat(10_000);
        assert!(document(deep_json.as_bytes()).is_err());
        let big = vec![b' '; MAX_DOCUMENT_BYTES + 1];
        assert_eq!(document(&big), Err(DecodeError::TooLarge { max: MAX_DOCUMENT_BYTES }));
        assert!(read_capped(&big[..]).is_err());
        assert_eq!(read_capped(&big[..MAX_DOCUMENT_BYTES]).unwrap().len(), MAX_DOCUMENT_BYTES);
        let laughs = "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\n\
                      d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\ne: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]\n\
                      g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]\nh: [*g, *g, *g, *g, *g, *g, *g, *g, *g]\n";
        assert!(document(laughs.as_bytes()).is_err(), "aliases that expand a billion-fold");
    }
}
