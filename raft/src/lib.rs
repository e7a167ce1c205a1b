//! moonraft's replicated metadata log: openraft types, and its log storage and state machine
//! on RocksDB (`docs/architecture.md#how-an-api-call-flows-brokers`).

pub mod network;
pub mod storage;

use moonraft_meta::command::{Command, CommandResult};
use serde::{Deserialize, Serialize};
use std::io::Cursor;

/// What the membership records about each broker.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokerNode {
    pub raft_address: String,
    pub http_address: String,
}

impl std::fmt::Display for BrokerNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "raft={} http={}", self.raft_address, self.http_address)
    }
}

pub type NodeId = u64;

openraft::declare_raft_types!(
    /// Type configuration of the broker group.
    pub TypeConfig:
        D = Command,
        R = CommandResult,
        NodeId = NodeId,
        Node = BrokerNode,
        SnapshotData = Cursor<Vec<u8>>,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type StorageError = openraft::StorageError<NodeId>;
