//! Error codes of the `/api/v3` surface (`docs/api.md#error-codes`).

/// A refused operation. `code()` is the JSON `error` value, `status()` the HTTP status.
/// Serializable because it is part of a Raft command's deterministic result.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum MetaError {
    #[error("INVALID_CLUSTER_NAME")]
    InvalidClusterName,
    #[error("INVALID_NODE_NUMBER")]
    InvalidNodeNumber,
    #[error("INVALID_PROXY_ADDRESS")]
    InvalidProxyAddress,
    #[error("INVALID_MIGRATION_TASK")]
    InvalidMigrationTask,
    #[error("INVALID_CONFIG")]
    InvalidConfig { key: String, value: String, message: String },
    #[error("SLOTS_ALREADY_EVEN")]
    SlotsAlreadyEven,
    #[error("MISSING_SERVER_PROXY_INDEX")]
    MissingServerProxyIndex,
    #[error("CLUSTER_NOT_FOUND")]
    ClusterNotFound,
    #[error("PROXY_NOT_FOUND")]
    ProxyNotFound,
    #[error("FREE_NODE_NOT_FOUND")]
    FreeNodeNotFound,
    #[error("MIGRATION_TASK_NOT_FOUND")]
    MigrationTaskNotFound,
    #[error("ALREADY_EXISTED")]
    AlreadyExisted,
    #[error("IN_USE")]
    InUse,
    #[error("NO_AVAILABLE_RESOURCE")]
    NoAvailableResource,
    #[error("RESOURCE_NOT_BALANCE")]
    ResourceNotBalance,
    #[error("FREE_NODE_FOUND")]
    FreeNodeFound,
    #[error("NODE_NUM_ALREADY_ENOUGH")]
    NodeNumAlreadyEnough,
    #[error("MIGRATION_RUNNING")]
    MigrationRunning,
    #[error("NODE_NUMBER_CHANGING")]
    NodeNumberChanging,
    #[error("INVALID_META_VERSION")]
    InvalidMetaVersion,
    #[error("EPOCH_SMALLER_THAN_CURRENT")]
    EpochSmallerThanCurrent,
    #[error("PROXY_RESOURCE_OUT_OF_ORDER")]
    ProxyResourceOutOfOrder,
    #[error("ONE_CLUSTER_ALREADY_EXISTED")]
    OneClusterAlreadyExisted,
    /// A conditional write (`If-Match: "<epoch>"`) found the cluster at another epoch.
    #[error("EPOCH_MISMATCH")]
    EpochMismatch { current: u64 },
    /// `PUT /metadata` with a document that breaks one of the store's invariants.
    #[error("INVALID_METADATA")]
    InvalidMetadata { message: String },
    /// An epoch above `store::MAX_EPOCH` was asked for.
    #[error("EPOCH_TOO_LARGE")]
    EpochTooLarge,
}

impl MetaError {
    pub fn code(&self) -> String {
        self.to_string()
    }

    pub fn status(&self) -> u16 {
        use MetaError::*;
        match self {
            InvalidClusterName
            | InvalidNodeNumber
            | InvalidProxyAddress
            | InvalidMigrationTask
            | InvalidConfig { .. }
            | SlotsAlreadyEven
            | MissingServerProxyIndex
            | InvalidMetadata { .. }
            | EpochTooLarge => 400,
            ClusterNotFound | ProxyNotFound | FreeNodeNotFound | MigrationTaskNotFound => 404,
            EpochMismatch { .. } => 412,
            _ => 409,
        }
    }
}
