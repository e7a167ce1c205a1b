//! The types and defaults both sides of the wire agree on — the brokers' metadata model
//! (`moonraft-meta`) and the proxies (`moonraft-proxy`): slot ranges, migration metadata, the
//! cluster config with its defaults and its `SETCLUSTER` key names, and cluster names. Defined
//! once here so the two sides cannot drift apart (`docs/protocol.md#setcluster`).

use serde::{Deserialize, Serialize};

/// Hash slots of a Redis Cluster.
pub const SLOT_COUNT: usize = 16384;

/// An inclusive slot range; JSON `[start, end]` as in the broker API and the compressed
/// `SETCLUSTER` payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(from = "(u16, u16)", into = "(u16, u16)")]
pub struct Range {
    pub start: u16,
    pub end: u16,
}

impl From<(u16, u16)> for Range {
    fn from((start, end): (u16, u16)) -> Self {
        Range { start, end }
    }
}

impl From<Range> for (u16, u16) {
    fn from(r: Range) -> Self {
        (r.start, r.end)
    }
}

/// `start-end`, or `start` for one slot, as `CLUSTER NODES` shows ranges.
impl std::fmt::Display for Range {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.start == self.end {
            write!(f, "{}", self.start)
        } else {
            write!(f, "{}-{}", self.start, self.end)
        }
    }
}

impl Range {
    pub fn contains(&self, slot: u16) -> bool {
        self.start <= slot && slot <= self.end
    }

    /// Slots in the range; 0 for an inverted one (only a document from outside can hold one,
    /// and validation refuses it).
    pub fn len(&self) -> u32 {
        (u32::from(self.end) + 1).saturating_sub(u32::from(self.start))
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The `SETCLUSTER` token `start-end`: `None` unless `start <= end < SLOT_COUNT`.
    pub fn parse(token: &[u8]) -> Option<Range> {
        let text = std::str::from_utf8(token).ok()?;
        let (start, end) = text.split_once('-')?;
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if !digits(start) || !digits(end) {
            return None;
        }
        let (start, end): (u64, u64) = (start.parse().ok()?, end.parse().ok()?);
        if start > end || end >= SLOT_COUNT as u64 {
            return None;
        }
        Some(Range { start: start as u16, end: end as u16 })
    }
}

/// OpenAPI: `[start, end]`, two slot numbers (serde writes the pair, not the struct).
#[cfg(feature = "schema")]
impl utoipa::PartialSchema for Range {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, SchemaType, Type};
        let slot = ObjectBuilder::new()
            .schema_type(SchemaType::Type(Type::Integer))
            .minimum(Some(0))
            .maximum(Some(SLOT_COUNT - 1));
        ArrayBuilder::new()
            .items(slot)
            .min_items(Some(2))
            .max_items(Some(2))
            .description(Some("An inclusive slot range [start, end]"))
            .into()
    }
}

#[cfg(feature = "schema")]
impl utoipa::ToSchema for Range {}

/// Where a moving range comes from and goes to, and the epoch of the plan that moves it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct MigrationMeta {
    pub epoch: u64,
    pub src_proxy_address: String,
    pub src_node_address: String,
    pub dst_proxy_address: String,
    pub dst_node_address: String,
}

impl MigrationMeta {
    /// The five-token wire form used by `SETCLUSTER`, `INFOMGR` and the switch commands.
    pub fn to_tokens(&self) -> String {
        format!(
            "{} {} {} {} {}",
            self.epoch, self.src_proxy_address, self.src_node_address, self.dst_proxy_address, self.dst_node_address
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum CompressionStrategy {
    #[default]
    Disabled,
    SetGetOnly,
    AllowAll,
}

impl CompressionStrategy {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "disabled" => Some(Self::Disabled),
            "set_get_only" => Some(Self::SetGetOnly),
            "allow_all" => Some(Self::AllowAll),
            _ => None,
        }
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Disabled => "disabled",
            Self::SetGetOnly => "set_get_only",
            Self::AllowAll => "allow_all",
        }
    }
}

/// How a cluster's migrations run. The defaults are undermoon's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct MigrationConfig {
    /// Seconds a migration may take (kept for compatibility; moonraft never forces one).
    pub max_migration_time: u64,
    /// Milliseconds the source may hold the moving slots while in-flight commands drain.
    pub max_blocking_time: u64,
    /// Milliseconds between scan batches.
    pub scan_interval: u64,
    /// Keys per scan batch.
    pub scan_count: u64,
}

impl Default for MigrationConfig {
    fn default() -> Self {
        MigrationConfig { max_migration_time: 10800, max_blocking_time: 10000, scan_interval: 500, scan_count: 16 }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct ClusterConfig {
    pub compression_strategy: CompressionStrategy,
    pub migration_config: MigrationConfig,
}

impl ClusterConfig {
    /// Sets one key of the `CONFIG` section of `SETCLUSTER` (`compression_strategy`,
    /// `migration_max_migration_time`, …); false for an unknown key or a value it cannot take.
    pub fn set_field(&mut self, key: &str, value: &str) -> bool {
        let num = || value.parse::<u64>().ok();
        let m = &mut self.migration_config;
        match key {
            "compression_strategy" => match CompressionStrategy::parse(value) {
                Some(s) => self.compression_strategy = s,
                None => return false,
            },
            "migration_max_migration_time" => match num() {
                Some(v) => m.max_migration_time = v,
                None => return false,
            },
            "migration_max_blocking_time" => match num() {
                Some(v) => m.max_blocking_time = v,
                None => return false,
            },
            "migration_scan_interval" => match num() {
                Some(v) => m.scan_interval = v,
                None => return false,
            },
            "migration_scan_count" => match num() {
                Some(v) if v > 0 => m.scan_count = v,
                _ => return false,
            },
            _ => return false,
        }
        true
    }

    /// The `CONFIG` section of `SETCLUSTER`: every key with its value, in the order
    /// coordinators send them.
    pub fn fields(&self) -> [(&'static str, String); 5] {
        let m = &self.migration_config;
        [
            ("compression_strategy", self.compression_strategy.as_str().to_owned()),
            ("migration_max_migration_time", m.max_migration_time.to_string()),
            ("migration_max_blocking_time", m.max_blocking_time.to_string()),
            ("migration_scan_interval", m.scan_interval.to_string()),
            ("migration_scan_count", m.scan_count.to_string()),
        ]
    }
}

/// A cluster name: 1–31 characters of `[A-Za-z0-9@_-]` (it becomes the first 24 characters of
/// node ids, and a key of the store).
pub fn valid_cluster_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 31
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'@' || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_and_print_as_on_the_wire() {
        assert_eq!(Range::parse(b"0-8191"), Some(Range { start: 0, end: 8191 }));
        assert_eq!(Range::parse(b"5-5").map(|r| r.to_string()), Some("5".to_owned()));
        for bad in [&b"5-1"[..], b"0-16384", b"-1", b"1-", b"a-b", b"+1-2", b"1-2-3", b""] {
            assert_eq!(Range::parse(bad), None, "{}", String::from_utf8_lossy(bad));
        }
        assert_eq!(Range { start: 0, end: 16383 }.len(), 16384);
        assert_eq!(Range { start: 5, end: 1 }.len(), 0);
    }

    #[test]
    fn the_config_section_round_trips_and_refuses_bad_values() {
        let mut c = ClusterConfig::default();
        for (k, v) in ClusterConfig::default().fields() {
            assert!(c.set_field(k, &v), "{k}");
        }
        assert_eq!(c, ClusterConfig::default());
        assert!(c.set_field("migration_scan_count", "32"));
        assert_eq!(c.migration_config.scan_count, 32);
        assert!(!c.set_field("migration_scan_count", "0"));
        assert!(!c.set_field("compression_strategy", "zzz"));
        assert!(!c.set_field("nosuchkey", "1"));
    }

    #[test]
    fn cluster_names() {
        assert!(valid_cluster_name("my-cluster_1@x"));
        assert!(!valid_cluster_name(""));
        assert!(!valid_cluster_name(&"a".repeat(32)));
        assert!(!valid_cluster_name("bad!name"));
    }
}
