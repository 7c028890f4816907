use std::any::{Any, TypeId};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use foldhash::{HashMap, HashMapExt};

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
    capacity: usize,
    types: RwLock<HashMap<TypeId, Arc<dyn Any + Send + Sync>>>,
}

struct TypedCache<A> {
    slots: Mutex<HashMap<String, Arc<Slot<A>>>>,
}

impl Cache {
    pub(crate) fn new(capacity: usize) -> Self {
        Cache {
            capacity,
            types: RwLock::new(HashMap::new()),
        }
    }

    /// The slot of one instance; a detached, empty slot when caching is off.
    pub(crate) fn slot<A: Aggregate>(&self, id: &str) -> Arc<Slot<A>> {
        if self.capacity == 0 {
            return Arc::new(async_lock::Mutex::new(None));
        }
        let typed = self.typed::<A>();
        let mut slots = typed.slots.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(slot) = slots.get(id) {
            return Arc::clone(slot);
        }
        if slots.len() >= self.capacity {
            // Evict an instance no command holds; hash order makes this a cheap
            // random choice. If every slot is busy the cache grows past capacity
            // until they are released.
            let idle = slots
                .iter()
                .find(|(_, slot)| Arc::strong_count(slot) == 1)
                .map(|(k, _)| k.clone());
            if let Some(key) = idle {
                slots.remove(&key);
            }
        }
        let slot = Arc::new(async_lock::Mutex::new(None));
        slots.insert(id.to_owned(), Arc::clone(&slot));
        slot
    }

    fn typed<A: Aggregate>(&self) -> Arc<TypedCache<A>> {
        let key = TypeId::of::<A>();
        let found = self
            .types
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)
            .cloned();
        let any = match found {
            Some(any) => any,
            None => {
                let mut types = self.types.write().unwrap_or_else(PoisonError::into_inner);
                Arc::clone(types.entry(key).or_insert_with(|| {
                    Arc::new(TypedCache::<A> {
                        slots: Mutex::new(HashMap::new()),
                    }) as Arc<dyn Any + Send + Sync>
                }))
            }
        };
        // The entry for `TypeId::of::<A>()` is only ever a `TypedCache<A>`.
        any.downcast::<TypedCache<A>>()
            .unwrap_or_else(|_| unreachable!("cache entry of another type"))
    }
}
