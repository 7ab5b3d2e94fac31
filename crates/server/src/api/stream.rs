//! Large answers written as they are sent: the JSON tree is consumed row by row into chunks of
//! about [`CHUNK`] bytes, so an answer is never held as a tree and as text at once (the text
//! exists one chunk at a time), and each chunk is a short slice of work for the thread that
//! writes it.

use std::convert::Infallible;

use axum::body::{Body, Bytes};
use serde_json::Value as Json;

/// Bytes per chunk written to the socket.
pub const CHUNK: usize = 64 << 10;

/// Answers estimated below this many bytes are written at once.
pub const STREAM_ABOVE: usize = 256 << 10;

/// A body that writes `value` as JSON, consuming it as it goes.
pub fn body(value: Json) -> Body {
    Body::from_stream(futures_util::stream::iter(
        Chunks::new(value).map(Ok::<Bytes, Infallible>),
    ))
}

enum Frame {
    Array(std::vec::IntoIter<Json>, bool),
    Object(serde_json::map::IntoIter, bool),
}

/// JSON text of a value, in chunks, consuming the value.
pub struct Chunks {
    stack: Vec<Frame>,
    buf: Vec<u8>,
}

impl Chunks {
    pub fn new(value: Json) -> Chunks {
        let mut c = Chunks {
            stack: Vec::new(),
            buf: Vec::with_capacity(CHUNK + 4096),
        };
        c.open(value);
        c
    }

    /// Writes a scalar whole, or the opening of an array or object (its items come later).
    fn open(&mut self, value: Json) {
        match value {
            Json::Array(items) => {
                self.buf.push(b'[');
                self.stack.push(Frame::Array(items.into_iter(), true));
            }
            Json::Object(m) => {
                self.buf.push(b'{');
                self.stack.push(Frame::Object(m.into_iter(), true));
            }
            scalar => write_scalar(&mut self.buf, &scalar),
        }
    }

    /// One step: the next item of the innermost open array or object, or its end. `false`
    /// when everything is written.
    fn step(&mut self) -> bool {
        let next = match self.stack.last_mut() {
            None => return false,
            Some(Frame::Array(items, first)) => match items.next() {
                Some(v) => {
                    if !std::mem::take(first) {
                        self.buf.push(b',');
                    }
                    Some(v)
                }
                None => {
                    self.buf.push(b']');
                    None
                }
            },
            Some(Frame::Object(entries, first)) => match entries.next() {
                Some((k, v)) => {
                    if !std::mem::take(first) {
                        self.buf.push(b',');
                    }
                    write_scalar(&mut self.buf, &Json::String(k));
                    self.buf.push(b':');
                    Some(v)
                }
                None => {
                    self.buf.push(b'}');
                    None
                }
            },
        };
        match next {
            Some(v) => self.open(v),
            None => {
                self.stack.pop();
            }
        }
        true
    }
}

impl Iterator for Chunks {
    type Item = Bytes;

    fn next(&mut self) -> Option<Bytes> {
        while self.buf.len() < CHUNK && self.step() {}
        if self.buf.is_empty() {
            return None;
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK + 4096));
        Some(Bytes::from(chunk))
    }
}

fn write_scalar(buf: &mut Vec<u8>, v: &Json) {
    // Writing a scalar JSON value into a Vec cannot fail.
    let _ = serde_json::to_writer(buf, v);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    fn arb_json() -> impl Strategy<Value = Json> {
        let leaf = prop_oneof![
            Just(Json::Null),
            any::<bool>().prop_map(Json::Bool),
            any::<i64>().prop_map(Json::from),
            any::<f64>().prop_map(Json::from),
            ".{0,40}".prop_map(Json::String),
        ];
        leaf.prop_recursive(6, 256, 12, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..12).prop_map(Json::Array),
                prop::collection::vec((".{0,8}", inner), 0..12)
                    .prop_map(|kv| Json::Object(kv.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// The chunks, joined, are exactly serde_json's text of the value.
        #[test]
        fn chunks_join_to_the_same_text(v in arb_json()) {
            let expected = serde_json::to_vec(&v).unwrap();
            let joined: Vec<u8> = Chunks::new(v).flat_map(|b| b.to_vec()).collect();
            prop_assert_eq!(joined, expected);
        }
    }

    #[test]
    fn a_large_answer_comes_in_bounded_chunks() {
        let rows: Vec<Json> = (0..20_000)
            .map(|i| serde_json::json!({"id": i, "name": format!("row {i} \"quoted\""), "n": 1.5}))
            .collect();
        let v = serde_json::json!({"status": "OK", "data": {"E": {"data": rows}}});
        let expected = serde_json::to_vec(&v).unwrap();
        let chunks: Vec<Bytes> = Chunks::new(v).collect();
        assert!(chunks.len() > 5, "{} chunks", chunks.len());
        assert!(chunks.iter().all(|c| c.len() < CHUNK + 4096));
        assert_eq!(chunks.concat(), expected);
    }
}
