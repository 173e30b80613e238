//! `cargo ktstr`.
fn main() {}
