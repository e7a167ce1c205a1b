//! openraft's own storage test suite against the RocksDB storage, plus restart checks on a
//! real data dir.

use moonraft_meta::command::Command;
use moonraft_meta::store::{ClusterConfig, RegisterProxy};
use moonraft_raft::storage::{open, open_for, LogStore, StateMachine};
use moonraft_raft::{StorageError, TypeConfig};
use openraft::storage::RaftStateMachine;
use openraft::testing::{StoreBuilder, Suite};
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, RaftLogReader, RaftSnapshotBuilder};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "moonraft-raft-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for Builder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError> {
        let dir = TempDir::new();
        let (log, sm) = open(&dir.0).expect("open rocksdb");
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_suite() {
    Suite::test_all(Builder).unwrap();
}

fn entry(index: u64, cmd: Command) -> Entry<TypeConfig> {
    Entry { log_id: LogId::new(CommittedLeaderId::new(1, 1), index), payload: EntryPayload::Normal(cmd) }
}

fn register(i: u16) -> Command {
    Command::AddProxy(RegisterProxy {
        proxy_address: format!("host{i}:6000"),
        nodes: [format!("host{i}:7000"), format!("host{i}:7001")],
        host: None,
        index: None,
    })
}

#[tokio::test]
async fn state_survives_restart_through_snapshot_and_log() {
    let dir = TempDir::new();
    let cmds: Vec<Command> = (0..4)
        .map(register)
        .chain([Command::CreateCluster { name: "c".into(), node_number: 4, default_config: ClusterConfig::default() }])
        .collect();
    let want = {
        let (mut log, mut sm) = open(&dir.0).unwrap();
        let entries: Vec<_> = cmds.iter().enumerate().map(|(i, c)| entry(i as u64 + 1, c.clone())).collect();
        // the first 3 entries go into a snapshot, the rest only into the log
        let results = sm.apply(entries[..3].to_vec()).await.unwrap();
        assert!(results.iter().all(|r| r.is_ok()));
        sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
        openraft::storage::RaftLogStorageExt::blocking_append(&mut log, entries.clone()).await.unwrap();
        sm.apply(entries[3..].to_vec()).await.unwrap();
        sm.read(|d| serde_json::to_string(&d.store).unwrap())
    };
    let (mut log, mut sm) = open(&dir.0).unwrap();
    let (applied, _) = sm.applied_state().await.unwrap();
    assert_eq!(applied.map(|l| l.index), Some(3), "state loaded from the snapshot");
    // openraft would now re-apply the log after the snapshot
    let rest = log.try_get_log_entries(4..).await.unwrap();
    assert_eq!(rest.len(), 2);
    sm.apply(rest).await.unwrap();
    let got = sm.read(|d| serde_json::to_string(&d.store).unwrap());
    assert_eq!(got, want, "replaying gives a byte-identical store");
    assert!(sm.read(|d| d.store.clusters.contains_key("c")));
}

#[test]
fn a_file_in_place_of_the_data_dir_is_a_clear_error() {
    let dir = TempDir::new();
    let file = dir.0.join("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    let err = open(&file).err().expect("must fail");
    assert!(err.to_string().contains("cannot open RocksDB"), "{err}");
}

#[test]
fn a_data_dir_of_another_member_is_refused() {
    let dir = TempDir::new();
    drop(open_for(&dir.0, 1).unwrap());
    drop(open_for(&dir.0, 1).expect("the same member reopens its own dir"));
    let err = open_for(&dir.0, 2).err().expect("must refuse");
    let msg = err.to_string();
    assert!(msg.contains("belongs to broker node_id 1, not 2") && msg.contains("move it away"), "{msg}");
}
