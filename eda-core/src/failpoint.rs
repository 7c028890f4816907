//! Named crash points for fault tests (cargo feature `failpoints`).
//!
//! `EDA_FAILPOINT=<name>` arms one point; the process aborts the
//! `EDA_FAILPOINT_AFTER`th time (default: the first) it is reached. Without the
//! feature every point compiles to nothing. `EDA_BROKEN=<name>` likewise turns
//! on a deliberately broken variant, for the controls of those tests.

#[cfg(feature = "failpoints")]
mod enabled {
    use std::sync::atomic::{AtomicU64, Ordering};

    static HITS: AtomicU64 = AtomicU64::new(0);

    /// Whether `name` is the armed point.
    pub(crate) fn armed(name: &str) -> bool {
        std::env::var("EDA_FAILPOINT").is_ok_and(|armed| armed == name)
    }

    /// Aborts the process if `name` is armed and reached for the configured time,
    /// after `pause` (time for other threads to act on what was just done).
    pub(crate) fn hit_after(name: &str, pause: std::time::Duration) {
        if !armed(name) {
            return;
        }
        let after = std::env::var("EDA_FAILPOINT_AFTER")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(1);
        if HITS.fetch_add(1, Ordering::SeqCst) + 1 >= after {
            std::thread::sleep(pause);
            std::process::abort();
        }
    }

    /// Aborts the process if `name` is armed and reached for the configured time.
    pub(crate) fn hit(name: &str) {
        hit_after(name, std::time::Duration::ZERO);
    }

    /// Whether `EDA_BROKEN=<name>` asks for the deliberately broken variant
    /// `name` of a guarantee: the controls of the fault tests, which must fail.
    pub(crate) fn broken(name: &str) -> bool {
        std::env::var("EDA_BROKEN").is_ok_and(|broken| broken == name)
    }
}

#[cfg(feature = "failpoints")]
pub(crate) use enabled::{armed, broken, hit, hit_after};

#[cfg(not(feature = "failpoints"))]
#[cfg_attr(not(feature = "sqlite"), allow(dead_code))]
pub(crate) fn armed(_: &str) -> bool {
    false
}

#[cfg(not(feature = "failpoints"))]
pub(crate) fn broken(_: &str) -> bool {
    false
}

#[cfg(not(feature = "failpoints"))]
pub(crate) fn hit(_: &str) {}

#[cfg(not(feature = "failpoints"))]
#[cfg_attr(not(feature = "sqlite"), allow(dead_code))]
pub(crate) fn hit_after(_: &str, _: std::time::Duration) {}
