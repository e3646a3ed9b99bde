//! Real companions from Debian (coturn, Prometheus) for the tests that start them: found on the
//! `PATH`, or installed with `apt-get` when missing.

use std::process::{Command, Stdio};
use std::sync::Mutex;

/// One `apt-get` at a time in this test binary: dpkg's lock refuses a second one.
static APT: Mutex<()> = Mutex::new(());

/// Whether `binary` runs (`binary --version`), installing Debian's `package` when it does not.
/// Blocking: call it from `spawn_blocking`.
pub fn installed(binary: &str, package: &str) -> bool {
    let present = || {
        Command::new(binary)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok()
    };
    if present() {
        return true;
    }
    let _apt = APT.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if present() {
        return true;
    }
    let apt = |args: &[&str]| {
        Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
    };
    if !apt(&["install", "-y", "-q", package]) {
        apt(&["update", "-q"]);
        apt(&["install", "-y", "-q", package]);
    }
    present()
}
