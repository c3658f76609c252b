//! Matching messages to transactions (RFC 3261 §17.1.3, §17.2.3, §9.2).
//!
//! The message model is reduced to [`RequestFacts`] / [`ResponseFacts`]
//! (owned `Bytes` slices of the original message, so cheap to keep), and keys
//! are built from those. Comparison rules:
//! - branch: case-sensitive (it is an opaque token we or the peer minted);
//! - sent-by: host case-insensitive, port as written;
//! - methods: case-sensitive (RFC 3261 §7.1);
//! - RFC 2543 fallback fields (Request-URI, Call-ID, tags, top Via): compared
//!   as written after trimming, which is what a retransmission of the same
//!   request reproduces.

use bytes::Bytes;

/// The RFC 3261 branch prefix (§8.1.1.7).
pub const MAGIC_COOKIE: &str = "z9hG4bK";

/// What matching needs from a request. Call-ID and tags are filled only
/// where matching uses them (RFC 2543 requests, ACKs, dialog keys).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestFacts {
    /// Method from the request line.
    pub method: Bytes,
    /// Request-URI as written.
    pub request_uri: Bytes,
    /// CSeq sequence number.
    pub cseq: u32,
    /// `branch` parameter of the top Via, if any.
    pub branch: Option<Bytes>,
    /// sent-by of the top Via (`host[:port]`), host lowercased.
    pub sent_by: Bytes,
    /// The whole top Via value, trimmed (RFC 2543 matching).
    pub top_via: Bytes,
    /// Call-ID.
    pub call_id: Bytes,
    /// From tag.
    pub from_tag: Option<Bytes>,
    /// To tag.
    pub to_tag: Option<Bytes>,
}

/// What matching needs from a response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResponseFacts {
    /// Status code.
    pub status: u16,
    /// `branch` of the top Via.
    pub branch: Option<Bytes>,
    /// CSeq method.
    pub cseq_method: Bytes,
    /// To tag (kept by a server INVITE transaction for RFC 2543 ACK matching).
    pub to_tag: Option<Bytes>,
}

/// Whether a branch carries the RFC 3261 magic cookie.
pub fn is_rfc3261_branch(branch: &[u8]) -> bool {
    branch.starts_with(MAGIC_COOKIE.as_bytes())
}

const INVITE: &[u8] = b"INVITE";
const ACK: &[u8] = b"ACK";

/// Key of a client transaction: branch of the top Via and CSeq method.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ClientKey {
    branch: Bytes,
    method: Bytes,
}

impl ClientKey {
    /// Key for the request we send (`method` of the request line).
    pub fn for_request(branch: Bytes, method: Bytes) -> Self {
        ClientKey { branch, method }
    }

    /// Key a response is looked up by; `None` without a branch (such a
    /// response cannot belong to any transaction of ours).
    pub fn for_response(r: &ResponseFacts) -> Option<Self> {
        Some(ClientKey {
            branch: r.branch.clone()?,
            method: r.cseq_method.clone(),
        })
    }
}

/// Key of a server transaction.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ServerKey {
    /// §17.2.3 with the magic cookie: branch, sent-by and method (an ACK
    /// looks up with INVITE).
    Rfc3261 {
        branch: Bytes,
        sent_by: Bytes,
        method: Bytes,
    },
    /// §17.2.3 RFC 2543 fallback for requests other than ACK.
    Rfc2543(Rfc2543Fields),
    /// RFC 2543 fallback for the ACK: the To tag is the one of the response
    /// the transaction sent, so this entry is added once it sent one.
    Rfc2543Ack(Rfc2543Fields),
    /// The ACK for a 2xx carries a new branch (§13.2.2.4), so an INVITE
    /// server transaction in Accepted also registers the dialog-level fields
    /// the ACK shares with it: Call-ID, CSeq number, From tag and the To tag
    /// of the 2xx.
    DialogAck {
        call_id: Bytes,
        cseq: u32,
        from_tag: Option<Bytes>,
        to_tag: Option<Bytes>,
    },
}

/// The fields of the RFC 2543 matching rule.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Rfc2543Fields {
    request_uri: Bytes,
    to_tag: Option<Bytes>,
    from_tag: Option<Bytes>,
    call_id: Bytes,
    cseq: u32,
    method: Bytes,
    top_via: Bytes,
}

/// How an incoming request relates to server transactions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerLookup {
    /// The key a request is matched with (and a new transaction registered
    /// under).
    pub key: ServerKey,
    /// For CANCEL: the key of the INVITE transaction it cancels (§9.2).
    pub cancels: Option<ServerKey>,
}

/// Methods whose names a stored key can point to without a copy.
const STATIC_METHODS: [&[u8]; 8] = [
    b"REGISTER",
    b"INVITE",
    b"OPTIONS",
    b"BYE",
    b"CANCEL",
    b"ACK",
    b"SUBSCRIBE",
    b"NOTIFY",
];

fn detached(b: &Bytes) -> Bytes {
    match STATIC_METHODS.iter().find(|m| **m == &b[..]) {
        Some(m) => Bytes::from_static(m),
        None => Bytes::copy_from_slice(b),
    }
}

impl ServerKey {
    /// The same key holding its own copies of the branch and method instead of slices of the
    /// received datagram, so a transaction's table entry does not keep the whole datagram
    /// alive for the 32 s of Timer J. (Only the RFC 3261 form, by far the common one; the
    /// others are returned as they are.)
    pub fn detached(&self) -> ServerKey {
        match self {
            ServerKey::Rfc3261 {
                branch,
                sent_by,
                method,
            } => ServerKey::Rfc3261 {
                branch: Bytes::copy_from_slice(branch),
                sent_by: sent_by.clone(),
                method: detached(method),
            },
            other => other.clone(),
        }
    }

    /// The key `req` matches with. ACK maps to the INVITE transaction; in
    /// RFC 2543 mode its To tag must equal the tag of our response.
    pub fn lookup(req: &RequestFacts) -> ServerLookup {
        let is_ack = req.method.as_ref() == ACK;
        let is_cancel = req.method.as_ref() == b"CANCEL";
        let method = if is_ack {
            Bytes::from_static(INVITE)
        } else {
            req.method.clone()
        };
        match &req.branch {
            Some(branch) if is_rfc3261_branch(branch) => {
                let key = ServerKey::Rfc3261 {
                    branch: branch.clone(),
                    sent_by: req.sent_by.clone(),
                    method,
                };
                let cancels = is_cancel.then(|| ServerKey::Rfc3261 {
                    branch: branch.clone(),
                    sent_by: req.sent_by.clone(),
                    method: Bytes::from_static(INVITE),
                });
                ServerLookup { key, cancels }
            }
            _ => {
                let fields = Rfc2543Fields {
                    request_uri: req.request_uri.clone(),
                    to_tag: req.to_tag.clone(),
                    from_tag: req.from_tag.clone(),
                    call_id: req.call_id.clone(),
                    cseq: req.cseq,
                    method,
                    top_via: req.top_via.clone(),
                };
                let cancels = is_cancel.then(|| {
                    ServerKey::Rfc2543(Rfc2543Fields {
                        method: Bytes::from_static(INVITE),
                        ..fields.clone()
                    })
                });
                let key = if is_ack {
                    ServerKey::Rfc2543Ack(fields)
                } else {
                    ServerKey::Rfc2543(fields)
                };
                ServerLookup { key, cancels }
            }
        }
    }

    /// The dialog key of an ACK for a 2xx: from the INVITE's facts and the
    /// 2xx To tag (registration) or from the ACK's facts and its own To tag
    /// (lookup).
    pub fn dialog_ack(req: &RequestFacts, to_tag: Option<Bytes>) -> ServerKey {
        ServerKey::DialogAck {
            call_id: req.call_id.clone(),
            cseq: req.cseq,
            from_tag: req.from_tag.clone(),
            to_tag,
        }
    }

    /// For an RFC 2543 INVITE transaction: the key its ACK will carry once
    /// a response with `response_to_tag` was sent.
    pub fn ack_key(&self, response_to_tag: Option<Bytes>) -> Option<ServerKey> {
        match self {
            ServerKey::Rfc2543(f) if f.method.as_ref() == INVITE => {
                Some(ServerKey::Rfc2543Ack(Rfc2543Fields {
                    to_tag: response_to_tag,
                    ..f.clone()
                }))
            }
            _ => None,
        }
    }
}

/// Lowercases the host of a `host[:port]` sent-by (IPv6 references keep
/// their brackets) without touching the port.
pub fn normalize_sent_by(sent_by: &[u8]) -> Bytes {
    let trimmed = sent_by.trim_ascii();
    Bytes::from(trimmed.to_ascii_lowercase())
}

/// Mints RFC 3261 branches from a caller-provided seed and a counter, so the
/// layer needs no RNG: `z9hG4bK` followed by 16 hex digits of a SplitMix64
/// permutation of `seed + n`. Distinct for 2^64 calls; unpredictable to a
/// peer only as far as the seed is.
#[derive(Clone, Debug)]
pub struct BranchGenerator {
    seed: u64,
    counter: u64,
}

impl BranchGenerator {
    /// A generator whose sequence is fixed by `seed`.
    pub fn new(seed: u64) -> Self {
        BranchGenerator { seed, counter: 0 }
    }

    /// The next branch.
    pub fn next_branch(&mut self) -> String {
        self.counter = self.counter.wrapping_add(1);
        let mut z = self
            .seed
            .wrapping_add(self.counter.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        format!("{MAGIC_COOKIE}{z:016x}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(method: &'static str, branch: Option<&'static str>) -> RequestFacts {
        RequestFacts {
            method: Bytes::from_static(method.as_bytes()),
            request_uri: Bytes::from_static(b"sip:bob@example.com"),
            cseq: 7,
            branch: branch.map(|b| Bytes::from_static(b.as_bytes())),
            sent_by: normalize_sent_by(b"PC33.Example.com:5060"),
            top_via: Bytes::from_static(b"SIP/2.0/UDP pc33.example.com:5060"),
            call_id: Bytes::from_static(b"a84b4c76e66710"),
            from_tag: Some(Bytes::from_static(b"1928301774")),
            to_tag: None,
        }
    }

    /// A stored key owns its bytes: equal to the lookup key, but not a view into the datagram.
    #[test]
    fn detached_keys_match_and_own_their_bytes() {
        let datagram = Bytes::from(b"REGISTER z9hG4bKabc PUBLISH".to_vec());
        for method in [datagram.slice(0..8), datagram.slice(20..27)] {
            let mut f = facts("REGISTER", None);
            f.branch = Some(datagram.slice(9..19));
            f.method = method;
            let key = ServerKey::lookup(&f).key;
            let stored = key.detached();
            assert_eq!(stored, key);
            let ServerKey::Rfc3261 { branch, method, .. } = &stored else {
                panic!("an RFC 3261 key: {stored:?}");
            };
            let inside = |b: &Bytes| {
                let range = datagram.as_ptr_range();
                range.contains(&b.as_ptr())
            };
            assert!(!inside(branch) && !inside(method), "{stored:?}");
        }
    }

    #[test]
    fn rfc3261_ack_and_cancel_map_to_invite() {
        let invite = ServerKey::lookup(&facts("INVITE", Some("z9hG4bK776asdhds")));
        assert_eq!(invite.cancels, None);
        let ack = ServerKey::lookup(&facts("ACK", Some("z9hG4bK776asdhds")));
        assert_eq!(ack.key, invite.key);
        let cancel = ServerKey::lookup(&facts("CANCEL", Some("z9hG4bK776asdhds")));
        assert_ne!(cancel.key, invite.key, "CANCEL is its own transaction");
        assert_eq!(cancel.cancels, Some(invite.key.clone()));
        let other_branch = ServerKey::lookup(&facts("INVITE", Some("z9hG4bK776asdhdX")));
        assert_ne!(other_branch.key, invite.key);
        let mut other_host = facts("INVITE", Some("z9hG4bK776asdhds"));
        other_host.sent_by = normalize_sent_by(b"pc34.example.com:5060");
        assert_ne!(ServerKey::lookup(&other_host).key, invite.key);
        if let ServerKey::Rfc3261 { sent_by, .. } = &invite.key {
            assert_eq!(sent_by.as_ref(), b"pc33.example.com:5060");
        } else {
            panic!("magic cookie branch must use RFC 3261 matching");
        }
    }

    #[test]
    fn rfc2543_fallback_uses_dialog_fields_and_response_tag_for_ack() {
        let invite = ServerKey::lookup(&facts("INVITE", Some("1234old")));
        assert!(matches!(invite.key, ServerKey::Rfc2543(_)));
        let same = ServerKey::lookup(&facts("INVITE", Some("1234old")));
        assert_eq!(same.key, invite.key);
        let mut ack = facts("ACK", Some("1234old"));
        ack.to_tag = Some(Bytes::from_static(b"as8d9"));
        let ack_lookup = ServerKey::lookup(&ack);
        assert_eq!(
            Some(ack_lookup.key.clone()),
            invite.key.ack_key(Some(Bytes::from_static(b"as8d9")))
        );
        assert_ne!(
            Some(ack_lookup.key),
            invite.key.ack_key(Some(Bytes::from_static(b"other")))
        );
        let cancel = ServerKey::lookup(&facts("CANCEL", None));
        assert_eq!(cancel.cancels, Some(invite.key.clone()));
        let mut other_cseq = facts("INVITE", None);
        other_cseq.cseq = 8;
        assert_ne!(ServerKey::lookup(&other_cseq).key, invite.key);
    }

    #[test]
    fn client_key_uses_branch_and_cseq_method() {
        let k = ClientKey::for_request(
            Bytes::from_static(b"z9hG4bKx"),
            Bytes::from_static(b"INVITE"),
        );
        let resp = ResponseFacts {
            status: 180,
            branch: Some(Bytes::from_static(b"z9hG4bKx")),
            cseq_method: Bytes::from_static(b"INVITE"),
            to_tag: None,
        };
        assert_eq!(ClientKey::for_response(&resp), Some(k.clone()));
        let cancel_resp = ResponseFacts {
            cseq_method: Bytes::from_static(b"CANCEL"),
            ..resp.clone()
        };
        assert_ne!(ClientKey::for_response(&cancel_resp), Some(k));
        let no_branch = ResponseFacts {
            branch: None,
            ..resp
        };
        assert_eq!(ClientKey::for_response(&no_branch), None);
    }

    #[test]
    fn branches_are_cookie_prefixed_distinct_and_seeded() {
        let mut a = BranchGenerator::new(1);
        let mut b = BranchGenerator::new(1);
        let mut c = BranchGenerator::new(2);
        let a1 = a.next_branch();
        assert!(a1.starts_with(MAGIC_COOKIE));
        assert_eq!(a1.len(), MAGIC_COOKIE.len() + 16);
        assert_eq!(a1, b.next_branch(), "same seed, same sequence");
        assert_ne!(a1, c.next_branch());
        let set: std::collections::HashSet<String> = (0..1000).map(|_| a.next_branch()).collect();
        assert_eq!(set.len(), 1000);
    }
}
