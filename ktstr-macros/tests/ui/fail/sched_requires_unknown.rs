use ktstr::prelude::*;

declare_scheduler!(BAD {
    name: "bad",
    flags: { llc: ["--llc"], steal: [] requires [lcc] },
});

fn main() {}
