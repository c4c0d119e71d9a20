//! The bounded queue between the sources and the decode workers.
//!
//! Files must never be skipped, so a file source waits when the queue is full (back-pressure).
//! A camera's frames perish: when inference falls behind, the frame worth keeping is the newest,
//! so a live source evicts its own oldest queued frame instead of waiting (and the eviction is
//! counted). Both kinds share one queue, so memory stays bounded by its capacity whatever mix
//! of sources is configured.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard};

/// What a source does when the pipeline falls behind and its queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Overflow {
    /// Wait (files: nothing may be skipped).
    Block,
    /// Drop the oldest queued frame of this source (cameras: the newest frame matters most).
    DropOldest,
}

/// What happened to a pushed item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// Queued without displacing anything.
    Queued,
    /// Queued after evicting the producer's oldest queued item.
    Evicted,
    /// Not queued: the queue was full of other producers' items (drop-oldest only).
    Dropped,
    /// The queue is closed; nothing will be consumed any more.
    Closed,
}

struct State<T> {
    items: VecDeque<(usize, T)>,
    producers: usize,
    closed: bool,
}

/// A bounded multi-producer, multi-consumer queue whose items carry their producer's index.
pub struct FrameQueue<T> {
    capacity: usize,
    state: Mutex<State<T>>,
    not_empty: Condvar,
    not_full: Condvar,
}

impl<T> FrameQueue<T> {
    /// A queue of at most `capacity` items fed by `producers` producers; it reports the end
    /// once every producer has called [`FrameQueue::producer_done`] and it is empty.
    pub fn new(capacity: usize, producers: usize) -> Self {
        FrameQueue {
            capacity: capacity.max(1),
            state: Mutex::new(State {
                items: VecDeque::with_capacity(capacity.max(1)),
                producers,
                closed: false,
            }),
            not_empty: Condvar::new(),
            not_full: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // A panicking holder leaves the queue structurally valid (VecDeque operations do not
        // unwind half-way), so the data is still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Add `item` from `producer` under `policy`; [`Overflow::Block`] waits for room.
    pub fn push(&self, producer: usize, item: T, policy: Overflow) -> Pushed {
        let mut s = self.lock();
        loop {
            if s.closed {
                return Pushed::Closed;
            }
            if s.items.len() < self.capacity {
                s.items.push_back((producer, item));
                self.not_empty.notify_one();
                return Pushed::Queued;
            }
            match policy {
                Overflow::Block => {
                    s = self.not_full.wait(s).unwrap_or_else(|e| e.into_inner());
                }
                Overflow::DropOldest => {
                    return match s.items.iter().position(|(p, _)| *p == producer) {
                        Some(i) => {
                            s.items.remove(i);
                            s.items.push_back((producer, item));
                            self.not_empty.notify_one();
                            Pushed::Evicted
                        }
                        None => Pushed::Dropped,
                    };
                }
            }
        }
    }

    /// The next item, waiting while the queue is empty; `None` once it is closed, or every
    /// producer is done and nothing is left.
    pub fn pop(&self) -> Option<(usize, T)> {
        let mut s = self.lock();
        loop {
            if s.closed {
                return None;
            }
            if let Some(x) = s.items.pop_front() {
                self.not_full.notify_one();
                return Some(x);
            }
            if s.producers == 0 {
                return None;
            }
            s = self.not_empty.wait(s).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// One producer will push no more.
    pub fn producer_done(&self) {
        let mut s = self.lock();
        s.producers = s.producers.saturating_sub(1);
        if s.producers == 0 {
            self.not_empty.notify_all();
        }
    }

    /// Stop everything: pending items are discarded and every waiter returns.
    pub fn close(&self) -> usize {
        let mut s = self.lock();
        s.closed = true;
        let discarded = s.items.len();
        s.items.clear();
        self.not_empty.notify_all();
        self.not_full.notify_all();
        discarded
    }

    /// Items waiting now.
    pub fn len(&self) -> usize {
        self.lock().items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::thread;

    #[test]
    fn drop_oldest_evicts_only_the_producers_own_items() {
        let q = FrameQueue::new(3, 2);
        assert_eq!(q.push(0, "f0", Overflow::Block), Pushed::Queued);
        assert_eq!(q.push(1, "c0", Overflow::DropOldest), Pushed::Queued);
        assert_eq!(q.push(1, "c1", Overflow::DropOldest), Pushed::Queued);
        // Full: the camera evicts its own oldest frame, not the file's.
        assert_eq!(q.push(1, "c2", Overflow::DropOldest), Pushed::Evicted);
        let order: Vec<&str> = std::iter::from_fn(|| {
            if q.is_empty() {
                None
            } else {
                q.pop().map(|(_, x)| x)
            }
        })
        .collect();
        assert_eq!(order, vec!["f0", "c1", "c2"]);
    }

    #[test]
    fn drop_oldest_drops_the_new_item_when_it_owns_nothing_queued() {
        let q = FrameQueue::new(2, 2);
        q.push(0, 1, Overflow::Block);
        q.push(0, 2, Overflow::Block);
        assert_eq!(q.push(1, 9, Overflow::DropOldest), Pushed::Dropped);
        assert_eq!(q.len(), 2);
    }

    #[test]
    fn block_waits_for_room_and_nothing_is_lost() {
        let q = Arc::new(FrameQueue::new(2, 1));
        let producer = {
            let q = q.clone();
            thread::spawn(move || {
                for i in 0..100 {
                    assert_eq!(q.push(0, i, Overflow::Block), Pushed::Queued);
                }
                q.producer_done();
            })
        };
        let mut got = Vec::new();
        while let Some((_, x)) = q.pop() {
            got.push(x);
        }
        producer.join().unwrap();
        assert_eq!(got, (0..100).collect::<Vec<_>>());
    }

    #[test]
    fn close_releases_blocked_producers_and_consumers() {
        let q = Arc::new(FrameQueue::new(1, 1));
        q.push(0, 0, Overflow::Block);
        let blocked = {
            let q = q.clone();
            thread::spawn(move || q.push(0, 1, Overflow::Block))
        };
        // Give the producer time to block on the full queue (either way it must see Closed).
        thread::sleep(std::time::Duration::from_millis(20));
        assert_eq!(q.close(), 1);
        assert_eq!(blocked.join().unwrap(), Pushed::Closed);
        assert_eq!(q.pop(), None);
    }
}
