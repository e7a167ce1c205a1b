//! gRPC definitions shared by brokers, coordinators and `moonraft ctl`.

#[allow(clippy::all)]
pub mod raft {
    tonic::include_proto!("moonraft.raft");
}

#[allow(clippy::all)]
pub mod broker {
    tonic::include_proto!("moonraft.broker");
}
