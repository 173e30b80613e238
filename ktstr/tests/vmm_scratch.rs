use ktstr::Topology;
use std::time::Duration;
#[test]
fn scratch() {
    let t = Topology::new(1, 1, 1, 1).unwrap();
    // mov al, 42; out 0xF4, al
    let o = ktstr::vmm::probe::run_code(&t, &[0xB0, 42, 0xE6, 0xF4], &[], Duration::from_secs(5))
        .unwrap();
    eprintln!("{:?} {:?}", o.end, o.times);
    let o = ktstr::vmm::probe::run_code(&t, &[0xEB, 0xFE], &[], Duration::from_secs(1)).unwrap();
    eprintln!("{:?} {:?}", o.end, o.times);
}
