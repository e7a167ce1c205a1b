//! What a coordinator pushes to a proxy (`docs/protocol.md#umctl-what-coordinators-send-a-proxy`): `UMCTL SETREPL`
//! and `UMCTL SETCLUSTER` built from the broker's view of that proxy. Pure: unit tested
//! against the spec's examples.

use moonraft_meta::store::{ClusterConfig, CompressionStrategy, MigrationConfig};
use moonraft_proto::broker as pb;

fn range_list(out: &mut Vec<String>, r: &pb::SlotRange) {
    out.push(r.range_list.len().to_string());
    for x in &r.range_list {
        out.push(format!("{}-{}", x.start, x.end));
    }
}

/// One `<address> <slot-range>` entry.
fn entry(out: &mut Vec<String>, address: &str, r: &pb::SlotRange) {
    out.push(address.to_owned());
    let meta = match &r.tag {
        Some(pb::slot_range::Tag::Migrating(m)) => Some(("MIGRATING", m)),
        Some(pb::slot_range::Tag::Importing(m)) => Some(("IMPORTING", m)),
        _ => None,
    };
    match meta {
        None => range_list(out, r),
        Some((kind, m)) => {
            out.push(kind.to_owned());
            range_list(out, r);
            out.extend([
                m.epoch.to_string(),
                m.src_proxy_address.clone(),
                m.src_node_address.clone(),
                m.dst_proxy_address.clone(),
                m.dst_node_address.clone(),
            ]);
        }
    }
}

fn is_master(n: &pb::Node) -> bool {
    n.repl.as_ref().is_some_and(|r| r.role == "master")
}

/// The flags of every push: `TARGET=<proxy address>`, so a proxy refuses metadata meant for
/// another one (a push that reached the wrong process after an address was reused).
fn target(p: &pb::Proxy) -> String {
    format!("TARGET={}", p.address)
}

/// `UMCTL SETREPL <epoch> TARGET=<proxy> (<role> <cluster> <node> <n> (<peer_node> <peer_proxy>)*)*`.
pub fn setrepl(p: &pb::Proxy) -> Vec<String> {
    let mut out: Vec<String> = vec!["UMCTL".into(), "SETREPL".into(), p.epoch.to_string(), target(p)];
    let cluster = p.cluster_name.clone().unwrap_or_default();
    for n in &p.nodes {
        if cluster.is_empty() {
            out.extend(["master".into(), String::new(), n.address.clone(), "0".into()]);
            continue;
        }
        let role = if is_master(n) { "master" } else { "replica" };
        let peers = n.repl.as_ref().map(|r| r.peers.as_slice()).unwrap_or_default();
        out.extend([role.to_owned(), cluster.clone(), n.address.clone(), peers.len().to_string()]);
        for peer in peers {
            out.extend([peer.node_address.clone(), peer.proxy_address.clone()]);
        }
    }
    out
}

/// `UMCTL SETCLUSTER v2 <epoch> TARGET=<proxy> <cluster> <local>* [PEER <peer>*]
/// [REPLICA <replica>*] CONFIG <5 fields>`, a replica being `<proxy> <node> <n> <range>*`: the
/// slots that replica node may serve reads for (moonraft's extension for replica reads; the
/// section is optional, so undermoon's metadata still parses).
pub fn setcluster(p: &pb::Proxy) -> Vec<String> {
    let mut out: Vec<String> = vec![
        "UMCTL".into(),
        "SETCLUSTER".into(),
        "v2".into(),
        p.epoch.to_string(),
        target(p),
        p.cluster_name.clone().unwrap_or_default(),
    ];
    for n in p.nodes.iter().filter(|n| is_master(n)) {
        for r in &n.slots {
            entry(&mut out, &n.address, r);
        }
    }
    let peers: Vec<&pb::Peer> = p.peers.iter().filter(|x| !x.slots.is_empty()).collect();
    if !peers.is_empty() {
        out.push("PEER".into());
        for peer in peers {
            for r in &peer.slots {
                entry(&mut out, &peer.proxy_address, r);
            }
        }
    }
    let replicas: Vec<&pb::ReplicaRange> = p.replicas.iter().filter(|r| !r.range_list.is_empty()).collect();
    if !replicas.is_empty() && p.cluster_name.as_deref().is_some_and(|n| !n.is_empty()) {
        out.push("REPLICA".into());
        for r in replicas {
            out.extend([
                r.replica_proxy_address.clone(),
                r.replica_node_address.clone(),
                r.range_list.len().to_string(),
            ]);
            out.extend(r.range_list.iter().map(|x| format!("{}-{}", x.start, x.end)));
        }
    }
    // Missing or unreadable parts take the defaults every side shares.
    let mut config = ClusterConfig::default();
    if let Some(c) = &p.cluster_config {
        if let Some(s) = CompressionStrategy::parse(&c.compression_strategy) {
            config.compression_strategy = s;
        }
        if let Some(m) = &c.migration_config {
            config.migration_config = MigrationConfig {
                max_migration_time: m.max_migration_time,
                max_blocking_time: m.max_blocking_time,
                scan_interval: m.scan_interval,
                scan_count: m.scan_count,
            };
        }
    }
    out.push("CONFIG".into());
    for (key, value) in config.fields() {
        out.extend([key.to_owned(), value]);
    }
    out
}

/// `UMCTL SETCLUSTER v2 <epoch> COMPRESS <payload>` (`docs/protocol.md#setcluster`, for large clusters):
/// the same metadata as `setcluster`, as base64 of gzipped JSON. Built by parsing the plain
/// form with the proxy's own parser and encoding that, so both forms always say the same.
pub fn setcluster_compressed(p: &pb::Proxy) -> Vec<String> {
    let plain = setcluster(p);
    let args: Vec<bytes::Bytes> = plain[2..].iter().map(|s| bytes::Bytes::from(s.clone())).collect();
    match moonraft_proxy::cluster::SetCluster::parse(&args) {
        Ok(cmd) => vec![
            "UMCTL".into(),
            "SETCLUSTER".into(),
            "v2".into(),
            p.epoch.to_string(),
            format!("COMPRESS,{}", target(p)),
            moonraft_proxy::cluster::encode_compressed(&cmd.meta),
        ],
        Err(_) => plain,
    }
}

/// The Redis nodes a proxy fronts (what `UMCTL HEALTH` pings).
pub fn nodes(p: &pb::Proxy) -> Vec<String> {
    p.nodes.iter().map(|n| n.address.clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(start: u32, end: u32, tag: pb::slot_range::Tag) -> pb::SlotRange {
        pb::SlotRange { range_list: vec![pb::Range { start, end }], tag: Some(tag) }
    }

    fn none() -> pb::slot_range::Tag {
        pb::slot_range::Tag::None(pb::Empty {})
    }

    fn node(address: &str, role: &str, slots: Vec<pb::SlotRange>, peer: (&str, &str)) -> pb::Node {
        pb::Node {
            address: address.into(),
            proxy_address: "server_proxy5:6005".into(),
            slots,
            repl: Some(pb::Repl {
                role: role.into(),
                peers: vec![pb::ReplPeer { node_address: peer.0.into(), proxy_address: peer.1.into() }],
            }),
        }
    }

    fn config() -> pb::ClusterConfig {
        pb::ClusterConfig {
            compression_strategy: "disabled".into(),
            migration_config: Some(pb::MigrationConfig {
                max_migration_time: 10800,
                max_blocking_time: 10000,
                scan_interval: 500,
                scan_count: 16,
            }),
        }
    }

    /// The examples of `docs/protocol.md` (SETCLUSTER, SETREPL).
    #[test]
    fn builds_the_spec_examples() {
        let p = pb::Proxy {
            cluster_name: Some("mycluster".into()),
            address: "server_proxy5:6005".into(),
            epoch: 7,
            nodes: vec![
                node(
                    "server_proxy5:7009",
                    "master",
                    vec![range(0, 8191, none())],
                    ("server_proxy6:7012", "server_proxy6:6006"),
                ),
                node("server_proxy5:7010", "replica", vec![], ("server_proxy6:7011", "server_proxy6:6006")),
            ],
            peers: vec![pb::Peer {
                proxy_address: "server_proxy6:6006".into(),
                slots: vec![range(8192, 16383, none())],
            }],
            cluster_config: Some(config()),
            replicas: vec![],
        };
        assert_eq!(
            setcluster(&p).join(" "),
            "UMCTL SETCLUSTER v2 7 TARGET=server_proxy5:6005 mycluster server_proxy5:7009 1 0-8191 PEER server_proxy6:6006 1 8192-16383 CONFIG compression_strategy disabled migration_max_migration_time 10800 migration_max_blocking_time 10000 migration_scan_interval 500 migration_scan_count 16"
        );
        assert_eq!(
            setrepl(&p).join(" "),
            "UMCTL SETREPL 7 TARGET=server_proxy5:6005 master mycluster server_proxy5:7009 1 server_proxy6:7012 server_proxy6:6006 replica mycluster server_proxy5:7010 1 server_proxy6:7011 server_proxy6:6006"
        );
    }

    #[test]
    fn migrating_ranges_carry_their_meta() {
        let meta = pb::MigrationMeta {
            epoch: 9,
            src_proxy_address: "server_proxy5:6005".into(),
            src_node_address: "server_proxy5:7009".into(),
            dst_proxy_address: "server_proxy2:6002".into(),
            dst_node_address: "server_proxy2:7003".into(),
        };
        let p = pb::Proxy {
            cluster_name: Some("mycluster".into()),
            address: "server_proxy5:6005".into(),
            epoch: 9,
            nodes: vec![node(
                "server_proxy5:7009",
                "master",
                vec![range(0, 4095, none()), range(4096, 8191, pb::slot_range::Tag::Migrating(meta))],
                ("x:1", "y:1"),
            )],
            peers: vec![],
            cluster_config: Some(config()),
            replicas: vec![],
        };
        let cmd = setcluster(&p).join(" ");
        assert!(cmd.starts_with("UMCTL SETCLUSTER v2 9 TARGET=server_proxy5:6005 mycluster server_proxy5:7009 1 0-4095 server_proxy5:7009 MIGRATING 1 4096-8191 9 server_proxy5:6005 server_proxy5:7009 server_proxy2:6002 server_proxy2:7003 CONFIG"), "{cmd}");
    }

    #[test]
    fn the_compressed_form_carries_the_same_metadata() {
        let meta = pb::MigrationMeta {
            epoch: 9,
            src_proxy_address: "p5:6005".into(),
            src_node_address: "p5:7009".into(),
            dst_proxy_address: "p2:6002".into(),
            dst_node_address: "p2:7003".into(),
        };
        let p = pb::Proxy {
            cluster_name: Some("mycluster".into()),
            address: "p5:6005".into(),
            epoch: 9,
            nodes: vec![node(
                "p5:7009",
                "master",
                vec![range(0, 4095, none()), range(4096, 8191, pb::slot_range::Tag::Migrating(meta))],
                ("x:1", "y:1"),
            )],
            peers: vec![pb::Peer { proxy_address: "p6:6006".into(), slots: vec![range(8192, 16383, none())] }],
            cluster_config: Some(config()),
            replicas: vec![pb::ReplicaRange {
                replica_proxy_address: "p6:6006".into(),
                replica_node_address: "p6:7012".into(),
                range_list: vec![pb::Range { start: 0, end: 4095 }],
            }],
        };
        let parse = |cmd: Vec<String>| {
            let args: Vec<bytes::Bytes> = cmd[2..].iter().map(|s| bytes::Bytes::from(s.clone())).collect();
            moonraft_proxy::cluster::SetCluster::parse(&args).unwrap()
        };
        let compressed = setcluster_compressed(&p);
        assert_eq!(compressed[4], "COMPRESS,TARGET=p5:6005");
        let (a, b) = (parse(setcluster(&p)), parse(compressed));
        assert!(b.flags.compress);
        assert_eq!(a.meta.replicas.len(), 1, "the REPLICA section is parsed");
        assert_eq!(a.meta, b.meta);
        assert_eq!(a.epoch, b.epoch);
    }

    #[test]
    fn a_free_proxy_gets_no_slots_and_master_nodes() {
        let p = pb::Proxy {
            cluster_name: None,
            address: "p:6000".into(),
            epoch: 6,
            nodes: vec![node("r:1", "master", vec![], ("", "")), node("r:2", "master", vec![], ("", ""))],
            peers: vec![],
            cluster_config: None,
            replicas: vec![],
        };
        let c = setcluster(&p);
        assert_eq!(&c[..7], &["UMCTL", "SETCLUSTER", "v2", "6", "TARGET=p:6000", "", "CONFIG"]);
        assert_eq!(setrepl(&p).join(" "), "UMCTL SETREPL 6 TARGET=p:6000 master  r:1 0 master  r:2 0");
        // What the proxy parses is what we meant.
        let args: Vec<bytes::Bytes> = c[2..].iter().map(|s| bytes::Bytes::from(s.clone())).collect();
        assert!(moonraft_proxy::cluster::SetCluster::parse(&args).is_ok());
        let compressed = setcluster_compressed(&p);
        assert_eq!(compressed[4], "COMPRESS,TARGET=p:6000");
        let args: Vec<bytes::Bytes> = compressed[2..].iter().map(|s| bytes::Bytes::from(s.clone())).collect();
        let parsed = moonraft_proxy::cluster::SetCluster::parse(&args).unwrap();
        assert_eq!(parsed.meta.name, "");
        assert_eq!(parsed.flags.target.as_deref(), Some("p:6000"), "the target survives compression");
    }
}
