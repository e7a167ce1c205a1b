//! What a committed command changed, in the terms a coordinator acts on: which clusters and
//! which proxies now need a new `UMCTL SETCLUSTER`/`SETREPL`. Computed by comparing a digest of
//! the store before and after the command, so no command has to describe its own effects.

use crate::store::Store;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The parts of the store a proxy's configuration depends on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Digest {
    global_epoch: u64,
    /// cluster → epoch.
    clusters: BTreeMap<String, u64>,
    /// proxy → (its cluster and that cluster's epoch, failed).
    proxies: BTreeMap<String, (Option<(String, u64)>, bool)>,
}

/// One committed change (the gRPC watch stream's message).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    pub log_index: u64,
    pub global_epoch: u64,
    /// Clusters created, deleted or whose epoch changed.
    pub clusters: Vec<String>,
    /// Proxies added, removed, failed, or whose cluster configuration changed.
    pub proxies: Vec<String>,
    /// The receiver may have missed changes: it should re-read what it needs.
    pub resync: bool,
}

impl Digest {
    pub fn of(store: &Store) -> Digest {
        let clusters: BTreeMap<String, u64> = store.clusters.iter().map(|(n, c)| (n.clone(), c.epoch)).collect();
        let proxies = store
            .all_proxies
            .iter()
            .map(|(addr, p)| {
                let cluster = p.cluster.as_ref().map(|n| (n.clone(), clusters.get(n).copied().unwrap_or(0)));
                (addr.clone(), (cluster, store.failed_proxies.contains(addr)))
            })
            .collect();
        Digest { global_epoch: store.global_epoch, clusters, proxies }
    }

    pub fn global_epoch(&self) -> u64 {
        self.global_epoch
    }

    /// Clusters and proxies that differ between `self` (before) and `after`, sorted; `None`
    /// when nothing a proxy depends on changed.
    pub fn diff(&self, after: &Digest) -> Option<(Vec<String>, Vec<String>)> {
        if self == after {
            return None;
        }
        let clusters = changed_keys(&self.clusters, &after.clusters);
        let mut proxies = changed_keys(&self.proxies, &after.proxies);
        // Every proxy of a changed cluster, before and after, gets the new peer list.
        for (addr, (cluster, _)) in self.proxies.iter().chain(after.proxies.iter()) {
            if cluster.as_ref().is_some_and(|(n, _)| clusters.binary_search(n).is_ok()) {
                proxies.push(addr.clone());
            }
        }
        proxies.sort();
        proxies.dedup();
        Some((clusters, proxies))
    }
}

fn changed_keys<V: PartialEq>(a: &BTreeMap<String, V>, b: &BTreeMap<String, V>) -> Vec<String> {
    let mut out: Vec<String> = a.iter().filter(|(k, v)| b.get(*k) != Some(*v)).map(|(k, _)| k.clone()).collect();
    out.extend(b.keys().filter(|k| !a.contains_key(*k)).cloned());
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{ClusterConfig, RegisterProxy};

    fn store_with_proxies(n: usize) -> Store {
        let mut s = Store::default();
        for i in 0..n {
            let req = RegisterProxy {
                proxy_address: format!("p{i}:6000"),
                nodes: [format!("r{i}:7000"), format!("r{i}:7001")],
                host: Some(format!("h{i}")),
                index: None,
            };
            s.register_proxy(req).unwrap();
        }
        s
    }

    #[test]
    fn create_names_the_cluster_and_exactly_its_proxies() {
        let mut s = store_with_proxies(6);
        let before = Digest::of(&s);
        s.create_cluster("c", 4, ClusterConfig::default()).unwrap();
        let (clusters, proxies) = before.diff(&Digest::of(&s)).unwrap();
        assert_eq!(clusters, vec!["c".to_owned()]);
        let mut expected: Vec<String> = s.clusters["c"].proxies().cloned().collect();
        expected.sort();
        assert_eq!(proxies, expected);
        assert_eq!(proxies.len(), 2);
    }

    #[test]
    fn failure_reports_change_only_the_global_epoch() {
        let mut s = store_with_proxies(2);
        let before = Digest::of(&s);
        s.report_failure("p0:6000", "coord1", 100);
        let after = Digest::of(&s);
        assert_eq!(before.diff(&after), Some((vec![], vec![])));
        // The same reporter again changes nothing at all.
        s.report_failure("p0:6000", "coord1", 101);
        assert_eq!(after.diff(&Digest::of(&s)), None);
    }

    #[test]
    fn delete_names_the_old_members() {
        let mut s = store_with_proxies(4);
        s.create_cluster("c", 4, ClusterConfig::default()).unwrap();
        let members: Vec<String> = s.clusters["c"].proxies().cloned().collect();
        let before = Digest::of(&s);
        s.delete_cluster("c").unwrap();
        let (clusters, proxies) = before.diff(&Digest::of(&s)).unwrap();
        assert_eq!(clusters, vec!["c".to_owned()]);
        for m in members {
            assert!(proxies.contains(&m));
        }
    }

    #[test]
    fn registering_a_proxy_names_it() {
        let mut s = store_with_proxies(1);
        let before = Digest::of(&s);
        let req = RegisterProxy {
            proxy_address: "new:6000".into(),
            nodes: ["a:1".into(), "b:1".into()],
            host: None,
            index: None,
        };
        s.register_proxy(req).unwrap();
        let (clusters, proxies) = before.diff(&Digest::of(&s)).unwrap();
        assert!(clusters.is_empty());
        assert_eq!(proxies, vec!["new:6000".to_owned()]);
    }
}
