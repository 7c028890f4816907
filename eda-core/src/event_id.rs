//! Event ids: time-ordered UUIDv7 for new events, UUIDv5 derived from an
//! idempotency key for the events of an idempotent command.

use std::time::SystemTime;

use uuid::Uuid;

/// A fresh, time-ordered event id (UUIDv7, RFC 9562): what `App` gives every event
/// of a command without an idempotency key. For store authors and tests that
/// build [`NewEvent`](crate::NewEvent)s by hand.
pub fn new_event_id() -> Uuid {
    event_id_at(unix_millis(SystemTime::now()))
}

/// Milliseconds since the Unix epoch, for time-ordered event ids.
pub(crate) fn unix_millis(at: SystemTime) -> u64 {
    match at.duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => d.as_secs() * 1000 + u64::from(d.subsec_millis()),
        Err(_) => 0,
    }
}

/// A fresh UUIDv7 at `millis`: 48 bits of time, so database indexes stay
/// append-mostly, then the version, 12 + 62 random bits and the variant.
pub(crate) fn event_id_at(millis: u64) -> Uuid {
    const RAND_A: u128 = 0xFFF << 64;
    const RAND_B: u128 = (1 << 62) - 1;
    let random: u128 = rand::random();
    Uuid::from_u128(
        (u128::from(millis & 0xFFFF_FFFF_FFFF) << 80)
            | (0x7 << 76)
            | (random & RAND_A)
            | (0b10 << 62)
            | (random & RAND_B),
    )
}

/// The id of the `index`th event of the command with idempotency key `key`: the
/// same key gives the same ids, so a concurrent duplicate is refused by the store.
pub(crate) fn idempotent_event_id(key: &str, index: usize) -> Uuid {
    const NAMESPACE: Uuid = Uuid::from_u128(0x6564_615f_6964_656d_706f_7465_6e63_7921);
    Uuid::new_v5(&NAMESPACE, format!("{key}\u{0}{index}").as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids_are_version_7_and_carry_the_time() {
        let millis = 1_764_000_000_123;
        let id = event_id_at(millis);
        assert_eq!(id.get_version_num(), 7);
        assert_eq!(id.get_variant(), uuid::Variant::RFC4122);
        let (secs, nanos) = id.get_timestamp().expect("v7 has a timestamp").to_unix();
        assert_eq!(secs * 1000 + u64::from(nanos / 1_000_000), millis);
        assert_ne!(event_id_at(millis), id, "random bits differ");
        assert!(
            event_id_at(millis + 1) > id,
            "later ids sort after earlier ones"
        );
    }

    #[test]
    fn idempotent_ids_depend_on_the_key_and_the_index_only() {
        assert_eq!(idempotent_event_id("k", 0), idempotent_event_id("k", 0));
        assert_ne!(idempotent_event_id("k", 0), idempotent_event_id("k", 1));
        assert_ne!(idempotent_event_id("k", 0), idempotent_event_id("k2", 0));
        // The separator keeps ("k1", 0) and ("k", 10) apart.
        assert_ne!(idempotent_event_id("k1", 0), idempotent_event_id("k", 10));
    }
}
