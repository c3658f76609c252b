//! Bencode (the BitTorrent encoding rtpengine's ng control protocol uses): integers `i42e`,
//! byte strings `4:spam`, lists `l...e`, dictionaries `d...e` with sorted byte-string keys.

use std::collections::BTreeMap;

use thiserror::Error;

/// Deepest nesting accepted when decoding (ng messages nest two or three levels).
pub const MAX_DEPTH: usize = 32;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Int(i64),
    Bytes(Vec<u8>),
    List(Vec<Value>),
    Dict(BTreeMap<Vec<u8>, Value>),
}

#[derive(Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum BencodeError {
    #[error("input ended inside a value")]
    Truncated,
    #[error("unexpected byte {byte:#04x} at offset {offset}")]
    Unexpected { byte: u8, offset: usize },
    #[error("bad integer at offset {0}")]
    BadInt(usize),
    #[error("bad string length at offset {0}")]
    BadLength(usize),
    #[error("dictionary key at offset {0} is not a byte string")]
    KeyNotString(usize),
    #[error("nesting deeper than {MAX_DEPTH}")]
    TooDeep,
    #[error("{0} trailing bytes after the value")]
    Trailing(usize),
}

impl Value {
    /// A byte string from text.
    #[must_use]
    pub fn str(s: &str) -> Self {
        Value::Bytes(s.as_bytes().to_vec())
    }

    /// A dictionary from `(key, value)` pairs.
    #[must_use]
    pub fn dict<'a>(pairs: impl IntoIterator<Item = (&'a str, Value)>) -> Self {
        Value::Dict(
            pairs
                .into_iter()
                .map(|(k, v)| (k.as_bytes().to_vec(), v))
                .collect(),
        )
    }

    /// The entry `key` of a dictionary.
    #[must_use]
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Dict(d) => d.get(key.as_bytes()),
            _ => None,
        }
    }

    /// A byte string as UTF-8 text.
    #[must_use]
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Bytes(b) => std::str::from_utf8(b).ok(),
            _ => None,
        }
    }

    /// Appends the encoding to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        match self {
            Value::Int(i) => {
                out.push(b'i');
                out.extend_from_slice(i.to_string().as_bytes());
                out.push(b'e');
            }
            Value::Bytes(b) => {
                out.extend_from_slice(b.len().to_string().as_bytes());
                out.push(b':');
                out.extend_from_slice(b);
            }
            Value::List(l) => {
                out.push(b'l');
                for v in l {
                    v.encode_into(out);
                }
                out.push(b'e');
            }
            Value::Dict(d) => {
                out.push(b'd');
                // BTreeMap iterates in byte order, which is what bencode requires.
                for (k, v) in d {
                    Value::Bytes(k.clone()).encode_into(out);
                    v.encode_into(out);
                }
                out.push(b'e');
            }
        }
    }

    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(&mut out);
        out
    }

    /// Decodes exactly one value spanning all of `input`.
    pub fn decode(input: &[u8]) -> Result<Self, BencodeError> {
        let (v, used) = decode_at(input, 0, 0)?;
        if used != input.len() {
            return Err(BencodeError::Trailing(input.len() - used));
        }
        Ok(v)
    }
}

fn decode_at(input: &[u8], pos: usize, depth: usize) -> Result<(Value, usize), BencodeError> {
    if depth > MAX_DEPTH {
        return Err(BencodeError::TooDeep);
    }
    let &first = input.get(pos).ok_or(BencodeError::Truncated)?;
    match first {
        b'i' => {
            let end = find(input, pos + 1, b'e')?;
            let text =
                std::str::from_utf8(&input[pos + 1..end]).map_err(|_| BencodeError::BadInt(pos))?;
            // bencode forbids leading zeros and "-0"
            let bad = text.is_empty()
                || text == "-0"
                || (text.len() > 1 && text.starts_with('0'))
                || text.starts_with("-0");
            if bad {
                return Err(BencodeError::BadInt(pos));
            }
            let i = text.parse().map_err(|_| BencodeError::BadInt(pos))?;
            Ok((Value::Int(i), end + 1))
        }
        b'0'..=b'9' => {
            let colon = find(input, pos, b':')?;
            let len: usize = std::str::from_utf8(&input[pos..colon])
                .ok()
                .and_then(|t| t.parse().ok())
                .ok_or(BencodeError::BadLength(pos))?;
            let start = colon + 1;
            let end = start.checked_add(len).ok_or(BencodeError::BadLength(pos))?;
            let bytes = input.get(start..end).ok_or(BencodeError::Truncated)?;
            Ok((Value::Bytes(bytes.to_vec()), end))
        }
        b'l' => {
            let mut items = Vec::new();
            let mut p = pos + 1;
            loop {
                match input.get(p) {
                    None => return Err(BencodeError::Truncated),
                    Some(b'e') => return Ok((Value::List(items), p + 1)),
                    Some(_) => {
                        let (v, next) = decode_at(input, p, depth + 1)?;
                        items.push(v);
                        p = next;
                    }
                }
            }
        }
        b'd' => {
            let mut map = BTreeMap::new();
            let mut p = pos + 1;
            loop {
                match input.get(p) {
                    None => return Err(BencodeError::Truncated),
                    Some(b'e') => return Ok((Value::Dict(map), p + 1)),
                    Some(_) => {
                        let (k, next) = decode_at(input, p, depth + 1)?;
                        let Value::Bytes(k) = k else {
                            return Err(BencodeError::KeyNotString(p));
                        };
                        let (v, next) = decode_at(input, next, depth + 1)?;
                        map.insert(k, v);
                        p = next;
                    }
                }
            }
        }
        byte => Err(BencodeError::Unexpected { byte, offset: pos }),
    }
}

fn find(input: &[u8], from: usize, byte: u8) -> Result<usize, BencodeError> {
    input
        .get(from..)
        .and_then(|rest| rest.iter().position(|&b| b == byte))
        .map(|i| from + i)
        .ok_or(BencodeError::Truncated)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_known_forms() {
        assert_eq!(Value::Int(42).encode(), b"i42e");
        assert_eq!(Value::Int(-3).encode(), b"i-3e");
        assert_eq!(Value::str("spam").encode(), b"4:spam");
        assert_eq!(
            Value::List(vec![Value::str("a"), Value::Int(1)]).encode(),
            b"l1:ai1ee"
        );
        // keys come out sorted whatever the insertion order
        let d = Value::dict([("to-tag", Value::str("x")), ("command", Value::str("ping"))]);
        assert_eq!(d.encode(), b"d7:command4:ping6:to-tag1:xe");
    }

    #[test]
    fn decodes_an_ng_answer() {
        let raw = b"d6:result2:ok3:sdp12:v=0\r\no=- 1\r\ne";
        let v = Value::decode(raw).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(v.get("result").and_then(Value::as_str), Some("ok"));
        assert_eq!(
            v.get("sdp").and_then(Value::as_str),
            Some("v=0\r\no=- 1\r\n")
        );
        assert_eq!(Value::decode(&v.encode()), Ok(v));
    }

    #[test]
    fn round_trips_nested_values() {
        let v = Value::dict([
            ("flags", Value::List(vec![Value::str("trust-address")])),
            ("n", Value::Int(i64::MIN)),
            (
                "inner",
                Value::dict([("x", Value::Bytes(vec![0, 255, b'e']))]),
            ),
        ]);
        assert_eq!(Value::decode(&v.encode()), Ok(v));
    }

    #[test]
    fn rejects_malformed_input() {
        assert_eq!(Value::decode(b""), Err(BencodeError::Truncated));
        assert_eq!(Value::decode(b"i12"), Err(BencodeError::Truncated));
        assert_eq!(Value::decode(b"i01e"), Err(BencodeError::BadInt(0)));
        assert_eq!(Value::decode(b"i-0e"), Err(BencodeError::BadInt(0)));
        assert_eq!(Value::decode(b"ie"), Err(BencodeError::BadInt(0)));
        assert_eq!(Value::decode(b"5:abc"), Err(BencodeError::Truncated));
        assert_eq!(
            Value::decode(b"99999999999999999999999:x"),
            Err(BencodeError::BadLength(0))
        );
        assert_eq!(
            Value::decode(b"di1ei2ee"),
            Err(BencodeError::KeyNotString(1))
        );
        assert_eq!(Value::decode(b"l1:a"), Err(BencodeError::Truncated));
        assert_eq!(Value::decode(b"i1ei2e"), Err(BencodeError::Trailing(3)));
        assert_eq!(
            Value::decode(b"x"),
            Err(BencodeError::Unexpected {
                byte: b'x',
                offset: 0
            })
        );
        let deep = "l".repeat(MAX_DEPTH + 2) + &"e".repeat(MAX_DEPTH + 2);
        assert_eq!(Value::decode(deep.as_bytes()), Err(BencodeError::TooDeep));
    }
}
