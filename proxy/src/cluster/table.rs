//! The routing table one SETCLUSTER installs: which node or proxy serves each slot, and the
//! migration tasks of the ranges on the move.

use super::{ClusterMeta, MigrationMeta, RangeEntry, RangeTag, SlotRange};
use crate::slot::SLOT_COUNT;
use bytes::Bytes;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

/// Migration task states (`docs/migration.md`, "Task states"). Importing tasks use PreCheck, PreSwitch and
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
        // range loses to anyone's IMPORTING range for the same slots (`docs/migration.md`, "Whose
        // range wins").
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

    /// How many slots the local nodes hold (stable and migrating ranges).
    pub fn local_slot_count(&self) -> u64 {
        self.nodes.iter().map(|n| self.node_slot_count(n)).sum()
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
    /// Routing rules (`docs/migration.md`): the source serves its migrating slots until the
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

    /// Ranges this proxy shows as its own (`docs/migration.md`, what `CLUSTER NODES/SLOTS` show),
    /// merged.
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
