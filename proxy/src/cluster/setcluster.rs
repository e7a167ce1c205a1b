//! The SETCLUSTER wire format: plain tokens (`v2 <epoch> <flags> <name> <node> <n> <ranges>… PEER … REPLICA … CONFIG …`)
//! and the compressed JSON form, parsed and written.

use super::{ClusterConfig, ClusterMeta, MigrationMeta, RangeEntry, RangeTag, ReplicaEntry, SlotRange};
use crate::resp::parse_u64;
use crate::slot::SLOT_COUNT;
use base64::Engine;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Read;

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

/// A cluster name as a proxy accepts it: a valid cluster name, or empty — the push a free
/// proxy (in no cluster) gets.
pub fn valid_pushed_cluster_name(name: &str) -> bool {
    name.is_empty() || moonraft_wire::valid_cluster_name(name)
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
        if !valid_pushed_cluster_name(&name) {
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
                    if !config.set_field(&f, &v) {
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
        if !valid_pushed_cluster_name(&meta.cluster_name) {
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
            ok &= config.set_field("compression_strategy", s);
        }
        let m = &c.migration_config;
        for (field, v) in [
            ("migration_max_migration_time", m.max_migration_time),
            ("migration_max_blocking_time", m.max_blocking_time),
            ("migration_scan_interval", m.scan_interval),
            ("migration_scan_count", m.scan_count),
        ] {
            if let Some(v) = v {
                ok &= config.set_field(field, &v.to_string());
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
    let m = &meta.config.migration_config;
    let json = JsonClusterMeta {
        cluster_name: meta.name.clone(),
        local: conv(&meta.local),
        peer: conv(&meta.peers),
        replica: meta.replicas.clone(),
        cluster_config: JsonClusterConfig {
            compression_strategy: Some(meta.config.compression_strategy.as_str().into()),
            migration_config: JsonMigrationConfig {
                max_migration_time: Some(m.max_migration_time),
                max_blocking_time: Some(m.max_blocking_time),
                scan_interval: Some(m.scan_interval),
                scan_count: Some(m.scan_count),
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
        let count = it.need()?;
        let ranges = parse_ranges(it, count, &mut slots_named)?;
        out.push(ReplicaEntry { proxy, node, ranges });
    }
    Ok(out)
}

/// `<count> <range>…` of one entry; `slots_named` counts the slots of the whole section, which
/// may name each slot at most twice (a bound on what one SETCLUSTER can make the proxy build).
fn parse_ranges(it: &mut Tokens<'_>, count: &[u8], slots_named: &mut u64) -> Result<Vec<SlotRange>, ParseErrorKind> {
    let count = parse_u64(count).ok_or(ParseErrorKind::InvalidArgs)?;
    if count > SLOT_COUNT as u64 {
        return Err(ParseErrorKind::InvalidArgs);
    }
    let mut ranges = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let r = SlotRange::parse(it.need()?).ok_or(ParseErrorKind::InvalidArgs)?;
        *slots_named += (r.end - r.start) as u64 + 1;
        if *slots_named > MAX_SLOTS_PER_SECTION {
            return Err(ParseErrorKind::InvalidArgs);
        }
        ranges.push(r);
    }
    Ok(ranges)
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
        let ranges = parse_ranges(it, kind, &mut slots_named)?;
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
