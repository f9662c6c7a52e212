//! Generates the prost types from `proto/*.proto`.
//!
//! protox parses the `.proto` files in pure Rust, so building needs no system
//! `protoc`; prost-build then turns the descriptor set into Rust.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    const FILES: [&str; 3] = [
        "proto/backend.proto",
        "proto/route.proto",
        "proto/control.proto",
    ];
    for file in FILES {
        println!("cargo:rerun-if-changed={file}");
    }
    let fds = protox::compile(FILES, ["proto"])?;
    prost_build::Config::new()
        // Payloads become `bytes::Bytes`, so a decoded frame's payload is a
        // slice of the read buffer instead of a copy.
        .bytes(["."])
        .compile_fds(fds)?;
    Ok(())
}
