//! The rolling buffer the refiner works on: the last N classified frames with their
//! embeddings. The head thread pushes; the refiner copies a snapshot and lets go of the lock at
//! once, so capture and inference never wait for a refinement.

use std::collections::VecDeque;

/// One classified frame as the refiner needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct BufferedFrame {
    /// Row id in the history database.
    pub id: i64,
    pub ts_ms: i64,
    pub source: String,
    /// The head's (unrefined) top-1 class index.
    pub class: usize,
    /// L2-normalised image embedding.
    pub embedding: Vec<f32>,
}

/// A fixed-capacity FIFO of frames plus a count of arrivals since the last snapshot.
#[derive(Debug)]
pub struct RingBuffer {
    frames: VecDeque<BufferedFrame>,
    capacity: usize,
    fresh: usize,
}

impl RingBuffer {
    pub fn new(capacity: usize) -> Self {
        RingBuffer {
            frames: VecDeque::with_capacity(capacity.max(1)),
            capacity: capacity.max(1),
            fresh: 0,
        }
    }

    /// Add a frame, evicting the oldest when full.
    pub fn push(&mut self, f: BufferedFrame) {
        if self.frames.len() == self.capacity {
            self.frames.pop_front();
        }
        self.frames.push_back(f);
        self.fresh += 1;
    }

    pub fn len(&self) -> usize {
        self.frames.len()
    }

    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Frames pushed since the last [`RingBuffer::snapshot`].
    pub fn fresh(&self) -> usize {
        self.fresh
    }

    /// A copy of the buffer, oldest first; resets the fresh count.
    pub fn snapshot(&mut self) -> Vec<BufferedFrame> {
        self.fresh = 0;
        self.frames.iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(id: i64) -> BufferedFrame {
        BufferedFrame {
            id,
            ts_ms: id * 10,
            source: "cam".into(),
            class: 0,
            embedding: vec![1.0, 0.0],
        }
    }

    #[test]
    fn keeps_the_newest_frames_and_counts_arrivals() {
        let mut b = RingBuffer::new(3);
        for i in 1..=5 {
            b.push(frame(i));
        }
        assert_eq!(b.len(), 3);
        assert_eq!(b.fresh(), 5);
        let s = b.snapshot();
        assert_eq!(s.iter().map(|f| f.id).collect::<Vec<_>>(), vec![3, 4, 5]);
        assert_eq!(b.fresh(), 0);
        b.push(frame(6));
        assert_eq!(b.fresh(), 1);
        assert_eq!(b.snapshot()[0].id, 4);
    }
}
