//! Stopping a case cleanly when the test process is asked to stop.
//!
//! nextest sends SIGTERM to a case that overran its timeout (then SIGKILL after a grace
//! period), a user presses ^C (SIGINT), a CI runner hangs up (SIGHUP). Dying on the spot would
//! leave the VM's resources behind: under qemu a child process, in every backend the per-case
//! files. So the first such signal only sets a flag: the VM session sees it within one poll
//! ([`crate::vm::session::POLL`]) and stops the machine, every owner drops its resources, and
//! the harness then ends the process *by the same signal* ([`exit_as_signalled`]), so the
//! parent still sees "killed by SIGTERM". A second signal ends the process at once (exit
//! status 1), for a user who does not want to wait.
//!
//! What cannot run on SIGKILL is made unnecessary instead: qemu dies with its parent
//! (`PR_SET_PDEATHSIG`), guest RAM and the per-case initramfs are memfds, and files are
//! written under temporary names and renamed, so a killed writer leaves nothing half-written.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

/// The signals that ask a case to stop.
pub const SIGNALS: [i32; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

struct Flags {
    /// Set by the first signal; handed to VM sessions as their cancel flag.
    cancel: Arc<AtomicBool>,
    /// The number of the last signal received (0: none).
    signal: Arc<AtomicUsize>,
}

static FLAGS: OnceLock<Flags> = OnceLock::new();

/// Installs the handlers (once per process) and returns the flag they set, for
/// [`crate::vm::VmSpec::cancel`]. If a handler cannot be installed the flag is returned all
/// the same and the signal keeps its default action (the process dies, as before), with a note.
pub fn install() -> Arc<AtomicBool> {
    let flags = FLAGS.get_or_init(|| {
        let flags = Flags {
            cancel: Arc::new(AtomicBool::new(false)),
            signal: Arc::new(AtomicUsize::new(0)),
        };
        for sig in SIGNALS {
            // A signal the process was started ignoring (nohup's SIGHUP, SIGINT in a
            // background job) stays ignored, as the shell meant.
            if ignored(sig) {
                continue;
            }
            // Order matters: the conditional shutdown sees the flag as the *previous* signal
            // left it, so only a second signal exits at once.
            let r =
                signal_hook::flag::register_conditional_shutdown(sig, 1, Arc::clone(&flags.cancel))
                    .and_then(|_| {
                        signal_hook::flag::register_usize(
                            sig,
                            Arc::clone(&flags.signal),
                            sig as usize,
                        )
                    })
                    .and_then(|_| signal_hook::flag::register(sig, Arc::clone(&flags.cancel)));
            if let Err(e) = r {
                eprintln!(
                    "ktstr: cannot handle signal {sig} ({e}); it will end the process without \
                     stopping the VM first"
                );
            }
        }
        flags
    });
    Arc::clone(&flags.cancel)
}

/// Makes the child `cmd` starts die (SIGKILL) when the thread that starts it ends: a process
/// killed with SIGKILL, which can run no cleanup, then takes its children (qemu, objcopy)
/// along instead of leaving them running. Start such children from a thread that lives as
/// long as they are needed (the one running the case or the session).
pub(crate) fn die_with_parent(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: the closure runs in the child between fork and exec and only makes the
    // async-signal-safe calls prctl, getppid and _exit.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died before the prctl: then nobody would kill us.
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
}

/// Whether `sig`'s current action is SIG_IGN.
fn ignored(sig: i32) -> bool {
    // SAFETY: sigaction(2) with a null new action only reads the current one into `old`, a
    // zeroed (valid) struct.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        libc::sigaction(sig, std::ptr::null(), &mut old) == 0 && old.sa_sigaction == libc::SIG_IGN
    }
}

/// The signal that asked this process to stop, if one did.
pub fn received() -> Option<i32> {
    let sig = FLAGS.get()?.signal.load(Ordering::SeqCst);
    (sig != 0).then_some(sig as i32)
}

/// A signal's conventional name (`SIGTERM`), or its number.
pub fn name(sig: i32) -> String {
    match sig {
        libc::SIGINT => "SIGINT".into(),
        libc::SIGTERM => "SIGTERM".into(),
        libc::SIGHUP => "SIGHUP".into(),
        libc::SIGKILL => "SIGKILL".into(),
        n => format!("signal {n}"),
    }
}

/// Ends this process by `sig` with its default action, so the parent sees the signal that
/// stopped us. Call it once every resource has been released.
pub fn exit_as_signalled(sig: i32) -> ! {
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    // SAFETY: restoring the default action of a valid signal and raising it; if it returns
    // (the signal is blocked), the exit below still ends the process with the shell's code.
    unsafe {
        libc::signal(sig, libc::SIG_DFL);
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, sig);
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
        libc::raise(sig);
    }
    std::process::exit(128 + sig)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_stop_signals() {
        assert_eq!(name(libc::SIGTERM), "SIGTERM");
        assert_eq!(name(libc::SIGINT), "SIGINT");
        assert_eq!(name(libc::SIGHUP), "SIGHUP");
        assert_eq!(name(64), "signal 64");
    }
}
