//! Keyed async locks: writes with the same key (e.g. one Canvas encounter) run one at a time, different
//! keys run in parallel. Canvas silently drops one of two overlapping writes to the same note.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};

#[derive(Debug, Default)]
pub struct KeyedLocks {
    locks: Mutex<HashMap<String, Weak<AsyncMutex<()>>>>,
}

impl KeyedLocks {
    pub fn new() -> Self {
        Self::default()
    }

    /// Waits until no other holder of `key` remains, then holds it until the guard drops.
    pub async fn lock(&self, key: &str) -> OwnedMutexGuard<()> {
        let lock = {
            let mut map = self.locks.lock().unwrap_or_else(|p| p.into_inner());
            if map.len() > 1024 {
                map.retain(|_, weak| weak.strong_count() > 0);
            }
            match map.get(key).and_then(Weak::upgrade) {
                Some(lock) => lock,
                None => {
                    let lock = Arc::new(AsyncMutex::new(()));
                    map.insert(key.to_string(), Arc::downgrade(&lock));
                    lock
                }
            }
        };
        lock.lock_owned().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    async fn hold(locks: Arc<KeyedLocks>, key: &'static str, now: Arc<AtomicUsize>, max: Arc<AtomicUsize>) {
        let _guard = locks.lock(key).await;
        let inside = now.fetch_add(1, Ordering::SeqCst) + 1;
        max.fetch_max(inside, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(10)).await;
        now.fetch_sub(1, Ordering::SeqCst);
    }

    #[tokio::test(start_paused = true)]
    async fn same_key_is_exclusive_and_different_keys_overlap() {
        let locks = Arc::new(KeyedLocks::new());
        let (now, max) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let same: Vec<_> =
            (0..5).map(|_| tokio::spawn(hold(locks.clone(), "enc-1", now.clone(), max.clone()))).collect();
        for h in same {
            h.await.unwrap();
        }
        assert_eq!(max.load(Ordering::SeqCst), 1);

        let (now, max) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let keys = ["a", "b", "c", "d"];
        let different: Vec<_> =
            keys.iter().map(|k| tokio::spawn(hold(locks.clone(), k, now.clone(), max.clone()))).collect();
        for h in different {
            h.await.unwrap();
        }
        assert_eq!(max.load(Ordering::SeqCst), 4);
    }
}
