//! The guest side: the host binary, started as PID 1 inside the VM, becomes the guest init.
//!
//! [`boot`] mounts the pseudo filesystems, checks that the initramfs unpacked completely, and
//! opens the shared-memory result channel; [`send`] appends frames to it; [`exit`] ends the VM
//! on purpose through the exit port (0xF4), which both backends treat as a deliberate end.

pub mod shell;
pub mod topo;

use std::ffi::CString;
use std::fs;
use std::sync::Mutex;

use crate::shm::{FrameType, FrameWriter};

/// Status byte the guest writes to the exit port when the init itself panicked.
pub const EXIT_INIT_PANIC: u8 = 254;
/// Status byte when the guest could not set itself up.
pub const EXIT_SETUP_FAILED: u8 = 253;

/// Path of the last file in every ktstr initramfs; its absence means the unpack ran out of
/// memory part-way (the kernel does not report that).
pub use crate::protocol::SENTINEL_PATH as SENTINEL;

/// The guest I/O port whose writes end the VM (qemu's isa-debug-exit convention).
pub use crate::protocol::EXIT_PORT;

static CHANNEL: Mutex<Option<FrameWriter>> = Mutex::new(None);

/// Why guest setup failed.
#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    /// A mount failed.
    #[error("mounting {fstype} on {target} failed: {source}")]
    Mount {
        /// Filesystem type.
        fstype: String,
        /// Mount point.
        target: String,
        /// errno.
        source: std::io::Error,
    },
    /// The initramfs is incomplete.
    #[error("the initramfs is incomplete ({SENTINEL} missing): the guest ran out of memory while unpacking it; raise the VM's memory")]
    IncompleteInitramfs,
    /// The kernel command line has no usable `ktstr_shm=`.
    #[error("no usable ktstr_shm=<size>@<base> on the kernel command line: {0}")]
    NoChannel(String),
    /// Mapping the channel failed.
    #[error("mapping the result channel through /dev/mem failed: {0}")]
    Map(std::io::Error),
    /// Writing to the channel failed.
    #[error(transparent)]
    Shm(#[from] crate::shm::ShmError),
}

/// The guest's uptime in ms (first field of /proc/uptime), if readable.
fn uptime_ms() -> Option<u64> {
    let s = fs::read_to_string("/proc/uptime").ok()?;
    let secs: f64 = s.split_whitespace().next()?.parse().ok()?;
    Some((secs * 1000.0) as u64)
}

/// Whether this process is the guest's init (PID 1).
pub fn is_guest_init() -> bool {
    std::process::id() == 1
}

/// Sets up the guest: mounts, initramfs check, result channel, a Hello frame.
pub fn boot() -> Result<(), GuestError> {
    install_panic_hook();
    mount_all()?;
    crate::coverage::guest_init();
    if fs::metadata(SENTINEL).is_err() {
        return Err(GuestError::IncompleteInitramfs);
    }
    let cmdline = fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let (size, base) = crate::protocol::parse_shm_arg(&cmdline).map_err(GuestError::NoChannel)?;
    let writer = map_channel(base, size)?;
    *CHANNEL.lock().unwrap() = Some(writer);
    let hello = serde_json::json!({
        "kernel_release": fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        "cpus_online": fs::read_to_string("/sys/devices/system/cpu/online").unwrap_or_default().trim(),
        // The kernel's own clock at init: the host's boot-to-init also holds the VMM's or
        // firmware's part before the kernel's clock started.
        "uptime_ms": uptime_ms(),
    });
    send(FrameType::Hello, hello.to_string().as_bytes())?;
    Ok(())
}

fn map_channel(base: u64, size: u64) -> Result<FrameWriter, GuestError> {
    // No O_SYNC: the region must stay cacheable (the VMM sets MTRR default type WB).
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/mem")
        .map_err(GuestError::Map)?;
    // SAFETY: mapping a fresh shared region of /dev/mem; the result is checked below and the
    // mapping is never unmapped (it lives until the VM ends).
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            std::os::fd::AsRawFd::as_raw_fd(&f),
            base as libc::off_t,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(GuestError::Map(std::io::Error::last_os_error()));
    }
    // SAFETY: `p` is a valid writable mapping of `size` bytes that lives for the process's
    // lifetime, and only this writer (behind CHANNEL's lock) writes it.
    Ok(unsafe { FrameWriter::init(p as *mut u8, size as usize) }?)
}

/// Appends a frame to the result channel (a no-op before [`boot`] succeeded).
pub fn send(kind: FrameType, payload: &[u8]) -> Result<(), GuestError> {
    if let Some(w) = CHANNEL.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
        w.write(kind, payload)?;
    }
    Ok(())
}

/// Sends large text in frames of at most 64 KiB.
pub fn send_chunked(kind: FrameType, data: &[u8]) -> Result<(), GuestError> {
    for chunk in data.chunks(64 * 1024) {
        send(kind, chunk)?;
    }
    Ok(())
}

/// Ends the VM deliberately: an Exit frame with `code`, then the exit port.
pub fn exit(code: i32) -> ! {
    send_coverage();
    let _ = send(FrameType::Exit, &code.to_le_bytes());
    let status = code.clamp(0, 255) as u8;
    exit_port(status);
    // Not reached under ktstr's backends; fall back to a reboot, which the host sees too.
    // SAFETY: plain syscalls with constant arguments.
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_AUTOBOOT);
    }
    loop {
        std::thread::park();
    }
}

/// Sends the guest's coverage profiles (coverage builds only; see `crate::coverage`).
fn send_coverage() {
    for payload in crate::coverage::guest_profile_frames() {
        if let Err(e) = send(FrameType::Profile, &payload) {
            let why = format!("ktstr guest: coverage profiles did not reach the host: {e}\n");
            let _ = send(FrameType::Log, why.as_bytes());
            break;
        }
    }
}

fn exit_port(status: u8) {
    // SAFETY: ioperm grants this process access to one port; the out instruction then writes a
    // byte the VMM turns into the end of the VM. Both fail harmlessly outside a ktstr VM
    // (ioperm returns an error and we skip the write).
    unsafe {
        if libc::ioperm(EXIT_PORT as libc::c_ulong, 1, 1) == 0 {
            std::arch::asm!("out dx, al", in("dx") EXIT_PORT, in("al") status, options(nomem, nostack));
        }
    }
}

fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let msg = format!("guest init panicked: {info}");
        eprintln!("{msg}");
        let _ = send(FrameType::Panic, msg.as_bytes());
        exit(EXIT_INIT_PANIC as i32);
    }));
}

fn mount_all() -> Result<(), GuestError> {
    // (source, target, fstype); the order matters: /sys before its children.
    const MOUNTS: &[(&str, &str, &str)] = &[
        ("proc", "/proc", "proc"),
        ("sysfs", "/sys", "sysfs"),
        ("devtmpfs", "/dev", "devtmpfs"),
        ("tmpfs", "/tmp", "tmpfs"),
        ("tmpfs", "/run", "tmpfs"),
        ("cgroup2", "/sys/fs/cgroup", "cgroup2"),
    ];
    // Conveniences a kernel may lack (ktstr's own kernel has no tracing): not fatal.
    const OPTIONAL: &[(&str, &str, &str)] = &[
        // POSIX shared memory, which benchmarks run as payloads use (cyclictest's stats).
        ("tmpfs", "/dev/shm", "tmpfs"),
        ("debugfs", "/sys/kernel/debug", "debugfs"),
        ("tracefs", "/sys/kernel/tracing", "tracefs"),
        ("bpf", "/sys/fs/bpf", "bpf"),
    ];
    for (src, target, fstype) in MOUNTS {
        let _ = fs::create_dir_all(target);
        mount(src, target, fstype)?;
    }
    for (src, target, fstype) in OPTIONAL {
        let _ = fs::create_dir_all(target);
        let _ = mount(src, target, fstype);
    }
    Ok(())
}

fn mount(src: &str, target: &str, fstype: &str) -> Result<(), GuestError> {
    let c = |s: &str| CString::new(s).expect("static mount strings have no NUL");
    let (s, t, f) = (c(src), c(target), c(fstype));
    // SAFETY: all pointers are valid NUL-terminated strings for the duration of the call.
    let rc = unsafe { libc::mount(s.as_ptr(), t.as_ptr(), f.as_ptr(), 0, std::ptr::null()) };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        // Already mounted (e.g. devtmpfs by the kernel) is fine.
        if e.raw_os_error() == Some(libc::EBUSY) {
            return Ok(());
        }
        return Err(GuestError::Mount {
            fstype: fstype.into(),
            target: target.into(),
            source: e,
        });
    }
    Ok(())
}
