//! Whether a scenario step overran its declared time, net of the time the host took from
//! the guest.
//!
//! A step that takes far longer than declared means the guest, or the test's own thread, did
//! not get the CPU: a scheduler that starves the runner is caught here. But on a busy or nested
//! host the hypervisor deschedules the vCPUs themselves, and the guest's clock runs on; that is
//! the host's doing, not the scheduler's. Paravirtual steal time (`/proc/stat`, filled by KVM's
//! steal-time MSR) measures it, so the mean steal per CPU over the step is taken off first.

use std::time::Duration;

/// The guest's steal time: summed over every CPU, and the number of CPUs it covers.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Steal {
    /// Steal time summed over CPUs.
    pub total: Duration,
    /// CPUs in the sum.
    pub cpus: u32,
}

impl Steal {
    /// Reads `/proc/stat` now; zero where it cannot be read (the overrun check then takes
    /// the wall time as it is).
    pub fn now() -> Steal {
        // SAFETY: sysconf only reads a configuration value.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| parse(&s, hz.max(1) as u64))
            .unwrap_or_default()
    }

    /// The mean steal per CPU between `earlier` and `self`.
    pub fn per_cpu_since(&self, earlier: &Steal) -> Duration {
        let cpus = self.cpus.max(1);
        self.total.saturating_sub(earlier.total) / cpus
    }
}

/// The `cpu ` line's eighth value (steal, in clock ticks of `hz` per second) and the count of
/// `cpuN` lines.
fn parse(stat: &str, hz: u64) -> Option<Steal> {
    let mut total = None;
    let mut cpus = 0;
    for line in stat.lines() {
        let mut f = line.split_ascii_whitespace();
        match f.next() {
            Some("cpu") => {
                let ticks: u64 = f.nth(7)?.parse().ok()?;
                total = Some(Duration::from_nanos(
                    ticks.saturating_mul(1_000_000_000 / hz),
                ));
            }
            Some(c) if c.starts_with("cpu") => cpus += 1,
            _ => {}
        }
    }
    Some(Steal {
        total: total?,
        cpus,
    })
}

/// Whether a step that declared `declared` and took `took`, of which the host took `stolen`
/// from each vCPU on average, overran: its own time (`took - stolen`) is more than twice the
/// declared time, with at least one second of slack for its ops, both scaled by the backend's
/// `scale` (ops and wakeups are slower under emulation).
pub fn overran(declared: Duration, took: Duration, stolen: Duration, scale: f64) -> bool {
    let slack = declared.max(Duration::from_secs(1)).mul_f64(scale.max(1.0));
    took.saturating_sub(stolen) > declared + slack
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(x: f64) -> Duration {
        Duration::from_secs_f64(x)
    }

    #[test]
    fn a_step_overruns_past_twice_its_time_with_a_second_of_slack() {
        // The case: a 3 s hold that took 25.7 s, on KVM and under TCG (scale 4).
        assert!(overran(s(3.0), s(25.7), s(0.0), 1.0));
        assert!(overran(s(3.0), s(25.7), s(0.0), 4.0));
        // Twice the time is still fine; a little more is not.
        assert!(!overran(s(3.0), s(6.0), s(0.0), 1.0));
        assert!(overran(s(3.0), s(6.1), s(0.0), 1.0));
        // Short holds get a second of slack for their ops, scaled by the backend.
        assert!(!overran(s(0.001), s(0.9), s(0.0), 1.0));
        assert!(overran(s(0.001), s(1.1), s(0.0), 1.0));
        assert!(!overran(s(0.001), s(3.9), s(0.0), 4.0));
    }

    #[test]
    fn time_the_host_stole_is_not_the_steps() {
        // The nested KVM lane: a 3 s step took 8.1 s of guest wall time while the L1 host ran
        // four vCPUs on one CPU.
        assert!(!overran(s(3.0), s(8.1), s(4.5), 1.0));
        // Steal explains only part of it: still an overrun.
        assert!(overran(s(3.0), s(8.1), s(1.0), 1.0));
        // More steal than wall time (counters from different clocks) is no time at all.
        assert!(!overran(s(3.0), s(2.0), s(9.0), 1.0));
    }

    #[test]
    fn proc_stat_gives_steal_summed_and_the_cpu_count() {
        let stat = "cpu  100 0 50 9000 10 0 5 250 0 0\n\
                    cpu0 50 0 25 4500 5 0 2 125 0 0\n\
                    cpu1 50 0 25 4500 5 0 3 125 0 0\n\
                    intr 12345\nctxt 999\n";
        let st = parse(stat, 100).unwrap();
        assert_eq!(
            st,
            Steal {
                total: s(2.5),
                cpus: 2
            }
        );
        let later = Steal {
            total: s(6.5),
            cpus: 2,
        };
        assert_eq!(later.per_cpu_since(&st), s(2.0));
    }

    #[test]
    fn a_proc_stat_without_steal_is_none() {
        assert_eq!(parse("cpu 1 2 3 4\ncpu0 1 2 3 4\n", 100), None);
        assert_eq!(parse("intr 1\n", 100), None);
        assert_eq!(parse("cpu  1 2 3 4 5 6 7 x\n", 100), None);
    }

    #[test]
    fn this_hosts_steal_reads() {
        // Linux always has /proc/stat with a steal column (0 on bare metal).
        let st = Steal::now();
        assert!(st.cpus >= 1, "{st:?}");
    }
}
