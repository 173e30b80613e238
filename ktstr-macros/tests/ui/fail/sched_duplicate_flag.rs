use ktstr::prelude::*;

declare_scheduler!(BAD {
    name: "bad",
    flags: { llc: ["--llc"], steal: [], llc: ["--llc2"] },
});

fn main() {}
