//! `sipveil_entry`: the one XDP program attached to each of the edge's interfaces.
//!
//! The media relay (`relay`) parses each frame once; what is not for a relay port goes to the SIP
//! flood shield (`shield`): UDP to the SIP ports and TCP SYNs to the SIP TCP/TLS ports, IPv4 and
//! IPv6. Fail-open: any frame it does not own, or cannot handle, leaves with XDP_PASS untouched,
//! so the kernel stack and the daemon's userspace relay see it. The only drops are a strict-source
//! mismatch and the shield's (blocked source, per-source rate, global ceiling).
#![no_std]
#![no_main]
// Atomic adds to map values: the bpfel target has no CAS, so `AtomicU64::fetch_add` is missing.
#![feature(core_intrinsics)]
#![expect(
    internal_features,
    reason = "atomic_xadd is the only atomic add on bpfel"
)]

mod maps;
mod relay;
mod shield;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use sipveil_abi::Counter;

#[xdp]
pub fn sipveil_entry(ctx: XdpContext) -> u32 {
    maps::count(Counter::Rx);
    // Fail-open: every frame we do not relay or drop (strict mode, shield) passes to the stack,
    // its bytes unchanged, and its reason is counted.
    match relay::try_relay(&ctx) {
        Ok(action) => action,
        Err(reason) => {
            maps::count(reason);
            xdp_action::XDP_PASS
        }
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
