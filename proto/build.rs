// protoc comes from the protoc-bin-vendored crate, so no system package is needed.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    std::env::set_var("PROTOC", protoc);
    println!("cargo:rerun-if-changed=proto/raft.proto");
    println!("cargo:rerun-if-changed=proto/broker.proto");
    tonic_build::configure().compile_protos(&["proto/raft.proto", "proto/broker.proto"], &["proto"])?;
    Ok(())
}
