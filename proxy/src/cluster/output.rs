//! `CLUSTER NODES/SLOTS/SHARDS/INFO`: the routing table as cluster clients read it.

use super::{ClusterTable, SlotRange};
use crate::resp::Frame;
use crate::slot::{node_id, SLOT_COUNT};
use std::fmt::Write as _;

fn format_ranges(ranges: &[SlotRange], out: &mut String) {
    for r in ranges {
        if r.start == r.end {
            let _ = write!(out, " {}", r.start);
        } else {
            let _ = write!(out, " {}-{}", r.start, r.end);
        }
    }
}

/// `CLUSTER NODES` text (`docs/protocol.md`, "Cluster output"): this proxy first, then peers
/// by address.
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

/// `CLUSTER SLOTS` reply (`docs/protocol.md`): each range with its serving proxy and, for a client
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

/// What `CLUSTER SHARDS` says of the proxy answering it: the largest `master_repl_offset` of
/// its Redis nodes, and `online` if every one of them answered (`failed` otherwise).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalHealth {
    pub offset: i64,
    pub online: bool,
}

/// `CLUSTER SHARDS` reply in the Redis 7 shape: one shard per serving proxy and set of replica
/// proxies (listed as for `cluster_slots`), its master first. The answering proxy's entry
/// carries `local`; the others say offset 0 (a proxy does not see other proxies' nodes) and
/// `online` (they are in the metadata, which the coordinators keep free of failed proxies).
pub fn cluster_shards(
    table: &ClusterTable,
    announce: &str,
    with_replicas: bool,
    local: LocalHealth,
) -> Result<Frame, String> {
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
        let (offset, online) = if addr == announce { (local.offset, local.online) } else { (0, true) };
        Ok(Frame::Map(vec![
            (Frame::bulk_str("id"), Frame::bulk_str(&node_id(&table.meta.name, addr))),
            (Frame::bulk_str("port"), Frame::Integer(port)),
            (Frame::bulk_str("ip"), Frame::bulk_str(host)),
            (Frame::bulk_str("endpoint"), Frame::bulk_str(host)),
            (Frame::bulk_str("role"), Frame::bulk_str(role)),
            (Frame::bulk_str("replication-offset"), Frame::Integer(offset)),
            (Frame::bulk_str("health"), Frame::bulk_str(if online { "online" } else { "failed" })),
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
