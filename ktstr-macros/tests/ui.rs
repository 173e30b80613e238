//! Compile-fail and pass cases for `#[ktstr_test]` and `declare_scheduler!`.
//! Regenerate expectations with `TRYBUILD=overwrite cargo test -p ktstr-macros` and review them.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/fail/*.rs");
    t.pass("tests/ui/pass/*.rs");
}
