//! Scale out / scale in as slot migration tasks (`docs/allocation.md`): expand, shrink, commit, and the exposure limit applied when serving metadata.

use crate::error::MetaError;
use crate::slots::{compact, count, target, Range};
use crate::store::{ClusterStore, MigrationEntry, MigrationMetaStore, SlotRange, SlotTag, Store};
use std::collections::BTreeMap;

/// A master position: (chunk index, part).
type Master = (usize, usize);

fn stable(cluster: &ClusterStore, (c, p): Master) -> Vec<Range> {
    cluster.chunks[c].stable_slots[p].as_ref().map(|s| s.range_list.clone()).unwrap_or_default()
}

fn set_stable(cluster: &mut ClusterStore, (c, p): Master, ranges: Vec<Range>) {
    cluster.chunks[c].stable_slots[p] =
        if ranges.is_empty() { None } else { Some(SlotRange { range_list: compact(ranges), tag: SlotTag::None }) };
}

fn add_task(cluster: &mut ClusterStore, src: Master, dst: Master, ranges: Vec<Range>, epoch: u64) {
    if ranges.is_empty() {
        return;
    }
    let meta = MigrationMetaStore {
        epoch,
        src_chunk_index: src.0,
        src_chunk_part: src.1,
        dst_chunk_index: dst.0,
        dst_chunk_part: dst.1,
    };
    let range_list = compact(ranges);
    cluster.chunks[src.0].migrating_slots[src.1].push(MigrationEntry {
        range_list: range_list.clone(),
        is_migrating: true,
        meta,
    });
    cluster.chunks[dst.0].migrating_slots[dst.1].push(MigrationEntry { range_list, is_migrating: false, meta });
}

/// The task that moves `ranges` from `src` to `dst`, as computed by expand/shrink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedTask {
    pub src: Master,
    pub dst: Master,
    pub ranges: Vec<Range>,
}

/// The expand plan (`docs/allocation.md#scale-out-the-expand-plan`): slots are taken from the *end* of the source masters' ranges.
pub fn plan_expand(cluster: &ClusterStore) -> Result<Vec<PlannedTask>, MetaError> {
    let chunks = cluster.chunks.len();
    let dst_chunks = cluster.chunks.iter().rev().take_while(|c| c.is_free()).count();
    if dst_chunks == 0 {
        return Err(MetaError::SlotsAlreadyEven);
    }
    let src_chunks = chunks - dst_chunks;
    let masters = (2 * chunks) as u32;
    let master = |k: usize| (k / 2, k % 2);
    let mut ranges: Vec<Vec<Range>> = (0..2 * src_chunks).map(|k| stable(cluster, master(k))).collect();
    let mut tasks = Vec::new();
    let (mut dst, mut got, mut collected) = (0usize, 0u32, Vec::new());
    for (s, src_ranges) in ranges.iter_mut().enumerate() {
        let t_s = target(masters, s as u32);
        while dst < 2 * dst_chunks {
            if count(src_ranges) <= t_s {
                break;
            }
            let d = 2 * src_chunks + dst;
            let t_d = target(masters, d as u32);
            let take = (t_d - got).min(count(src_ranges) - t_s);
            let Some(last) = src_ranges.last_mut() else { break };
            if take >= last.len() {
                collected.push(*last);
                got += last.len();
                src_ranges.pop();
            } else {
                let end = last.end;
                last.end -= take as u16;
                collected.push(Range { start: end - take as u16 + 1, end });
                got += take;
            }
            if got >= t_d || count(src_ranges) <= t_s {
                tasks.push(PlannedTask { src: master(s), dst: master(d), ranges: std::mem::take(&mut collected) });
                if got >= t_d {
                    dst += 1;
                    got = 0;
                }
                if count(src_ranges) <= t_s {
                    break;
                }
            }
        }
    }
    Ok(tasks)
}

/// The shrink plan (`docs/allocation.md#scale-in-the-shrink-plan`): every slot of chunks `n/4…` goes to the first `n/4` chunks, taken
/// from the *front* of the source ranges.
pub fn plan_shrink(cluster: &ClusterStore, new_node_number: usize) -> Vec<PlannedTask> {
    let keep = new_node_number / 4;
    let dst_masters = 2 * keep;
    let existing: Vec<u32> = (0..dst_masters).map(|d| count(&stable(cluster, (d / 2, d % 2)))).collect();
    let mut tasks = Vec::new();
    let (mut dst, mut got, mut collected) = (0usize, 0u32, Vec::new());
    for s in 2 * keep..2 * cluster.chunks.len() {
        let src = (s / 2, s % 2);
        let mut ranges = stable(cluster, src);
        ranges.reverse(); // pop from the front
        while dst < dst_masters {
            let t_d = target(dst_masters as u32, dst as u32);
            let have = got + existing[dst];
            if have >= t_d {
                // Destination already full (only for an unbalanced cluster): next one.
                if !collected.is_empty() {
                    tasks.push(PlannedTask { src, dst: (dst / 2, dst % 2), ranges: std::mem::take(&mut collected) });
                }
                dst += 1;
                got = 0;
                continue;
            }
            let avail = count(&ranges);
            if avail == 0 {
                break;
            }
            let take = (t_d - have).min(avail);
            let Some(first) = ranges.last_mut() else { break };
            let first_len = first.len();
            if take >= first_len {
                collected.push(*first);
                got += first_len;
                ranges.pop();
            } else {
                let start = first.start;
                first.start += take as u16;
                collected.push(Range { start, end: start + take as u16 - 1 });
                got += take;
            }
            if got + existing[dst] >= t_d || ranges.is_empty() {
                tasks.push(PlannedTask { src, dst: (dst / 2, dst % 2), ranges: std::mem::take(&mut collected) });
                if got + existing[dst] >= t_d {
                    dst += 1;
                    got = 0;
                }
                if ranges.is_empty() {
                    break;
                }
            }
        }
    }
    tasks
}

impl Store {
    fn scale_target(&self, name: &str) -> Result<&ClusterStore, MetaError> {
        if !crate::store::valid_cluster_name(name) {
            return Err(MetaError::InvalidClusterName);
        }
        self.clusters.get(name).ok_or(MetaError::ClusterNotFound)
    }

    /// `POST /clusters/migrations/expand/{name}`.
    pub fn expand(&mut self, name: &str) -> Result<(), MetaError> {
        let cluster = self.scale_target(name)?;
        if !cluster.chunks.iter().any(|c| (0..2).any(|p| c.stable_slots[p].is_none())) {
            return Err(MetaError::SlotsAlreadyEven);
        }
        if cluster.is_migrating() {
            return Err(MetaError::MigrationRunning);
        }
        let tasks = plan_expand(cluster)?;
        let epoch = self.global_epoch + 1;
        let mut cluster = cluster.clone();
        apply_plan(&mut cluster, &tasks, epoch, false);
        cluster.epoch = epoch;
        self.global_epoch = epoch;
        self.clusters.insert(name.to_owned(), cluster);
        Ok(())
    }

    /// `POST /clusters/migrations/shrink/{name}/{n}`.
    pub fn shrink(&mut self, name: &str, new_node_number: u64) -> Result<(), MetaError> {
        let cluster = self.scale_target(name)?;
        if cluster.chunks.iter().any(|c| (0..2).any(|p| c.stable_slots[p].is_none())) {
            return Err(MetaError::FreeNodeFound);
        }
        if cluster.is_migrating() {
            return Err(MetaError::MigrationRunning);
        }
        let n = new_node_number as usize;
        if n == 0 || !n.is_multiple_of(4) || n >= cluster.node_number() {
            return Err(MetaError::InvalidNodeNumber);
        }
        let tasks = plan_shrink(cluster, n);
        let epoch = self.global_epoch + 1;
        let mut cluster = cluster.clone();
        apply_plan(&mut cluster, &tasks, epoch, true);
        for chunk in cluster.chunks.iter_mut().skip(n / 4) {
            chunk.stable_slots = [None, None];
        }
        cluster.epoch = epoch;
        self.global_epoch = epoch;
        self.clusters.insert(name.to_owned(), cluster);
        Ok(())
    }

    /// `PUT /clusters/migrations`: commits the task whose migrating and importing entries have
    /// exactly `range_list` and `epoch`.
    pub fn commit_migration(&mut self, name: &str, range_list: &[Range], tag: &SlotTag) -> Result<(), MetaError> {
        let cluster = self.clusters.get(name).ok_or(MetaError::ClusterNotFound)?;
        let epoch = match tag {
            SlotTag::None => return Err(MetaError::InvalidMigrationTask),
            SlotTag::Migrating(m) | SlotTag::Importing(m) => m.epoch,
        };
        let find = |migrating: bool| {
            cluster.chunks.iter().enumerate().find_map(|(c, chunk)| {
                (0..2).find_map(|p| {
                    chunk.migrating_slots[p]
                        .iter()
                        .position(|e| {
                            e.is_migrating == migrating && e.range_list == range_list && e.meta.epoch == epoch
                        })
                        .map(|i| (c, p, i))
                })
            })
        };
        let (Some(src), Some(dst)) = (find(true), find(false)) else {
            return Err(MetaError::MigrationTaskNotFound);
        };
        let new_epoch = self.global_epoch + 1;
        let mut cluster = cluster.clone();
        cluster.chunks[src.0].migrating_slots[src.1].remove(src.2);
        cluster.chunks[dst.0].migrating_slots[dst.1].remove(dst.2);
        let mut merged = stable(&cluster, (dst.0, dst.1));
        merged.extend_from_slice(range_list);
        set_stable(&mut cluster, (dst.0, dst.1), merged);
        Store::compact_cluster(&mut cluster);
        cluster.epoch = new_epoch;
        self.global_epoch = new_epoch;
        self.clusters.insert(name.to_owned(), cluster);
        Ok(())
    }
}

fn apply_plan(cluster: &mut ClusterStore, tasks: &[PlannedTask], epoch: u64, shrink: bool) {
    for t in tasks {
        // Remove the moved slots from the source's stable list.
        let remaining = subtract(&stable(cluster, t.src), &t.ranges);
        if !shrink {
            set_stable(cluster, t.src, remaining);
        }
        add_task(cluster, t.src, t.dst, t.ranges.clone(), epoch);
    }
    Store::compact_cluster(cluster);
}

/// `a` minus `b` (both compacted lists).
pub fn subtract(a: &[Range], b: &[Range]) -> Vec<Range> {
    let mut out = Vec::new();
    for r in a {
        let mut pieces = vec![*r];
        for cut in b {
            pieces = pieces
                .into_iter()
                .flat_map(|p| {
                    let mut keep = Vec::new();
                    if cut.end < p.start || cut.start > p.end {
                        keep.push(p);
                    } else {
                        if cut.start > p.start {
                            keep.push(Range { start: p.start, end: cut.start - 1 });
                        }
                        if cut.end < p.end {
                            keep.push(Range { start: cut.end + 1, end: p.end });
                        }
                    }
                    keep
                })
                .collect();
        }
        out.extend(pieces);
    }
    compact(out)
}

/// The view proxies are given (`docs/allocation.md#what-proxies-see-of-a-plan`): at most `limit` tasks exposed (0 = all),
/// one per source master; the others look like stable slots of their source.
pub fn exposed(cluster: &ClusterStore, limit: usize) -> ClusterStore {
    let mut view = cluster.clone();
    for chunk in &mut view.chunks {
        chunk.migrating_slots = [Vec::new(), Vec::new()];
    }
    let mut exposed_count = 0usize;
    let mut out_count: BTreeMap<Master, usize> = BTreeMap::new();
    for chunk in &cluster.chunks {
        for part in 0..2 {
            for entry in chunk.migrating_slots[part].iter().filter(|e| e.is_migrating) {
                let src = (entry.meta.src_chunk_index, entry.meta.src_chunk_part);
                let dst = (entry.meta.dst_chunk_index, entry.meta.dst_chunk_part);
                let busy = out_count.get(&src).copied().unwrap_or(0) >= 1;
                // Only a document from outside could name a missing chunk or part (`validate`).
                if src.0 >= view.chunks.len() || dst.0 >= view.chunks.len() || src.1 > 1 || dst.1 > 1 {
                    continue;
                }
                if (limit > 0 && exposed_count >= limit) || busy {
                    let mut merged = stable(&view, src);
                    merged.extend_from_slice(&entry.range_list);
                    set_stable(&mut view, src, merged);
                } else {
                    view.chunks[src.0].migrating_slots[src.1].push(entry.clone());
                    let twin = MigrationEntry { is_migrating: false, ..entry.clone() };
                    view.chunks[dst.0].migrating_slots[dst.1].push(twin);
                    exposed_count += 1;
                    *out_count.entry(src).or_default() += 1;
                }
            }
        }
    }
    view
}
