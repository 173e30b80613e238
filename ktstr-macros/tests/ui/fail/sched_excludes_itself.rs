use ktstr::prelude::*;

declare_scheduler!(BAD {
    name: "bad",
    flags: { llc: ["--llc"] excludes [llc] },
});

fn main() {}
