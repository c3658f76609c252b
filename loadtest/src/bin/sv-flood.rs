//! `sv-flood`: a bounded flood of the hostile mix (garbage, OPTIONS, REGISTER, INVITE,
//! wrong-password REGISTER) from one or more local source addresses; prints the rate achieved
//! as JSON.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use clap::Parser;
use sipveil_loadtest::flood::{self, FloodSpec};

#[derive(Parser, Debug)]
struct Args {
    /// Target address, e.g. 198.18.3.1:5060.
    #[arg(long)]
    target: SocketAddr,
    /// Source address(es) to bind (port 0 is picked by the kernel); repeat for several.
    #[arg(long = "source", default_value = "0.0.0.0")]
    sources: Vec<IpAddr>,
    /// SIP domain written into the requests.
    #[arg(long, default_value = "lab.sipveil.test")]
    domain: String,
    /// Sending threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Packet bound.
    #[arg(long, default_value_t = 1_000_000)]
    packets: u64,
    /// Time bound in seconds.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Target rate in packets per second (0 = flat out).
    #[arg(long, default_value_t = 0)]
    rate: u64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        args.seconds.is_finite() && args.seconds > 0.0 && args.seconds <= 600.0,
        "--seconds must be in (0, 600]"
    );
    let spec = FloodSpec {
        target: args.target,
        sources: args
            .sources
            .iter()
            .map(|ip| SocketAddr::new(*ip, 0))
            .collect(),
        domain: args.domain,
        threads: args.threads,
        max_packets: args.packets,
        max_duration: Duration::from_secs_f64(args.seconds),
        rate_pps: args.rate,
    };
    let report = flood::run(&spec)?;
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}
