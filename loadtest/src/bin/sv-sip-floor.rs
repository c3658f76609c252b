//! `sv-sip-floor`: the registrar benchmark's floor — a stateless UDP responder in the server's
//! place (see `sipveil_loadtest::floor`). Runs until killed.

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Parser;
use sipveil_loadtest::floor;

/// Answers REGISTER/OPTIONS statelessly: 401 in the authenticated domain without credentials,
/// 200 otherwise. No registrar, no storage, no digest check.
#[derive(Parser)]
struct Opts {
    /// Address to listen on (UDP).
    #[arg(long, default_value = "198.18.1.1:5060")]
    listen: SocketAddr,
    /// Threads, each with its own SO_REUSEPORT socket.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// The domain whose REGISTERs without credentials get a 401.
    #[arg(long, default_value = "auth.lab")]
    auth_domain: String,
}

fn main() -> ExitCode {
    let o = Opts::parse();
    let mut socks = Vec::new();
    for _ in 0..o.threads.max(1) {
        match floor::reuseport_socket(o.listen) {
            Ok(s) => socks.push(s),
            Err(e) => {
                eprintln!("sv-sip-floor: binding {}: {e}", o.listen);
                return ExitCode::FAILURE;
            }
        }
    }
    let handles: Vec<_> = socks
        .into_iter()
        .enumerate()
        .map(|(i, s)| {
            let domain = o.auth_domain.clone();
            std::thread::Builder::new()
                .name(format!("floor-{i}"))
                .spawn(move || floor::serve(&s, &domain, i as u64))
        })
        .collect();
    for h in handles {
        match h.map(|h| h.join()) {
            Ok(Ok(Err(e))) => eprintln!("sv-sip-floor: {e}"),
            Ok(Ok(Ok(()))) => {}
            Ok(Err(_)) => eprintln!("sv-sip-floor: a thread panicked"),
            Err(e) => eprintln!("sv-sip-floor: starting a thread: {e}"),
        }
    }
    ExitCode::FAILURE
}
