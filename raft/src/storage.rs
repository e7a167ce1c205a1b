//! openraft log storage and state machine on RocksDB.
//!
//! Layout: column family `logs` (key = index, 8-byte big-endian; value =
//! JSON entry), `meta` (vote, last purged log id, committed), `sm` (the current snapshot).
//! Log appends, vote changes and snapshots are written with `sync`, so nothing is
//! acknowledged to openraft (and so to a client) before it is on disk. The state machine
//! itself lives in memory: it is small, and it is rebuilt on start from the last snapshot plus
//! the log entries after it.

// openraft's `StorageError` is large, but it is the error type its traits require; the helpers
// below return it unchanged rather than boxing and unboxing it.
#![allow(clippy::result_large_err)]

use crate::{BrokerNode, Entry, LogId, NodeId, StorageError, TypeConfig};
use moonraft_meta::change::{Change, Digest};
use moonraft_meta::command::CommandOutput;
use moonraft_meta::Store;
use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{
    EntryPayload, OptionalSend, RaftLogReader, RaftSnapshotBuilder, SnapshotMeta, StorageIOError, StoredMembership,
    Vote,
};
use rocksdb::{ColumnFamilyDescriptor, Direction, IteratorMode, Options, WriteBatch, WriteOptions, DB};
use serde::{Deserialize, Serialize};
use std::fmt::Debug;
use std::io::Cursor;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use tokio::sync::{broadcast, watch};

const CF_LOGS: &str = "logs";
const CF_META: &str = "meta";
const CF_SM: &str = "sm";
const KEY_VOTE: &[u8] = b"vote";
const KEY_PURGED: &[u8] = b"last_purged_log_id";
const KEY_COMMITTED: &[u8] = b"committed";
const KEY_SNAPSHOT: &[u8] = b"current";
const KEY_NODE_ID: &[u8] = b"node_id";
const KEY_GROUP_ID: &[u8] = b"group_id";

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot open RocksDB in {dir}: {source}")]
    Rocks { dir: String, source: rocksdb::Error },
    #[error("the snapshot in {dir} cannot be read ({source}); the data dir is corrupt or from another version: move it away and let this member catch up from the others")]
    Snapshot { dir: String, source: serde_json::Error },
    #[error("data dir {dir} belongs to broker node_id {stored}, not {configured}: point data_dir at this member's own directory, or move it away to start this member empty")]
    Foreign { dir: String, stored: u64, configured: u64 },
}

fn sync_writes() -> WriteOptions {
    let mut w = WriteOptions::default();
    w.set_sync(true);
    w
}

fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

fn index_of(key: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&key[..8.min(key.len())]);
    u64::from_be_bytes(b)
}

/// Opens the data dir of broker `node_id`, refusing one that another member created.
pub fn open_for(dir: &Path, node_id: NodeId) -> Result<(LogStore, StateMachine), OpenError> {
    let (log, sm) = open(dir)?;
    let d = dir.display().to_string();
    let cf = log.cf(CF_META);
    match log.db.get_cf(cf, KEY_NODE_ID).map_err(|source| OpenError::Rocks { dir: d.clone(), source })? {
        Some(raw) => {
            let stored = if raw.len() == 8 { index_of(&raw) } else { 0 };
            if stored != node_id {
                return Err(OpenError::Foreign { dir: d, stored, configured: node_id });
            }
        }
        None => log
            .db
            .put_cf_opt(cf, KEY_NODE_ID, node_id.to_be_bytes(), &sync_writes())
            .map_err(|source| OpenError::Rocks { dir: d, source })?,
    }
    Ok((log, sm))
}

/// Opens (or creates) the data dir and returns the two halves openraft needs.
pub fn open(dir: &Path) -> Result<(LogStore, StateMachine), OpenError> {
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    let cfs = [CF_LOGS, CF_META, CF_SM].map(|n| ColumnFamilyDescriptor::new(n, Options::default()));
    let db = DB::open_cf_descriptors(&opts, dir, cfs)
        .map_err(|source| OpenError::Rocks { dir: dir.display().to_string(), source })?;
    let db = Arc::new(db);
    let sm = StateMachine::load(db.clone())
        .map_err(|source| OpenError::Snapshot { dir: dir.display().to_string(), source })?;
    Ok((LogStore { db }, sm))
}

#[derive(Clone)]
pub struct LogStore {
    db: Arc<DB>,
}

/// Which broker group this data dir belongs to (`group_id` in the `meta` column family).
///
/// The id is derived from the initial membership when the group is initialised (so every
/// member bootstrapping with the same `initial_members` computes the same one) and learnt from
/// the leader's first Raft RPC by members that join later. Every Raft RPC carries it; a member
/// refuses RPCs of another group, so a data dir copied from (or left over by) another group
/// can neither vote in nor be overwritten by this one.
pub struct GroupIdentity {
    db: Arc<DB>,
    current: RwLock<Option<String>>,
}

/// A Raft RPC from another group.
#[derive(Debug, Clone, thiserror::Error)]
#[error("FOREIGN_GROUP: this member's data dir belongs to broker group {mine}, but a member of group {theirs} contacted it: if this member should join {theirs}, stop it, move its data_dir away and add it again as a learner")]
pub struct ForeignGroup {
    pub mine: String,
    pub theirs: String,
}

impl GroupIdentity {
    /// The id of a group initialised with these members (`(id, raft address, http address)`).
    pub fn derive(members: &[(NodeId, String, String)], group_name: &str) -> String {
        let mut sorted = members.to_vec();
        sorted.sort();
        let mut text = group_name.to_owned();
        for (id, raft, http) in sorted {
            text.push_str(&format!(";{id}={raft}/{http}"));
        }
        let crc = crc::Crc::<u64>::new(&crc::CRC_64_ECMA_182);
        format!("g{:016x}", crc.checksum(text.as_bytes()))
    }

    pub fn get(&self) -> Option<String> {
        self.current.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Records `id` if this dir has none yet; refuses a different one.
    pub fn adopt(&self, id: &str) -> Result<(), ForeignGroup> {
        let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
        match current.as_deref() {
            Some(mine) if mine == id => Ok(()),
            Some(mine) => Err(ForeignGroup { mine: mine.to_owned(), theirs: id.to_owned() }),
            None => {
                let cf = self.db.cf_handle(CF_META).expect("column family created at open");
                if let Err(e) = self.db.put_cf_opt(cf, KEY_GROUP_ID, id.as_bytes(), &sync_writes()) {
                    tracing::warn!("cannot record the group id: {e}");
                }
                *current = Some(id.to_owned());
                Ok(())
            }
        }
    }
}

impl LogStore {
    /// This data dir's group identity.
    pub fn group_identity(&self) -> Arc<GroupIdentity> {
        let cf = self.cf(CF_META);
        let stored = self.db.get_cf(cf, KEY_GROUP_ID).ok().flatten().map(|v| String::from_utf8_lossy(&v).into_owned());
        Arc::new(GroupIdentity { db: self.db.clone(), current: RwLock::new(stored) })
    }

    fn cf(&self, name: &str) -> &rocksdb::ColumnFamily {
        // The column families are created in `open`.
        self.db.cf_handle(name).expect("column family created at open")
    }

    fn get_meta<T: for<'de> Deserialize<'de>>(&self, key: &[u8]) -> Result<Option<T>, StorageError> {
        let raw = self.db.get_cf(self.cf(CF_META), key).map_err(|e| StorageIOError::read(&e))?;
        match raw {
            None => Ok(None),
            Some(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| StorageIOError::read(&e).into()),
        }
    }

    fn put_meta<T: Serialize>(&self, key: &[u8], value: &T, sync: bool) -> Result<(), StorageError> {
        let bytes = serde_json::to_vec(value).map_err(|e| StorageIOError::write(&e))?;
        let opts = if sync { sync_writes() } else { WriteOptions::default() };
        self.db.put_cf_opt(self.cf(CF_META), key, bytes, &opts).map_err(|e| StorageIOError::write(&e).into())
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(x) => *x,
            Bound::Excluded(x) => x.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let key = index_key(start);
        let iter = self.db.iterator_cf(self.cf(CF_LOGS), IteratorMode::From(&key, Direction::Forward));
        let mut out = Vec::new();
        for item in iter {
            let (k, v) = item.map_err(|e| StorageIOError::read_logs(&e))?;
            let index = index_of(&k);
            if !range.contains(&index) {
                break;
            }
            let entry: Entry = serde_json::from_slice(&v).map_err(|e| StorageIOError::read_logs(&e))?;
            out.push(entry);
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged_log_id: Option<LogId> = self.get_meta(KEY_PURGED)?;
        let mut iter = self.db.iterator_cf(self.cf(CF_LOGS), IteratorMode::End);
        let last_log_id = match iter.next() {
            None => last_purged_log_id,
            Some(item) => {
                let (_, v) = item.map_err(|e| StorageIOError::read_logs(&e))?;
                let entry: Entry = serde_json::from_slice(&v).map_err(|e| StorageIOError::read_logs(&e))?;
                Some(entry.log_id)
            }
        };
        Ok(LogState { last_purged_log_id, last_log_id })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError> {
        self.put_meta(KEY_VOTE, vote, true)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError> {
        self.get_meta(KEY_VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        self.put_meta(KEY_COMMITTED, &committed, false)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.get_meta::<Option<LogId>>(KEY_COMMITTED)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = WriteBatch::default();
        for entry in entries {
            let bytes = serde_json::to_vec(&entry).map_err(|e| StorageIOError::write_logs(&e))?;
            batch.put_cf(self.cf(CF_LOGS), index_key(entry.log_id.index), bytes);
        }
        let result = self.db.write_opt(batch, &sync_writes());
        let io = result.as_ref().map(|_| ()).map_err(|e| std::io::Error::other(e.to_string()));
        callback.log_io_completed(io);
        result.map_err(|e| StorageIOError::write_logs(&e).into())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(self.cf(CF_LOGS), index_key(log_id.index), index_key(u64::MAX));
        // delete_range excludes its end: remove the very last possible key explicitly.
        batch.delete_cf(self.cf(CF_LOGS), index_key(u64::MAX));
        self.db.write_opt(batch, &sync_writes()).map_err(|e| StorageIOError::write_logs(&e).into())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.put_meta(KEY_PURGED, &log_id, true)?;
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(self.cf(CF_LOGS), index_key(0), index_key(log_id.index.saturating_add(1)));
        self.db.write_opt(batch, &WriteOptions::default()).map_err(|e| StorageIOError::write_logs(&e).into())
    }
}

/// What the state machine holds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StateMachineData {
    pub last_applied: Option<LogId>,
    pub last_membership: StoredMembership<NodeId, BrokerNode>,
    pub store: Store,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, BrokerNode>,
    /// The store document (`GET /metadata` JSON).
    data: Vec<u8>,
}

/// The in-memory metadata store plus its snapshots in RocksDB.
#[derive(Clone)]
pub struct StateMachine {
    db: Arc<DB>,
    data: Arc<RwLock<StateMachineData>>,
    /// Last applied log index, for waiters (requests waiting for their entry, watch streams).
    applied: Arc<watch::Sender<u64>>,
    /// Every applied change to what proxies depend on, for gRPC watch streams.
    changes: broadcast::Sender<Change>,
    /// Digest of the store as of the last applied entry (what the next change is compared to).
    digest: Arc<std::sync::Mutex<Digest>>,
    /// Size of the snapshot stored now, and snapshots stored since start (for metrics).
    snapshot_bytes: Arc<AtomicU64>,
    snapshots: Arc<AtomicU64>,
}

/// What a member's storage holds, for its metrics.
#[derive(Debug, Clone, Copy, Default)]
pub struct StorageStats {
    /// The snapshot stored now (the store document and its metadata, as JSON).
    pub snapshot_bytes: u64,
    /// Snapshots built or installed since this process opened the data dir.
    pub snapshots: u64,
    /// RocksDB's estimate of the live data in its table files, all column families.
    pub live_data_bytes: u64,
    /// RocksDB's table files, all column families.
    pub sst_bytes: u64,
    /// RocksDB's memtables (written, not yet flushed to table files).
    pub memtable_bytes: u64,
}

/// How many changes a slow watcher may fall behind before it is told to resync.
const CHANGE_BUFFER: usize = 4096;

impl StateMachine {
    fn load(db: Arc<DB>) -> Result<StateMachine, serde_json::Error> {
        let mut data = StateMachineData::default();
        let cf = db.cf_handle(CF_SM).expect("column family created at open");
        let mut snapshot_bytes = 0;
        if let Ok(Some(raw)) = db.get_cf(cf, KEY_SNAPSHOT) {
            snapshot_bytes = raw.len() as u64;
            let snap: StoredSnapshot = serde_json::from_slice(&raw)?;
            data.store = serde_json::from_slice(&snap.data)?;
            data.last_applied = snap.meta.last_log_id;
            data.last_membership = snap.meta.last_membership;
        }
        let applied = data.last_applied.map(|l| l.index).unwrap_or(0);
        let digest = Arc::new(std::sync::Mutex::new(Digest::of(&data.store)));
        Ok(StateMachine {
            db,
            data: Arc::new(RwLock::new(data)),
            applied: Arc::new(watch::channel(applied).0),
            changes: broadcast::channel(CHANGE_BUFFER).0,
            digest,
            snapshot_bytes: Arc::new(AtomicU64::new(snapshot_bytes)),
            snapshots: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Sizes of the stored snapshot and of RocksDB's data (summed over the column families).
    pub fn storage_stats(&self) -> StorageStats {
        let property = |name: &str| -> u64 {
            [CF_LOGS, CF_META, CF_SM]
                .iter()
                .filter_map(|cf| self.db.cf_handle(cf))
                .filter_map(|cf| self.db.property_int_value_cf(cf, name).ok().flatten())
                .sum()
        };
        StorageStats {
            snapshot_bytes: self.snapshot_bytes.load(Ordering::Relaxed),
            snapshots: self.snapshots.load(Ordering::Relaxed),
            live_data_bytes: property("rocksdb.estimate-live-data-size"),
            sst_bytes: property("rocksdb.total-sst-files-size"),
            memtable_bytes: property("rocksdb.cur-size-all-mem-tables"),
        }
    }

    /// Read access to the current state.
    pub fn read<T>(&self, f: impl FnOnce(&StateMachineData) -> T) -> T {
        f(&self.data.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Index of the last applied entry, updated after each apply.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.applied.subscribe()
    }

    /// Committed changes from now on (a lagging receiver gets `RecvError::Lagged`).
    pub fn changes(&self) -> broadcast::Receiver<Change> {
        self.changes.subscribe()
    }

    /// Compares the store with the digest of the previous entry and publishes what changed.
    fn publish_change(&self, store: &Store, log_index: u64, resync: bool) {
        let after = Digest::of(store);
        let mut before = self.digest.lock().unwrap_or_else(|e| e.into_inner());
        let diff = before.diff(&after);
        if diff.is_none() && !resync {
            return;
        }
        let (clusters, proxies) = diff.unwrap_or_default();
        let change = Change { log_index, global_epoch: after.global_epoch(), clusters, proxies, resync };
        *before = after;
        // No receivers is fine.
        let _ = self.changes.send(change);
    }

    fn persist_snapshot(&self, snap: &StoredSnapshot) -> Result<(), StorageError> {
        let cf = self.db.cf_handle(CF_SM).expect("column family created at open");
        let bytes = serde_json::to_vec(snap).map_err(|e| StorageIOError::write_snapshot(None, &e))?;
        let len = bytes.len() as u64;
        self.db
            .put_cf_opt(cf, KEY_SNAPSHOT, bytes, &sync_writes())
            .map_err(|e| StorageIOError::write_snapshot(None, &e))?;
        self.snapshot_bytes.store(len, Ordering::Relaxed);
        self.snapshots.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let (meta, data) = {
            let d = self.data.read().unwrap_or_else(|e| e.into_inner());
            let data = serde_json::to_vec(&d.store).map_err(|e| StorageIOError::read_state_machine(&e))?;
            let id = match d.last_applied {
                Some(l) => format!("{}-{}-{}", l.leader_id.term, l.leader_id.node_id, l.index),
                None => "0-0-0".to_owned(),
            };
            let meta = SnapshotMeta {
                last_log_id: d.last_applied,
                last_membership: d.last_membership.clone(),
                snapshot_id: id,
            };
            (meta, data)
        };
        let stored = StoredSnapshot { meta: meta.clone(), data: data.clone() };
        self.persist_snapshot(&stored)?;
        Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(data)) })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership<NodeId, BrokerNode>), StorageError> {
        let d = self.data.read().unwrap_or_else(|e| e.into_inner());
        Ok((d.last_applied, d.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<moonraft_meta::command::CommandResult>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut results = Vec::new();
        let mut last = None;
        {
            let mut d = self.data.write().unwrap_or_else(|e| e.into_inner());
            for entry in entries {
                d.last_applied = Some(entry.log_id);
                last = Some(entry.log_id.index);
                results.push(match entry.payload {
                    EntryPayload::Blank => Ok(CommandOutput::Done),
                    EntryPayload::Normal(cmd) => {
                        let result = d.store.apply(&cmd);
                        self.publish_change(&d.store, entry.log_id.index, false);
                        result
                    }
                    EntryPayload::Membership(m) => {
                        d.last_membership = StoredMembership::new(Some(entry.log_id), m);
                        Ok(CommandOutput::Done)
                    }
                });
            }
        }
        if let Some(index) = last {
            self.applied.send_replace(index);
        }
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BrokerNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        let store: Store =
            serde_json::from_slice(&data).map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))?;
        self.persist_snapshot(&StoredSnapshot { meta: meta.clone(), data })?;
        {
            let mut d = self.data.write().unwrap_or_else(|e| e.into_inner());
            d.store = store;
            d.last_applied = meta.last_log_id;
            d.last_membership = meta.last_membership.clone();
            let index = meta.last_log_id.map(|l| l.index).unwrap_or(0);
            self.publish_change(&d.store, index, true);
        }
        self.applied.send_replace(meta.last_log_id.map(|l| l.index).unwrap_or(0));
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let cf = self.db.cf_handle(CF_SM).expect("column family created at open");
        let raw = self.db.get_cf(cf, KEY_SNAPSHOT).map_err(|e| StorageIOError::read_snapshot(None, &e))?;
        let Some(raw) = raw else { return Ok(None) };
        let snap: StoredSnapshot = serde_json::from_slice(&raw).map_err(|e| StorageIOError::read_snapshot(None, &e))?;
        Ok(Some(Snapshot { meta: snap.meta, snapshot: Box::new(Cursor::new(snap.data)) }))
    }
}
