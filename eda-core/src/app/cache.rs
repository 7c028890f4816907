use std::any::{Any, TypeId};
use std::sync::{Arc, Mutex, PoisonError};

use foldhash::HashMap;

use crate::aggregate::Aggregate;

/// An aggregate's state at a known stream version.
pub(crate) struct Cached<A> {
    pub(crate) state: A,
    pub(crate) version: u64,
}

/// One aggregate instance's place in the cache. The async lock queues the commands
/// an `App` runs on the same instance, so they do not conflict with each other; the
/// state inside is `None` until loaded, and while a command may be mutating it.
pub(crate) type Slot<A> = async_lock::Mutex<Option<Cached<A>>>;

/// Loaded aggregates by type and id, so a command on a long stream does not replay
/// it. An entry is only a starting point: appends are still compare-and-set on the
/// version it holds, and a conflict reads the events it missed.
pub(crate) struct Cache {
    /// Instances kept per aggregate type.
    capacity: usize,
    /// Aggregate type -> id -> slot.
    slots: Mutex<HashMap<TypeId, HashMap<String, AnySlot>>>,
}

/// An `Arc<Slot<A>>`, downcast on the way out.
type AnySlot = Arc<dyn Any + Send + Sync>;

impl Cache {
    pub(crate) fn new(capacity: usize) -> Self {
        Cache {
            capacity,
            slots: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<TypeId, HashMap<String, AnySlot>>> {
        // Plain inserts and removals: a panic elsewhere leaves the map sound.
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The slot of one instance; a detached, empty slot when caching is off.
    /// Dropping the returned handle keeps the cache within its capacity.
    pub(crate) fn slot<'c, A: Aggregate>(&'c self, id: &'c str) -> CacheSlot<'c, A> {
        if self.capacity == 0 {
            return CacheSlot {
                cache: self,
                id,
                slot: Some(Arc::new(async_lock::Mutex::new(None))),
                attached: false,
                new: false,
                full: false,
            };
        }
        let mut types = self.lock();
        let slots = types.entry(TypeId::of::<A>()).or_default();
        let (any, new) = match slots.get(id) {
            Some(any) => (Arc::clone(any), false),
            None => {
                if slots.len() >= self.capacity {
                    evict_idle(slots, self.capacity - 1);
                }
                let slot: AnySlot = Arc::new(Slot::<A>::new(None));
                slots.insert(id.to_owned(), Arc::clone(&slot));
                (slot, true)
            }
        };
        let full = slots.len() > self.capacity;
        drop(types);
        // Entries under `TypeId::of::<A>()` are only ever `Slot<A>`.
        let slot = any
            .downcast::<Slot<A>>()
            .unwrap_or_else(|_| unreachable!("cache slot of another type"));
        CacheSlot {
            cache: self,
            id,
            slot: Some(slot),
            attached: true,
            new,
            full,
        }
    }

    /// How many instances of `A` the cache holds.
    pub(crate) fn len<A: Aggregate>(&self) -> usize {
        self.lock().get(&TypeId::of::<A>()).map_or(0, HashMap::len)
    }
}

/// Removes instances no command holds, in hash order (a cheap random choice),
/// until at most `keep` are left or none is idle.
fn evict_idle(slots: &mut HashMap<String, AnySlot>, keep: usize) {
    let excess = slots.len().saturating_sub(keep);
    if excess == 0 {
        return;
    }
    let idle: Vec<String> = slots
        .iter()
        .filter(|(_, slot)| Arc::strong_count(slot) == 1)
        .map(|(id, _)| id.clone())
        .take(excess)
        .collect();
    for id in idle {
        slots.remove(&id);
    }
}

/// A command's hold on one instance's slot. When it ends, an instance with
/// nothing stored (a rejected command on an id no aggregate has) is not kept,
/// and a cache that grew past its capacity while every slot was busy (a burst of
/// commands on many ids) is brought back within it.
pub(crate) struct CacheSlot<'c, A: Aggregate> {
    cache: &'c Cache,
    id: &'c str,
    slot: Option<Arc<Slot<A>>>,
    /// In the cache's map (not a detached slot of a cache that is off).
    attached: bool,
    /// Put in the map for this command: kept only if the command leaves a state
    /// with events behind.
    new: bool,
    /// The cache held more than its capacity when the slot was taken.
    full: bool,
}

impl<A: Aggregate> std::ops::Deref for CacheSlot<'_, A> {
    type Target = Slot<A>;

    fn deref(&self) -> &Slot<A> {
        self.slot
            .as_deref()
            .unwrap_or_else(|| unreachable!("taken only on drop"))
    }
}

impl<A: Aggregate> Drop for CacheSlot<'_, A> {
    fn drop(&mut self) {
        let Some(slot) = self.slot.take() else {
            return;
        };
        if !self.attached || (!self.new && !self.full) {
            return;
        }
        // Busy (another command queued on it) counts as worth keeping.
        let stored = !self.new
            || slot
                .try_lock()
                .is_none_or(|state| state.as_ref().is_some_and(|cached| cached.version > 0));
        drop(slot);
        if stored && !self.full {
            return;
        }
        let mut types = self.cache.lock();
        let Some(slots) = types.get_mut(&TypeId::of::<A>()) else {
            return;
        };
        if !stored
            && slots
                .get(self.id)
                .is_some_and(|s| Arc::strong_count(s) == 1)
        {
            slots.remove(self.id);
        }
        evict_idle(slots, self.cache.capacity);
    }
}
