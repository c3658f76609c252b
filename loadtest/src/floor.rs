//! The lab's floor for the registrar benchmark: a stateless UDP responder that answers every
//! REGISTER (and OPTIONS) without a registrar, a database, digest checks or a SIP parser worth
//! the name — it copies the few header lines a client matches on into a canned response.
//!
//! Run in the server's place (`sv-sip-floor`, same address, same number of threads as the
//! servers' workers, one `SO_REUSEPORT` socket and one blocking `recvfrom`/`sendto` loop per
//! thread, as Kamailio's UDP children do), it measures what any UDP registrar pays on this box
//! before doing any work of its own: the kernel's receive path, the send path (over veth that
//! includes the client's receive path and wake-up, charged to the sender), the wake-ups, and
//! the load generators' own limit. Its figures bound the ratios a server can show here: a server
//! cannot use less CPU per REGISTER than the floor, nor be measured at a higher rate than the
//! generators can offer it.
//!
//! The authenticated domain gets a 401 with one MD5 challenge (`qop=auth`) for a REGISTER
//! without credentials and a 200 for one with them; the credentials are not checked.

use std::io::{self, Write};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::FromRawFd;

use crate::register_client::headers;

/// The answer to one datagram, appended to `out`; `false` (nothing appended) for responses,
/// ACKs and what does not look like a SIP request. `auth_domain`: requests whose Request-URI
/// names this host must carry an `Authorization` header, or get a 401. `n` makes tags and
/// nonces distinct.
pub fn answer(datagram: &[u8], auth_domain: &str, n: u64, out: &mut Vec<u8>) -> bool {
    let Ok(text) = std::str::from_utf8(datagram) else {
        return false;
    };
    let start = text.split("\r\n").next().unwrap_or(text);
    let mut parts = start.split(' ');
    let (Some(method), Some(uri), Some("SIP/2.0")) = (parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    if method == "ACK" {
        return false;
    }
    let (Some(from), Some(to), Some(call_id), Some(cseq)) = (
        headers(text, "From", Some("f")).first().copied(),
        headers(text, "To", Some("t")).first().copied(),
        headers(text, "Call-ID", Some("i")).first().copied(),
        headers(text, "CSeq", None).first().copied(),
    ) else {
        return false;
    };
    let host = uri
        .strip_prefix("sip:")
        .unwrap_or(uri)
        .rsplit('@')
        .next()
        .unwrap_or("")
        .split([';', ':', '?'])
        .next()
        .unwrap_or("");
    let challenge = method == "REGISTER"
        && host.eq_ignore_ascii_case(auth_domain)
        && headers(text, "Authorization", None).is_empty();
    out.extend_from_slice(if challenge {
        b"SIP/2.0 401 Unauthorized\r\n"
    } else {
        b"SIP/2.0 200 OK\r\n"
    });
    // Writing into a Vec cannot fail.
    for via in headers(text, "Via", Some("v")) {
        let _ = write!(out, "Via: {via}\r\n");
    }
    let _ = write!(out, "From: {from}\r\n");
    if to.contains(";tag=") {
        let _ = write!(out, "To: {to}\r\n");
    } else {
        let _ = write!(out, "To: {to};tag=f{n:x}\r\n");
    }
    let _ = write!(out, "Call-ID: {call_id}\r\nCSeq: {cseq}\r\n");
    if challenge {
        let _ = write!(
            out,
            "WWW-Authenticate: Digest realm=\"{auth_domain}\", nonce=\"{n:016x}\", qop=\"auth\", algorithm=MD5\r\n"
        );
    } else if method == "REGISTER" {
        for contact in headers(text, "Contact", Some("m")) {
            let _ = write!(out, "Contact: {contact};expires=3600\r\n");
        }
    }
    out.extend_from_slice(b"Content-Length: 0\r\n\r\n");
    true
}

/// A UDP socket on `addr` with `SO_REUSEPORT` (one per thread, like sipveil's workers).
pub fn reuseport_socket(addr: SocketAddr) -> io::Result<UdpSocket> {
    let SocketAddr::V4(v4) = addr else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the floor responder listens on IPv4 only",
        ));
    };
    // SAFETY: plain socket syscalls on a descriptor this function owns until it is wrapped.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let sock = UdpSocket::from_raw_fd(fd);
        let one: libc::c_int = 1;
        if libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_REUSEPORT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        ) != 0
        {
            return Err(io::Error::last_os_error());
        }
        let sin = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: v4.port().to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(*v4.ip()).to_be(),
            },
            sin_zero: [0; 8],
        };
        if libc::bind(
            fd,
            (&sin as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        ) != 0
        {
            return Err(io::Error::last_os_error());
        }
        Ok(sock)
    }
}

/// One thread's loop: receive, answer, send, until the socket fails.
pub fn serve(sock: &UdpSocket, auth_domain: &str, thread: u64) -> io::Result<()> {
    let mut buf = vec![0u8; 65536];
    let mut out = Vec::with_capacity(2048);
    let mut n = thread << 48;
    loop {
        let (len, peer) = sock.recv_from(&mut buf)?;
        out.clear();
        n += 1;
        if answer(&buf[..len], auth_domain, n, &mut out) {
            // A full socket buffer or a vanished client loses this answer only.
            let _ = sock.send_to(&out, peer);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REG: &str = "REGISTER sip:auth.lab SIP/2.0\r\n\
        Via: SIP/2.0/UDP 198.18.2.2:5070;rport;branch=z9hG4bK1\r\n\
        From: <sip:alice@auth.lab>;tag=a1\r\n\
        To: <sip:alice@auth.lab>\r\n\
        Call-ID: c1@x\r\n\
        CSeq: 1 REGISTER\r\n\
        Contact: <sip:alice@198.18.2.2:5070>\r\n\
        Content-Length: 0\r\n\r\n";

    fn answered(req: &str) -> Option<String> {
        let mut out = Vec::new();
        answer(req.as_bytes(), "auth.lab", 7, &mut out)
            .then(|| String::from_utf8(out).unwrap_or_default())
    }

    #[test]
    fn challenges_a_register_without_credentials_in_the_auth_domain() {
        let a = answered(REG).unwrap_or_default();
        assert!(a.starts_with("SIP/2.0 401 Unauthorized\r\n"), "{a}");
        assert!(a.contains("Via: SIP/2.0/UDP 198.18.2.2:5070;rport;branch=z9hG4bK1\r\n"));
        assert!(a.contains("To: <sip:alice@auth.lab>;tag=f7\r\n"));
        assert!(a.contains("Call-ID: c1@x\r\nCSeq: 1 REGISTER\r\n"));
        assert!(a.contains("algorithm=MD5") && a.contains("qop=\"auth\""));
        assert!(a.ends_with("Content-Length: 0\r\n\r\n"));
    }

    #[test]
    fn accepts_credentials_and_the_open_domain() {
        let with = REG.replace(
            "CSeq: 1",
            "Authorization: Digest username=\"alice\"\r\nCSeq: 2",
        );
        let a = answered(&with).unwrap_or_default();
        assert!(a.starts_with("SIP/2.0 200 OK\r\n"), "{a}");
        assert!(a.contains("Contact: <sip:alice@198.18.2.2:5070>;expires=3600\r\n"));
        let open = REG.replace("sip:auth.lab SIP", "sip:open.lab SIP");
        assert!(
            answered(&open)
                .unwrap_or_default()
                .starts_with("SIP/2.0 200 OK")
        );
    }

    #[test]
    fn ignores_responses_acks_and_garbage() {
        assert_eq!(answered("SIP/2.0 200 OK\r\nCSeq: 1 REGISTER\r\n\r\n"), None);
        assert_eq!(answered(&REG.replace("REGISTER sip", "ACK sip")), None);
        assert_eq!(answered("hello"), None);
        assert_eq!(answered(&REG.replace("Call-ID: c1@x\r\n", "")), None);
    }

    #[test]
    fn answers_over_a_reuseport_socket() {
        let addr: SocketAddr = "127.0.0.1:0".parse().unwrap_or_else(|e| panic!("{e}"));
        let server = reuseport_socket(addr).unwrap_or_else(|e| panic!("{e}"));
        let at = server.local_addr().unwrap_or_else(|e| panic!("{e}"));
        std::thread::spawn(move || serve(&server, "auth.lab", 1));
        let client = UdpSocket::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
        client
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap_or_else(|e| panic!("{e}"));
        client
            .send_to(REG.as_bytes(), at)
            .unwrap_or_else(|e| panic!("{e}"));
        let mut buf = [0u8; 2048];
        let (len, _) = client.recv_from(&mut buf).unwrap_or_else(|e| panic!("{e}"));
        assert!(buf[..len].starts_with(b"SIP/2.0 401 "));
    }
}
