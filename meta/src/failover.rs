//! Failover inside the chunk model (`docs/failover.md#what-changes-in-the-metadata-storefailover`)
//! and the check of which hosts could not be replaced.

use crate::error::MetaError;
use crate::store::{RolePosition, Store};
use std::collections::BTreeSet;

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum FailoverOutcome {
    /// The proxy was in no cluster: it is now in the failed set.
    NotInCluster,
    /// Ordered-proxy mode: roles changed, nothing replaced.
    RolesOnly,
    /// Replicas were promoted and `replacement` took the failed proxy's place.
    Replaced { cluster: String, replacement: String },
    /// Replicas were promoted but no eligible free proxy exists; the promotion and the
    /// failed-set entry stay (the API answers `409 NO_AVAILABLE_RESOURCE`).
    NoReplacement { cluster: String },
}

impl Store {
    /// Fails over `address`. Mutations of the takeover are kept even without a replacement.
    pub fn failover(&mut self, address: &str) -> Result<FailoverOutcome, MetaError> {
        let proxy = self.all_proxies.get(address).ok_or(MetaError::ProxyNotFound)?;
        let Some(cluster_name) = proxy.cluster.clone() else {
            self.failures.remove(address);
            self.failed_proxies.insert(address.to_owned());
            return Ok(FailoverOutcome::NotInCluster);
        };
        if !self.clusters.contains_key(&cluster_name) {
            return Err(MetaError::ClusterNotFound);
        }
        let (chunk_index, pos) = self.find_chunk(&cluster_name, address).ok_or(MetaError::ProxyNotFound)?;
        self.takeover(&cluster_name, chunk_index, pos);
        if self.enable_ordered_proxy {
            self.global_epoch += 1;
            return Ok(FailoverOutcome::RolesOnly);
        }
        self.failed_proxies.insert(address.to_owned());
        let Some(replacement) = self.choose_replacement(&cluster_name, chunk_index, pos) else {
            return Ok(FailoverOutcome::NoReplacement { cluster: cluster_name });
        };
        let epoch = self.global_epoch + 1;
        self.global_epoch = epoch;
        let r = self.all_proxies.get(&replacement).cloned().ok_or(MetaError::ProxyNotFound)?;
        let cluster = self.clusters.get_mut(&cluster_name).ok_or(MetaError::ClusterNotFound)?;
        let chunk = &mut cluster.chunks[chunk_index];
        chunk.hosts[pos] = r.host.clone();
        chunk.proxy_addresses[pos] = replacement.clone();
        chunk.node_addresses[2 * pos] = r.node_addresses[0].clone();
        chunk.node_addresses[2 * pos + 1] = r.node_addresses[1].clone();
        cluster.epoch = epoch;
        if let Some(p) = self.all_proxies.get_mut(address) {
            p.cluster = None;
        }
        if let Some(p) = self.all_proxies.get_mut(&replacement) {
            p.cluster = Some(cluster_name.clone());
        }
        Ok(FailoverOutcome::Replaced { cluster: cluster_name, replacement })
    }

    /// The survivor takes both masters; migrations touching the moved part get a new epoch
    /// (`docs/failover.md`). No change (and no epoch bump) if the survivor already holds both.
    fn takeover(&mut self, cluster_name: &str, chunk_index: usize, pos: usize) {
        let Some(cluster) = self.clusters.get(cluster_name) else { return };
        let (new_role, moved_part) =
            if pos == 0 { (RolePosition::SecondChunkMaster, 0) } else { (RolePosition::FirstChunkMaster, 1) };
        if cluster.chunks[chunk_index].role_position == new_role {
            return;
        }
        let epoch = self.global_epoch + 1;
        self.global_epoch = epoch;
        let Some(cluster) = self.clusters.get_mut(cluster_name) else { return };
        cluster.chunks[chunk_index].role_position = new_role;
        let mut touched: BTreeSet<(usize, usize)> = BTreeSet::new();
        for entry in &mut cluster.chunks[chunk_index].migrating_slots[moved_part] {
            entry.meta.epoch = epoch;
            touched.insert((entry.meta.src_chunk_index, entry.meta.src_chunk_part));
            touched.insert((entry.meta.dst_chunk_index, entry.meta.dst_chunk_part));
        }
        for chunk in &mut cluster.chunks {
            for part in 0..2 {
                for entry in &mut chunk.migrating_slots[part] {
                    let m = &mut entry.meta;
                    if touched.contains(&(m.src_chunk_index, m.src_chunk_part))
                        || touched.contains(&(m.dst_chunk_index, m.dst_chunk_part))
                    {
                        m.epoch = epoch;
                    }
                }
            }
        }
        cluster.epoch = epoch;
    }

    /// The replacement (`docs/compatibility.md#replacement-host`): never the failed proxy's host and never
    /// the survivor's host, so the two halves of a chunk stay on different hosts. Fewest links
    /// to the failed host first, then most free proxies, then the smallest host name; on that
    /// host the smallest address.
    fn choose_replacement(&self, cluster_name: &str, chunk_index: usize, pos: usize) -> Option<String> {
        let chunk = &self.clusters.get(cluster_name)?.chunks[chunk_index];
        let failed_host = &chunk.hosts[pos];
        let survivor_host = &chunk.hosts[1 - pos];
        let links = self.links();
        let free = self.free_by_host();
        let link = |h: &str| {
            let key = if failed_host.as_str() <= h {
                (failed_host.clone(), h.to_owned())
            } else {
                (h.to_owned(), failed_host.clone())
            };
            links.get(&key).copied().unwrap_or(0)
        };
        free.iter()
            .filter(|(h, v)| *h != failed_host && *h != survivor_host && !v.is_empty())
            .min_by(|a, b| link(a.0).cmp(&link(b.0)).then_with(|| b.1.len().cmp(&a.1.len())).then_with(|| a.0.cmp(b.0)))
            .and_then(|(_, v)| v.first().cloned())
    }

    /// `POST /resources/failures/check`: hosts whose loss could not be fully replaced.
    pub fn hosts_that_cannot_fail(&self) -> Vec<String> {
        let hosts: BTreeSet<&String> = self.all_proxies.values().map(|p| &p.host).collect();
        let mut out = Vec::new();
        for host in hosts {
            let mut sim = self.clone();
            let victims: Vec<String> = self
                .all_proxies
                .values()
                .filter(|p| &p.host == host && p.cluster.is_some())
                .map(|p| p.proxy_address.clone())
                .collect();
            let mut ok = true;
            for v in victims {
                if matches!(sim.failover(&v), Ok(FailoverOutcome::NoReplacement { .. }) | Err(_)) {
                    ok = false;
                    break;
                }
            }
            if !ok {
                out.push(host.clone());
            }
        }
        out
    }
}
