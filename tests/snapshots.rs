//! Snapshots (`#[aggregate(snapshot_every = N)]`): loading with and without them
//! gives the same state; a snapshot that cannot be used never fails a load.

#![allow(missing_docs)]

use eda::prelude::*;
use eda::{ImmediateStore, Snapshot, StreamId};
use eda_test::tally::{Add, Tally};
use eda_test::YieldingStore;

const STREAM: StreamId<'static> = StreamId {
    aggregate_type: "Tally",
    aggregate_id: "t",
};

async fn add(app: &App, n: u64) {
    app.execute(Add { id: "t".into(), n }).await.unwrap();
}

async fn load(store: impl EventStore) -> (Tally, u64) {
    App::new(store)
        .load_with_version::<Tally>(&"t".to_string())
        .await
        .unwrap()
}

/// The snapshot path against the events-only path, on any store that keeps
/// snapshots: `YieldingStore` wraps it without exposing them.
async fn same_state_with_and_without_snapshots<S: EventStore + Clone>(
    store: S,
    events_only: impl EventStore,
) {
    let app = App::new(store.clone());
    for n in 1..=10 {
        add(&app, n).await;
    }
    let snapshot = store
        .load_snapshot(STREAM)
        .await
        .unwrap()
        .expect("a snapshot at version 9");
    assert_eq!((snapshot.version, snapshot.snapshot_version), (9, 2));
    let with = load(store).await;
    let without = load(events_only).await;
    assert_eq!(with, without);
    assert_eq!(
        with,
        (
            Tally {
                total: 55,
                count: 10
            },
            10
        )
    );
}

#[tokio::test]
async fn memory_store_loads_the_same_with_and_without_snapshots() {
    let memory = MemoryStore::new();
    same_state_with_and_without_snapshots(memory.clone(), YieldingStore(memory)).await;
}

#[cfg(feature = "sqlite")]
#[tokio::test]
async fn sqlite_store_loads_the_same_with_and_without_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("events.db"))
        .await
        .unwrap();
    same_state_with_and_without_snapshots(store.clone(), YieldingStore(store)).await;
}

#[tokio::test]
async fn a_snapshot_is_used_then_the_events_after_it() {
    let store = MemoryStore::new();
    let app = App::new(store.clone());
    for n in 1..=4 {
        add(&app, n).await;
    }
    // A recognisable state at version 3: loading must start there, then apply v4.
    let taken = store
        .load_snapshot(STREAM)
        .await
        .unwrap()
        .expect("the snapshot at 3");
    let planted = Snapshot {
        version: 3,
        snapshot_version: 2,
        payload: r#"{"total":1000,"count":3}"#.into(),
        fingerprint: taken.fingerprint,
    };
    store.save_snapshot(STREAM, &planted).await.unwrap();
    assert_eq!(
        load(store).await,
        (
            Tally {
                total: 1004,
                count: 4
            },
            4
        )
    );
}

#[tokio::test]
async fn unusable_snapshots_are_ignored_and_the_events_replayed() {
    // Each replaces the snapshot taken at version 3 of a 5-event stream.
    let unusable: [fn(u64) -> Snapshot; 5] = [
        |fingerprint| Snapshot {
            version: 4,
            snapshot_version: 1,
            payload: r#"{"total":1000,"count":4}"#.into(),
            fingerprint,
        },
        |fingerprint| Snapshot {
            version: 4,
            snapshot_version: 2,
            payload: r#"{"tot":1}"#.into(),
            fingerprint,
        },
        |fingerprint| Snapshot {
            version: 4,
            snapshot_version: 2,
            payload: "not json".into(),
            fingerprint,
        },
        // The state type changed shape, though `snapshot_version` was not bumped.
        |fingerprint| Snapshot {
            version: 4,
            snapshot_version: 2,
            payload: r#"{"total":1000,"count":4}"#.into(),
            fingerprint: fingerprint ^ 1,
        },
        |fingerprint| Snapshot {
            version: 0,
            snapshot_version: 2,
            payload: r#"{"total":1000,"count":0}"#.into(),
            fingerprint,
        },
    ];
    for unusable in unusable {
        let store = MemoryStore::new();
        let app = App::builder(store.clone())
            .cache_capacity(0)
            .build()
            .unwrap();
        for n in 1..=5 {
            add(&app, n).await;
        }
        let taken = store
            .load_snapshot(STREAM)
            .await
            .unwrap()
            .expect("the snapshot at 3");
        let snapshot = unusable(taken.fingerprint);
        if snapshot.version > 0 {
            store.save_snapshot(STREAM, &snapshot).await.unwrap();
        } else {
            // Replace the kept one outright: a corrupt row read as version 0.
            let racy = RacyStore {
                inner: store.clone(),
                older: snapshot.clone(),
            };
            assert_eq!(
                load(racy).await,
                (
                    Tally {
                        total: 15,
                        count: 5
                    },
                    5
                ),
                "{snapshot:?}"
            );
            continue;
        }
        assert_eq!(
            load(store.clone()).await,
            (
                Tally {
                    total: 15,
                    count: 5
                },
                5
            ),
            "{snapshot:?}"
        );
        // Commands keep working too, and replace the snapshot when one is due.
        add(&app, 6).await;
        let kept = store
            .load_snapshot(STREAM)
            .await
            .unwrap()
            .map(|s| (s.version, s.snapshot_version));
        assert_eq!(kept, Some((6, 2)));
    }
}

/// The methods every [`EventStore`] must have, passed on to the store `self.$inner`
/// names (a field, or a method call): the test stores below change only the reads
/// they are about.
macro_rules! forward_to_inner {
    ($($inner:tt)+) => {
        async fn append(
            &self,
            s: StreamId<'_>,
            v: u64,
            e: Vec<eda::NewEvent>,
            m: &eda::Metadata,
        ) -> Result<eda::Appended, StoreError> {
            self.$($inner)+.append(s, v, e, m).await
        }
        async fn read_stream(
            &self,
            s: StreamId<'_>,
            v: u64,
        ) -> Result<Vec<eda::RecordedEvent>, StoreError> {
            self.$($inner)+.read_stream(s, v).await
        }
        async fn read_all(&self, p: u64, l: usize) -> Result<Vec<eda::RecordedEvent>, StoreError> {
            self.$($inner)+.read_all(p, l).await
        }
        async fn count_all_of(
            &self,
            p: u64,
            names: &[&str],
        ) -> Result<Option<eda::LogCount>, StoreError> {
            self.$($inner)+.count_all_of(p, names).await
        }
        async fn read_event(
            &self,
            id: eda::Uuid,
        ) -> Result<Option<eda::RecordedEvent>, StoreError> {
            self.$($inner)+.read_event(id).await
        }
        async fn read_idempotency_key(
            &self,
            key: &str,
        ) -> Result<Option<eda::IdempotencyRecord>, StoreError> {
            self.$($inner)+.read_idempotency_key(key).await
        }
        async fn read_checkpoint(&self, name: &str) -> Result<Option<u64>, StoreError> {
            self.$($inner)+.read_checkpoint(name).await
        }
        async fn write_checkpoint(
            &self,
            name: &str,
            from: Option<u64>,
            to: u64,
        ) -> Result<(), StoreError> {
            self.$($inner)+.write_checkpoint(name, from, to).await
        }
        async fn park(&self, name: &str, event: &eda::ParkedEvent) -> Result<(), StoreError> {
            self.$($inner)+.park(name, event).await
        }
        async fn parked(&self, name: &str) -> Result<Vec<eda::ParkedEvent>, StoreError> {
            self.$($inner)+.parked(name).await
        }
        async fn unpark(&self, name: &str, position: u64) -> Result<bool, StoreError> {
            self.$($inner)+.unpark(name, position).await
        }
    };
}

/// A store whose snapshot and tail come from two reads with a newer snapshot saved
/// in between: the tail starts after the newer snapshot, the snapshot returned is
/// the older one. Replay must notice the gap instead of skipping events.
struct RacyStore {
    inner: MemoryStore,
    older: Snapshot,
}

impl EventStore for RacyStore {
    forward_to_inner!(inner);
    async fn read_from_snapshot(
        &self,
        s: StreamId<'_>,
        limit: usize,
    ) -> Result<(Option<Snapshot>, Vec<eda::ReplayEvent>), StoreError> {
        let newer = self
            .inner
            .load_snapshot(s)
            .await?
            .expect("a newer snapshot");
        let tail = self.inner.read_for_replay(s, newer.version, limit).await?;
        Ok((Some(self.older.clone()), tail))
    }
}

#[tokio::test]
async fn a_tail_that_does_not_follow_the_snapshot_is_not_trusted() {
    let memory = MemoryStore::new();
    let app = App::new(memory.clone());
    for n in 1..=3 {
        add(&app, n).await;
    }
    let older = memory
        .load_snapshot(STREAM)
        .await
        .unwrap()
        .expect("snapshot at 3");
    for n in 4..=7 {
        add(&app, n).await; // a newer snapshot at 6
    }
    assert_eq!(older.version, 3);
    let racy = RacyStore {
        inner: memory,
        older,
    };
    assert_eq!(
        load(racy).await,
        (
            Tally {
                total: 28,
                count: 7
            },
            7
        )
    );
}

/// The state type gains a field (with a serde default) but `snapshot_version` is
/// not bumped: the old snapshot still deserializes, yet would leave the new field
/// at its default. Its fingerprint differs, so it is ignored and the events replayed.
mod reshaped {
    use eda::prelude::*;

    #[event]
    #[derive(Debug)]
    pub struct Bumped {
        pub by: u64,
    }

    #[command]
    #[derive(Debug, Clone)]
    pub struct Bump {
        #[aggregate_id]
        pub id: String,
        pub by: u64,
    }

    #[derive(Debug, Default, eda::serde::Serialize, eda::serde::Deserialize)]
    #[serde(crate = "eda::serde")]
    pub struct Before {
        pub total: u64,
    }

    #[aggregate(name = "Reshaped", error = std::convert::Infallible, snapshot_every = 2)]
    impl Before {
        #[handle]
        fn bump(&self, cmd: Bump) -> Result<Bumped, std::convert::Infallible> {
            Ok(Bumped { by: cmd.by })
        }
        #[apply]
        fn bumped(&mut self, e: &Bumped) {
            self.total += e.by;
        }
    }

    #[derive(Debug, Default, PartialEq, eda::serde::Serialize, eda::serde::Deserialize)]
    #[serde(crate = "eda::serde")]
    pub struct After {
        pub total: u64,
        #[serde(default)]
        pub bumps: u64,
    }

    #[aggregate(name = "Reshaped", snapshot_every = 2)]
    impl After {
        #[apply]
        fn bumped(&mut self, e: &Bumped) {
            self.total += e.by;
            self.bumps += 1;
        }
    }
}

#[tokio::test]
async fn a_snapshot_of_a_reshaped_state_is_ignored() {
    let store = MemoryStore::new();
    let app = App::new(store.clone());
    for by in 1..=4 {
        app.execute(reshaped::Bump { id: "r".into(), by })
            .await
            .unwrap();
    }
    let stream = StreamId {
        aggregate_type: "Reshaped",
        aggregate_id: "r",
    };
    assert_eq!(
        store
            .load_snapshot(stream)
            .await
            .unwrap()
            .map(|s| s.version),
        Some(4)
    );
    let (state, version) = App::new(store)
        .load_with_version::<reshaped::After>(&"r".to_string())
        .await
        .unwrap();
    assert_eq!(
        (state, version),
        (
            reshaped::After {
                total: 10,
                bumps: 4
            },
            4
        )
    );
}

/// A store that records each page replay asks for (its limit) and gets (its
/// length), and offers `snapshot` as the stream's snapshot.
#[derive(Clone)]
struct PagingStore {
    inner: MemoryStore,
    snapshot: Option<Snapshot>,
    pages: std::sync::Arc<std::sync::Mutex<Vec<(usize, usize)>>>,
}

impl EventStore for PagingStore {
    forward_to_inner!(inner);
    async fn load_snapshot(&self, _: StreamId<'_>) -> Result<Option<Snapshot>, StoreError> {
        Ok(self.snapshot.clone())
    }
    async fn read_for_replay(
        &self,
        s: StreamId<'_>,
        after: u64,
        limit: usize,
    ) -> Result<Vec<eda::ReplayEvent>, StoreError> {
        let page = self.inner.read_for_replay(s, after, limit).await?;
        self.pages.lock().unwrap().push((limit, page.len()));
        Ok(page)
    }
}

#[tokio::test]
async fn a_long_stream_is_replayed_a_page_at_a_time() {
    const EVENTS: u64 = 2_500;
    let memory = MemoryStore::new();
    let app = App::new(memory.clone());
    for n in 1..=EVENTS {
        add(&app, n).await;
    }
    let early = Snapshot {
        version: 3,
        snapshot_version: 2,
        payload: r#"{"total":6,"count":3}"#.into(),
        fingerprint: memory
            .load_snapshot(STREAM)
            .await
            .unwrap()
            .unwrap()
            .fingerprint,
    };
    let expected = (
        Tally {
            total: EVENTS * (EVENTS + 1) / 2,
            count: EVENTS,
        },
        EVENTS,
    );
    // From the first event, and from a snapshot far behind the stream's head
    // (whose own event, version 3, is read too).
    for (snapshot, replayed) in [(None, EVENTS), (Some(early), EVENTS - 2)] {
        let store = PagingStore {
            inner: memory.clone(),
            snapshot,
            pages: Default::default(),
        };
        assert_eq!(load(store.clone()).await, expected);
        let pages = store.pages.lock().unwrap().clone();
        assert!(pages.len() >= 3, "{pages:?}");
        assert!(pages.iter().all(|&(limit, got)| got <= limit), "{pages:?}");
        assert!(pages.iter().all(|&(limit, _)| limit < 2_000), "{pages:?}");
        let got: usize = pages.iter().map(|&(_, got)| got).sum();
        assert_eq!(got as u64, replayed, "{pages:?}");
        // Every page but the last is full.
        let (last, full) = pages.split_last().unwrap();
        assert!(full.iter().all(|&(limit, got)| got == limit), "{pages:?}");
        assert!(last.1 < last.0, "{pages:?}");
    }
}

/// A store that has lost one row: version 2 of every stream. With `immediate`, it
/// offers `ImmediateStore`, whose replay loses the row too.
struct LostRowStore {
    inner: MemoryStore,
    immediate: bool,
}

impl EventStore for LostRowStore {
    forward_to_inner!(inner);
    async fn read_for_replay(
        &self,
        s: StreamId<'_>,
        after: u64,
        limit: usize,
    ) -> Result<Vec<eda::ReplayEvent>, StoreError> {
        let mut page = self.inner.read_for_replay(s, after, limit).await?;
        page.retain(|e| e.version != 2);
        Ok(page)
    }

    fn as_immediate(&self) -> Option<&dyn ImmediateStore> {
        self.immediate.then_some(self as &dyn ImmediateStore)
    }
}

impl ImmediateStore for LostRowStore {
    fn append_now(
        &self,
        stream: StreamId<'_>,
        expected_version: u64,
        events: &mut Vec<eda::NewEvent>,
        metadata: &eda::Metadata,
        recorded_at: std::time::SystemTime,
    ) -> Result<eda::Appended, StoreError> {
        let inner = &self.inner;
        inner.append_now(stream, expected_version, events, metadata, recorded_at)
    }

    fn replay_now(
        &self,
        stream: StreamId<'_>,
        after_version: u64,
        apply: &mut dyn FnMut(eda::EventRef<'_>) -> Result<(), LoadError>,
    ) -> Result<(), LoadError> {
        let mut lossy = |event: eda::EventRef<'_>| match event.version {
            2 => Ok(()),
            _ => apply(event),
        };
        self.inner.replay_now(stream, after_version, &mut lossy)
    }

    fn save_snapshot_now(
        &self,
        stream: StreamId<'_>,
        snapshot: Snapshot,
    ) -> Result<(), StoreError> {
        self.inner.save_snapshot_now(stream, snapshot)
    }
}

/// Through `read_for_replay` and through `replay_now` alike.
#[tokio::test]
async fn a_missing_version_is_a_typed_error_not_a_wrong_state() {
    for immediate in [false, true] {
        let memory = MemoryStore::new();
        let app = App::new(memory.clone());
        for n in 1..=4 {
            add(&app, n).await;
        }
        let lost = memory.read_stream(STREAM, 1).await.unwrap()[0].position;
        let err = App::new(LostRowStore {
            inner: memory,
            immediate,
        })
        .load::<Tally>(&"t".to_string())
        .await
        .unwrap_err();
        match err {
            LoadError::Store(StoreError::Corrupt { position, what }) => {
                // The first event after the gap is named, with the version it follows.
                assert_eq!(position, lost + 1, "immediate: {immediate}");
                assert_eq!(what, "version 3 of Tally/t follows version 1");
            }
            other => panic!("expected a corrupt stream (immediate: {immediate}), got {other:?}"),
        }
    }
}

/// A snapshot ahead of its stream (a database restored from an older backup with
/// its snapshots table from a newer one, say) is not trusted: the aggregate is
/// replayed, and commands are decided and appended at the stream's real version
/// instead of conflicting forever.
#[tokio::test]
async fn a_snapshot_ahead_of_its_stream_is_not_trusted() {
    let store = MemoryStore::new();
    let app = App::new(store.clone());
    for n in 1..=4 {
        add(&app, n).await;
    }
    let mut ahead = store
        .load_snapshot(STREAM)
        .await
        .unwrap()
        .expect("at version 3");
    ahead.version = 40;
    ahead.payload = r#"{"total":1000,"count":40}"#.into();
    store.save_snapshot(STREAM, &ahead).await.unwrap();

    let (state, version) = load(store.clone()).await;
    assert_eq!((state.total, state.count, version), (10, 4, 4));
    let fresh = App::new(store.clone());
    let done = fresh
        .execute(Add {
            id: "t".into(),
            n: 5,
        })
        .await
        .unwrap();
    assert_eq!(done.version, 5);
    assert_eq!(load(store).await.0.total, 15);
}

/// A store that can be swapped for another underneath its users: a database
/// restored from a backup while the program runs.
#[derive(Clone, Default)]
struct Restorable(std::sync::Arc<std::sync::Mutex<MemoryStore>>);

impl Restorable {
    fn current(&self) -> MemoryStore {
        self.0.lock().unwrap().clone()
    }
}

impl EventStore for Restorable {
    forward_to_inner!(current());
}

/// An `App` whose cached state is ahead of the store (the database was restored
/// from an older backup while it ran) starts over from the store at the first
/// conflict, instead of conflicting until it gives up.
#[tokio::test]
async fn a_cache_ahead_of_the_store_is_dropped() {
    let store = Restorable::default();
    let backup = MemoryStore::new();
    add(&App::new(backup.clone()), 1).await;
    let app = App::new(store.clone());
    for n in [1, 2] {
        add(&app, n).await;
    }
    *store.0.lock().unwrap() = backup.clone();
    let done = app
        .execute(Add {
            id: "t".into(),
            n: 3,
        })
        .await
        .unwrap();
    assert_eq!(done.version, 2);
    assert_eq!(load(backup).await, (Tally { total: 4, count: 2 }, 2));
}

/// A store whose `read_for_replay` ignores `after_version`: always the first page.
struct FirstPageStore {
    inner: MemoryStore,
}

impl EventStore for FirstPageStore {
    forward_to_inner!(inner);
    async fn read_for_replay(
        &self,
        s: StreamId<'_>,
        _after: u64,
        limit: usize,
    ) -> Result<Vec<eda::ReplayEvent>, StoreError> {
        self.inner.read_for_replay(s, 0, limit).await
    }
}

/// A store that breaks `read_for_replay`'s contract on a stream longer than a
/// page makes the load fail with `BrokenContract`, instead of looping forever or
/// returning the first page's state.
#[tokio::test]
async fn a_store_ignoring_after_version_is_a_broken_contract() {
    let memory = MemoryStore::new();
    let events = (0..1_001)
        .map(|_| eda_test::new_event("Added", r#"{"n":1}"#))
        .collect();
    memory
        .append(STREAM, 0, events, &eda::Metadata::default())
        .await
        .unwrap();
    let err = App::new(FirstPageStore { inner: memory })
        .load::<Tally>(&"t".to_string())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            LoadError::Store(StoreError::BrokenContract {
                method: "read_for_replay",
                ..
            })
        ),
        "{err:?}"
    );
}
