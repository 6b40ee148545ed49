//! Fuzzing on the stable toolchain (cargo-fuzz needs nightly, which these machines do not have):
//! a mutation engine over seed inputs, and targets that must never panic, hang or abort on any
//! input. `ioasis-fuzz <target> --cases N` runs one (`cargo run --release -p ioasis-fuzz`); the
//! tests run each briefly. A failing input is written to `fuzz/crashes/`.
//!
//! Each target takes bytes and either refuses them with an error or uses them; what it must not
//! do is panic (caught and reported with the input), allocate without bound or loop.

pub mod engine;
mod targets;

pub use targets::{Target, TARGETS};

/// The target named `name`.
pub fn target(name: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|t| t.name == name)
}
