//! Cluster metadata as the proxy receives it (`UMCTL SETCLUSTER`), and the routing table built
//! from it. Pure code: parsing, slot ownership, routing decisions and CLUSTER output have no I/O.

use crate::resp::{parse_u64, Frame};
use crate::slot::{node_id, SLOT_COUNT};
use base64::Engine;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Read;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

/// Inclusive slot range. JSON form is `[start, end]` as in the broker API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(from = "(u16, u16)", into = "(u16, u16)")]
pub struct SlotRange {
    pub start: u16,
    pub end: u16,
}

impl From<(u16, u16)> for SlotRange {
    fn from((start, end): (u16, u16)) -> Self {
        SlotRange { start, end }
    }
}
impl From<SlotRange> for (u16, u16) {
    fn from(r: SlotRange) -> Self {
        (r.start, r.end)
    }
}

impl SlotRange {
    pub fn contains(&self, slot: u16) -> bool {
        self.start <= slot && slot <= self.end
    }
    fn parse(s: &[u8]) -> Option<SlotRange> {
        let dash = s.iter().position(|&b| b == b'-')?;
        let start = parse_u64(&s[..dash])?;
        let end = parse_u64(&s[dash + 1..])?;
        if start > end || end >= SLOT_COUNT as u64 {
            return None;
        }
        Some(SlotRange { start: start as u16, end: end as u16 })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MigrationMeta {
    pub epoch: u64,
    pub src_proxy_address: String,
    pub src_node_address: String,
    pub dst_proxy_address: String,
    pub dst_node_address: String,
}

impl MigrationMeta {
    /// The five-token wire form used by SETCLUSTER, INFOMGR and the switch commands.
    pub fn to_tokens(&self) -> String {
        format!(
            "{} {} {} {} {}",
            self.epoch, self.src_proxy_address, self.src_node_address, self.dst_proxy_address, self.dst_node_address
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RangeTag {
    None,
    Migrating(MigrationMeta),
    Importing(MigrationMeta),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RangeEntry {
    pub ranges: Vec<SlotRange>,
    pub tag: RangeTag,
}

/// The JSON tag form used in the compressed payload: `"None"` or `{"Migrating": meta}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
enum JsonTag {
    None,
    Migrating(MigrationMeta),
    Importing(MigrationMeta),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct JsonRange {
    range_list: Vec<SlotRange>,
    tag: JsonTag,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct JsonMigrationConfig {
    #[serde(default)]
    max_migration_time: Option<u64>,
    #[serde(default)]
    max_blocking_time: Option<u64>,
    #[serde(default)]
    scan_interval: Option<u64>,
    #[serde(default)]
    scan_count: Option<u64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct JsonClusterConfig {
    #[serde(default)]
    compression_strategy: Option<String>,
    #[serde(default)]
    migration_config: JsonMigrationConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct JsonClusterMeta {
    cluster_name: String,
    #[serde(default)]
    local: BTreeMap<String, Vec<JsonRange>>,
    #[serde(default)]
    peer: BTreeMap<String, Vec<JsonRange>>,
    #[serde(default)]
    cluster_config: JsonClusterConfig,
    /// moonraft's extension (replica reads); absent in undermoon's metadata.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    replica: Vec<ReplicaEntry>,
}

/// A replica node and the slots it may serve reads for (the `REPLICA` section of SETCLUSTER:
/// its master's slots outside any migration).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaEntry {
    pub proxy: String,
    pub node: String,
    pub ranges: Vec<SlotRange>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompressionStrategy {
    Disabled,
    SetGetOnly,
    AllowAll,
}

impl CompressionStrategy {
    fn parse(s: &str) -> Option<Self> {
        match s {
            "disabled" => Some(Self::Disabled),
            "set_get_only" => Some(Self::SetGetOnly),
            "allow_all" => Some(Self::AllowAll),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    pub compression_strategy: CompressionStrategy,
    pub migration_max_migration_time: u64,
    pub migration_max_blocking_time: u64,
    pub migration_scan_interval: u64,
    pub migration_scan_count: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            compression_strategy: CompressionStrategy::Disabled,
            migration_max_migration_time: 10800,
            migration_max_blocking_time: 10000,
            migration_scan_interval: 500,
            migration_scan_count: 16,
        }
    }
}

impl ClusterConfig {
    fn set(&mut self, field: &str, value: &str) -> bool {
        let num = || value.parse::<u64>().ok();
        match field {
            "compression_strategy" => match CompressionStrategy::parse(value) {
                Some(s) => self.compression_strategy = s,
                None => return false,
            },
            "migration_max_migration_time" => match num() {
                Some(v) => self.migration_max_migration_time = v,
                None => return false,
            },
            "migration_max_blocking_time" => match num() {
                Some(v) => self.migration_max_blocking_time = v,
                None => return false,
            },
            "migration_scan_interval" => match num() {
                Some(v) => self.migration_scan_interval = v,
                None => return false,
            },
            "migration_scan_count" => match num() {
                Some(v) if v > 0 => self.migration_scan_count = v,
                _ => return false,
            },
            _ => return false,
        }
        true
    }
}

/// What a SETCLUSTER carries.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClusterMeta {
    pub name: String,
    pub local: Vec<(String, RangeEntry)>,
    pub peers: Vec<(String, RangeEntry)>,
    pub config: ClusterConfig,
    /// Every replica of the cluster and the slots it may serve reads for.
    pub replicas: Vec<ReplicaEntry>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Flags {
    pub force: bool,
    pub compress: bool,
    /// moonraft extension (`TARGET=<announce address>`): the proxy this metadata is meant for.
    pub target: Option<String>,
}

impl Flags {
    /// Comma separated; `FORCE`, `COMPRESS` and `TARGET=addr` are recognised, everything else
    /// (`NOFLAG`, `NOFLAGS`, …) is ignored as undermoon does.
    pub fn parse(s: &[u8]) -> Flags {
        let mut flags = Flags::default();
        for tok in s.split(|&b| b == b',') {
            if tok.eq_ignore_ascii_case(b"force") {
                flags.force = true;
            } else if tok.eq_ignore_ascii_case(b"compress") {
                flags.compress = true;
            } else if tok.len() > 7 && tok[..7].eq_ignore_ascii_case(b"target=") {
                flags.target = Some(String::from_utf8_lossy(&tok[7..]).into_owned());
            }
        }
        flags
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetCluster {
    pub epoch: u64,
    pub flags: Flags,
    pub meta: ClusterMeta,
    /// The CONFIG section was invalid and ignored (reply `+WARNING: ignored invalid config`).
    pub config_ignored: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseErrorKind {
    InvalidVersion,
    InvalidArgs,
    InvalidClusterName,
}

impl std::fmt::Display for ParseErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self:?}")
    }
}

/// Cluster names: empty (no cluster) or 1–31 characters of `[A-Za-z0-9@_-]`.
pub fn valid_cluster_name(name: &str) -> bool {
    name.len() < 32 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'@' || b == b'-' || b == b'_')
}

fn utf8(b: &[u8]) -> Result<String, ParseErrorKind> {
    std::str::from_utf8(b).map(str::to_owned).map_err(|_| ParseErrorKind::InvalidArgs)
}

/// Limit on the decompressed size of a COMPRESS payload, so a tiny gzip bomb cannot exhaust
/// memory.
const MAX_DECOMPRESSED_META: u64 = 64 * 1024 * 1024;

impl SetCluster {
    /// Parses the arguments after `UMCTL SETCLUSTER`.
    pub fn parse(args: &[Bytes]) -> Result<SetCluster, ParseErrorKind> {
        if args.len() < 4 {
            return Err(if args.first().is_some_and(|v| !v.eq_ignore_ascii_case(b"v2")) {
                ParseErrorKind::InvalidVersion
            } else {
                ParseErrorKind::InvalidArgs
            });
        }
        if !args[0].eq_ignore_ascii_case(b"v2") {
            return Err(ParseErrorKind::InvalidVersion);
        }
        let epoch = parse_u64(&args[1]).ok_or(ParseErrorKind::InvalidArgs)?;
        let flags = Flags::parse(&args[2]);
        if flags.compress {
            if args.len() != 4 {
                return Err(ParseErrorKind::InvalidArgs);
            }
            let (meta, config_ignored) = Self::parse_compressed(&args[3])?;
            return Ok(SetCluster { epoch, flags, meta, config_ignored });
        }
        let name = utf8(&args[3])?;
        if !valid_cluster_name(&name) {
            return Err(ParseErrorKind::InvalidClusterName);
        }
        let mut it = Tokens { args: &args[4..], pos: 0 };
        let local = parse_entries(&mut it)?;
        let mut peers = Vec::new();
        let mut replicas = Vec::new();
        let mut config = ClusterConfig::default();
        let mut config_invalid = false;
        while let Some(section) = it.next() {
            if section.eq_ignore_ascii_case(b"peer") {
                peers = parse_entries(&mut it)?;
            } else if section.eq_ignore_ascii_case(b"replica") {
                replicas = parse_replicas(&mut it)?;
            } else if section.eq_ignore_ascii_case(b"config") {
                config = ClusterConfig::default();
                config_invalid = false;
                while let Some(field) = it.peek() {
                    if is_section(field) {
                        break;
                    }
                    it.pos += 1;
                    let Some(value) = it.next() else {
                        config_invalid = true;
                        break;
                    };
                    let (f, v) = (String::from_utf8_lossy(field), String::from_utf8_lossy(value));
                    if !config.set(&f, &v) {
                        config_invalid = true;
                    }
                }
            } else {
                return Err(ParseErrorKind::InvalidArgs);
            }
        }
        let mut config_ignored = false;
        if config_invalid {
            if local.is_empty() || peers.is_empty() {
                return Err(ParseErrorKind::InvalidArgs);
            }
            config = ClusterConfig::default();
            config_ignored = true;
        }
        Ok(SetCluster { epoch, flags, meta: ClusterMeta { name, local, peers, config, replicas }, config_ignored })
    }

    fn parse_compressed(payload: &[u8]) -> Result<(ClusterMeta, bool), ParseErrorKind> {
        let gz = base64::engine::general_purpose::STANDARD.decode(payload).map_err(|_| ParseErrorKind::InvalidArgs)?;
        let mut json = Vec::new();
        flate2::read::GzDecoder::new(&gz[..])
            .take(MAX_DECOMPRESSED_META + 1)
            .read_to_end(&mut json)
            .map_err(|_| ParseErrorKind::InvalidArgs)?;
        if json.len() as u64 > MAX_DECOMPRESSED_META {
            return Err(ParseErrorKind::InvalidArgs);
        }
        let meta: JsonClusterMeta = serde_json::from_slice(&json).map_err(|_| ParseErrorKind::InvalidArgs)?;
        if !valid_cluster_name(&meta.cluster_name) {
            return Err(ParseErrorKind::InvalidClusterName);
        }
        let conv = |m: BTreeMap<String, Vec<JsonRange>>| -> Result<Vec<(String, RangeEntry)>, ParseErrorKind> {
            let mut out = Vec::new();
            let mut slots_named = 0u64;
            for (addr, ranges) in m {
                for r in ranges {
                    if r.range_list.iter().any(|s| s.start > s.end || s.end as usize >= SLOT_COUNT) {
                        return Err(ParseErrorKind::InvalidArgs);
                    }
                    slots_named += r.range_list.iter().map(|s| (s.end - s.start) as u64 + 1).sum::<u64>();
                    if slots_named > MAX_SLOTS_PER_SECTION {
                        return Err(ParseErrorKind::InvalidArgs);
                    }
                    let tag = match r.tag {
                        JsonTag::None => RangeTag::None,
                        JsonTag::Migrating(m) => RangeTag::Migrating(m),
                        JsonTag::Importing(m) => RangeTag::Importing(m),
                    };
                    out.push((addr.clone(), RangeEntry { ranges: r.range_list, tag }));
                }
            }
            Ok(out)
        };
        let local = conv(meta.local)?;
        let peers = conv(meta.peer)?;
        let mut config = ClusterConfig::default();
        let c = &meta.cluster_config;
        let mut ok = true;
        if let Some(s) = &c.compression_strategy {
            ok &= config.set("compression_strategy", s);
        }
        let m = &c.migration_config;
        for (field, v) in [
            ("migration_max_migration_time", m.max_migration_time),
            ("migration_max_blocking_time", m.max_blocking_time),
            ("migration_scan_interval", m.scan_interval),
            ("migration_scan_count", m.scan_count),
        ] {
            if let Some(v) = v {
                ok &= config.set(field, &v.to_string());
            }
        }
        let mut ignored = false;
        if !ok {
            if local.is_empty() || peers.is_empty() {
                return Err(ParseErrorKind::InvalidArgs);
            }
            config = ClusterConfig::default();
            ignored = true;
        }
        let mut slots_named = 0u64;
        for r in &meta.replica {
            if r.ranges.iter().any(|s| s.start > s.end || s.end as usize >= SLOT_COUNT) {
                return Err(ParseErrorKind::InvalidArgs);
            }
            slots_named += r.ranges.iter().map(|s| (s.end - s.start) as u64 + 1).sum::<u64>();
            if slots_named > MAX_SLOTS_PER_SECTION {
                return Err(ParseErrorKind::InvalidArgs);
            }
        }
        Ok((ClusterMeta { name: meta.cluster_name, local, peers, config, replicas: meta.replica }, ignored))
    }
}

/// Encodes a COMPRESS payload (used by tests and by coordinators).
pub fn encode_compressed(meta: &ClusterMeta) -> String {
    use std::io::Write;
    let conv = |entries: &[(String, RangeEntry)]| {
        let mut m: BTreeMap<String, Vec<JsonRange>> = BTreeMap::new();
        for (addr, e) in entries {
            let tag = match &e.tag {
                RangeTag::None => JsonTag::None,
                RangeTag::Migrating(m) => JsonTag::Migrating(m.clone()),
                RangeTag::Importing(m) => JsonTag::Importing(m.clone()),
            };
            m.entry(addr.clone()).or_default().push(JsonRange { range_list: e.ranges.clone(), tag });
        }
        m
    };
    let strategy = match meta.config.compression_strategy {
        CompressionStrategy::Disabled => "disabled",
        CompressionStrategy::SetGetOnly => "set_get_only",
        CompressionStrategy::AllowAll => "allow_all",
    };
    let json = JsonClusterMeta {
        cluster_name: meta.name.clone(),
        local: conv(&meta.local),
        peer: conv(&meta.peers),
        replica: meta.replicas.clone(),
        cluster_config: JsonClusterConfig {
            compression_strategy: Some(strategy.into()),
            migration_config: JsonMigrationConfig {
                max_migration_time: Some(meta.config.migration_max_migration_time),
                max_blocking_time: Some(meta.config.migration_max_blocking_time),
                scan_interval: Some(meta.config.migration_scan_interval),
                scan_count: Some(meta.config.migration_scan_count),
            },
        },
    };
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    // Writing into a Vec cannot fail.
    let _ = enc.write_all(&serde_json::to_vec(&json).unwrap_or_default());
    let gz = enc.finish().unwrap_or_default();
    base64::engine::general_purpose::STANDARD.encode(gz)
}

struct Tokens<'a> {
    args: &'a [Bytes],
    pos: usize,
}

impl<'a> Tokens<'a> {
    fn peek(&self) -> Option<&'a Bytes> {
        self.args.get(self.pos)
    }
    fn next(&mut self) -> Option<&'a Bytes> {
        let t = self.args.get(self.pos);
        if t.is_some() {
            self.pos += 1;
        }
        t
    }
    fn need(&mut self) -> Result<&'a Bytes, ParseErrorKind> {
        self.next().ok_or(ParseErrorKind::InvalidArgs)
    }
}

/// Upper bound on the slots named by one section: each slot appears at most twice in valid
/// metadata (a migrating and an importing entry). Bounds the work of building the table.
const MAX_SLOTS_PER_SECTION: u64 = 2 * SLOT_COUNT as u64;

/// The keywords that start a section of SETCLUSTER.
fn is_section(tok: &[u8]) -> bool {
    tok.eq_ignore_ascii_case(b"peer") || tok.eq_ignore_ascii_case(b"config") || tok.eq_ignore_ascii_case(b"replica")
}

/// `REPLICA` section entries: `<replica proxy> <replica node> <n> <range>*`.
fn parse_replicas(it: &mut Tokens<'_>) -> Result<Vec<ReplicaEntry>, ParseErrorKind> {
    let mut out = Vec::new();
    let mut slots_named = 0u64;
    while let Some(tok) = it.peek() {
        if is_section(tok) {
            break;
        }
        it.pos += 1;
        let proxy = utf8(tok)?;
        let node = utf8(it.need()?)?;
        let count = parse_u64(it.need()?).ok_or(ParseErrorKind::InvalidArgs)?;
        if count > SLOT_COUNT as u64 {
            return Err(ParseErrorKind::InvalidArgs);
        }
        let mut ranges = Vec::with_capacity(count as usize);
        for _ in 0..count {
            let r = SlotRange::parse(it.need()?).ok_or(ParseErrorKind::InvalidArgs)?;
            slots_named += (r.end - r.start) as u64 + 1;
            if slots_named > MAX_SLOTS_PER_SECTION {
                return Err(ParseErrorKind::InvalidArgs);
            }
            ranges.push(r);
        }
        out.push(ReplicaEntry { proxy, node, ranges });
    }
    Ok(out)
}

fn parse_entries(it: &mut Tokens<'_>) -> Result<Vec<(String, RangeEntry)>, ParseErrorKind> {
    let mut out = Vec::new();
    let mut slots_named = 0u64;
    while let Some(tok) = it.peek() {
        if is_section(tok) {
            break;
        }
        it.pos += 1;
        let address = utf8(tok)?;
        let mut kind = it.need()?;
        let tagged = if kind.eq_ignore_ascii_case(b"migrating") {
            Some(true)
        } else if kind.eq_ignore_ascii_case(b"importing") {
            Some(false)
        } else {
            None
        };
        if tagged.is_some() {
            kind = it.need()?;
        }
        let count = parse_u64(kind).ok_or(ParseErrorKind::InvalidArgs)?;
        if count > SLOT_COUNT as u64 {
            return Err(ParseErrorKind::InvalidArgs);
        }
        let mut ranges = Vec::with_capacity(count as usize);
        for _ in 0..count {
            let r = SlotRange::parse(it.need()?).ok_or(ParseErrorKind::InvalidArgs)?;
            slots_named += (r.end - r.start) as u64 + 1;
            if slots_named > MAX_SLOTS_PER_SECTION {
                return Err(ParseErrorKind::InvalidArgs);
            }
            ranges.push(r);
        }
        let tag = match tagged {
            None => RangeTag::None,
            Some(migrating) => {
                let epoch = parse_u64(it.need()?).ok_or(ParseErrorKind::InvalidArgs)?;
                let meta = MigrationMeta {
                    epoch,
                    src_proxy_address: utf8(it.need()?)?,
                    src_node_address: utf8(it.need()?)?,
                    dst_proxy_address: utf8(it.need()?)?,
                    dst_node_address: utf8(it.need()?)?,
                };
                if migrating {
                    RangeTag::Migrating(meta)
                } else {
                    RangeTag::Importing(meta)
                }
            }
        };
        out.push((address, RangeEntry { ranges, tag }));
    }
    Ok(out)
}

/// Migration task states (`migration.md` §5.1). Importing tasks use PreCheck, PreSwitch and
/// SwitchCommitted only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum TaskState {
    PreCheck = 0,
    PreBlocking = 1,
    PreSwitch = 2,
    Scanning = 3,
    FinalSwitch = 4,
    SwitchCommitted = 5,
}

impl TaskState {
    fn from_u8(v: u8) -> TaskState {
        match v {
            1 => TaskState::PreBlocking,
            2 => TaskState::PreSwitch,
            3 => TaskState::Scanning,
            4 => TaskState::FinalSwitch,
            5 => TaskState::SwitchCommitted,
            _ => TaskState::PreCheck,
        }
    }
}

/// What a task keeps across metadata updates that keep its identity: its state, the driver's
/// bookkeeping and its progress.
#[derive(Debug, Default)]
pub struct TaskShared {
    state: AtomicU8,
    /// A driver (source) was started for this task.
    pub started: std::sync::atomic::AtomicBool,
    /// Commands for the task's slots on their way to the source node (source, PreCheck).
    pub inflight: std::sync::atomic::AtomicUsize,
    /// Notified when the source starts draining (PreBlocking): blocking commands parked on
    /// the task's slots are unblocked then, or they would hold the drain up forever.
    pub draining: tokio::sync::Notify,
    /// Keys being copied right now (a scanner batch or a `UMSYNC` pull) on the source: a key
    /// is never copied by two at once, so a pull can never re-create a key the destination
    /// changed after an earlier copy. Per key, so a pull waits only for its own key.
    pub busy_keys: std::sync::Mutex<std::collections::HashSet<Bytes>>,
    /// The source has copied every key (`UMSYNC` answers `MIGRATING_FINISHED`).
    pub scan_finished: std::sync::atomic::AtomicBool,
    pub keys_moved: std::sync::atomic::AtomicU64,
    /// Of `keys_moved`: keys moved ahead of the scan because a client needed them at the
    /// destination (`UMSYNC`).
    pub keys_pulled: std::sync::atomic::AtomicU64,
    pub bytes_moved: std::sync::atomic::AtomicU64,
    /// Why the copy is paused, if it is (e.g. the destination refuses RESTORE).
    pub last_error: std::sync::Mutex<Option<String>>,
    /// Keys of the task's slots when the copy started (estimated from the node's DBSIZE).
    pub keys_estimate: std::sync::atomic::AtomicU64,
    /// When the copy started.
    pub copy_started: std::sync::Mutex<Option<std::time::Instant>>,
    /// Destination: the connections to the source proxy for pulls (`UMSYNC`), kept for the
    /// task's life rather than opened per pull.
    pub source_proxy: std::sync::OnceLock<Arc<crate::backend::NodePool>>,
}

/// A local migrating or importing range. The state is shared across metadata updates that
/// keep the same task identity.
#[derive(Debug, Clone)]
pub struct MigrationTask {
    pub node: String,
    pub ranges: Vec<SlotRange>,
    pub meta: MigrationMeta,
    pub importing: bool,
    pub shared: Arc<TaskShared>,
}

impl TaskShared {
    pub fn state(&self) -> TaskState {
        TaskState::from_u8(self.state.load(Ordering::SeqCst))
    }
}

impl MigrationTask {
    pub fn state(&self) -> TaskState {
        self.shared.state()
    }
    pub fn set_state(&self, s: TaskState) {
        self.shared.state.store(s as u8, Ordering::SeqCst);
    }
    pub fn contains(&self, slot: u16) -> bool {
        self.ranges.iter().any(|r| r.contains(slot))
    }
    fn same_identity(&self, other: &MigrationTask) -> bool {
        self.importing == other.importing && self.ranges == other.ranges && self.meta == other.meta
    }
    /// `count start-end…` as printed by INFOMGR and the switch commands.
    pub fn ranges_tokens(&self) -> String {
        let mut s = self.ranges.len().to_string();
        for r in &self.ranges {
            let _ = write!(s, " {}-{}", r.start, r.end);
        }
        s
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SlotOwner {
    None,
    Local(u16),
    Peer(u16),
    Task(u16),
}

/// Where a command for a slot goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route<'a> {
    /// The proxy serves no cluster.
    NoCluster,
    NotCovered,
    /// Local node (index into `ClusterTable::nodes`).
    Local(usize),
    Moved(&'a str),
    Ask(&'a str),
    /// The slot is being switched to another node; the client should retry shortly.
    TryAgain,
}

/// The immutable routing snapshot installed by one SETCLUSTER.
#[derive(Debug)]
pub struct ClusterTable {
    pub epoch: u64,
    pub meta: ClusterMeta,
    /// Local node addresses, in order of first appearance.
    pub nodes: Vec<String>,
    /// Peer proxy addresses.
    pub peers: Vec<String>,
    pub tasks: Vec<MigrationTask>,
    slots: Vec<SlotOwner>,
}

impl ClusterTable {
    pub fn empty() -> ClusterTable {
        ClusterTable {
            epoch: 0,
            meta: ClusterMeta::default(),
            nodes: Vec::new(),
            peers: Vec::new(),
            tasks: Vec::new(),
            slots: vec![SlotOwner::None; SLOT_COUNT],
        }
    }

    /// Builds the table; tasks with the same identity as one in `previous` keep its state.
    pub fn build(epoch: u64, meta: ClusterMeta, previous: Option<&ClusterTable>) -> ClusterTable {
        let mut nodes: Vec<String> = Vec::new();
        let mut peers: Vec<String> = Vec::new();
        let mut tasks: Vec<MigrationTask> = Vec::new();
        let mut slots = vec![SlotOwner::None; SLOT_COUNT];
        let index_of = |list: &mut Vec<String>, addr: &str| -> u16 {
            match list.iter().position(|a| a == addr) {
                Some(i) => i as u16,
                None => {
                    list.push(addr.to_owned());
                    (list.len() - 1) as u16
                }
            }
        };
        // Peers first, by priority, so that local ranges overwrite them: a peer's MIGRATING
        // range loses to anyone's IMPORTING range for the same slots (undermoon weak point 23).
        let mut peer_order: Vec<&(String, RangeEntry)> = meta.peers.iter().collect();
        peer_order.sort_by_key(|(_, e)| match e.tag {
            RangeTag::Migrating(_) => 0,
            RangeTag::None => 1,
            RangeTag::Importing(_) => 2,
        });
        for (addr, entry) in peer_order {
            let idx = index_of(&mut peers, addr);
            for r in &entry.ranges {
                for s in r.start..=r.end {
                    slots[s as usize] = SlotOwner::Peer(idx);
                }
            }
        }
        for (addr, entry) in &meta.local {
            let node = index_of(&mut nodes, addr);
            let owner = match &entry.tag {
                RangeTag::None => SlotOwner::Local(node),
                RangeTag::Migrating(m) | RangeTag::Importing(m) => {
                    let mut task = MigrationTask {
                        node: addr.clone(),
                        ranges: entry.ranges.clone(),
                        meta: m.clone(),
                        importing: matches!(entry.tag, RangeTag::Importing(_)),
                        shared: Arc::new(TaskShared::default()),
                    };
                    if let Some(prev) = previous.and_then(|p| {
                        (p.meta.name == meta.name).then_some(p)?.tasks.iter().find(|t| t.same_identity(&task))
                    }) {
                        task.shared = prev.shared.clone();
                    }
                    tasks.push(task);
                    SlotOwner::Task((tasks.len() - 1) as u16)
                }
            };
            for r in &entry.ranges {
                for s in r.start..=r.end {
                    slots[s as usize] = owner;
                }
            }
        }
        ClusterTable { epoch, meta, nodes, peers, tasks, slots }
    }

    /// How many slots `node` holds in this table (stable and migrating ranges).
    pub fn node_slot_count(&self, node: &str) -> u64 {
        self.meta
            .local
            .iter()
            .filter(|(addr, _)| addr == node)
            .flat_map(|(_, e)| e.ranges.iter())
            .map(|r| u64::from(r.end - r.start) + 1)
            .sum()
    }

    /// The migration task owning `slot`, if any.
    pub fn task_for_slot(&self, slot: u16) -> Option<&MigrationTask> {
        match self.slots.get(slot as usize) {
            Some(SlotOwner::Task(t)) => self.tasks.get(*t as usize),
            _ => None,
        }
    }

    pub fn has_cluster(&self) -> bool {
        !self.meta.name.is_empty()
    }

    /// Routing decision for `slot` (pure). `asking`: the client sent ASKING just before.
    ///
    /// Migration rules (`migration.md` §5): the source serves its migrating slots until the
    /// switch, holds them back while switching (TRYAGAIN, which cluster clients retry) and
    /// sends clients to the destination with MOVED once the destination has taken over. A
    /// destination that has not switched yet answers `ASK` to the source: the slot already
    /// belongs to it by the metadata, so clients must not re-map it, just try this one
    /// command at the source.
    pub fn route(&self, slot: u16, asking: bool) -> Route<'_> {
        if !self.has_cluster() {
            return Route::NoCluster;
        }
        match self.slots[slot as usize] {
            SlotOwner::None => Route::NotCovered,
            SlotOwner::Local(i) => Route::Local(i as usize),
            SlotOwner::Peer(i) => Route::Moved(&self.peers[i as usize]),
            SlotOwner::Task(t) => {
                let task = &self.tasks[t as usize];
                let node = self.nodes.iter().position(|n| *n == task.node).unwrap_or(0);
                let state = task.state();
                if task.importing {
                    if state == TaskState::PreCheck && !asking {
                        Route::Ask(&task.meta.src_proxy_address)
                    } else {
                        Route::Local(node)
                    }
                } else {
                    match state {
                        TaskState::PreCheck => Route::Local(node),
                        TaskState::PreBlocking | TaskState::PreSwitch => Route::TryAgain,
                        _ => Route::Moved(&task.meta.dst_proxy_address),
                    }
                }
            }
        }
    }

    /// Ranges this proxy shows as its own (`proxy.md` §7.1 visibility rules), merged.
    pub fn visible_local_ranges(&self) -> Vec<SlotRange> {
        let mut out = Vec::new();
        for (_, entry) in &self.meta.local {
            let visible = match &entry.tag {
                RangeTag::None => true,
                RangeTag::Migrating(m) | RangeTag::Importing(m) => {
                    let importing = matches!(entry.tag, RangeTag::Importing(_));
                    let state = self
                        .tasks
                        .iter()
                        .find(|t| t.importing == importing && &t.meta == m && t.ranges == entry.ranges)
                        .map(|t| t.state())
                        .unwrap_or(TaskState::PreCheck);
                    if importing {
                        state != TaskState::PreCheck
                    } else {
                        state == TaskState::PreCheck
                    }
                }
            };
            if visible {
                out.extend(entry.ranges.iter().copied());
            }
        }
        merge_ranges(out)
    }

    /// Visible ranges per peer proxy (MIGRATING hidden, IMPORTING shown), sorted by address.
    pub fn visible_peer_ranges(&self) -> Vec<(String, Vec<SlotRange>)> {
        let mut by_peer: BTreeMap<String, Vec<SlotRange>> = BTreeMap::new();
        for (addr, entry) in &self.meta.peers {
            if matches!(entry.tag, RangeTag::Migrating(_)) {
                continue;
            }
            by_peer.entry(addr.clone()).or_default().extend(entry.ranges.iter().copied());
        }
        by_peer.into_iter().map(|(a, r)| (a, merge_ranges(r))).collect()
    }

    /// Number of slots served by anyone according to the visible view.
    pub fn assigned_slots(&self) -> usize {
        self.slots.iter().filter(|s| **s != SlotOwner::None).count()
    }

    pub fn find_task(&self, importing: bool, ranges: &[SlotRange], meta: &MigrationMeta) -> Option<&MigrationTask> {
        self.tasks.iter().find(|t| t.importing == importing && t.ranges == ranges && &t.meta == meta)
    }
}

/// Sorts and merges overlapping or adjacent ranges.
pub fn merge_ranges(mut ranges: Vec<SlotRange>) -> Vec<SlotRange> {
    ranges.sort();
    let mut out: Vec<SlotRange> = Vec::with_capacity(ranges.len());
    for r in ranges {
        match out.last_mut() {
            Some(last) if r.start as u32 <= last.end as u32 + 1 => last.end = last.end.max(r.end),
            _ => out.push(r),
        }
    }
    out
}

fn format_ranges(ranges: &[SlotRange], out: &mut String) {
    for r in ranges {
        if r.start == r.end {
            let _ = write!(out, " {}", r.start);
        } else {
            let _ = write!(out, " {}-{}", r.start, r.end);
        }
    }
}

/// `CLUSTER NODES` text (`proxy.md` §7.1): this proxy first, then peers by address.
pub fn cluster_nodes(table: &ClusterTable, announce: &str, v2: bool) -> String {
    let bus = if v2 { "@5299" } else { "" };
    let mut out = String::new();
    let _ = write!(
        out,
        "{} {}{} myself,master - 0 0 {} connected",
        node_id(&table.meta.name, announce),
        announce,
        bus,
        table.epoch
    );
    if table.has_cluster() {
        format_ranges(&table.visible_local_ranges(), &mut out);
    }
    out.push('\n');
    if table.has_cluster() {
        for (peer, ranges) in table.visible_peer_ranges() {
            let _ = write!(
                out,
                "{} {}{} master - 0 0 {} connected",
                node_id(&table.meta.name, &peer),
                peer,
                bus,
                table.epoch
            );
            format_ranges(&ranges, &mut out);
            out.push('\n');
        }
    }
    out
}

fn split_address(addr: &str) -> Result<(&str, i64), String> {
    let (host, port) = addr.rsplit_once(':').ok_or_else(|| format!("invalid address {addr}"))?;
    let port = port.parse::<u16>().map_err(|_| format!("invalid address {addr}"))?;
    Ok((host, port as i64))
}

/// All (range, proxy address) pairs visible from this proxy, sorted by slot.
fn visible_ranges(table: &ClusterTable, announce: &str) -> Vec<(SlotRange, String)> {
    let mut all: Vec<(SlotRange, String)> =
        table.visible_local_ranges().into_iter().map(|r| (r, announce.to_owned())).collect();
    for (peer, ranges) in table.visible_peer_ranges() {
        all.extend(ranges.into_iter().map(|r| (r, peer.clone())));
    }
    all.sort();
    all
}

/// Visible ranges split where the proxies holding a replica of the slots change: (range,
/// serving proxy, proxies serving replica reads of it), sorted by slot.
fn ranges_with_replicas(table: &ClusterTable, announce: &str) -> Vec<(SlotRange, String, Vec<String>)> {
    let visible = visible_ranges(table, announce);
    if table.meta.replicas.is_empty() {
        return visible.into_iter().map(|(r, owner)| (r, owner, Vec::new())).collect();
    }
    let mut replicas_of: Vec<Vec<&str>> = vec![Vec::new(); SLOT_COUNT];
    for entry in &table.meta.replicas {
        for r in &entry.ranges {
            for slot in r.start..=r.end {
                let here = &mut replicas_of[slot as usize];
                if !here.contains(&entry.proxy.as_str()) {
                    here.push(&entry.proxy);
                }
            }
        }
    }
    for list in replicas_of.iter_mut() {
        list.sort_unstable();
    }
    let mut out = Vec::new();
    for (range, owner) in visible {
        let mut start = range.start;
        for slot in range.start..=range.end {
            let last = slot == range.end;
            if last || replicas_of[slot as usize + 1] != replicas_of[start as usize] {
                let replicas =
                    replicas_of[start as usize].iter().filter(|p| **p != owner).map(|p| (*p).to_owned()).collect();
                out.push((SlotRange { start, end: slot }, owner.clone(), replicas));
                start = slot.saturating_add(1);
            }
        }
    }
    out
}

/// The ranges as `CLUSTER SLOTS`/`SHARDS` show them: without replicas, or (`with_replicas`)
/// with the proxies serving replica reads, ordered so that every proxy is first seen as a
/// master.
///
/// Why the order matters: a proxy is a master (of its own slots) and a replica (of its chunk
/// partner's) at one address, while a Redis Cluster node is one or the other, and clients
/// such as redis-py give an address the role of its first appearance. Listing each proxy once
/// as a master first (the first slot of its first range, split off without replicas) keeps
/// every proxy a primary for them, so commands they send to every primary still reach all.
fn shown_ranges(table: &ClusterTable, announce: &str, with_replicas: bool) -> Vec<(SlotRange, String, Vec<String>)> {
    if !with_replicas {
        return visible_ranges(table, announce).into_iter().map(|(r, owner)| (r, owner, Vec::new())).collect();
    }
    let mut first_seen = Vec::new();
    let mut rest = Vec::new();
    let mut owners: Vec<String> = Vec::new();
    for (range, owner, replicas) in ranges_with_replicas(table, announce) {
        if owners.contains(&owner) || replicas.is_empty() {
            if !owners.contains(&owner) {
                owners.push(owner.clone());
            }
            rest.push((range, owner, replicas));
            continue;
        }
        owners.push(owner.clone());
        first_seen.push((SlotRange { start: range.start, end: range.start }, owner.clone(), Vec::new()));
        if range.start < range.end {
            rest.push((SlotRange { start: range.start + 1, end: range.end }, owner, replicas));
        }
    }
    first_seen.extend(rest);
    first_seen
}

/// `CLUSTER SLOTS` reply (`proxy.md` §7.2): each range with its serving proxy and, for a client
/// that sent `READONLY` (`with_replicas`: it wants to read from replicas), the proxies that
/// serve reads of it from a replica node. Other clients see masters only, as in undermoon.
pub fn cluster_slots(table: &ClusterTable, announce: &str, with_replicas: bool) -> Result<Frame, String> {
    let mut items = Vec::new();
    if table.has_cluster() {
        for (range, owner, replicas) in shown_ranges(table, announce, with_replicas) {
            let mut item = vec![Frame::Integer(range.start as i64), Frame::Integer(range.end as i64)];
            for addr in std::iter::once(&owner).chain(&replicas) {
                let (host, port) = split_address(addr)?;
                item.push(Frame::Array(vec![
                    Frame::bulk_str(host),
                    Frame::Integer(port),
                    Frame::bulk_str(&node_id(&table.meta.name, addr)),
                ]));
            }
            items.push(Frame::Array(item));
        }
    }
    Ok(Frame::Array(items))
}

/// `CLUSTER SHARDS` reply in the Redis 7 shape: one shard per serving proxy and set of replica
/// proxies (listed as for `cluster_slots`), its master first.
pub fn cluster_shards(table: &ClusterTable, announce: &str, with_replicas: bool) -> Result<Frame, String> {
    let mut groups: Vec<(String, Vec<String>, Vec<SlotRange>)> = Vec::new();
    if table.has_cluster() {
        for (range, owner, replicas) in shown_ranges(table, announce, with_replicas) {
            match groups.iter_mut().find(|(o, r, _)| *o == owner && *r == replicas) {
                Some(g) => g.2.push(range),
                None => groups.push((owner, replicas, vec![range])),
            }
        }
    }
    if !groups.iter().any(|(owner, _, _)| owner == announce) {
        groups.insert(0, (announce.to_owned(), Vec::new(), Vec::new()));
    }
    let node = |addr: &str, role: &str| -> Result<Frame, String> {
        let (host, port) = split_address(addr)?;
        Ok(Frame::Map(vec![
            (Frame::bulk_str("id"), Frame::bulk_str(&node_id(&table.meta.name, addr))),
            (Frame::bulk_str("port"), Frame::Integer(port)),
            (Frame::bulk_str("ip"), Frame::bulk_str(host)),
            (Frame::bulk_str("endpoint"), Frame::bulk_str(host)),
            (Frame::bulk_str("role"), Frame::bulk_str(role)),
            (Frame::bulk_str("replication-offset"), Frame::Integer(0)),
            (Frame::bulk_str("health"), Frame::bulk_str("online")),
        ]))
    };
    let mut shards = Vec::new();
    for (owner, replicas, ranges) in groups {
        let slots =
            ranges.iter().flat_map(|r| [Frame::Integer(r.start as i64), Frame::Integer(r.end as i64)]).collect();
        let mut nodes = vec![node(&owner, "master")?];
        for r in &replicas {
            nodes.push(node(r, "replica")?);
        }
        shards.push(Frame::Map(vec![
            (Frame::bulk_str("slots"), Frame::Array(slots)),
            (Frame::bulk_str("nodes"), Frame::Array(nodes)),
        ]));
    }
    Ok(Frame::Array(shards))
}

/// `CLUSTER INFO` text.
pub fn cluster_info(table: &ClusterTable) -> String {
    let assigned = if table.has_cluster() { table.assigned_slots() } else { 0 };
    let known = if table.has_cluster() { 1 + table.visible_peer_ranges().len() } else { 1 };
    let state = if assigned == SLOT_COUNT { "ok" } else { "fail" };
    format!(
        "cluster_enabled:1\r\ncluster_state:{state}\r\ncluster_slots_assigned:{assigned}\r\ncluster_slots_ok:{assigned}\r\n\
         cluster_slots_pfail:0\r\ncluster_slots_fail:0\r\ncluster_known_nodes:{known}\r\ncluster_size:{known}\r\n\
         cluster_current_epoch:{e}\r\ncluster_my_epoch:{e}\r\n",
        e = table.epoch
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(s: &str) -> Vec<Bytes> {
        s.split_whitespace().map(|t| Bytes::copy_from_slice(if t == "\"\"" { b"" } else { t.as_bytes() })).collect()
    }

    const EXAMPLE: &str = "v2 7 NOFLAG mycluster server_proxy5:7009 1 0-8191 PEER server_proxy6:6006 1 8192-16383 CONFIG compression_strategy disabled migration_max_migration_time 10800 migration_max_blocking_time 10000 migration_scan_interval 500 migration_scan_count 16";

    #[test]
    fn parses_the_spec_example() {
        let sc = SetCluster::parse(&toks(EXAMPLE)).unwrap();
        assert_eq!(sc.epoch, 7);
        assert!(!sc.flags.force);
        assert_eq!(sc.meta.name, "mycluster");
        assert_eq!(
            sc.meta.local,
            vec![("server_proxy5:7009".into(), RangeEntry { ranges: vec![(0, 8191).into()], tag: RangeTag::None })]
        );
        assert_eq!(sc.meta.peers.len(), 1);
        assert!(!sc.config_ignored);
        let t = ClusterTable::build(sc.epoch, sc.meta, None);
        assert_eq!(t.route(0, false), Route::Local(0));
        assert_eq!(t.route(15495, false), Route::Moved("server_proxy6:6006"));
        assert_eq!(
            cluster_nodes(&t, "server_proxy5:6005", true),
            "mycluster_______________d71bc00fbdddf89_ server_proxy5:6005@5299 myself,master - 0 0 7 connected 0-8191\n\
             mycluster_______________8de73f9146386295 server_proxy6:6006@5299 master - 0 0 7 connected 8192-16383\n"
        );
    }

    #[test]
    fn parse_errors() {
        assert_eq!(SetCluster::parse(&toks("v1 1 NOFLAG c")), Err(ParseErrorKind::InvalidVersion));
        assert_eq!(SetCluster::parse(&toks("v2 x NOFLAG c")), Err(ParseErrorKind::InvalidArgs));
        assert_eq!(SetCluster::parse(&toks("v2 1 NOFLAG bad!name")), Err(ParseErrorKind::InvalidClusterName));
        assert_eq!(SetCluster::parse(&toks("v2 1 NOFLAG c n:1 2 0-1")), Err(ParseErrorKind::InvalidArgs));
        assert_eq!(SetCluster::parse(&toks("v2 1 NOFLAG c n:1 1 5-1")), Err(ParseErrorKind::InvalidArgs));
        assert_eq!(SetCluster::parse(&toks("v2 1 NOFLAG c n:1 1 0-16384")), Err(ParseErrorKind::InvalidArgs));
        assert_eq!(SetCluster::parse(&toks("v2 1 NOFLAG c n:1 MIGRATING 1 0-1 3 a")), Err(ParseErrorKind::InvalidArgs));
        assert_eq!(SetCluster::parse(&toks("v2 1 NOFLAG c n:1 1 0-1 BOGUS")), Err(ParseErrorKind::InvalidArgs));
        // invalid config with an empty peer section fails, with both sections it is ignored
        assert_eq!(SetCluster::parse(&toks("v2 1 NOFLAG c n:1 1 0-1 CONFIG x y")), Err(ParseErrorKind::InvalidArgs));
        let sc =
            SetCluster::parse(&toks("v2 1 NOFLAG c n:1 1 0-1 PEER p:1 1 2-3 CONFIG compression_strategy zzz")).unwrap();
        assert!(sc.config_ignored);
        let free = SetCluster::parse(&toks("v2 6 NOFLAG \"\" CONFIG compression_strategy disabled")).unwrap();
        assert_eq!(free.meta.name, "");
        let f = SetCluster::parse(&toks("v2 6 force,TARGET=h:1 c")).unwrap().flags;
        assert!(f.force && f.target.as_deref() == Some("h:1"));
    }

    #[test]
    fn compressed_roundtrip() {
        let sc = SetCluster::parse(&toks(EXAMPLE)).unwrap();
        let payload = encode_compressed(&sc.meta);
        let args = vec![
            Bytes::from_static(b"v2"),
            Bytes::from_static(b"7"),
            Bytes::from_static(b"COMPRESS"),
            Bytes::from(payload),
        ];
        let back = SetCluster::parse(&args).unwrap();
        assert_eq!(back.meta, sc.meta);
        let garbage = vec![
            Bytes::from_static(b"v2"),
            Bytes::from_static(b"7"),
            Bytes::from_static(b"COMPRESS"),
            Bytes::from_static(b"!!"),
        ];
        assert_eq!(SetCluster::parse(&garbage), Err(ParseErrorKind::InvalidArgs));
    }

    fn migrating_table(prev: Option<&ClusterTable>) -> ClusterTable {
        // proxy A (this one, node a:1) migrates 0-99 to proxy B (node b:1); proxy C shows both.
        let s = "v2 9 NOFLAG c a:1 1 100-8191 a:1 MIGRATING 1 0-99 9 pa:1 a:1 pb:1 b:1 \
                 b:2 IMPORTING 1 9000-9100 9 pc:1 c:1 pa:1 b:2 \
                 PEER pb:1 1 8192-16383 pb:1 IMPORTING 1 0-99 9 pa:1 a:1 pb:1 b:1";
        let sc = SetCluster::parse(&toks(s)).unwrap();
        ClusterTable::build(sc.epoch, sc.meta, prev)
    }

    #[test]
    fn routing_follows_task_states() {
        let t = migrating_table(None);
        assert_eq!(t.tasks.len(), 2);
        assert_eq!(t.route(5, false), Route::Local(0));
        t.tasks[0].set_state(TaskState::PreBlocking);
        assert_eq!(t.route(5, false), Route::TryAgain);
        t.tasks[0].set_state(TaskState::Scanning);
        assert_eq!(t.route(5, false), Route::Moved("pb:1"));
        // importing side: ASK to the source before the switch, local afterwards
        assert_eq!(t.route(9050, false), Route::Ask("pc:1"));
        assert_eq!(t.route(9050, true), Route::Local(1));
        t.tasks[1].set_state(TaskState::PreSwitch);
        assert_eq!(t.route(9050, false), Route::Local(1));
        // the importing peer range wins over the plain peer range around it
        assert_eq!(t.route(9200, false), Route::Moved("pb:1"));
        // state survives a new table with the same identity
        let t2 = migrating_table(Some(&t));
        assert_eq!(t2.tasks[0].state(), TaskState::Scanning);
        assert_eq!(t2.route(5, false), Route::Moved("pb:1"));
    }

    #[test]
    fn visibility_rules() {
        let t = migrating_table(None);
        // PreCheck: the source still shows 0-99, the destination's range is hidden
        assert_eq!(t.visible_local_ranges(), vec![(0, 8191).into()]);
        t.tasks[0].set_state(TaskState::Scanning);
        t.tasks[1].set_state(TaskState::PreSwitch);
        assert_eq!(t.visible_local_ranges(), vec![(100, 8191).into(), (9000, 9100).into()]);
        let peers = t.visible_peer_ranges();
        assert_eq!(peers, vec![("pb:1".to_string(), vec![(0, 99).into(), (8192, 16383).into()])]);
        let nodes = cluster_nodes(&t, "pa:1", false);
        assert!(nodes.contains(" pa:1 myself,master - 0 0 9 connected 100-8191 9000-9100\n"), "{nodes}");
        assert!(nodes.contains(" pb:1 master - 0 0 9 connected 0-99 8192-16383\n"), "{nodes}");
    }

    #[test]
    fn peer_migrating_loses_to_importing() {
        // third proxy: peer A migrating 0-99 and peer B importing 0-99, in either order
        for order in [
            "PEER pa:1 MIGRATING 1 0-99 9 pa:1 a:1 pb:1 b:1 pb:1 IMPORTING 1 0-99 9 pa:1 a:1 pb:1 b:1",
            "PEER pb:1 IMPORTING 1 0-99 9 pa:1 a:1 pb:1 b:1 pa:1 MIGRATING 1 0-99 9 pa:1 a:1 pb:1 b:1",
        ] {
            let sc = SetCluster::parse(&toks(&format!("v2 9 NOFLAG c c:1 1 200-300 {order}"))).unwrap();
            let t = ClusterTable::build(9, sc.meta, None);
            assert_eq!(t.route(50, false), Route::Moved("pb:1"));
            assert_eq!(t.route(150, false), Route::NotCovered);
        }
    }

    #[test]
    fn free_proxy_output() {
        let t = ClusterTable::empty();
        assert_eq!(t.route(1, false), Route::NoCluster);
        assert_eq!(
            cluster_nodes(&t, "127.0.0.1:5299", true),
            "________________________b8ec71ff7ed9b0ea_ 127.0.0.1:5299@5299 myself,master - 0 0 0 connected\n"
                .replace("b8ec71ff7ed9b0ea_", &node_id("", "127.0.0.1:5299")[24..])
        );
    }

    #[test]
    fn merge() {
        let r = merge_ranges(vec![(5, 9).into(), (0, 4).into(), (20, 30).into(), (25, 26).into()]);
        assert_eq!(r, vec![(0, 9).into(), (20, 30).into()]);
    }

    /// Addresses in a `CLUSTER SLOTS` reply, per entry: (start, end, [master, replicas…]).
    fn slots_of(f: Frame) -> Vec<(i64, i64, Vec<i64>)> {
        let Frame::Array(entries) = f else { panic!("{f:?}") };
        entries
            .into_iter()
            .map(|e| {
                let Frame::Array(parts) = e else { panic!() };
                let port = |f: &Frame| match f {
                    Frame::Array(n) => match n[1] {
                        Frame::Integer(p) => p,
                        _ => panic!(),
                    },
                    _ => panic!(),
                };
                let (Frame::Integer(a), Frame::Integer(b)) = (&parts[0], &parts[1]) else { panic!() };
                (*a, *b, parts[2..].iter().map(port).collect())
            })
            .collect()
    }

    #[test]
    fn replica_section_is_parsed_and_shown_to_readonly_clients_masters_first() {
        let cmd = "v2 3 NOFLAG c a:1 1 0-8191 PEER b:2 1 8192-16383 REPLICA b:2 b:7002 1 0-8191 a:1 a:7001 2 8192-9000 9001-16383 CONFIG migration_scan_count 16";
        let sc = SetCluster::parse(&toks(cmd)).unwrap();
        assert_eq!(sc.meta.replicas.len(), 2);
        assert_eq!(
            sc.meta.replicas[1],
            ReplicaEntry {
                proxy: "a:1".into(),
                node: "a:7001".into(),
                ranges: vec![(8192, 9000).into(), (9001, 16383).into()]
            }
        );
        assert_eq!(sc.meta.config.migration_scan_count, 16);
        // The compressed form carries it too, and undermoon's (without it) still parses.
        let compressed = encode_compressed(&sc.meta);
        let args = vec![Bytes::from("v2"), Bytes::from("3"), Bytes::from("COMPRESS"), Bytes::from(compressed)];
        assert_eq!(SetCluster::parse(&args).unwrap().meta, sc.meta);
        assert!(SetCluster::parse(&toks("v2 3 NOFLAG c a:1 1 0-16383 REPLICA b:2 b:7002 1 0-99999")).is_err());
        assert!(SetCluster::parse(&toks("v2 3 NOFLAG c a:1 1 0-16383 REPLICA b:2")).is_err());
        let table = ClusterTable::build(3, sc.meta, None);
        // Without READONLY: masters only.
        assert_eq!(
            slots_of(cluster_slots(&table, "a:1", false).unwrap()),
            vec![(0, 8191, vec![1]), (8192, 16383, vec![2])]
        );
        // With: each proxy first as a master (one slot split off), then the ranges with replicas.
        assert_eq!(
            slots_of(cluster_slots(&table, "a:1", true).unwrap()),
            vec![(0, 0, vec![1]), (8192, 8192, vec![2]), (1, 8191, vec![1, 2]), (8193, 16383, vec![2, 1])]
        );
        let Frame::Array(shards) = cluster_shards(&table, "a:1", true).unwrap() else { panic!() };
        assert_eq!(shards.len(), 4, "a replica-less shard and a shard with a replica per proxy");
    }
}
