//! UMCTL SETCLUSTER / SETREPL argument parsing and table building on arbitrary tokens.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use moonraft_proxy::cluster::{cluster_nodes, ClusterTable, SetCluster};
use moonraft_proxy::replication::SetRepl;

fuzz_target!(|data: &[u8]| {
    let args: Vec<Bytes> = data.split(|b| *b == b' ').map(Bytes::copy_from_slice).collect();
    if let Ok(cmd) = SetCluster::parse(&args) {
        let table = ClusterTable::build(cmd.epoch, cmd.meta, None);
        for slot in [0u16, 1, 100, 8191, 16383] {
            let _ = table.route(slot, false);
        }
        let _ = cluster_nodes(&table, "127.0.0.1:1", true);
    }
    let _ = SetRepl::parse(&args);
});
