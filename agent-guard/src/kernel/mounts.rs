//! The pseudo filesystems the programs need (tracefs, bpffs, securityfs), mounted when a
//! fresh host lacks them.
use std::io;

use tracing::info;

/// Whether a filesystem of type `fstype` is mounted at `dir` (per /proc/self/mountinfo).
pub fn is_mounted(fstype: &str, dir: &str) -> io::Result<bool> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    Ok(info.lines().any(|l| {
        let Some((left, right)) = l.split_once(" - ") else { return false };
        left.split_whitespace().nth(4) == Some(dir) && right.split_whitespace().next() == Some(fstype)
    }))
}

/// Mounts `fstype` at `dir` unless one is mounted there already. Idempotent and race-free:
/// several daemons starting at once may all try; a mount that fails because another one won
/// (EBUSY, or any error after which the mount table shows the right type there) is success.
pub fn ensure_mounted(fstype: &str, dir: &str) -> io::Result<()> {
    if is_mounted(fstype, dir)? {
        return Ok(());
    }
    info!("mounting {fstype} at {dir}");
    match nix::mount::mount(Some(fstype), dir, Some(fstype), nix::mount::MsFlags::empty(), None::<&str>) {
        Ok(()) => Ok(()),
        Err(e) => {
            if is_mounted(fstype, dir)? {
                info!("{fstype} at {dir} was mounted meanwhile by someone else ({e})");
                Ok(())
            } else {
                Err(io::Error::new(io::Error::from(e).kind(), format!("mount {fstype} at {dir}: {e}")))
            }
        }
    }
}
