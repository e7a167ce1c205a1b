//! Hash slots (CRC16/XMODEM over the hash tag, as Redis Cluster) and node ids.

pub use moonraft_wire::SLOT_COUNT;

/// The bytes that are hashed for `key`: the text between the first `{` and the next `}` when
/// it is non-empty, else the whole key.
pub fn hash_tag(key: &[u8]) -> &[u8] {
    if let Some(open) = key.iter().position(|&b| b == b'{') {
        if let Some(len) = key[open + 1..].iter().position(|&b| b == b'}') {
            if len > 0 {
                return &key[open + 1..open + 1 + len];
            }
        }
    }
    key
}

pub fn key_slot(key: &[u8]) -> u16 {
    crc16::State::<crc16::XMODEM>::calculate(hash_tag(key)) % SLOT_COUNT as u16
}

const CRC64_REDIS: crc::Crc<u64> = crc::Crc::<u64>::new(&crc::CRC_64_REDIS);

/// Node id as undermoon prints it: the cluster name padded/truncated to 24 characters with `_`,
/// then the lowercase hex CRC64 (Redis/Jones) of the address without leading zeros, padded on
/// the right with `_` to 16 characters.
pub fn node_id(cluster: &str, address: &str) -> String {
    let mut id: String = cluster.chars().take(24).collect();
    while id.len() < 24 {
        id.push('_');
    }
    // Cluster names are ASCII (validated), so byte length equals char count here.
    id.truncate(24);
    let crc = format!("{:x}", CRC64_REDIS.checksum(address.as_bytes()));
    id.push_str(&crc);
    while id.len() < 40 {
        id.push('_');
    }
    id
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn slots_match_redis_cluster() {
        assert_eq!(key_slot(b"a"), 15495);
        assert_eq!(key_slot(b"b"), 3300);
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"123456789"), 12739);
        assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"user1000"));
        assert_eq!(hash_tag(b"foo{}{bar}"), b"foo{}{bar}");
        assert_eq!(hash_tag(b"foo{{bar}}"), b"{bar");
        assert_eq!(hash_tag(b"foo{bar}{zap}"), b"bar");
        assert_eq!(hash_tag(b"{"), b"{");
    }

    #[test]
    fn node_ids_match_undermoon() {
        assert_eq!(node_id("testcluster", "127.0.0.1:5299"), "testcluster_____________9f8fca2805923328");
        assert_eq!(node_id("mycluster", "server_proxy5:6005"), "mycluster_______________d71bc00fbdddf89_");
        assert_eq!(node_id("mycluster", "server_proxy6:6006"), "mycluster_______________8de73f9146386295");
        assert_eq!(node_id("mycluster", "server_proxy2:6002"), "mycluster_______________be40fe317baf2cf7");
        assert_eq!(node_id("mycluster", "server_proxy4:6004"), "mycluster_______________9434df4158f3c5a4");
        assert_eq!(node_id("", "x:1").len(), 40);
        assert!(node_id("", "x:1").starts_with("________________________"));
    }

    proptest! {
        #[test]
        fn slot_in_range_and_tag_consistent(prefix in ".*", tag in "[a-z0-9]{1,8}", suffix in ".*") {
            let key = format!("{}{{{}}}{}", prefix.replace('{', ""), tag, suffix);
            prop_assert!((key_slot(key.as_bytes()) as usize) < SLOT_COUNT);
            prop_assert_eq!(key_slot(key.as_bytes()), key_slot(tag.as_bytes()));
        }

        #[test]
        fn node_id_always_40(cluster in "[a-zA-Z0-9@_-]{0,31}", addr in ".{0,40}") {
            prop_assert_eq!(node_id(&cluster, &addr).len(), 40);
        }
    }
}
