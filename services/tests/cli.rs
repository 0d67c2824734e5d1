//! The `mqim` command line.
//!
//! Being an integration test of the `mqim` package, this file also makes
//! `cargo test --workspace` (re)build `target/<profile>/mqim` before any test runs: cargo
//! builds a package's binaries only for that package's own integration tests, and the
//! end-to-end suite in `tests/` (package `mqim-tests`) starts that binary. Without it a
//! fresh clone has no binary to start and a working copy tests a stale one.

use std::process::Command;

#[test]
fn help_names_the_subcommands() {
    let out = Command::new(env!("CARGO_BIN_EXE_mqim"))
        .arg("--help")
        .output()
        .expect("run mqim --help");
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("serve") && text.contains("migrate"), "{text}");
}

#[test]
fn an_unknown_subcommand_is_a_usage_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_mqim"))
        .arg("no-such-command")
        .output()
        .expect("run mqim");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}
