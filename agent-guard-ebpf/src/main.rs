//! agent-guard kernel programs: the tracepoint backend and observation, the cgroup network
//! programs, the BPF LSM programs of the lsm backend (`lsm`) and the fmod_ret programs of the
//! trampoline backend (`trampoline`), which share their decisions.
//!
//! Every program starts with [`run::current_run`]: one helper call and one compare decide
//! whether the current task lives under this daemon's managed cgroup root. Every other process
//! on the host returns right there.
#![no_std]
// atomic_xadd: the target has no atomic types, but BPF has an atomic add with fetch.
#![feature(core_intrinsics)]
#![allow(internal_features)]
#![no_main]

mod contain;
mod dns;
mod event;
mod exec;
mod exit;
mod files;
mod kernel;
mod listen;
mod lsm;
mod net;
mod policy;
mod run;
mod scratch;
mod sockets;
mod syscalls;
mod trampoline;
mod tripwire;
mod unix;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
