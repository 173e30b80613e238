use super::*;
use crate::host_cpus::HostCpu;

/// `llcs` LLCs of `per` CPUs each on one node; LLC ids are their lowest CPU.
fn host(llcs: u32, per: u32) -> HostCpus {
    HostCpus::from_cpus(
        (0..llcs * per)
            .map(|cpu| HostCpu {
                cpu,
                llc: cpu / per * per,
                node: 0,
            })
            .collect(),
    )
}

fn topo(s: &str) -> Topology {
    Topology::parse(s).unwrap()
}

#[test]
fn one_vcpu_on_a_two_cpu_host_gets_a_service_cpu_beside_it() {
    let p = plan_performance(&topo("1,1,1,1"), &host(1, 2), &BTreeSet::new()).unwrap();
    assert_eq!((p.llcs, p.vcpus, p.service), (vec![0], vec![0], 1));
}

#[test]
fn vcpus_plus_the_service_cpu_must_fit() {
    let e = plan_performance(&topo("1,1,2,1"), &host(1, 2), &BTreeSet::new()).unwrap_err();
    let s = e.to_string();
    assert!(
        matches!(
            e,
            PlaceError::TooFewCpus {
                need: 3,
                allowed: 2,
                ..
            }
        ),
        "{s}"
    );
    assert!(s.contains("--no-perf-mode"), "{s}");
}

#[test]
fn each_virtual_llc_gets_its_own_host_llc() {
    let p = plan_performance(&topo("1,2,2,1"), &host(2, 4), &BTreeSet::new()).unwrap();
    assert_eq!(p.llcs, vec![0, 4]);
    assert_eq!(p.vcpus, vec![0, 1, 4, 5]);
    // The spare of the last chosen LLC.
    assert_eq!(p.service, 6);
    // Full LLCs: the service CPU takes one more LLC.
    let p = plan_performance(&topo("1,2,2,1"), &host(3, 2), &BTreeSet::new()).unwrap();
    assert_eq!(
        (p.llcs, p.vcpus, p.service),
        (vec![0, 2, 4], vec![0, 1, 2, 3], 4)
    );
}

#[test]
fn busy_llcs_are_planned_around_and_small_llcs_refused() {
    let busy = BTreeSet::from([0]);
    let p = plan_performance(&topo("1,1,2,1"), &host(2, 4), &busy).unwrap();
    assert_eq!((p.llcs, p.vcpus), (vec![4], vec![4, 5]));
    let e = plan_performance(&topo("1,1,4,1"), &host(8, 2), &BTreeSet::new()).unwrap_err();
    assert!(
        e.to_string().contains("1 host LLC(s) with at least 4 CPUs"),
        "{e}"
    );
}

#[test]
fn windows_run_through_llcs_in_order() {
    let h = host(2, 2);
    assert_eq!(windows(&h, 2), vec![vec![0, 1], vec![1, 2], vec![2, 3]]);
    // More vCPUs than CPUs: one window of every CPU.
    assert_eq!(windows(&h, 9), vec![vec![0, 1, 2, 3]]);
}

#[test]
fn default_windows_never_share_a_cpu_and_a_full_host_is_contention() {
    let d = tempfile::tempdir().unwrap();
    let h = host(1, 2);
    let a = place_window(1, &h, d.path(), Duration::ZERO).unwrap();
    let b = place_window(1, &h, d.path(), Duration::ZERO).unwrap();
    assert_eq!(
        (a.cpus.clone(), b.cpus.clone()),
        (Some(vec![0]), Some(vec![1]))
    );
    let e = place_window(1, &h, d.path(), Duration::from_millis(150)).unwrap_err();
    assert!(matches!(e, PlaceError::Contention { .. }), "{e}");
    assert!(e.to_string().contains("resource contention"), "{e}");
    drop(a);
    let c = place_window(2, &h, d.path(), Duration::ZERO);
    assert!(c.is_err(), "CPU 1 is still held");
    let c = place_window(1, &h, d.path(), Duration::ZERO).unwrap();
    assert_eq!(c.cpus, Some(vec![0]));
}

#[test]
fn a_waiting_vm_starts_when_the_holder_leaves() {
    let d = tempfile::tempdir().unwrap();
    let h = host(1, 1);
    let a = place_window(1, &h, d.path(), Duration::ZERO).unwrap();
    let release = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        drop(a);
    });
    let b = place_window(1, &h, d.path(), Duration::from_secs(10)).unwrap();
    release.join().unwrap();
    assert!(b.waited >= Duration::from_millis(250), "{:?}", b.waited);
    assert!(b.record().waited_ms >= 250);
}

#[test]
fn performance_and_default_tiers_keep_each_other_off_an_llc() {
    let d = tempfile::tempdir().unwrap();
    let h = host(1, 2);
    let perf = place_performance(&topo("1,1,1,1"), 256, &h, d.path(), Duration::ZERO).unwrap();
    let p = perf.pinning.clone().unwrap();
    assert_eq!((p.vcpus, p.service), (vec![0], 1));
    assert_eq!(perf.cpus, Some(vec![1]));
    assert_eq!(perf.record().host_cpus, vec![0, 1]);
    let e = place_window(1, &h, d.path(), Duration::ZERO).unwrap_err();
    assert!(matches!(e, PlaceError::Contention { .. }), "{e}");
    drop(perf);
    let w = place_window(1, &h, d.path(), Duration::ZERO).unwrap();
    let e = place_performance(&topo("1,1,1,1"), 256, &h, d.path(), Duration::ZERO).unwrap_err();
    assert!(matches!(e, PlaceError::Contention { .. }), "{e}");
    drop(w);
}

#[test]
fn a_busy_llc_sends_performance_mode_to_another() {
    let d = tempfile::tempdir().unwrap();
    let h = host(2, 2);
    let a = place_performance(&topo("1,1,1,1"), 64, &h, d.path(), Duration::ZERO).unwrap();
    let b = place_performance(&topo("1,1,1,1"), 64, &h, d.path(), Duration::ZERO).unwrap();
    let (pa, pb) = (a.pinning.unwrap(), b.pinning.unwrap());
    assert_eq!((pa.vcpus, pa.service), (vec![0], 1));
    assert_eq!((pb.vcpus, pb.service), (vec![2], 3));
}

#[test]
fn hugepages_are_read_only_at_2_mib() {
    let m = "MemTotal: 1 kB\nHugePages_Total:     512\nHugePages_Free:      300\nHugepagesize:       2048 kB\n";
    assert_eq!(parse_hugepages(m), Some(300));
    assert_eq!(parse_hugepages(&m.replace("2048", "1048576")), None);
    assert_eq!(hugepages_for(256), 128);
    assert_eq!(hugepages_for(255), 128);
}

#[test]
fn lock_wait_is_read_from_the_environment() {
    // Only this test touches the variable.
    std::env::set_var("KTSTR_LOCK_WAIT_S", "abc");
    let e = lock_wait().unwrap_err().to_string();
    std::env::set_var("KTSTR_LOCK_WAIT_S", "7");
    let ok = lock_wait().unwrap();
    std::env::remove_var("KTSTR_LOCK_WAIT_S");
    assert!(e.contains("KTSTR_LOCK_WAIT_S=\"abc\""), "{e}");
    assert_eq!(ok, Duration::from_secs(7));
    assert_eq!(lock_wait().unwrap(), DEFAULT_WAIT);
}

#[test]
fn vcpu_threads_are_found_by_name_and_pinned() {
    let cpu = *crate::host_cpus::allowed_cpus().unwrap().last().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let (tid_tx, tid_rx) = std::sync::mpsc::channel();
    let t = std::thread::Builder::new()
        .name("ktstr-vcpu0".into())
        .spawn(move || {
            // SAFETY: gettid has no arguments and cannot fail.
            tid_tx.send(unsafe { libc::gettid() }).unwrap();
            let _ = rx.recv();
        })
        .unwrap();
    let tid = tid_rx.recv().unwrap();
    let pinning = Pinning {
        vcpus: vec![cpu],
        service: cpu,
        realtime: false,
        hugepages: false,
    };
    let n = pin_vcpu_threads(
        std::process::id(),
        crate::monitor::ThreadNaming::Ktstr,
        &pinning,
        Duration::from_secs(5),
    )
    .unwrap();
    let status = std::fs::read_to_string(format!("/proc/self/task/{tid}/status")).unwrap();
    tx.send(()).unwrap();
    t.join().unwrap();
    assert_eq!(n, 1);
    let line = status
        .lines()
        .find(|l| l.starts_with("Cpus_allowed_list:"))
        .unwrap();
    assert_eq!(
        line.split_whitespace().nth(1),
        Some(cpu.to_string().as_str())
    );
}

#[test]
fn waiters_go_in_the_order_they_came_and_a_dead_waiter_is_skipped() {
    let d = tempfile::tempdir().unwrap();
    let first = Ticket::take(d.path()).unwrap();
    let second = Ticket::take(d.path()).unwrap();
    assert!(first.seq < second.seq);
    assert!(first.is_next());
    assert!(!second.is_next(), "the older waiter goes first");
    drop(first);
    assert!(second.is_next());
    // A ticket file nobody holds (its waiter was killed) does not block the queue.
    let stale = d.path().join("ktstr-queue").join(format!("{:020}-1", 0));
    std::fs::write(&stale, "").unwrap();
    assert!(second.is_next());
    assert!(!stale.exists(), "the dead waiter's ticket is cleared");
}

#[test]
fn a_vm_that_has_waited_longest_gets_the_cpu_first() {
    let d = tempfile::tempdir().unwrap();
    let h = host(1, 1);
    let holder = place_window(1, &h, d.path(), Duration::ZERO).unwrap();
    let dir = d.path().to_path_buf();
    let order = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut waiters = Vec::new();
    for i in 0..3 {
        let (dir, h, order) = (dir.clone(), h.clone(), order.clone());
        waiters.push(std::thread::spawn(move || {
            let p = place_window(1, &h, &dir, Duration::from_secs(20)).unwrap();
            order.lock().unwrap().push(i);
            std::thread::sleep(Duration::from_millis(100));
            drop(p);
        }));
        // Each waiter takes its ticket before the next starts.
        std::thread::sleep(Duration::from_millis(150));
    }
    drop(holder);
    for w in waiters {
        w.join().unwrap();
    }
    assert_eq!(*order.lock().unwrap(), vec![0, 1, 2]);
}

#[test]
fn lock_files_and_the_queue_are_open_to_every_user() {
    use std::os::unix::fs::PermissionsExt;
    let d = tempfile::tempdir().unwrap();
    let p = place_window(1, &host(1, 2), d.path(), Duration::ZERO).unwrap();
    let mode = |name: &str| {
        std::fs::metadata(d.path().join(name))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    };
    assert_eq!(mode("ktstr-cpu-0.lock"), 0o666);
    assert_eq!(mode("ktstr-llc-0.lock"), 0o666);
    assert_eq!(mode("ktstr-queue"), 0o1777);
    assert_eq!(mode("ktstr-queue.seq"), 0o666);
    drop(p);
}
