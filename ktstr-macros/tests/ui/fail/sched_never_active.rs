use ktstr::prelude::*;

declare_scheduler!(BAD {
    name: "bad",
    flags: { a: [] requires [b], b: [] requires [c], c: [] excludes [a] },
});

fn main() {}
