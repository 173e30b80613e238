//! The guest's serial console as both backends keep it: copied where [`ConsoleMode`] says, its
//! last [`CONSOLE_TAIL_BYTES`] kept for failure reports, and scanned line by line for a kernel
//! panic. The in-process VMM's 16550 writes into it (it is an [`std::io::Write`]); the qemu
//! backend's stdout pump pushes qemu's serial output into it.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use super::{ConsoleMode, CONSOLE_TAIL_BYTES};

/// The console line that marks a kernel panic.
pub const PANIC_MARKER: &str = "Kernel panic - not syncing";

/// Longest line the panic scanner keeps (a longer line is cut; the marker is near its start).
const MAX_LINE: usize = 4096;

/// What the console has shown so far.
#[derive(Debug)]
pub struct ConsoleState {
    mode: ConsoleMode,
    tail: VecDeque<u8>,
    line: Vec<u8>,
    panic: Option<(String, Instant)>,
    total: u64,
}

impl ConsoleState {
    fn new(mode: ConsoleMode) -> Self {
        ConsoleState {
            mode,
            tail: VecDeque::with_capacity(4096),
            line: Vec::new(),
            panic: None,
            total: 0,
        }
    }

    fn push(&mut self, bytes: &[u8]) {
        match self.mode {
            ConsoleMode::Capture => {}
            // Best effort: a closed stderr/stdout must not stop the guest.
            ConsoleMode::Stderr => {
                let _ = io::stderr().write_all(bytes);
            }
            ConsoleMode::Interactive => {
                let mut o = io::stdout();
                let _ = o.write_all(bytes).and_then(|_| o.flush());
            }
        }
        self.total += bytes.len() as u64;
        let keep = &bytes[bytes.len().saturating_sub(CONSOLE_TAIL_BYTES)..];
        let over = (self.tail.len() + keep.len()).saturating_sub(CONSOLE_TAIL_BYTES);
        self.tail.drain(..over);
        self.tail.extend(keep);
        for &b in bytes {
            if b == b'\n' {
                self.end_line();
            } else if self.line.len() < MAX_LINE {
                self.line.push(b);
            }
        }
    }

    fn end_line(&mut self) {
        if self.panic.is_none() {
            if let Some(p) = panic_in_line(&String::from_utf8_lossy(&self.line)) {
                self.panic = Some((p, Instant::now()));
            }
        }
        self.line.clear();
    }

    /// The kept tail of the console, without the serial line's carriage returns.
    pub fn tail(&self) -> String {
        let (a, b) = self.tail.as_slices();
        let mut v = Vec::with_capacity(a.len() + b.len());
        v.extend_from_slice(a);
        v.extend_from_slice(b);
        String::from_utf8_lossy(&v).replace('\r', "")
    }

    /// The panic line and when it was seen, if the guest panicked.
    pub fn panic(&self) -> Option<(String, Instant)> {
        self.panic.clone()
    }

    /// Bytes the guest wrote in all (kept or not).
    pub fn total_bytes(&self) -> u64 {
        self.total
    }
}

/// The panic message in one console line (from the marker on, so the printk timestamp goes).
fn panic_in_line(line: &str) -> Option<String> {
    line.find(PANIC_MARKER)
        .map(|i| line[i..].trim_end().to_string())
}

/// The kernel's panic line, if `console` shows one.
pub fn panic_line(console: &str) -> Option<String> {
    console.lines().find_map(panic_in_line)
}

/// The console shared between whatever feeds it (a serial device, a pipe pump) and the session
/// that watches it.
#[derive(Debug, Clone)]
pub struct Console(Arc<Mutex<ConsoleState>>);

impl Console {
    /// A new, empty console.
    pub fn new(mode: ConsoleMode) -> Self {
        Console(Arc::new(Mutex::new(ConsoleState::new(mode))))
    }

    /// Locks the state (a poisoned lock still yields the data: it is only bytes).
    pub fn state(&self) -> MutexGuard<'_, ConsoleState> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends guest output.
    pub fn push(&self, bytes: &[u8]) {
        self.state().push(bytes);
    }
}

impl Write for Console {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.push(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_tail_and_spots_the_first_panic() {
        let c = Console::new(ConsoleMode::Capture);
        for b in b"hello\r\n[ 1.0] Kernel panic - not syncing: Attempted to kill init!\r\nmore" {
            c.push(&[*b]);
        }
        c.push(b"\nKernel panic - not syncing: second\n");
        let st = c.state();
        assert_eq!(
            st.panic().unwrap().0,
            "Kernel panic - not syncing: Attempted to kill init!"
        );
        assert!(st.tail().starts_with("hello\n[ 1.0]"), "{}", st.tail());
        assert!(!st.tail().contains('\r'));
    }

    #[test]
    fn a_flood_keeps_only_the_last_bytes_in_order() {
        let c = Console::new(ConsoleMode::Capture);
        // Pushes both smaller and larger than the tail, as a pump and a 16550 would.
        let mut sent = Vec::new();
        for i in 0..40_000u32 {
            let line = format!("line {i}\n");
            sent.extend_from_slice(line.as_bytes());
            c.push(line.as_bytes());
        }
        let big: Vec<u8> = (0..3 * CONSOLE_TAIL_BYTES)
            .map(|i| b'a' + (i % 26) as u8)
            .collect();
        sent.extend_from_slice(&big);
        c.push(&big);
        c.push(b"\nthe end\n");
        sent.extend_from_slice(b"\nthe end\n");
        let st = c.state();
        let tail = st.tail();
        assert_eq!(tail.len(), CONSOLE_TAIL_BYTES);
        assert_eq!(tail.as_bytes(), &sent[sent.len() - CONSOLE_TAIL_BYTES..]);
        assert_eq!(st.total_bytes(), sent.len() as u64);
        assert!(st.panic().is_none());
    }

    #[test]
    fn panic_line_drops_the_timestamp() {
        let c = "[    1.0] foo\n[    2.5] Kernel panic - not syncing: VFS: unable to mount\n";
        assert_eq!(
            panic_line(c).as_deref(),
            Some("Kernel panic - not syncing: VFS: unable to mount")
        );
        assert_eq!(panic_line("fine\n"), None);
    }
}
