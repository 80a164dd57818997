//! Training seconds as the CPU time the training threads ran.
//!
//! What a round of training costs a vehicle is the compute it took, not
//! the wall time in which other software (the vehicle's own, at a higher
//! priority than the agent's `Nice=15`), a CPU quota or a sibling agent
//! kept it waiting. On the CPU backend the agent therefore times training
//! by the scheduler's count of nanoseconds each training thread was on a
//! CPU (`/proc/thread-self/schedstat`, Linux); where that is not readable,
//! and on a GPU, whose work the CPU only waits for, by the wall clock.
//! The calibration at start-up is timed the same way, so the cost model
//! predicts what it is checked against.

use std::time::Instant;

/// Nanoseconds the calling thread has run on a CPU, if the kernel says.
fn thread_cpu_ns() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    text.split_whitespace().next()?.parse().ok()
}

/// Nanoseconds every thread of `pool` has run, summed; `None` when any
/// thread cannot say.
fn pool_cpu_ns(pool: &rayon::ThreadPool) -> Option<u64> {
    pool.broadcast(|_| thread_cpu_ns())
        .into_iter()
        .sum::<Option<u64>>()
}

/// Times work done on a rayon pool.
#[derive(Debug)]
pub struct Stopwatch {
    wall: Instant,
    cpu_ns: Option<u64>,
}

impl Stopwatch {
    /// Starts timing `pool`'s threads by their CPU time when `cpu` (and the
    /// kernel tells it), else by the wall clock. Call it from outside the
    /// pool, while the pool is idle.
    pub fn start(pool: &rayon::ThreadPool, cpu: bool) -> Self {
        Self {
            cpu_ns: cpu.then(|| pool_cpu_ns(pool)).flatten(),
            wall: Instant::now(),
        }
    }

    /// Seconds since [`Stopwatch::start`], by the clock it chose.
    pub fn seconds(&self, pool: &rayon::ThreadPool) -> f64 {
        match (self.cpu_ns, self.cpu_ns.and_then(|_| pool_cpu_ns(pool))) {
            (Some(start), Some(now)) => now.saturating_sub(start) as f64 / 1e9,
            _ => self.wall.elapsed().as_secs_f64(),
        }
    }

    /// Whether it counts CPU time (else wall time).
    pub fn counts_cpu(&self) -> bool {
        self.cpu_ns.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn pool(threads: usize) -> rayon::ThreadPool {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
    }

    /// A fixed amount of CPU work (tens of milliseconds), however loaded
    /// the machine is.
    fn work() -> u64 {
        let mut x = 1u64;
        for i in 0..20_000_000u64 {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(i));
        }
        x
    }

    #[test]
    fn sleeping_costs_no_cpu_and_every_thread_that_works_counts() {
        let (one, two) = (pool(1), pool(2));
        let watch = Stopwatch::start(&one, true);
        if !watch.counts_cpu() {
            // not Linux, or no scheduler statistics: the wall clock it is
            one.install(|| std::thread::sleep(Duration::from_millis(50)));
            assert!(watch.seconds(&one) >= 0.05);
            return;
        }
        one.install(|| std::thread::sleep(Duration::from_millis(200)));
        let slept = watch.seconds(&one);
        assert!(slept < 0.05, "a sleeping thread ran {slept} s");
        // the same work on one thread, then on each of two: twice the CPU
        let watch = Stopwatch::start(&one, true);
        one.install(work);
        let single = watch.seconds(&one);
        let watch = Stopwatch::start(&two, true);
        two.broadcast(|_| work());
        let double = watch.seconds(&two);
        assert!(single > 0.0, "{single}");
        let ratio = double / single;
        assert!((1.5..2.5).contains(&ratio), "{single} s vs {double} s");
        assert!(!Stopwatch::start(&two, false).counts_cpu());
    }
}
