// Copyright 2026 Cloudflare, Inc.
//
// Licensed under the Apache License, Version 2.0 (the "License");
// you may not use this file except in compliance with the License.
// You may obtain a copy of the License at
//
// http://www.apache.org/licenses/LICENSE-2.0
//
// Unless required by applicable law or agreed to in writing, software
// distributed under the License is distributed on an "AS IS" BASIS,
// WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
// See the License for the specific language governing permissions and
// limitations under the License.

//! A keep-alive pool for upstream streams that is swept, not watched.
//!
//! The default pool ([`pingora_pool::ConnectionPool`]) spawns a task for every stream returned
//! to it, which polls the idle stream until it is reused, closed or timed out; the reuse wakes
//! that task and waits for it to give the stream back. That is a task, a oneshot channel, an
//! `Arc<Mutex<_>>` and an LRU node per request, and a wake-up.
//!
//! This pool keeps idle streams in a slab linked twice: one list per key (reuse takes the
//! most recently returned stream, so surplus streams age out) and one list over all keys,
//! oldest first, for the size limit. Nothing watches an idle stream. A reuse checks the
//! stream's deadline and, as before, that nothing was read on it (the runtime's reactor
//! records a peer's close or stray data whether or not a task waits on the socket). One task
//! per pool wakes every `interval` and drops the streams that timed out or were closed or
//! written to by their peer; between sweeps, such a stream holds its socket (in CLOSE_WAIT)
//! at most `interval` longer than with the watching pool. In steady state no operation
//! allocates: the slab, its free list and the key map keep their capacity.

use super::{test_reusable_stream, PoolCallback};
use crate::protocols::Stream;
use parking_lot::Mutex;
use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

const NIL: u32 = u32::MAX;

struct Slot {
    stream: Option<Stream>,
    key: u64,
    since: Instant,
    deadline: Option<Instant>,
    // The list over all keys, oldest first.
    older: u32,
    newer: u32,
    // The list of this key, oldest first.
    key_older: u32,
    key_newer: u32,
}

/// First (oldest) and last (newest) slot of a key's list.
#[derive(Clone, Copy)]
struct Ends {
    oldest: u32,
    newest: u32,
}

/// Hashes a key that is a hash already (a peer's `reuse_hash()`, from `AHasher`) to itself:
/// SipHash over it again cost ~150 instructions a lookup, four lookups per request (a reuse
/// and a return).
#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `u64` keys reach here (`write_u64`); anything else is still mixed in.
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

struct Slab {
    slots: Vec<Slot>,
    free: Vec<u32>,
    keys: HashMap<u64, Ends, BuildHasherDefault<KeyHasher>>,
    oldest: u32,
    newest: u32,
}

impl Slab {
    fn new() -> Self {
        Slab {
            slots: Vec::new(),
            free: Vec::new(),
            keys: HashMap::default(),
            oldest: NIL,
            newest: NIL,
        }
    }

    /// Streams held: every slot not on the free list.
    fn len(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    fn push(&mut self, key: u64, stream: Stream, since: Instant, deadline: Option<Instant>) {
        let slot = Slot {
            stream: Some(stream),
            key,
            since,
            deadline,
            older: self.newest,
            newer: NIL,
            key_older: NIL,
            key_newer: NIL,
        };
        let idx = match self.free.pop() {
            Some(i) => {
                self.slots[i as usize] = slot;
                i
            }
            None => {
                self.slots.push(slot);
                (self.slots.len() - 1) as u32
            }
        };
        if self.newest != NIL {
            self.slots[self.newest as usize].newer = idx;
        } else {
            self.oldest = idx;
        }
        self.newest = idx;
        // One lookup whether or not the key has streams already.
        match self.keys.entry(key) {
            Entry::Occupied(mut e) => {
                let ends = e.get_mut();
                self.slots[idx as usize].key_older = ends.newest;
                self.slots[ends.newest as usize].key_newer = idx;
                ends.newest = idx;
            }
            Entry::Vacant(e) => {
                e.insert(Ends {
                    oldest: idx,
                    newest: idx,
                });
            }
        }
    }

    /// Unlink a slot from both lists and free it, giving back its stream and idle start.
    fn remove(&mut self, idx: u32) -> (Stream, Instant) {
        let (older, newer, key_older, key_newer, key) = {
            let s = &self.slots[idx as usize];
            (s.older, s.newer, s.key_older, s.key_newer, s.key)
        };
        if older != NIL {
            self.slots[older as usize].newer = newer;
        } else {
            self.oldest = newer;
        }
        if newer != NIL {
            self.slots[newer as usize].older = older;
        } else {
            self.newest = older;
        }
        if key_older != NIL {
            self.slots[key_older as usize].key_newer = key_newer;
        }
        if key_newer != NIL {
            self.slots[key_newer as usize].key_older = key_older;
        }
        if key_older == NIL && key_newer == NIL {
            self.keys.remove(&key);
        } else if let Some(ends) = self.keys.get_mut(&key) {
            if key_older == NIL {
                ends.oldest = key_newer;
            }
            if key_newer == NIL {
                ends.newest = key_older;
            }
        }
        self.free.push(idx);
        let slot = &mut self.slots[idx as usize];
        let stream = slot.stream.take().expect("a linked slot holds a stream");
        (stream, slot.since)
    }
}

/// The swept keep-alive pool; see the module's documentation.
pub(crate) struct IdlePool {
    slab: Mutex<Slab>,
    limit: usize,
    interval: Duration,
    sweeping: AtomicBool,
    unexpected_data: Arc<AtomicU64>,
    on_evict: Option<PoolCallback>,
}

impl IdlePool {
    pub(crate) fn new(
        limit: usize,
        interval: Duration,
        unexpected_data: Arc<AtomicU64>,
        on_evict: Option<PoolCallback>,
    ) -> Self {
        IdlePool {
            slab: Mutex::new(Slab::new()),
            limit,
            interval,
            sweeping: AtomicBool::new(false),
            unexpected_data,
            on_evict,
        }
    }

    /// Keep `stream` for reuse under `key`, for at most `idle_timeout`. At the size limit the
    /// stream idle longest (under any key) is closed to make room.
    pub(crate) fn put(self: &Arc<Self>, key: u64, stream: Stream, idle_timeout: Option<Duration>) {
        if self.limit == 0 {
            return;
        }
        let now = Instant::now();
        let evicted = {
            let mut slab = self.slab.lock();
            let evicted = if slab.len() >= self.limit {
                let oldest = slab.oldest;
                Some(slab.remove(oldest))
            } else {
                None
            };
            slab.push(key, stream, now, idle_timeout.map(|t| now + t));
            evicted
        };
        // Closed outside the lock.
        if let Some((stream, since)) = evicted {
            drop(stream);
            if let Some(cb) = &self.on_evict {
                cb(now.saturating_duration_since(since));
            }
        }
        self.ensure_sweeper();
    }

    /// The most recently returned stream under `key` that has not timed out.
    pub(crate) fn take(&self, key: u64) -> Option<Stream> {
        let now = Instant::now();
        loop {
            let (stream, deadline) = {
                let mut slab = self.slab.lock();
                let idx = slab.keys.get(&key)?.newest;
                let deadline = slab.slots[idx as usize].deadline;
                (slab.remove(idx).0, deadline)
            };
            if deadline.is_some_and(|d| d <= now) {
                // Timed out before the sweep came: closed, and the next one is tried.
                continue;
            }
            return Some(stream);
        }
    }

    /// Close the streams that timed out or that their peer closed or wrote to.
    fn sweep(&self) {
        let now = Instant::now();
        let mut closed = Vec::new();
        {
            let mut slab = self.slab.lock();
            let mut idx = slab.oldest;
            while idx != NIL {
                let slot = &mut slab.slots[idx as usize];
                let next = slot.newer;
                let expired = slot.deadline.is_some_and(|d| d <= now);
                let stream = slot.stream.as_mut().expect("a linked slot holds a stream");
                if expired || !test_reusable_stream(stream, &self.unexpected_data) {
                    closed.push(slab.remove(idx).0);
                }
                idx = next;
            }
        }
        drop(closed);
    }

    /// Start the sweeping task unless one runs. It runs on the runtime of the `put` that
    /// starts it; if that runtime shuts down, the next `put` starts another.
    fn ensure_sweeper(self: &Arc<Self>) {
        if self.sweeping.load(Ordering::Relaxed)
            || self
                .sweeping
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let pool = Arc::downgrade(self);
        let guard = SweeperGuard(pool.clone());
        let interval = self.interval;
        pingora_runtime::current_handle().spawn(async move {
            let _guard = guard;
            loop {
                pingora_timeout::sleep(interval).await;
                match Weak::upgrade(&pool) {
                    Some(p) => p.sweep(),
                    None => return,
                }
            }
        });
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.slab.lock().len()
    }
}

/// Clears the pool's `sweeping` flag when its task ends (the pool dropped or the runtime shut
/// down), so that the next `put` starts another.
struct SweeperGuard(Weak<IdlePool>);

impl Drop for SweeperGuard {
    fn drop(&mut self) {
        if let Some(p) = self.0.upgrade() {
            p.sweeping.store(false, Ordering::Release);
        }
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use crate::protocols::l4::stream::Stream as L4Stream;
    use crate::protocols::UniqueID;
    use tokio::io::AsyncWriteExt;
    use tokio::net::{TcpListener, TcpStream};

    /// A connected pair: the pool's side as a pingora [Stream] and the peer's side.
    async fn pair() -> (Stream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, server) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let stream: Stream = Box::new(L4Stream::from(client.unwrap()));
        (stream, server.unwrap().0)
    }

    fn pool(limit: usize, interval: Duration) -> Arc<IdlePool> {
        Arc::new(IdlePool::new(
            limit,
            interval,
            Arc::new(AtomicU64::new(0)),
            None,
        ))
    }

    #[tokio::test]
    async fn reuse_takes_the_newest_of_its_key() {
        let p = pool(8, Duration::from_secs(60));
        let (a, _pa) = pair().await;
        let (b, _pb) = pair().await;
        let (c, _pc) = pair().await;
        let (ida, idb, idc) = (a.id(), b.id(), c.id());
        p.put(1, a, None);
        p.put(1, b, None);
        p.put(2, c, None);
        assert_eq!(p.take(1).unwrap().id(), idb);
        assert_eq!(p.take(2).unwrap().id(), idc);
        assert!(p.take(2).is_none());
        assert_eq!(p.take(1).unwrap().id(), ida);
        assert!(p.take(1).is_none());
        assert_eq!(p.len(), 0);
    }

    #[tokio::test]
    async fn the_limit_closes_the_oldest_of_any_key() {
        let p = pool(2, Duration::from_secs(60));
        let (a, mut pa) = pair().await;
        let (b, _pb) = pair().await;
        let (c, _pc) = pair().await;
        let (idb, idc) = (b.id(), c.id());
        p.put(1, a, None);
        p.put(2, b, None);
        p.put(3, c, None);
        assert_eq!(p.len(), 2);
        assert!(p.take(1).is_none());
        // The evicted stream was closed: its peer reads end of file.
        let mut buf = [0u8; 1];
        use tokio::io::AsyncReadExt;
        assert_eq!(pa.read(&mut buf).await.unwrap(), 0);
        assert_eq!(p.take(2).unwrap().id(), idb);
        assert_eq!(p.take(3).unwrap().id(), idc);
    }

    #[tokio::test]
    async fn a_timed_out_stream_is_not_reused() {
        let p = pool(8, Duration::from_secs(60));
        let (a, _pa) = pair().await;
        let (b, _pb) = pair().await;
        let idb = b.id();
        p.put(1, b, None);
        p.put(1, a, Some(Duration::ZERO));
        // The newest (a) timed out: it is closed and the older one comes out.
        assert_eq!(p.take(1).unwrap().id(), idb);
        assert_eq!(p.len(), 0);
    }

    #[tokio::test]
    async fn the_sweep_closes_what_the_peer_closed_or_wrote_to() {
        let p = pool(8, Duration::from_millis(20));
        let (a, pa) = pair().await;
        let (b, mut pb) = pair().await;
        let (c, _pc) = pair().await;
        let idc = c.id();
        p.put(1, a, None);
        p.put(1, b, None);
        p.put(1, c, None);
        drop(pa);
        pb.write_all(b"x").await.unwrap();
        // Wait for a sweep (bounded: 5 s) to find both.
        let deadline = Instant::now() + Duration::from_secs(5);
        while p.len() > 1 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(p.len(), 1);
        assert_eq!(p.unexpected_data.load(Ordering::Relaxed), 1);
        assert_eq!(p.take(1).unwrap().id(), idc);
    }

    #[tokio::test]
    async fn the_sweep_closes_timed_out_streams() {
        let p = pool(8, Duration::from_millis(20));
        let (a, _pa) = pair().await;
        let (b, _pb) = pair().await;
        p.put(1, a, Some(Duration::from_millis(1)));
        p.put(2, b, None);
        let deadline = Instant::now() + Duration::from_secs(5);
        while p.len() > 1 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(p.len(), 1);
        assert!(p.take(2).is_some());
    }

    #[test]
    fn the_slab_keeps_both_lists_linked() {
        // Interleaved pushes and removals from the middle and the ends of both lists.
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let mut slab = Slab::new();
            let mut peers = Vec::new();
            let mut ids = Vec::new();
            let now = Instant::now();
            for i in 0..6u64 {
                let (s, peer) = pair().await;
                ids.push(s.id());
                peers.push(peer);
                slab.push(i % 2, s, now, None);
            }
            // Slots 0..6, keys alternate 0,1,0,1,0,1. Remove a middle one of key 0 (slot 2),
            // the oldest overall (slot 0) and the newest of key 1 (slot 5).
            assert_eq!(slab.remove(2).0.id(), ids[2]);
            assert_eq!(slab.remove(0).0.id(), ids[0]);
            assert_eq!(slab.remove(5).0.id(), ids[5]);
            assert_eq!(slab.len(), 3);
            assert_eq!(slab.oldest, 1);
            assert_eq!(slab.newest, 4);
            let k0 = slab.keys[&0];
            assert_eq!((k0.oldest, k0.newest), (4, 4));
            let k1 = slab.keys[&1];
            assert_eq!((k1.oldest, k1.newest), (1, 3));
            // Freed slots are reused before the slab grows.
            let (s, peer) = pair().await;
            peers.push(peer);
            slab.push(0, s, now, None);
            assert_eq!(slab.slots.len(), 6);
            assert_eq!(slab.keys[&0].newest, slab.newest);
            let mut order = Vec::new();
            let mut idx = slab.oldest;
            while idx != NIL {
                order.push(idx);
                idx = slab.slots[idx as usize].newer;
            }
            assert_eq!(order.len(), 4);
            assert_eq!(&order[..3], &[1, 3, 4]);
        });
    }
}
