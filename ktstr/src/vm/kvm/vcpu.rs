//! vCPU threads (vmm.md §1.6, §8): one thread per vCPU runs only KVM_RUN and exit dispatch;
//! the first terminal exit decides how the VM ends; teardown kicks every thread out of KVM_RUN
//! with `immediate_exit` plus a real-time signal, joins it, and only then lets the vCPU fds go.

use std::os::unix::thread::JoinHandleExt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, Once};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_bindings::{kvm_run, KVM_INTERNAL_ERROR_EMULATION};
use kvm_ioctls::{VcpuExit, VcpuFd};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::devices::Devices;
use crate::vm::VmEnd;

/// Offset from SIGRTMIN of the signal that kicks vCPU threads out of KVM_RUN.
pub const KICK_SIGNAL_OFFSET: i32 = 2;

fn kick_signal() -> i32 {
    libc::SIGRTMIN() + KICK_SIGNAL_OFFSET
}

extern "C" fn on_kick(_: libc::c_int) {}

/// Installs the no-op kick handler once per process, without SA_RESTART so KVM_RUN returns
/// EINTR.
fn install_kick_handler() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: a zeroed sigaction is a valid starting point; the handler is async-signal
        // safe (it does nothing) and lives for the whole process.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_kick as *const () as usize;
            sa.sa_flags = 0;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(kick_signal(), &sa, std::ptr::null_mut());
        }
    });
}

/// State shared by the vCPU threads and the monitor.
#[derive(Debug, Default)]
pub struct Shared {
    /// Set when the VM must stop; vCPU threads leave their loop when they see it.
    pub kill: AtomicBool,
    end: Mutex<Option<(VmEnd, Instant)>>,
    wake: Condvar,
}

impl Shared {
    /// Records how the VM ended (the first report wins), stops all vCPUs and wakes the monitor.
    pub fn finish(&self, end: VmEnd) {
        let mut g = self.end.lock().unwrap_or_else(|e| e.into_inner());
        if g.is_none() {
            *g = Some((end, Instant::now()));
        }
        self.kill.store(true, Ordering::SeqCst);
        self.wake.notify_all();
    }

    /// How the VM ended, if it has, and when.
    pub fn end(&self) -> Option<(VmEnd, Instant)> {
        self.end.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Waits up to `d` for an end.
    pub fn wait(&self, d: Duration) {
        let g = self.end.lock().unwrap_or_else(|e| e.into_inner());
        if g.is_none() {
            let _ = self.wake.wait_timeout(g, d);
        }
    }
}

/// A running vCPU thread.
pub struct VcpuThread {
    handle: JoinHandle<VcpuFd>,
    /// The thread's `kvm_run` mapping; valid until the thread's `VcpuFd` is dropped, which
    /// happens only after the thread is joined.
    run: *mut kvm_run,
}

// SAFETY: `run` points into a vCPU's kvm_run mmap, which outlives every use (see field doc);
// writing `immediate_exit` from another thread is how KVM documents the kick.
unsafe impl Send for VcpuThread {}

/// Everything a vCPU thread needs.
pub struct VcpuContext {
    /// Shared stop/end state.
    pub shared: Arc<Shared>,
    /// Port devices.
    pub devices: Arc<Devices>,
    /// Guest memory, to show the failing instruction's bytes.
    pub mem: GuestMemoryMmap,
    /// Performance mode: the host CPU this vCPU's thread is pinned to, and whether it runs
    /// at `SCHED_FIFO`.
    pub pin: Option<(u32, bool)>,
    /// Where a pinning the host refused is noted (for the sidecar).
    pub notes: Arc<std::sync::Mutex<Vec<String>>>,
}

/// Starts a thread running `vcpu` until the VM stops.
pub fn spawn(mut vcpu: VcpuFd, index: u32, ctx: VcpuContext) -> std::io::Result<VcpuThread> {
    install_kick_handler();
    let run = vcpu.get_kvm_run() as *mut kvm_run;
    let handle = std::thread::Builder::new()
        .name(format!("ktstr-vcpu{index}"))
        .stack_size(256 << 10)
        .spawn(move || {
            if let Some((cpu, realtime)) = ctx.pin {
                if let Some(note) = super::perf::pin_this_vcpu(index, cpu, realtime) {
                    ctx.notes
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(note);
                }
            }
            let shared = ctx.shared.clone();
            // Owned outside the unwind boundary: a panic must not drop the fd while the
            // monitor may still write to its kvm_run.
            if catch_unwind(AssertUnwindSafe(|| run_loop(&mut vcpu, index, &ctx))).is_err() {
                shared.finish(VmEnd::BackendError {
                    detail: format!("vCPU {index} thread panicked"),
                });
            }
            vcpu
        })?;
    Ok(VcpuThread { handle, run })
}

enum Step {
    Go,
    TripleFault,
    End(VmEnd),
    Emulation(u32, u32, [u64; 16]),
}

fn run_loop(vcpu: &mut VcpuFd, index: u32, ctx: &VcpuContext) {
    while !ctx.shared.kill.load(Ordering::SeqCst) {
        let step = match vcpu.run() {
            Ok(exit) => match exit {
                VcpuExit::IoIn(port, data) => {
                    ctx.devices.io_in(port, data);
                    Step::Go
                }
                VcpuExit::IoOut(port, data) => match ctx.devices.io_out(port, data) {
                    Some(end) => Step::End(end),
                    None => Step::Go,
                },
                // The userspace IOAPIC (split irqchip), else all-ones reads and dropped writes.
                VcpuExit::MmioRead(addr, data) => {
                    ctx.devices.mmio_read(addr, data);
                    Step::Go
                }
                VcpuExit::MmioWrite(addr, data) => {
                    ctx.devices.mmio_write(addr, data);
                    Step::Go
                }
                // Split irqchip: the guest EOIed a level-triggered IOAPIC vector.
                VcpuExit::IoapicEoi(vector) => {
                    ctx.devices.ioapic_eoi(vector);
                    Step::Go
                }
                VcpuExit::Intr | VcpuExit::Hlt => Step::Go,
                VcpuExit::Shutdown => Step::TripleFault,
                // Reset, shutdown or crash: the guest is done without a deliberate exit.
                VcpuExit::SystemEvent(..) => Step::End(VmEnd::Reboot),
                VcpuExit::FailEntry(reason, cpu) => Step::End(VmEnd::FailEntry {
                    detail: format!("hardware_entry_failure_reason {reason:#x} on host cpu {cpu}"),
                }),
                VcpuExit::InternalError => {
                    // SAFETY: exit_reason is INTERNAL_ERROR, so `internal` is the live
                    // member of the union.
                    let i = unsafe { vcpu.get_kvm_run().__bindgen_anon_1.internal };
                    Step::Emulation(i.suberror, i.ndata, i.data)
                }
                other => Step::End(VmEnd::BackendError {
                    detail: format!("unexpected KVM exit {other:?}"),
                }),
            },
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                vcpu.set_kvm_immediate_exit(0);
                Step::Go
            }
            Err(e) => Step::End(VmEnd::BackendError {
                detail: format!("KVM_RUN failed: {e}"),
            }),
        };
        match step {
            Step::Go => {}
            Step::End(end) => ctx.shared.finish(end),
            Step::TripleFault => {
                let mut detail = format!("vCPU {index}: {}", cpu_state(vcpu, &ctx.mem));
                if vcpu.get_regs().is_ok_and(|r| r.rip == 0xfff0) {
                    // SVM reinitialises the VMCB on a shutdown intercept before KVM returns.
                    detail.push_str(" (KVM reset this vCPU at the shutdown, as it does on AMD, so these registers are not the faulting state)");
                }
                ctx.shared.finish(VmEnd::TripleFault { detail });
            }
            Step::Emulation(sub, ndata, data) => {
                let detail = internal_error_detail(vcpu, &ctx.mem, sub, ndata, &data);
                ctx.shared.finish(VmEnd::EmulationFailure { detail });
            }
        }
    }
}

fn internal_error_detail(
    vcpu: &VcpuFd,
    mem: &GuestMemoryMmap,
    sub: u32,
    ndata: u32,
    data: &[u64; 16],
) -> String {
    let what = match sub {
        KVM_INTERNAL_ERROR_EMULATION => "emulation failure",
        2 => "simultaneous exceptions",
        3 => "delivery event",
        4 => "unexpected exit reason",
        _ => "internal error",
    };
    let words: Vec<String> = data[..(ndata as usize).min(16)]
        .iter()
        .map(|d| format!("{d:#x}"))
        .collect();
    format!(
        "KVM {what} (suberror {sub}, data [{}]); {}",
        words.join(", "),
        cpu_state(vcpu, mem)
    )
}

/// RIP, RSP, RAX, RFLAGS, the control registers and the code bytes at RIP, for reports.
fn cpu_state(vcpu: &VcpuFd, mem: &GuestMemoryMmap) -> String {
    let mut s = String::new();
    if let Ok(r) = vcpu.get_regs() {
        s.push_str(&format!(
            "RIP {:#x} RSP {:#x} RAX {:#x} RFLAGS {:#x}",
            r.rip, r.rsp, r.rax, r.rflags
        ));
        let sregs = vcpu.get_sregs().ok();
        if let Some(sr) = &sregs {
            s.push_str(&format!(
                " CR0 {:#x} CR2 {:#x} CR3 {:#x} CR4 {:#x} EFER {:#x}",
                sr.cr0, sr.cr2, sr.cr3, sr.cr4, sr.efer
            ));
        }
        let linear = sregs
            .map(|sr| sr.cs.base.wrapping_add(r.rip))
            .unwrap_or(r.rip);
        let gpa = vcpu
            .translate_gva(linear)
            .ok()
            .filter(|t| t.valid != 0)
            .map(|t| t.physical_address)
            .unwrap_or(linear);
        let mut insn = [0u8; 8];
        if mem.read_slice(&mut insn, GuestAddress(gpa)).is_ok() {
            s.push_str(&format!("; code at {gpa:#x}: {insn:02x?}"));
        }
    }
    s
}

impl VcpuThread {
    fn kick(&self) {
        // SAFETY: `run` is valid until this thread's VcpuFd drops, after join (see field);
        // volatile because the kernel and the vCPU thread read it concurrently.
        unsafe { std::ptr::write_volatile(&raw mut (*self.run).immediate_exit, 1) };
        // SAFETY: the pthread_t stays valid until join, which has not happened yet.
        unsafe { libc::pthread_kill(self.handle.as_pthread_t(), kick_signal()) };
    }
}

/// How long [`stop_all`] kicks a vCPU thread before giving up on it.
pub const STOP_GRACE: Duration = Duration::from_secs(10);

/// What [`stop_all`] got back.
pub struct Stopped {
    /// The fds of the threads that left their loop, for the caller to drop before the VM fd.
    pub fds: Vec<VcpuFd>,
    /// vCPUs whose thread did not leave KVM_RUN within the grace period. Their threads are
    /// detached and keep their own fd and guest-memory reference, so nothing they may still
    /// touch is freed under them; the VM ends without them.
    pub stuck: Vec<u32>,
}

/// Stops every vCPU thread (kill flag, then kicks every 10 ms until each has left its loop, at
/// most `grace` in all) and joins those that left.
///
/// A vCPU the host kernel never lets out of KVM_RUN (seen under nested KVM: an L1 CPU in a
/// soft lockup inside KVM_RUN for minutes) must not hang the run: after `grace` its thread is
/// abandoned and reported in [`Stopped::stuck`], so the watchdog's verdict still reaches the
/// user.
pub fn stop_all(shared: &Shared, threads: Vec<VcpuThread>, grace: Duration) -> Stopped {
    shared.kill.store(true, Ordering::SeqCst);
    let deadline = Instant::now() + grace;
    let mut out = Stopped {
        fds: Vec::with_capacity(threads.len()),
        stuck: Vec::new(),
    };
    for (index, t) in threads.into_iter().enumerate() {
        while !t.handle.is_finished() && Instant::now() < deadline {
            t.kick();
            for _ in 0..10 {
                if t.handle.is_finished() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        if !t.handle.is_finished() {
            // Dropping the handle detaches the thread; it owns everything it uses.
            out.stuck.push(index as u32);
            continue;
        }
        match t.handle.join() {
            Ok(fd) => out.fds.push(fd),
            Err(_) => shared.finish(VmEnd::BackendError {
                detail: "a vCPU thread died".into(),
            }),
        }
    }
    out
}
