//! Migration completion (`docs/migration.md`): poll every proxy's `UMCTL INFOMGR`, commit each
//! finished task at the brokers (404 = already committed) and push the destination's and the
//! source's new metadata at once.

use super::clients::ProxyConn;
use super::Coordinator;
use moonraft_proto::broker as pb;
use moonraft_proxy::resp::Frame;
use std::sync::Arc;
use std::time::Duration;
use tracing::{info, warn};

/// A finished task as `INFOMGR` prints it:
/// `<cluster> <MIGRATING|IMPORTING> <count> <start-end>… <epoch> <src_proxy> <src_node> <dst_proxy> <dst_node>`.
#[derive(Debug, Clone, PartialEq)]
pub struct FinishedTask {
    pub cluster: String,
    pub migrating: bool,
    pub ranges: Vec<(u32, u32)>,
    pub meta: pb::MigrationMeta,
}

pub fn parse_line(line: &str) -> Option<FinishedTask> {
    let t: Vec<&str> = line.split(' ').collect();
    let cluster = (*t.first()?).to_owned();
    let migrating = match *t.get(1)? {
        "MIGRATING" => true,
        "IMPORTING" => false,
        _ => return None,
    };
    let count: usize = t.get(2)?.parse().ok()?;
    if count == 0 || count > 16384 || t.len() != 3 + count + 5 {
        return None;
    }
    let mut ranges = Vec::with_capacity(count);
    for tok in &t[3..3 + count] {
        let (a, b) = tok.split_once('-')?;
        let (a, b): (u32, u32) = (a.parse().ok()?, b.parse().ok()?);
        if a > b || b >= 16384 {
            return None;
        }
        ranges.push((a, b));
    }
    let m = &t[3 + count..];
    let meta = pb::MigrationMeta {
        epoch: m[0].parse().ok()?,
        src_proxy_address: m[1].to_owned(),
        src_node_address: m[2].to_owned(),
        dst_proxy_address: m[3].to_owned(),
        dst_node_address: m[4].to_owned(),
    };
    Some(FinishedTask { cluster, migrating, ranges, meta })
}

impl FinishedTask {
    fn commit_request(&self) -> pb::CommitMigrationRequest {
        let tag = if self.migrating {
            pb::slot_range::Tag::Migrating(self.meta.clone())
        } else {
            pb::slot_range::Tag::Importing(self.meta.clone())
        };
        pb::CommitMigrationRequest {
            cluster_name: self.cluster.clone(),
            slot_range: Some(pb::SlotRange {
                range_list: self.ranges.iter().map(|&(start, end)| pb::Range { start, end }).collect(),
                tag: Some(tag),
            }),
        }
    }
}

async fn finished_tasks(
    address: &str,
    timeout: Duration,
    login: &super::clients::ProxyLogin,
) -> Result<Vec<FinishedTask>, String> {
    let mut conn = ProxyConn::connect(address, timeout, login).await?;
    let reply = conn.call(&["UMCTL".to_owned(), "INFOMGR".to_owned()], timeout).await?;
    let Frame::Array(items) = reply else { return Err(format!("INFOMGR: not an array: {reply:?}")) };
    items
        .iter()
        .map(|f| {
            let line = f.as_bytes().map(String::from_utf8_lossy).unwrap_or_default();
            parse_line(&line).ok_or_else(|| format!("INFOMGR: cannot parse {line:?}"))
        })
        .collect()
}

async fn commit_finished(co: Arc<Coordinator>, address: String) {
    let timing = co.timing();
    let tasks = match finished_tasks(&address, timing.proxy_timeout, &timing.proxy_login).await {
        Ok(t) => t,
        Err(e) => {
            tracing::debug!(proxy = %address, "migration poll: {e}");
            return;
        }
    };
    for task in tasks {
        let req = task.commit_request();
        let r = co.brokers.call("CommitMigration", |mut c| {
            let req = req.clone();
            async move { c.commit_migration(req).await }
        });
        match r.await {
            Ok(_) => {
                co.migrations_committed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                info!(cluster = %task.cluster, ranges = ?task.ranges, src = %task.meta.src_proxy_address, dst = %task.meta.dst_proxy_address, "migration committed")
            }
            Err(s) if s.code() == tonic::Code::NotFound => {}
            Err(s) => {
                warn!(proxy = %address, cluster = %task.cluster, "commit: {} (retrying next round)", s.message());
                return;
            }
        }
        // Destination first, so the slots always have an owner that accepts them.
        co.trigger_sync(&task.meta.dst_proxy_address);
        co.trigger_sync(&task.meta.src_proxy_address);
    }
}

pub async fn migration_loop(co: Arc<Coordinator>) {
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let proxies = co.live_proxies();
        let mut polls = tokio::task::JoinSet::new();
        for p in proxies {
            let span = tracing::info_span!("commit", proxy = %p);
            polls.spawn(tracing::Instrument::instrument(commit_finished(co.clone(), p), span));
        }
        while polls.join_next().await.is_some() {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_infomgr_lines() {
        let t = parse_line("mycluster MIGRATING 2 0-100 200-300 9 p1:6001 r1:7001 p2:6002 r2:7003").unwrap();
        assert_eq!(
            (t.cluster.as_str(), t.migrating, t.ranges.clone()),
            ("mycluster", true, vec![(0, 100), (200, 300)])
        );
        assert_eq!(t.meta.epoch, 9);
        assert_eq!(t.meta.dst_node_address, "r2:7003");
        assert!(parse_line("c IMPORTING 1 5-5 1 a b c d").is_some_and(|t| !t.migrating));
        for bad in [
            "",
            "c",
            "c MOVING 1 0-1 1 a b c d",
            "c MIGRATING 2 0-1 1 a b c d",
            "c MIGRATING 1 5-1 1 a b c d",
            "c MIGRATING 1 0-16384 1 a b c d",
            "c MIGRATING 1 0-1 x a b c d",
            "c MIGRATING 0 1 a b c d",
        ] {
            assert!(parse_line(bad).is_none(), "{bad}");
        }
    }
}
