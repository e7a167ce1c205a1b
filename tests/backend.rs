//! The proxy's pooled backend connections against a real redis-server.

mod common;

use common::Redis;
use moonraft_proxy::backend::{BackendRegistry, BackendSettings};
use moonraft_proxy::resp::Request;
use std::time::Duration;

/// Commands already queued or written when the last user of a pool lets go of it still get
/// their replies: the connection drains them before closing. (It used to close at once, and a
/// client whose command Redis had run was told the connection broke.)
#[test]
fn a_dropped_pool_still_delivers_the_replies_in_flight() {
    let redis = Redis::start();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let registry = BackendRegistry::new(BackendSettings::default(), 1);
        let pool = registry.private_pool(&redis.addr(), 1);
        // BLPOP on an empty list with a timeout keeps Redis busy with this connection for 300 ms.
        let slow = pool.send(Request::from_strs(&["BLPOP", "nothing-here", "0.3"]).raw, 0).await;
        let after = pool.send(Request::from_strs(&["SET", "written-after", "1"]).raw, 0).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(pool);
        let slow = tokio::time::timeout(Duration::from_secs(3), slow).await;
        let after = tokio::time::timeout(Duration::from_secs(3), after).await;
        assert!(matches!(&slow, Ok(Ok(Ok(r))) if &r[..] == b"*-1\r\n"), "BLPOP: {slow:?}");
        assert!(matches!(&after, Ok(Ok(Ok(r))) if &r[..] == b"+OK\r\n"), "SET: {after:?}");
    });
    assert_eq!(redis.conn().cmd(&["GET", "written-after"]), common::bulk("1"));
}
