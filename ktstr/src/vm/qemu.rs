//! qemu backend.
