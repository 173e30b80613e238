use ktstr::prelude::*;

declare_scheduler!(BAD {
    name: "bad",
    binray: "bad",
});

fn main() {}
