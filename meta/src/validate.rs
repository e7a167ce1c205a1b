//! Whole-document validation of a store given to `PUT /metadata` (a restore from a backup or a
//! hand-edited document). Every rule here is an invariant that the store's own operations keep
//! (the model's property tests check `validate` after every operation), so a document that
//! fails one can only come from outside — and would otherwise be applied on every member and
//! make later operations and views misbehave. The first broken rule is reported, naming the
//! cluster, chunk and field.

use crate::error::MetaError;
use crate::slots::{Range, SLOTS};
use crate::store::{valid_cluster_name, valid_proxy_address, Chunk, ClusterStore, Store, MAX_EPOCH, META_VERSION};
use std::collections::BTreeMap;

/// Checks `store` as a whole; `Err` names the first problem.
pub fn validate(store: &Store) -> Result<(), String> {
    if store.version != META_VERSION {
        return Err(format!("version: expected {META_VERSION:?}, got {:?}", store.version));
    }
    if store.global_epoch > MAX_EPOCH {
        return Err(format!("global_epoch: {} is above the largest allowed, {MAX_EPOCH}", store.global_epoch));
    }
    // proxy address → cluster whose chunks hold it
    let mut placed: BTreeMap<&str, &str> = BTreeMap::new();
    for (key, cluster) in &store.clusters {
        validate_cluster(store, key, cluster, &mut placed)?;
    }
    for (key, proxy) in &store.all_proxies {
        if key != &proxy.proxy_address {
            return Err(format!("all_proxies[{key:?}]: proxy_address is {:?}", proxy.proxy_address));
        }
        if !valid_proxy_address(key) {
            return Err(format!("all_proxies[{key:?}]: not a host:port address"));
        }
        match (&proxy.cluster, placed.get(key.as_str())) {
            (Some(c), _) if !store.clusters.contains_key(c) => {
                return Err(format!("all_proxies[{key:?}]: cluster {c:?} does not exist"));
            }
            (Some(c), placed_in) if placed_in != Some(&c.as_str()) => {
                return Err(format!("all_proxies[{key:?}]: says cluster {c:?} but no chunk of {c:?} holds it"));
            }
            (None, Some(c)) => {
                return Err(format!("all_proxies[{key:?}]: in a chunk of cluster {c:?} but its cluster is null"));
            }
            _ => {}
        }
    }
    if let Some(p) = store.failed_proxies.iter().find(|p| !store.all_proxies.contains_key(p.as_str())) {
        return Err(format!("failed_proxies: {p:?} is not in all_proxies"));
    }
    Ok(())
}

fn validate_cluster<'a>(
    store: &'a Store,
    key: &'a str,
    cluster: &'a ClusterStore,
    placed: &mut BTreeMap<&'a str, &'a str>,
) -> Result<(), String> {
    let at = |what: String| format!("clusters[{key:?}]: {what}");
    if key != cluster.name {
        return Err(at(format!("name is {:?}", cluster.name)));
    }
    if !valid_cluster_name(key) {
        return Err(at("invalid cluster name (1-31 of A-Z a-z 0-9 @ _ -)".into()));
    }
    if cluster.epoch > store.global_epoch {
        return Err(at(format!("epoch {} is above global_epoch {}", cluster.epoch, store.global_epoch)));
    }
    if cluster.chunks.is_empty() {
        return Err(at("has no chunks".into()));
    }
    // slot → how many masters own it (stable, or migrating out)
    let mut owners = vec![0u8; SLOTS as usize];
    for (ci, chunk) in cluster.chunks.iter().enumerate() {
        let at = |what: String| at(format!("chunks[{ci}]: {what}"));
        validate_chunk_proxies(store, key, chunk, placed).map_err(at)?;
        for part in 0..2 {
            if let Some(stable) = &chunk.stable_slots[part] {
                count_owned(&stable.range_list, &mut owners).map_err(|e| at(format!("stable_slots[{part}]: {e}")))?;
            }
            for (ei, entry) in chunk.migrating_slots[part].iter().enumerate() {
                let at = |what: String| at(format!("migrating_slots[{part}][{ei}]: {what}"));
                let m = &entry.meta;
                for (idx, p) in [(m.src_chunk_index, m.src_chunk_part), (m.dst_chunk_index, m.dst_chunk_part)] {
                    if idx >= cluster.chunks.len() || p > 1 {
                        return Err(at(format!("names chunk {idx} part {p}, which does not exist")));
                    }
                }
                let here = if entry.is_migrating {
                    (m.src_chunk_index, m.src_chunk_part)
                } else {
                    (m.dst_chunk_index, m.dst_chunk_part)
                };
                if here != (ci, part) {
                    return Err(at(format!(
                        "is stored at chunk {ci} part {part} but names chunk {} part {}",
                        here.0, here.1
                    )));
                }
                if entry.is_migrating {
                    count_owned(&entry.range_list, &mut owners).map_err(at)?;
                } else {
                    check_ranges(&entry.range_list).map_err(at)?;
                }
            }
        }
    }
    match owners.iter().position(|&n| n != 1) {
        None => Ok(()),
        Some(slot) => Err(at(format!("slot {slot} is owned by {} masters (must be exactly 1)", owners[slot]))),
    }
}

fn validate_chunk_proxies<'a>(
    store: &'a Store,
    cluster: &'a str,
    chunk: &'a Chunk,
    placed: &mut BTreeMap<&'a str, &'a str>,
) -> Result<(), String> {
    if chunk.proxy_addresses[0] == chunk.proxy_addresses[1] {
        return Err(format!("both proxies are {:?}", chunk.proxy_addresses[0]));
    }
    for (pos, address) in chunk.proxy_addresses.iter().enumerate() {
        let Some(proxy) = store.all_proxies.get(address) else {
            return Err(format!("proxy {address:?} is not in all_proxies"));
        };
        if let Some(other) = placed.insert(address, cluster) {
            return Err(format!("proxy {address:?} is also in a chunk of cluster {other:?}"));
        }
        if chunk.node_addresses[2 * pos..2 * pos + 2] != proxy.node_addresses[..] {
            return Err(format!(
                "node_addresses[{}..{}] are not proxy {address:?}'s nodes {:?}",
                2 * pos,
                2 * pos + 2,
                proxy.node_addresses
            ));
        }
    }
    Ok(())
}

fn check_ranges(ranges: &[Range]) -> Result<(), String> {
    match ranges.iter().find(|r| r.start > r.end || r.end as u32 >= SLOTS) {
        Some(r) => Err(format!("range [{}, {}] is not within 0..={}", r.start, r.end, SLOTS - 1)),
        None => Ok(()),
    }
}

fn count_owned(ranges: &[Range], owners: &mut [u8]) -> Result<(), String> {
    check_ranges(ranges)?;
    for r in ranges {
        for slot in r.start..=r.end {
            owners[slot as usize] = owners[slot as usize].saturating_add(1);
        }
    }
    Ok(())
}

impl Store {
    /// `PUT /metadata`: replaces the store as a whole.
    pub fn restore(&mut self, new: Store) -> Result<(), MetaError> {
        if new.version != META_VERSION {
            return Err(MetaError::InvalidMetaVersion);
        }
        if new.global_epoch < self.global_epoch {
            return Err(MetaError::EpochSmallerThanCurrent);
        }
        validate(&new).map_err(|message| MetaError::InvalidMetadata { message })?;
        *self = new;
        Ok(())
    }
}
