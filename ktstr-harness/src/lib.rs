//! The `harness = false` runner for ktstr test binaries.
