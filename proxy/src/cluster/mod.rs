//! Cluster metadata as the proxy receives it (`UMCTL SETCLUSTER`), and the routing table built
//! from it. Pure code: parsing, slot ownership, routing decisions and CLUSTER output have no I/O.
//!
//! - this module: the metadata's types (slot ranges, migrations, replicas, cluster config);
//! - `setcluster`: the SETCLUSTER wire format (plain tokens and the compressed JSON) both ways;
//! - `table`: the routing table one SETCLUSTER installs, and the migration tasks it holds;
//! - `output`: `CLUSTER NODES/SLOTS/SHARDS/INFO` as clients see the table.

mod output;
mod setcluster;
mod table;

pub use output::*;
pub use setcluster::*;
pub use table::*;

use serde::{Deserialize, Serialize};

/// The types the brokers use too (one definition: `moonraft-wire`). A slot range is an
/// inclusive `[start, end]`.
pub use moonraft_wire::{ClusterConfig, CompressionStrategy, MigrationConfig, MigrationMeta, Range as SlotRange};

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

/// A replica node and the slots it may serve reads for (the `REPLICA` section of SETCLUSTER:
/// its master's slots outside any migration).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaEntry {
    pub proxy: String,
    pub node: String,
    pub ranges: Vec<SlotRange>,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resp::Frame;
    use crate::slot::node_id;
    use bytes::Bytes;

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
        assert_eq!(sc.meta.config.migration_config.scan_count, 16);
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
        let local = LocalHealth { offset: 42, online: false };
        let Frame::Array(shards) = cluster_shards(&table, "a:1", true, local).unwrap() else { panic!() };
        assert_eq!(shards.len(), 4, "a replica-less shard and a shard with a replica per proxy");
        // This proxy's entry says what its nodes said; the other proxy's is online at 0.
        let entries: Vec<(String, i64, String)> = shards
            .iter()
            .flat_map(|s| {
                let Frame::Map(fields) = s else { panic!() };
                let Frame::Array(nodes) = &fields[1].1 else { panic!() };
                nodes.clone()
            })
            .map(|n| {
                let Frame::Map(f) = n else { panic!() };
                let field = |k: &str| f.iter().find(|(name, _)| *name == Frame::bulk_str(k)).map(|(_, v)| v.clone());
                let port = match field("port") {
                    Some(Frame::Integer(p)) => p,
                    _ => panic!(),
                };
                let offset = match field("replication-offset") {
                    Some(Frame::Integer(o)) => o,
                    _ => panic!(),
                };
                let health = match field("health") {
                    Some(Frame::Bulk(h)) => String::from_utf8_lossy(&h).into_owned(),
                    _ => panic!(),
                };
                (format!("{port}"), offset, health)
            })
            .collect();
        assert!(entries.iter().filter(|e| e.0 == "1").all(|e| e.1 == 42 && e.2 == "failed"), "{entries:?}");
        assert!(entries.iter().filter(|e| e.0 == "2").all(|e| e.1 == 0 && e.2 == "online"), "{entries:?}");
    }
}
