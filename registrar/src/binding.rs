//! Versioned binary encoding of [`Binding`] (no serde) and store keys.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::{Binding, DecodeError, FlowInfo, Proto};

const VERSION: u8 = 1;

impl Binding {
    /// The binding's identity inside its AOR: `(+sip.instance, reg-id)`
    /// when both are present (RFC 5626), else the Contact URI as written.
    pub fn id(&self) -> Vec<u8> {
        let mut id = Vec::with_capacity(self.id_len());
        self.push_id(&mut id);
        id
    }

    /// Length of [`Binding::id`] (so the key can be written with one allocation).
    fn id_len(&self) -> usize {
        match (&self.instance, self.reg_id) {
            // "o:" instance ";" reg-id (at most 10 digits for a u32).
            (Some(i), Some(_)) => 2 + i.len() + 1 + 10,
            _ => 2 + self.contact.len(),
        }
    }

    /// Appends [`Binding::id`] to `out`.
    fn push_id(&self, out: &mut Vec<u8>) {
        match (&self.instance, self.reg_id) {
            (Some(i), Some(r)) => {
                out.extend_from_slice(b"o:");
                out.extend_from_slice(i.as_bytes());
                out.push(b';');
                // Writing to a Vec cannot fail.
                let _ = std::io::Write::write_fmt(out, format_args!("{r}"));
            }
            _ => {
                out.extend_from_slice(b"c:");
                out.extend_from_slice(self.contact.as_bytes());
            }
        }
    }

    /// Whether `self` and `o` have the same [`Binding::id`] (without allocating).
    pub fn same_id(&self, o: &Binding) -> bool {
        match ((&self.instance, self.reg_id), (&o.instance, o.reg_id)) {
            ((Some(a), Some(x)), (Some(b), Some(y))) => x == y && a == b,
            ((Some(_), Some(_)), _) | (_, (Some(_), Some(_))) => false,
            _ => self.contact == o.contact,
        }
    }

    /// Store key: AOR bytes ++ 0x00 ++ binding id.
    pub fn key(&self) -> Vec<u8> {
        let mut k = Vec::with_capacity(self.aor.len() + 1 + self.id_len());
        k.extend_from_slice(self.aor.as_bytes());
        k.push(0);
        self.push_id(&mut k);
        k
    }

    /// Encode (version 1).
    pub fn encode(&self) -> Vec<u8> {
        let mut o =
            Vec::with_capacity(96 + self.aor.len() + self.contact.len() + self.call_id.len());
        o.push(VERSION);
        put_str(&mut o, &self.aor);
        put_str(&mut o, &self.contact);
        o.extend_from_slice(&self.q.to_le_bytes());
        o.extend_from_slice(&self.expires_at_ms.to_le_bytes());
        put_str(&mut o, &self.call_id);
        o.extend_from_slice(&self.cseq.to_le_bytes());
        match &self.instance {
            Some(i) => {
                o.push(1);
                put_str(&mut o, i);
            }
            None => o.push(0),
        }
        match self.reg_id {
            Some(r) => {
                o.push(1);
                o.extend_from_slice(&r.to_le_bytes());
            }
            None => o.push(0),
        }
        o.push(match self.flow.proto {
            Proto::Udp => 0,
            Proto::Tcp => 1,
            Proto::Tls => 2,
        });
        put_addr(&mut o, self.flow.local);
        put_addr(&mut o, self.flow.peer);
        o.extend_from_slice(&self.flow.worker.to_le_bytes());
        o.extend_from_slice(&self.flow.conn.to_le_bytes());
        o.extend_from_slice(&self.registered_at_ms.to_le_bytes());
        o
    }

    /// Decode what [`Binding::encode`] wrote.
    pub fn decode(b: &[u8]) -> Result<Binding, DecodeError> {
        let mut r = Reader { b, pos: 0 };
        match r.u8()? {
            VERSION => {}
            _ => return Err(DecodeError("unknown version")),
        }
        let aor = r.str()?;
        let contact = r.str()?;
        let q = u16::from_le_bytes(r.arr()?);
        if q > 1000 {
            return Err(DecodeError("q above 1000"));
        }
        let expires_at_ms = u64::from_le_bytes(r.arr()?);
        let call_id = r.str()?;
        let cseq = u32::from_le_bytes(r.arr()?);
        let instance = match r.u8()? {
            0 => None,
            1 => Some(r.str()?),
            _ => return Err(DecodeError("bad instance tag")),
        };
        let reg_id = match r.u8()? {
            0 => None,
            1 => Some(u32::from_le_bytes(r.arr()?)),
            _ => return Err(DecodeError("bad reg-id tag")),
        };
        let proto = match r.u8()? {
            0 => Proto::Udp,
            1 => Proto::Tcp,
            2 => Proto::Tls,
            _ => return Err(DecodeError("bad proto")),
        };
        let local = r.addr()?;
        let peer = r.addr()?;
        let worker = u16::from_le_bytes(r.arr()?);
        let conn = u64::from_le_bytes(r.arr()?);
        let registered_at_ms = u64::from_le_bytes(r.arr()?);
        if r.pos != b.len() {
            return Err(DecodeError("trailing bytes"));
        }
        if !aor.contains('@') {
            return Err(DecodeError("aor without @"));
        }
        Ok(Binding {
            aor,
            contact,
            q,
            expires_at_ms,
            call_id,
            cseq,
            instance,
            reg_id,
            flow: FlowInfo {
                proto,
                local,
                peer,
                worker,
                conn,
            },
            registered_at_ms,
        })
    }
}

fn put_str(o: &mut Vec<u8>, s: &str) {
    // Every string comes from a parsed SIP message (bounded far below 4 GiB).
    let n = u32::try_from(s.len()).unwrap_or(u32::MAX);
    o.extend_from_slice(&n.to_le_bytes());
    o.extend_from_slice(&s.as_bytes()[..n as usize]);
}

fn put_addr(o: &mut Vec<u8>, a: SocketAddr) {
    match a.ip() {
        IpAddr::V4(ip) => {
            o.push(4);
            o.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            o.push(6);
            o.extend_from_slice(&ip.octets());
        }
    }
    o.extend_from_slice(&a.port().to_le_bytes());
}

struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], DecodeError> {
        let end = self
            .pos
            .checked_add(n)
            .ok_or(DecodeError("length overflow"))?;
        let s = self.b.get(self.pos..end).ok_or(DecodeError("truncated"))?;
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    fn arr<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let s = self.take(N)?;
        <[u8; N]>::try_from(s).map_err(|_| DecodeError("truncated"))
    }
    fn str(&mut self) -> Result<String, DecodeError> {
        let n = u32::from_le_bytes(self.arr()?) as usize;
        let s = self.take(n)?;
        String::from_utf8(s.to_vec()).map_err(|_| DecodeError("string not UTF-8"))
    }
    fn addr(&mut self) -> Result<SocketAddr, DecodeError> {
        let ip = match self.u8()? {
            4 => IpAddr::V4(Ipv4Addr::from(self.arr::<4>()?)),
            6 => IpAddr::V6(Ipv6Addr::from(self.arr::<16>()?)),
            _ => return Err(DecodeError("bad address family")),
        };
        let port = u16::from_le_bytes(self.arr()?);
        Ok(SocketAddr::new(ip, port))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> Binding {
        Binding {
            aor: "alice@open.lab".into(),
            contact: "sip:alice@198.18.1.2:5060;transport=tcp".into(),
            q: 500,
            expires_at_ms: 1_700_000_600_000,
            call_id: "abc@198.18.1.2".into(),
            cseq: 7,
            instance: Some("<urn:uuid:00000000-0000-1000-8000-000A95A0E128>".into()),
            reg_id: Some(1),
            flow: FlowInfo {
                proto: Proto::Tcp,
                local: "198.18.1.1:5060".parse().expect("addr"),
                peer: "[2001:db8::2]:40000".parse().expect("addr"),
                worker: 1,
                conn: 42,
            },
            registered_at_ms: 1_700_000_000_000,
        }
    }

    /// Store keys are on disk: the allocation-free writer must produce exactly the layout
    /// of earlier releases (`aor \0 o:instance;reg-id` or `aor \0 c:contact`).
    #[test]
    fn keys_keep_their_stored_layout() {
        let b = sample();
        let (Some(i), Some(r)) = (&b.instance, b.reg_id) else {
            panic!("the sample has an instance and a reg-id");
        };
        assert_eq!(b.key(), format!("{}\0o:{i};{r}", b.aor).into_bytes());
        assert_eq!(b.id(), format!("o:{i};{r}").into_bytes());
        let mut big = b.clone();
        big.reg_id = Some(u32::MAX);
        assert_eq!(
            big.key(),
            format!("{}\0o:{i};{}", b.aor, u32::MAX).into_bytes()
        );
        let mut c = b.clone();
        c.reg_id = None;
        assert_eq!(c.key(), format!("{}\0c:{}", c.aor, c.contact).into_bytes());
        assert_eq!(c.id(), format!("c:{}", c.contact).into_bytes());
    }

    #[test]
    fn round_trip() {
        let b = sample();
        assert_eq!(Binding::decode(&b.encode()), Ok(b.clone()));
        let mut c = b.clone();
        c.instance = None;
        c.reg_id = None;
        c.flow.proto = Proto::Udp;
        assert_eq!(Binding::decode(&c.encode()), Ok(c.clone()));
        assert!(c.key().starts_with(b"alice@open.lab\0c:sip:alice@"));
        assert!(b.key().starts_with(b"alice@open.lab\0o:<urn:uuid:"));
        // same_id agrees with comparing ids
        let mut d = b.clone();
        d.contact = "sip:other".into();
        for (x, y) in [(&b, &c), (&b, &d), (&c, &c), (&b, &b)] {
            assert_eq!(x.same_id(y), x.id() == y.id());
        }
        let mut e = c.clone();
        e.contact = "sip:other".into();
        assert_eq!(c.same_id(&e), c.id() == e.id());
    }

    #[test]
    fn every_truncation_and_corruption_is_an_error() {
        let enc = sample().encode();
        for n in 0..enc.len() {
            assert!(Binding::decode(&enc[..n]).is_err(), "prefix {n}");
        }
        let mut long = enc.clone();
        long.push(0);
        assert_eq!(Binding::decode(&long), Err(DecodeError("trailing bytes")));
        let mut v = enc.clone();
        v[0] = 2;
        assert_eq!(Binding::decode(&v), Err(DecodeError("unknown version")));
        // flipping any byte never panics
        for i in 0..enc.len() {
            let mut x = enc.clone();
            x[i] ^= 0xff;
            let _ = Binding::decode(&x);
        }
    }
}
