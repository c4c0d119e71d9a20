//! Splitting one step of a refinement over a few threads by output rows. Every thread computes
//! whole output rows exactly as a single thread would (the same operations in the same order),
//! so a pass gives bit-identical results whatever the thread count: the count is a cost
//! setting, never a parameter of the algorithm.

use std::sync::Mutex;
use std::thread;

/// Multiply–adds below which a step stays on the calling thread: starting a thread costs tens
/// of microseconds, more than a small buffer's whole step.
pub const MIN_PARALLEL_WORK: usize = 1 << 18;

/// The number of threads for a `threads` setting: itself, or one per available core for 0.
pub fn resolve(threads: usize) -> usize {
    if threads > 0 {
        threads
    } else {
        thread::available_parallelism().map_or(1, |n| n.get())
    }
}

/// Calls `work(first_row, chunk)` on consecutive chunks of the row-major `out` (`row_len`
/// values a row): at most `threads` chunks, none smaller than `min_rows` rows, run in parallel
/// on scoped threads beside the calling one. Threads take chunks from a shared queue, so a
/// thread the system cannot start only means the others do its share.
pub fn for_row_chunks<T: Send>(
    out: &mut [T],
    row_len: usize,
    threads: usize,
    min_rows: usize,
    work: impl Fn(usize, &mut [T]) + Sync,
) {
    let rows = out.len().checked_div(row_len).unwrap_or(0);
    let parts = threads.min(rows / min_rows.max(1)).max(1);
    if parts == 1 {
        work(0, out);
        return;
    }
    let per = rows.div_ceil(parts);
    let queue = Mutex::new(
        out.chunks_mut(per * row_len)
            .enumerate()
            .map(|(c, chunk)| (c * per, chunk)),
    );
    let drain = || {
        // A poisoned queue means another chunk panicked; the scope re-raises that panic.
        while let Some((start, chunk)) = queue.lock().ok().and_then(|mut q| q.next()) {
            work(start, chunk);
        }
    };
    thread::scope(|scope| {
        for _ in 1..parts {
            // Failing to start a thread is not an error: the remaining threads drain the queue.
            let _ = thread::Builder::new()
                .name("clipd-transduct".into())
                .spawn_scoped(scope, drain);
        }
        drain();
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_row_is_computed_once_with_its_own_index() {
        for rows in [0, 1, 7, 64, 65, 200] {
            for threads in [1, 2, 3, 8] {
                let mut out = vec![0usize; rows * 3];
                for_row_chunks(&mut out, 3, threads, 16, |first, chunk| {
                    for (r, row) in chunk.chunks_mut(3).enumerate() {
                        row.iter_mut().for_each(|v| *v += first + r + 1);
                    }
                });
                let want: Vec<usize> = (0..rows).flat_map(|i| [i + 1; 3]).collect();
                assert_eq!(out, want, "{rows} rows, {threads} threads");
            }
        }
    }

    #[test]
    fn small_outputs_stay_on_the_calling_thread() {
        let caller = thread::current().id();
        let mut out = vec![0u8; 10];
        for_row_chunks(&mut out, 1, 4, 16, |first, chunk| {
            assert_eq!((first, chunk.len()), (0, 10));
            assert_eq!(thread::current().id(), caller);
        });
        assert_eq!(resolve(3), 3);
        assert!(resolve(0) >= 1);
    }
}
