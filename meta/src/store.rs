//! The metadata store (`GET /api/v3/metadata` is its JSON form) and the operations that change it.
//!
//! Every operation validates before it mutates, so a refused request leaves the store exactly
//! as it was (`docs/compatibility.md#no-partial-mutation`), and breaks ties by the fixed rules of
//! `docs/allocation.md` so that all Raft members compute the same result.

use crate::error::MetaError;
use crate::slots::{compact, split_even, Range};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

pub const META_VERSION: &str = "mem-broker-0.2";

/// The largest epoch an operator may set (`PUT /epoch/{n}`, `PUT /metadata`): 2^53 - 1, the
/// largest integer every JSON client reads exactly, and far enough below `u64::MAX` that the
/// store's `epoch + 1` can never overflow.
pub const MAX_EPOCH: u64 = (1 << 53) - 1;

/// The cluster config and the migration metadata are the proxies' too: one definition.
pub use moonraft_wire::{valid_cluster_name, ClusterConfig, CompressionStrategy, MigrationConfig, MigrationMeta};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub enum RolePosition {
    Normal,
    FirstChunkMaster,
    SecondChunkMaster,
}

impl RolePosition {
    /// Node index (0..4) of the master of `part` (`docs/allocation.md#chunks`).
    pub fn master_of_part(self, part: usize) -> usize {
        match (self, part == 0) {
            (RolePosition::Normal, true) | (RolePosition::FirstChunkMaster, true) => 0,
            (RolePosition::FirstChunkMaster, false) => 1,
            (RolePosition::Normal, false) | (RolePosition::SecondChunkMaster, false) => 2,
            (RolePosition::SecondChunkMaster, true) => 3,
        }
    }

    /// The part whose master is node `i`, if it is a master.
    pub fn part_of_master(self, i: usize) -> Option<usize> {
        (0..2).find(|&p| self.master_of_part(p) == i)
    }
}

/// Migration identity as stored: addresses are resolved from chunk positions at read time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MigrationMetaStore {
    pub epoch: u64,
    pub src_chunk_index: usize,
    pub src_chunk_part: usize,
    pub dst_chunk_index: usize,
    pub dst_chunk_part: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MigrationEntry {
    pub range_list: Vec<Range>,
    pub is_migrating: bool,
    pub meta: MigrationMetaStore,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub enum SlotTag {
    None,
    Migrating(MigrationMeta),
    Importing(MigrationMeta),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SlotRange {
    pub range_list: Vec<Range>,
    pub tag: SlotTag,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Chunk {
    pub role_position: RolePosition,
    pub proxy_addresses: [String; 2],
    pub hosts: [String; 2],
    pub node_addresses: [String; 4],
    pub stable_slots: [Option<SlotRange>; 2],
    pub migrating_slots: [Vec<MigrationEntry>; 2],
}

impl Chunk {
    fn part_is_empty(&self, part: usize) -> bool {
        self.stable_slots[part].as_ref().is_none_or(|s| s.range_list.is_empty())
    }

    /// Both parts have no stable range and no migration entries.
    pub fn is_free(&self) -> bool {
        (0..2).all(|p| self.part_is_empty(p) && self.migrating_slots[p].is_empty())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ClusterStore {
    pub name: String,
    pub epoch: u64,
    pub config: ClusterConfig,
    pub chunks: Vec<Chunk>,
}

impl ClusterStore {
    pub fn node_number(&self) -> usize {
        self.chunks.len() * 4
    }

    pub fn is_migrating(&self) -> bool {
        self.chunks.iter().any(|c| c.migrating_slots.iter().any(|m| !m.is_empty()))
    }

    pub fn proxies(&self) -> impl Iterator<Item = &String> {
        self.chunks.iter().flat_map(|c| c.proxy_addresses.iter())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ProxyResource {
    pub proxy_address: String,
    pub node_addresses: [String; 2],
    pub host: String,
    #[serde(default)]
    pub index: u64,
    pub cluster: Option<String>,
}

/// The whole replicated state, in the `GET /metadata` layout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Store {
    pub version: String,
    pub global_epoch: u64,
    #[serde(default)]
    pub enable_ordered_proxy: bool,
    pub clusters: BTreeMap<String, ClusterStore>,
    pub all_proxies: BTreeMap<String, ProxyResource>,
    pub failed_proxies: BTreeSet<String>,
    /// proxy → reporter → Unix seconds of the reporter's latest report.
    pub failures: BTreeMap<String, BTreeMap<String, u64>>,
    /// Coordinator `reporter_id` → Unix milliseconds (leader's clock) of its latest heartbeat:
    /// who is alive, so that the failure quorum can be a majority of the live coordinators.
    /// Not in undermoon's document, so left out of it while empty.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub coordinators: BTreeMap<String, u64>,
}

/// How the brokers decide from the coordinators' reports that a proxy has failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailureRule {
    /// A report counts while younger than this many seconds (coordinators refresh theirs every
    /// second while the proxy stays unreachable).
    pub ttl_secs: u64,
    /// Distinct reporters needed; 0 means a majority of the live coordinators (at least 1).
    pub quorum: u64,
    /// A coordinator is live while its latest heartbeat is younger than this.
    pub coordinator_ttl_ms: u64,
}

impl Default for Store {
    fn default() -> Self {
        Store {
            version: META_VERSION.to_owned(),
            global_epoch: 0,
            enable_ordered_proxy: false,
            clusters: BTreeMap::new(),
            all_proxies: BTreeMap::new(),
            failed_proxies: BTreeSet::new(),
            failures: BTreeMap::new(),
            coordinators: BTreeMap::new(),
        }
    }
}

/// `POST /proxies/meta` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterProxy {
    pub proxy_address: String,
    pub nodes: [String; 2],
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub index: Option<u64>,
}

/// Proxy addresses are `host:port` with exactly one `:`.
pub fn valid_proxy_address(addr: &str) -> bool {
    addr.matches(':').count() == 1
}

fn check_node_number(n: u64) -> Result<usize, MetaError> {
    if n == 0 || !n.is_multiple_of(4) || n > 1 << 20 {
        return Err(MetaError::InvalidNodeNumber);
    }
    Ok(n as usize)
}

impl Store {
    fn bump(&mut self) -> u64 {
        self.global_epoch += 1;
        self.global_epoch
    }

    fn cluster(&self, name: &str) -> Result<&ClusterStore, MetaError> {
        if !valid_cluster_name(name) {
            return Err(MetaError::InvalidClusterName);
        }
        self.clusters.get(name).ok_or(MetaError::ClusterNotFound)
    }

    /// Free: in no cluster, not failed, no failure record (`docs/allocation.md#free-proxies`).
    pub fn is_free(&self, proxy: &ProxyResource) -> bool {
        proxy.cluster.is_none()
            && !self.failed_proxies.contains(&proxy.proxy_address)
            && !self.failures.contains_key(&proxy.proxy_address)
    }

    /// Free proxies grouped by host, each group in ascending address order.
    pub fn free_by_host(&self) -> BTreeMap<String, Vec<String>> {
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for p in self.all_proxies.values().filter(|p| self.is_free(p)) {
            out.entry(p.host.clone()).or_default().push(p.proxy_address.clone());
        }
        out
    }

    /// Number of chunks in all clusters pairing hosts `a` and `b`.
    pub fn links(&self) -> BTreeMap<(String, String), u64> {
        let mut links = BTreeMap::new();
        for c in self.clusters.values().flat_map(|c| c.chunks.iter()) {
            let key = ordered_pair(&c.hosts[0], &c.hosts[1]);
            *links.entry(key).or_insert(0) += 1;
        }
        links
    }

    /// Picks `proxies_needed / 2` (first, second) proxy pairs (`docs/allocation.md#allocating-proxies-for-a-new-cluster-or-a-scale-out`).
    pub fn allocate(&self, proxies_needed: usize) -> Result<Vec<(String, String)>, MetaError> {
        let mut free = self.free_by_host();
        // Trim the dominant host (smallest name among the largest groups) until no host
        // holds more than half of the pool.
        let mut total: usize = free.values().map(Vec::len).sum();
        if let Some(max) = free.values().map(Vec::len).max() {
            let host = free.iter().find(|(_, v)| v.len() == max).map(|(h, _)| h.clone()).unwrap_or_default();
            if let Some(group) = free.get_mut(&host) {
                while 2 * group.len() > total {
                    group.pop();
                    total -= 1;
                }
            }
        }
        if total < proxies_needed {
            return Err(MetaError::NoAvailableResource);
        }
        let max = free.values().map(Vec::len).max().unwrap_or(0);
        if 2 * max > total {
            return Err(MetaError::ResourceNotBalance);
        }
        let mut links = self.links();
        // Take from the front of each host's ascending list.
        let mut free: BTreeMap<String, std::collections::VecDeque<String>> =
            free.into_iter().map(|(h, v)| (h, v.into())).collect();
        let mut pairs = Vec::with_capacity(proxies_needed / 2);
        while pairs.len() < proxies_needed / 2 {
            let first_host = free
                .iter()
                .filter(|(_, v)| !v.is_empty())
                .max_by(|a, b| a.1.len().cmp(&b.1.len()).then_with(|| b.0.cmp(a.0)))
                .map(|(h, _)| h.clone())
                .ok_or(MetaError::NoAvailableResource)?;
            let second_host = free
                .iter()
                .filter(|(h, v)| **h != first_host && !v.is_empty())
                .min_by(|a, b| {
                    let la = links.get(&ordered_pair(&first_host, a.0)).copied().unwrap_or(0);
                    let lb = links.get(&ordered_pair(&first_host, b.0)).copied().unwrap_or(0);
                    la.cmp(&lb).then_with(|| b.1.len().cmp(&a.1.len())).then_with(|| a.0.cmp(b.0))
                })
                .map(|(h, _)| h.clone())
                .ok_or(MetaError::NoAvailableResource)?;
            let first = free.get_mut(&first_host).and_then(|v| v.pop_front()).ok_or(MetaError::NoAvailableResource)?;
            let second =
                free.get_mut(&second_host).and_then(|v| v.pop_front()).ok_or(MetaError::NoAvailableResource)?;
            *links.entry(ordered_pair(&first_host, &second_host)).or_insert(0) += 1;
            pairs.push((first, second));
        }
        Ok(pairs)
    }

    /// Ordered mode (`docs/allocation.md`): the free proxies with the lowest indices,
    /// which must be exactly `first_index..first_index + n`, paired consecutively.
    fn allocate_ordered(&self, proxies_needed: usize, first_index: u64) -> Result<Vec<(String, String)>, MetaError> {
        let mut free: Vec<&ProxyResource> = self.all_proxies.values().filter(|p| self.is_free(p)).collect();
        free.sort_by(|a, b| a.index.cmp(&b.index).then_with(|| a.proxy_address.cmp(&b.proxy_address)));
        if free.len() < proxies_needed {
            return Err(MetaError::NoAvailableResource);
        }
        let taken = &free[..proxies_needed];
        if taken.iter().enumerate().any(|(i, p)| p.index != first_index + i as u64) {
            return Err(MetaError::ProxyResourceOutOfOrder);
        }
        Ok(taken.chunks(2).map(|pair| (pair[0].proxy_address.clone(), pair[1].proxy_address.clone())).collect())
    }

    fn allocate_chunks(&self, proxies_needed: usize, first_index: u64) -> Result<Vec<Chunk>, MetaError> {
        let pairs = if self.enable_ordered_proxy {
            self.allocate_ordered(proxies_needed, first_index)?
        } else {
            self.allocate(proxies_needed)?
        };
        pairs
            .into_iter()
            .map(|(a, b)| {
                let pa = self.all_proxies.get(&a).ok_or(MetaError::ProxyNotFound)?;
                let pb = self.all_proxies.get(&b).ok_or(MetaError::ProxyNotFound)?;
                Ok(Chunk {
                    role_position: RolePosition::Normal,
                    proxy_addresses: [a.clone(), b.clone()],
                    hosts: [pa.host.clone(), pb.host.clone()],
                    node_addresses: [
                        pa.node_addresses[0].clone(),
                        pa.node_addresses[1].clone(),
                        pb.node_addresses[0].clone(),
                        pb.node_addresses[1].clone(),
                    ],
                    stable_slots: [None, None],
                    migrating_slots: [Vec::new(), Vec::new()],
                })
            })
            .collect()
    }

    fn assign(&mut self, chunks: &[Chunk], cluster: Option<&str>) {
        for c in chunks {
            for p in &c.proxy_addresses {
                if let Some(proxy) = self.all_proxies.get_mut(p) {
                    proxy.cluster = cluster.map(str::to_owned);
                }
            }
        }
    }

    /// `POST /proxies/meta`. `Err(AlreadyExisted)` still clears the
    /// failed state of a known proxy: that is how a recovered proxy returns to the pool.
    pub fn register_proxy(&mut self, req: RegisterProxy) -> Result<(), MetaError> {
        if !valid_proxy_address(&req.proxy_address) {
            return Err(MetaError::InvalidProxyAddress);
        }
        if self.enable_ordered_proxy && req.index.is_none() {
            return Err(MetaError::MissingServerProxyIndex);
        }
        if self.all_proxies.contains_key(&req.proxy_address) {
            let was_failed = self.failed_proxies.remove(&req.proxy_address);
            let had_reports = self.failures.remove(&req.proxy_address).is_some();
            if was_failed || had_reports {
                self.bump();
            }
            return Err(MetaError::AlreadyExisted);
        }
        let host = match req.host {
            Some(h) => h,
            None => req.proxy_address.split(':').next().unwrap_or_default().to_owned(),
        };
        let index = if self.enable_ordered_proxy { req.index.unwrap_or(0) } else { 0 };
        self.all_proxies.insert(
            req.proxy_address.clone(),
            ProxyResource { proxy_address: req.proxy_address, node_addresses: req.nodes, host, index, cluster: None },
        );
        self.bump();
        Ok(())
    }

    /// `DELETE /proxies/meta/{address}`.
    pub fn delete_proxy(&mut self, address: &str) -> Result<(), MetaError> {
        let proxy = self.all_proxies.get(address).ok_or(MetaError::ProxyNotFound)?;
        if proxy.cluster.is_some() {
            return Err(MetaError::InUse);
        }
        self.all_proxies.remove(address);
        self.failed_proxies.remove(address);
        self.failures.remove(address);
        self.bump();
        Ok(())
    }

    /// `POST /clusters/meta/{name}`.
    pub fn create_cluster(&mut self, name: &str, node_number: u64, config: ClusterConfig) -> Result<(), MetaError> {
        if self.enable_ordered_proxy && !self.clusters.is_empty() {
            return Err(MetaError::OneClusterAlreadyExisted);
        }
        if !valid_cluster_name(name) {
            return Err(MetaError::InvalidClusterName);
        }
        if self.clusters.contains_key(name) {
            return Err(MetaError::AlreadyExisted);
        }
        let nodes = check_node_number(node_number)?;
        let mut chunks = self.allocate_chunks(nodes / 2, 0)?;
        let ranges = split_even((nodes / 2) as u32);
        for (i, chunk) in chunks.iter_mut().enumerate() {
            for part in 0..2 {
                let r = ranges[2 * i + part];
                chunk.stable_slots[part] = Some(SlotRange { range_list: vec![r], tag: SlotTag::None });
            }
        }
        let epoch = self.bump();
        self.assign(&chunks, Some(name));
        self.clusters.insert(name.to_owned(), ClusterStore { name: name.to_owned(), epoch, config, chunks });
        Ok(())
    }

    /// `DELETE /clusters/meta/{name}`: its proxies become free (failure state untouched).
    pub fn delete_cluster(&mut self, name: &str) -> Result<(), MetaError> {
        let cluster = self.cluster(name)?.clone();
        self.assign(&cluster.chunks, None);
        self.clusters.remove(name);
        self.bump();
        Ok(())
    }

    /// `PATCH /clusters/nodes/{name}`: appends `node_number / 4` chunks without slots.
    /// Returns the indices of the new chunks.
    pub fn add_nodes(&mut self, name: &str, node_number: u64) -> Result<std::ops::Range<usize>, MetaError> {
        let cluster = self.cluster(name)?;
        if cluster.is_migrating() {
            return Err(MetaError::MigrationRunning);
        }
        let nodes = check_node_number(node_number)?;
        let existing = cluster.chunks.len();
        let chunks = self.allocate_chunks(nodes / 2, (existing * 2) as u64)?;
        let epoch = self.bump();
        self.assign(&chunks, Some(name));
        let cluster = self.clusters.get_mut(name).ok_or(MetaError::ClusterNotFound)?;
        cluster.chunks.extend(chunks);
        cluster.epoch = epoch;
        Ok(existing..cluster.chunks.len())
    }

    /// `PUT /clusters/nodes/{name}`: adds nodes up to `total`.
    pub fn add_nodes_up_to(&mut self, name: &str, total: u64) -> Result<std::ops::Range<usize>, MetaError> {
        let current = self.cluster(name)?.node_number() as u64;
        if total <= current {
            return Err(MetaError::NodeNumAlreadyEnough);
        }
        self.add_nodes(name, total - current)
    }

    /// `DELETE /clusters/free_nodes/{name}`: removes chunks with no slots and no migrations.
    pub fn delete_free_nodes(&mut self, name: &str) -> Result<(), MetaError> {
        let cluster = self.cluster(name)?;
        if cluster.is_migrating() {
            return Err(MetaError::MigrationRunning);
        }
        let (free, kept): (Vec<Chunk>, Vec<Chunk>) = cluster.chunks.iter().cloned().partition(Chunk::is_free);
        if free.is_empty() {
            return Err(MetaError::FreeNodeNotFound);
        }
        let epoch = self.bump();
        self.assign(&free, None);
        let cluster = self.clusters.get_mut(name).ok_or(MetaError::ClusterNotFound)?;
        cluster.chunks = kept;
        cluster.epoch = epoch;
        Ok(())
    }

    /// `PATCH /clusters/config/{name}`: string fields, all-or-nothing.
    pub fn change_config(&mut self, name: &str, changes: &BTreeMap<String, String>) -> Result<(), MetaError> {
        let cluster = self.cluster(name)?;
        if cluster.is_migrating() {
            return Err(MetaError::MigrationRunning);
        }
        let mut config = cluster.config.clone();
        for (key, value) in changes {
            let bad = |message: &str| MetaError::InvalidConfig {
                key: key.clone(),
                value: value.clone(),
                message: message.to_owned(),
            };
            let num = || value.trim().parse::<u64>().map_err(|_| bad("INVALID_VALUE"));
            let m = &mut config.migration_config;
            match key.to_ascii_lowercase().as_str() {
                "compression_strategy" => {
                    config.compression_strategy = match value.to_ascii_lowercase().as_str() {
                        "disabled" => CompressionStrategy::Disabled,
                        "set_get_only" => CompressionStrategy::SetGetOnly,
                        "allow_all" => CompressionStrategy::AllowAll,
                        _ => return Err(bad("INVALID_VALUE")),
                    }
                }
                "migration_max_migration_time" => m.max_migration_time = num()?,
                "migration_max_blocking_time" => m.max_blocking_time = num()?,
                "migration_scan_interval" => m.scan_interval = num()?,
                "migration_scan_count" => match num()? {
                    0 => return Err(bad("INVALID_VALUE")),
                    n => m.scan_count = n,
                },
                _ => return Err(bad("FIELD_NOT_FOUND")),
            }
        }
        let epoch = self.bump();
        let cluster = self.clusters.get_mut(name).ok_or(MetaError::ClusterNotFound)?;
        cluster.config = config;
        cluster.epoch = epoch;
        Ok(())
    }

    /// `PUT /clusters/balance/{name}`: chunks whose proxies are both healthy go back to Normal.
    pub fn balance_masters(&mut self, name: &str) -> Result<(), MetaError> {
        self.cluster(name)?;
        let healthy = |s: &Store, p: &str| !s.failed_proxies.contains(p) && !s.failures.contains_key(p);
        let reset: Vec<bool> =
            self.clusters[name].chunks.iter().map(|c| c.proxy_addresses.iter().all(|p| healthy(self, p))).collect();
        let epoch = self.bump();
        let cluster = self.clusters.get_mut(name).ok_or(MetaError::ClusterNotFound)?;
        for (chunk, reset) in cluster.chunks.iter_mut().zip(reset) {
            if reset {
                chunk.role_position = RolePosition::Normal;
            }
        }
        cluster.epoch = epoch;
        Ok(())
    }

    /// `POST /failures/{proxy}/{reporter}` at time `now` (Unix seconds, carried in the log
    /// entry). A new record bumps the global epoch (the proxy leaves the free pool); a repeated
    /// report refreshes the record's time, so a proxy that stays unreachable stays reported.
    pub fn report_failure(&mut self, proxy: &str, reporter: &str, now: u64) {
        let reports = self.failures.entry(proxy.to_owned()).or_default();
        match reports.get_mut(reporter) {
            Some(t) => *t = (*t).max(now),
            None => {
                reports.insert(reporter.to_owned(), now);
                self.bump();
            }
        }
    }

    /// `DELETE /failures/{proxy}/{reporter}`: the reporter reaches the proxy again. Returns
    /// whether a record was removed (then the epoch is bumped: the proxy may be free again).
    pub fn withdraw_failure(&mut self, proxy: &str, reporter: &str) -> bool {
        let Some(reports) = self.failures.get_mut(proxy) else { return false };
        if reports.remove(reporter).is_none() {
            return false;
        }
        if reports.is_empty() {
            self.failures.remove(proxy);
        }
        self.bump();
        true
    }

    /// A coordinator's heartbeat at `now_ms`; coordinators silent for `forget_after_ms` are
    /// dropped from the record.
    pub fn coordinator_alive(&mut self, reporter: &str, now_ms: u64, forget_after_ms: u64) {
        self.coordinators.retain(|_, t| now_ms.saturating_sub(*t) < forget_after_ms);
        let t = self.coordinators.entry(reporter.to_owned()).or_insert(now_ms);
        *t = (*t).max(now_ms);
    }

    /// Coordinators whose latest heartbeat is younger than `rule.coordinator_ttl_ms`.
    pub fn live_coordinators(&self, now_ms: u64, rule: &FailureRule) -> Vec<String> {
        self.coordinators
            .iter()
            .filter(|(_, t)| now_ms.saturating_sub(**t) < rule.coordinator_ttl_ms)
            .map(|(r, _)| r.clone())
            .collect()
    }

    /// Reports needed to fail a proxy over at `now_ms`: the configured quorum, or a majority of
    /// the live coordinators (1 when none sends heartbeats, e.g. undermoon's coordinators).
    pub fn failure_quorum(&self, now_ms: u64, rule: &FailureRule) -> usize {
        if rule.quorum > 0 {
            return usize::try_from(rule.quorum).unwrap_or(usize::MAX);
        }
        self.live_coordinators(now_ms, rule).len() / 2 + 1
    }

    /// Registered proxies with at least the quorum of counting reports at `now_ms`. A report
    /// counts while younger than the TTL, unless it comes from a coordinator known to be dead
    /// (its heartbeats stopped): a crashed coordinator's last word must not tip the balance.
    pub fn failures(&self, now_ms: u64, rule: &FailureRule) -> Vec<String> {
        let now = now_ms / 1000;
        let quorum = self.failure_quorum(now_ms, rule);
        let dead = |reporter: &str| {
            self.coordinators.get(reporter).is_some_and(|t| now_ms.saturating_sub(*t) >= rule.coordinator_ttl_ms)
        };
        self.failures
            .iter()
            .filter(|(p, _)| self.all_proxies.contains_key(*p))
            .filter(|(_, reports)| {
                reports.iter().filter(|(r, t)| now.saturating_sub(**t) < rule.ttl_secs && !dead(r)).count() >= quorum
            })
            .map(|(p, _)| p.clone())
            .collect()
    }

    /// A failed proxy answers healthily again: it leaves the failed set and its failure
    /// records are dropped, like a re-registration (it joins the free pool, or, if it is still
    /// in a cluster because no replacement existed, serves again as a replica there). Returns
    /// false, changing nothing, if it is not in the failed set.
    pub fn recover_proxy(&mut self, address: &str) -> Result<bool, MetaError> {
        if !self.all_proxies.contains_key(address) {
            return Err(MetaError::ProxyNotFound);
        }
        if !self.failed_proxies.remove(address) {
            return Ok(false);
        }
        self.failures.remove(address);
        self.bump();
        Ok(true)
    }

    /// Removes reports older than `ttl` (the leader proposes this periodically; reads never
    /// mutate). Returns whether anything was removed.
    pub fn purge_failures(&mut self, now: u64, ttl: u64) -> bool {
        let before: usize = self.failures.values().map(BTreeMap::len).sum();
        for reports in self.failures.values_mut() {
            reports.retain(|_, t| now.saturating_sub(*t) < ttl);
        }
        self.failures.retain(|_, r| !r.is_empty());
        let after: usize = self.failures.values().map(BTreeMap::len).sum();
        before != after
    }

    /// `PUT /epoch/{n}`: raises the global epoch and every cluster epoch to `n`.
    pub fn force_epoch(&mut self, n: u64) -> Result<(), MetaError> {
        if n > MAX_EPOCH {
            return Err(MetaError::EpochTooLarge);
        }
        if n <= self.global_epoch {
            return Err(MetaError::EpochSmallerThanCurrent);
        }
        self.global_epoch = n;
        for c in self.clusters.values_mut() {
            c.epoch = n;
        }
        Ok(())
    }

    /// The chunk containing `proxy` in `cluster`, and the proxy's position (0 or 1) in it.
    pub fn find_chunk(&self, cluster: &str, proxy: &str) -> Option<(usize, usize)> {
        self.clusters
            .get(cluster)?
            .chunks
            .iter()
            .enumerate()
            .find_map(|(i, c)| c.proxy_addresses.iter().position(|p| p == proxy).map(|pos| (i, pos)))
    }

    /// Compacts every range list (used after slot moves).
    pub fn compact_cluster(cluster: &mut ClusterStore) {
        for chunk in &mut cluster.chunks {
            for part in 0..2 {
                if let Some(s) = &mut chunk.stable_slots[part] {
                    s.range_list = compact(std::mem::take(&mut s.range_list));
                }
                for m in &mut chunk.migrating_slots[part] {
                    m.range_list = compact(std::mem::take(&mut m.range_list));
                }
            }
        }
    }
}

fn ordered_pair(a: &str, b: &str) -> (String, String) {
    if a <= b {
        (a.to_owned(), b.to_owned())
    } else {
        (b.to_owned(), a.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_table() {
        use RolePosition::*;
        let masters = |r: RolePosition| [r.master_of_part(0), r.master_of_part(1)];
        assert_eq!(masters(Normal), [0, 2]);
        assert_eq!(masters(FirstChunkMaster), [0, 1]);
        assert_eq!(masters(SecondChunkMaster), [3, 2]);
        assert_eq!(SecondChunkMaster.part_of_master(3), Some(0));
        assert_eq!(Normal.part_of_master(1), None);
    }
}
