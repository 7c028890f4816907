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

    /// The slot of one instance; a detached, empty slot when caching is off.
    pub(crate) fn slot<A: Aggregate>(&self, id: &str) -> Arc<Slot<A>> {
        if self.capacity == 0 {
            return Arc::new(async_lock::Mutex::new(None));
        }
        let mut types = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        let slots = types.entry(TypeId::of::<A>()).or_default();
        let any = match slots.get(id) {
            Some(any) => Arc::clone(any),
            None => {
                if slots.len() >= self.capacity {
                    // Evict an instance no command holds; hash order makes this a
                    // cheap random choice. If every slot is busy the cache grows past
                    // capacity until they are released.
                    let idle = slots
                        .iter()
                        .find(|(_, slot)| Arc::strong_count(slot) == 1)
                        .map(|(k, _)| k.clone());
                    if let Some(key) = idle {
                        slots.remove(&key);
                    }
                }
                let slot: AnySlot = Arc::new(Slot::<A>::new(None));
                slots.insert(id.to_owned(), Arc::clone(&slot));
                slot
            }
        };
        drop(types);
        // Entries under `TypeId::of::<A>()` are only ever `Slot<A>`.
        any.downcast::<Slot<A>>()
            .unwrap_or_else(|_| unreachable!("cache slot of another type"))
    }
}
