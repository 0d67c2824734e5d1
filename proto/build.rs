//! Generates the protobuf types from `mqim.proto` at build time.
//!
//! The .proto is parsed by `protox` (pure Rust) instead of a system `protoc`, so building
//! needs nothing beyond cargo; the resulting descriptor set is handed to prost-build.

use std::process::ExitCode;

fn main() -> ExitCode {
    println!("cargo:rerun-if-changed=mqim.proto");
    let fds = match protox::compile(["mqim.proto"], ["."]) {
        Ok(fds) => fds,
        Err(e) => {
            eprintln!("error: cannot compile mqim.proto: {e:?}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = prost_build::Config::new().compile_fds(fds) {
        eprintln!("error: cannot generate Rust code from mqim.proto: {e}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
