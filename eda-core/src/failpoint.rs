//! Named crash points for fault tests (cargo feature `failpoints`).
//!
//! `EDA_FAILPOINT=<name>` arms one point; the process aborts the
//! `EDA_FAILPOINT_AFTER`th time (default: the first) it is reached. Without the
//! feature every point compiles to nothing.

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
}

#[cfg(feature = "failpoints")]
pub(crate) use enabled::{armed, hit, hit_after};

#[cfg(not(feature = "failpoints"))]
pub(crate) fn armed(_: &str) -> bool {
    false
}

#[cfg(not(feature = "failpoints"))]
pub(crate) fn hit(_: &str) {}

#[cfg(not(feature = "failpoints"))]
pub(crate) fn hit_after(_: &str, _: std::time::Duration) {}
