//! Expand, shrink, commit, exposure limit and failover, checked against the spec's worked
//! examples (`docs/allocation.md`, `docs/failover.md`) and by property tests.

use moonraft_meta::migration::{plan_expand, plan_shrink, PlannedTask};
use moonraft_meta::slots::{Range, SLOTS};
use moonraft_meta::store::{ClusterConfig, MigrationMeta, RegisterProxy, RolePosition, SlotTag, Store};
use moonraft_meta::{failover::FailoverOutcome, view, MetaError};
use proptest::prelude::*;

fn r(a: u16, b: u16) -> Range {
    Range { start: a, end: b }
}

fn pool(hosts: usize, per_host: usize) -> Store {
    let mut s = Store::default();
    for h in 0..hosts {
        for p in 0..per_host {
            let port = 6000 + p as u16;
            s.register_proxy(RegisterProxy {
                proxy_address: format!("host{h}:{port}"),
                nodes: [format!("host{h}:{}", port + 1000), format!("host{h}:{}", port + 2000)],
                host: None,
                index: None,
            })
            .unwrap();
        }
    }
    s
}

fn task(src: (usize, usize), dst: (usize, usize), ranges: &[(u16, u16)]) -> PlannedTask {
    PlannedTask { src, dst, ranges: ranges.iter().map(|&(a, b)| r(a, b)).collect() }
}

/// Commits every task of a cluster (as coordinators would, one by one).
fn commit_all(s: &mut Store, name: &str) {
    loop {
        let c = &s.clusters[name];
        let Some(e) = c.chunks.iter().flat_map(|c| c.migrating_slots.iter().flatten()).find(|e| e.is_migrating) else {
            return;
        };
        let meta = MigrationMeta {
            epoch: e.meta.epoch,
            src_proxy_address: String::new(),
            src_node_address: String::new(),
            dst_proxy_address: String::new(),
            dst_node_address: String::new(),
        };
        let ranges = e.range_list.clone();
        s.commit_migration(name, &ranges, &SlotTag::Migrating(meta)).unwrap();
    }
}

fn stable(s: &Store, name: &str, chunk: usize, part: usize) -> Vec<Range> {
    s.clusters[name].chunks[chunk].stable_slots[part].as_ref().map(|x| x.range_list.clone()).unwrap_or_default()
}

#[test]
fn expand_4_to_8() {
    let mut s = pool(4, 1);
    s.create_cluster("c", 4, ClusterConfig::default()).unwrap();
    s.add_nodes("c", 4).unwrap();
    assert_eq!(
        plan_expand(&s.clusters["c"]).unwrap(),
        vec![task((0, 0), (1, 0), &[(4096, 8191)]), task((0, 1), (1, 1), &[(12288, 16383)])]
    );
    let e = s.global_epoch;
    s.expand("c").unwrap();
    assert_eq!(s.global_epoch, e + 1);
    assert_eq!(s.clusters["c"].epoch, e + 1);
    assert_eq!(s.expand("c"), Err(MetaError::MigrationRunning));
    assert_eq!(s.add_nodes("c", 4), Err(MetaError::MigrationRunning));
    // the exposure limit shows one task at a time; the source keeps the other as stable
    let v = view::cluster(&s, "c", 1).unwrap();
    let tagged: Vec<_> = v.nodes.iter().flat_map(|n| n.slots.iter()).filter(|sl| sl.tag != SlotTag::None).collect();
    assert_eq!(tagged.len(), 2, "one migrating + one importing");
    let info = view::cluster_info(&s, "c", 1).unwrap();
    assert!(info.is_migrating);
    let all = view::cluster(&s, "c", 0).unwrap();
    assert_eq!(all.nodes.iter().flat_map(|n| n.slots.iter()).filter(|sl| sl.tag != SlotTag::None).count(), 4);
    // the migrating tag names the current master proxies and nodes
    let src_node = &all.nodes[0];
    match &src_node.slots[1].tag {
        SlotTag::Migrating(m) => {
            assert_eq!(m.src_node_address, src_node.address);
            assert_eq!(m.dst_node_address, all.nodes[4].address);
            assert_eq!(m.dst_proxy_address, all.nodes[4].proxy_address);
        }
        other => panic!("{other:?}"),
    }
    commit_all(&mut s, "c");
    assert_eq!(stable(&s, "c", 0, 0), vec![r(0, 4095)]);
    assert_eq!(stable(&s, "c", 0, 1), vec![r(8192, 12287)]);
    assert_eq!(stable(&s, "c", 1, 0), vec![r(4096, 8191)]);
    assert_eq!(stable(&s, "c", 1, 1), vec![r(12288, 16383)]);
    assert_eq!(s.expand("c"), Err(MetaError::SlotsAlreadyEven));
    let info = view::cluster_info(&s, "c", 1).unwrap();
    assert!(!info.is_migrating);
    assert_eq!(info.node_number_with_slots, 8);
}

#[test]
fn expand_8_to_12_from_created_layout() {
    let mut s = pool(6, 1);
    s.create_cluster("c", 8, ClusterConfig::default()).unwrap();
    s.add_nodes("c", 4).unwrap();
    assert_eq!(
        plan_expand(&s.clusters["c"]).unwrap(),
        vec![
            task((0, 0), (2, 0), &[(2731, 4095)]),
            task((0, 1), (2, 0), &[(6827, 8191)]),
            task((1, 0), (2, 1), &[(10923, 12287)]),
            task((1, 1), (2, 1), &[(15019, 16383)]),
        ]
    );
    s.expand("c").unwrap();
    commit_all(&mut s, "c");
    assert_eq!(stable(&s, "c", 2, 0), vec![r(2731, 4095), r(6827, 8191)]);
    assert_eq!(stable(&s, "c", 2, 1), vec![r(10923, 12287), r(15019, 16383)]);
    assert_eq!(stable(&s, "c", 0, 1), vec![r(4096, 6826)]);
}

#[test]
fn expand_4_to_12_in_one_step() {
    let mut s = pool(6, 1);
    s.create_cluster("c", 4, ClusterConfig::default()).unwrap();
    s.add_nodes("c", 8).unwrap();
    assert_eq!(
        plan_expand(&s.clusters["c"]).unwrap(),
        vec![
            task((0, 0), (1, 0), &[(5461, 8191)]),
            task((0, 0), (1, 1), &[(2731, 5460)]),
            task((0, 1), (1, 1), &[(16383, 16383)]),
            task((0, 1), (2, 0), &[(13653, 16382)]),
            task((0, 1), (2, 1), &[(10923, 13652)]),
        ]
    );
}

#[test]
fn shrink_examples() {
    // 8 (created) → 4
    let mut s = pool(4, 1);
    s.create_cluster("c", 8, ClusterConfig::default()).unwrap();
    assert_eq!(
        plan_shrink(&s.clusters["c"], 4),
        vec![task((1, 0), (0, 0), &[(8192, 12287)]), task((1, 1), (0, 1), &[(12288, 16383)])]
    );
    assert_eq!(s.shrink("c", 8), Err(MetaError::InvalidNodeNumber));
    assert_eq!(s.shrink("c", 6), Err(MetaError::InvalidNodeNumber));
    s.shrink("c", 4).unwrap();
    assert_eq!(s.delete_free_nodes("c"), Err(MetaError::MigrationRunning));
    commit_all(&mut s, "c");
    assert_eq!(stable(&s, "c", 0, 0), vec![r(0, 4095), r(8192, 12287)]);
    assert_eq!(stable(&s, "c", 0, 1), vec![r(4096, 8191), r(12288, 16383)]);
    assert_eq!(s.shrink("c", 4), Err(MetaError::FreeNodeFound));
    s.delete_free_nodes("c").unwrap();
    assert_eq!(s.clusters["c"].chunks.len(), 1);
    // 12 (created) → 8
    let mut s = pool(6, 1);
    s.create_cluster("c", 12, ClusterConfig::default()).unwrap();
    assert_eq!(
        plan_shrink(&s.clusters["c"], 8),
        vec![
            task((2, 0), (0, 0), &[(10924, 12288)]),
            task((2, 0), (0, 1), &[(12289, 13653)]),
            task((2, 1), (1, 0), &[(13654, 15018)]),
            task((2, 1), (1, 1), &[(15019, 16383)]),
        ]
    );
}

#[test]
fn commit_checks() {
    let mut s = pool(4, 1);
    s.create_cluster("c", 4, ClusterConfig::default()).unwrap();
    s.add_nodes("c", 4).unwrap();
    s.expand("c").unwrap();
    let meta = |epoch| MigrationMeta {
        epoch,
        src_proxy_address: "ignored".into(),
        src_node_address: "ignored".into(),
        dst_proxy_address: "ignored".into(),
        dst_node_address: "ignored".into(),
    };
    let e = s.clusters["c"].epoch;
    assert_eq!(
        s.commit_migration("nope", &[r(4096, 8191)], &SlotTag::Importing(meta(e))),
        Err(MetaError::ClusterNotFound)
    );
    assert_eq!(s.commit_migration("c", &[r(4096, 8191)], &SlotTag::None), Err(MetaError::InvalidMigrationTask));
    assert_eq!(
        s.commit_migration("c", &[r(4096, 8191)], &SlotTag::Importing(meta(e + 5))),
        Err(MetaError::MigrationTaskNotFound)
    );
    s.commit_migration("c", &[r(4096, 8191)], &SlotTag::Importing(meta(e))).unwrap();
    assert_eq!(
        s.commit_migration("c", &[r(4096, 8191)], &SlotTag::Importing(meta(e))),
        Err(MetaError::MigrationTaskNotFound),
        "a second commit is 404"
    );
}

#[test]
fn failover_promotes_and_replaces() {
    let mut s = pool(4, 1);
    s.create_cluster("c", 4, ClusterConfig::default()).unwrap();
    let chunk = s.clusters["c"].chunks[0].clone();
    let failed = chunk.proxy_addresses[0].clone();
    let survivor = chunk.proxy_addresses[1].clone();
    let e = s.global_epoch;
    match s.failover(&failed).unwrap() {
        FailoverOutcome::Replaced { replacement, .. } => {
            let c = &s.clusters["c"].chunks[0];
            assert_eq!(c.role_position, RolePosition::SecondChunkMaster);
            assert_eq!(c.proxy_addresses[0], replacement);
            assert_ne!(c.hosts[0], c.hosts[1]);
            assert!(s.failed_proxies.contains(&failed));
            assert_eq!(s.all_proxies[&failed].cluster, None);
            assert_eq!(s.all_proxies[&replacement].cluster.as_deref(), Some("c"));
            assert_eq!(s.global_epoch, e + 2);
            // the survivor holds both masters, the replacement's nodes are replicas
            let p = view::proxy(&s, &survivor, 1).unwrap();
            assert!(p.nodes.iter().all(|n| n.repl.role == "master"));
            let rp = view::proxy(&s, &replacement, 1).unwrap();
            assert!(rp.nodes.iter().all(|n| n.repl.role == "replica"));
            assert!(rp.peers.iter().any(|peer| peer.proxy_address == survivor));
        }
        other => panic!("{other:?}"),
    }
    // repeated calls: the failed proxy is no longer in a cluster
    assert_eq!(s.failover(&failed), Ok(FailoverOutcome::NotInCluster));
    assert_eq!(s.failover("nope:1"), Err(MetaError::ProxyNotFound));
    // the failed proxy can be deleted, the replacement (in use) cannot
    s.delete_proxy(&failed).unwrap();
}

#[test]
fn failover_without_replacement_keeps_the_promotion() {
    // 2 hosts only: the only free proxies would be on the survivor's host (`docs/compatibility.md#replacement-host`)
    let mut s = pool(2, 2);
    s.create_cluster("c", 4, ClusterConfig::default()).unwrap();
    let failed = s.clusters["c"].chunks[0].proxy_addresses[1].clone();
    let out = s.failover(&failed).unwrap();
    assert!(matches!(out, FailoverOutcome::NoReplacement { .. }), "{out:?}");
    assert_eq!(s.clusters["c"].chunks[0].role_position, RolePosition::FirstChunkMaster);
    assert!(s.failed_proxies.contains(&failed));
    assert_eq!(s.hosts_that_cannot_fail().len(), 2);
    let mut roomy = pool(4, 1);
    roomy.create_cluster("c", 4, ClusterConfig::default()).unwrap();
    assert!(roomy.hosts_that_cannot_fail().is_empty());
}

#[test]
fn failover_during_migration_refreshes_task_epochs() {
    let mut s = pool(6, 1);
    s.create_cluster("c", 4, ClusterConfig::default()).unwrap();
    s.add_nodes("c", 4).unwrap();
    s.expand("c").unwrap();
    let before = s.clusters["c"].chunks[0].migrating_slots[0][0].meta.epoch;
    let failed = s.clusters["c"].chunks[0].proxy_addresses[0].clone();
    s.failover(&failed).unwrap();
    let c = &s.clusters["c"];
    let after = c.chunks[0].migrating_slots[0][0].meta.epoch;
    assert!(after > before);
    assert_eq!(c.chunks[1].migrating_slots[0][0].meta.epoch, after, "the importing twin follows");
    // part 1's task (c0p1 → c1p1) was not touched
    assert_eq!(c.chunks[0].migrating_slots[1][0].meta.epoch, before);
    // the migrating tag now names the promoted node (node 3 of chunk 0)
    let v = view::cluster(&s, "c", 0).unwrap();
    let promoted = &v.nodes[3];
    assert_eq!(promoted.repl.role, "master");
    assert!(promoted
        .slots
        .iter()
        .any(|sl| matches!(&sl.tag, SlotTag::Migrating(m) if m.src_node_address == promoted.address)));
}

fn owners(s: &Store, name: &str) -> Vec<u8> {
    let mut covered = vec![0u8; SLOTS as usize];
    for chunk in &s.clusters[name].chunks {
        for part in 0..2 {
            for r in chunk.stable_slots[part].iter().flat_map(|x| x.range_list.iter()) {
                for slot in r.start..=r.end {
                    covered[slot as usize] += 1;
                }
            }
            for e in chunk.migrating_slots[part].iter().filter(|e| e.is_migrating) {
                for r in &e.range_list {
                    for slot in r.start..=r.end {
                        covered[slot as usize] += 1;
                    }
                }
            }
        }
    }
    covered
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Scale a cluster through random sizes: every slot is owned exactly once at every step
    /// (stable or migrating), the exposed view also covers every slot once, and after all
    /// commits every master holds avg or avg + 1 slots.
    #[test]
    fn scaling_keeps_every_slot_owned_once(start in 1usize..5, steps in proptest::collection::vec(1usize..6, 1..5)) {
        let mut s = pool(8, 3);
        s.create_cluster("c", (start * 4) as u64, ClusterConfig::default()).unwrap();
        for chunks in steps {
            let current = s.clusters["c"].chunks.len();
            if chunks > current {
                if s.add_nodes("c", ((chunks - current) * 4) as u64).is_err() { continue; }
                s.expand("c").unwrap();
            } else if chunks < current {
                s.shrink("c", (chunks * 4) as u64).unwrap();
            } else {
                continue;
            }
            prop_assert!(owners(&s, "c").iter().all(|&n| n == 1));
            prop_assert_eq!(moonraft_meta::validate::validate(&s), Ok(()), "mid-migration state");
            let v = view::cluster(&s, "c", 1).unwrap();
            let mut covered = vec![0u8; SLOTS as usize];
            for n in &v.nodes {
                for sl in n.slots.iter().filter(|sl| !matches!(sl.tag, SlotTag::Importing(_))) {
                    for r in &sl.range_list { for slot in r.start..=r.end { covered[slot as usize] += 1; } }
                }
            }
            prop_assert!(covered.iter().all(|&n| n == 1), "exposed view");
            commit_all(&mut s, "c");
            if chunks < current {
                s.delete_free_nodes("c").unwrap();
            }
            prop_assert!(owners(&s, "c").iter().all(|&n| n == 1));
            let masters = 2 * s.clusters["c"].chunks.len() as u32;
            let avg = SLOTS / masters;
            for chunk in &s.clusters["c"].chunks {
                for part in 0..2 {
                    let n: u32 = chunk.stable_slots[part].iter().flat_map(|x| x.range_list.iter()).map(|r| r.len()).sum();
                    prop_assert!(n == avg || n == avg + 1, "master has {} slots, avg {}", n, avg);
                }
            }
        }
    }
}
