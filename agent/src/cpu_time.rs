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
        let one = pool(1);
        let watch = Stopwatch::start(&one, true);
        if std::path::Path::new("/proc/thread-self/schedstat").exists() {
            // where the statistics are there, they must be the ones read
            assert!(watch.counts_cpu(), "schedstat exists but was not used");
        }
        if !watch.counts_cpu() {
            // not Linux, or no scheduler statistics: the wall clock it is
            one.install(|| std::thread::sleep(Duration::from_millis(50)));
            assert!(watch.seconds(&one) >= 0.05);
            return;
        }
        one.install(|| std::thread::sleep(Duration::from_millis(200)));
        let slept = watch.seconds(&one);
        assert!(slept < 0.05, "a sleeping thread ran {slept} s");
        // Two threads work; each times itself. The pool's reading is their
        // sum, whatever speed the machine lent them (a shared CPU runs the
        // same work at different speeds from one moment to the next).
        let two = pool(2);
        let watch = Stopwatch::start(&two, true);
        let own: Vec<f64> = two.broadcast(|_| {
            let start = thread_cpu_ns().unwrap();
            std::hint::black_box(work());
            (thread_cpu_ns().unwrap() - start) as f64 / 1e9
        });
        let pooled = watch.seconds(&two);
        let (sum, most) = (
            own.iter().sum::<f64>(),
            own.iter().copied().fold(0.0, f64::max),
        );
        assert!(own.iter().all(|&s| s > 0.0), "{own:?}");
        // a reading lags the thread by at most a scheduler tick or so
        let slack = 0.01;
        assert!(pooled >= sum - slack, "pool {pooled} s, threads {own:?}");
        assert!(
            pooled > most + own.iter().copied().fold(f64::MAX, f64::min) / 2.0,
            "pool {pooled} s, threads {own:?}"
        );
        assert!(!Stopwatch::start(&two, false).counts_cpu());
    }
}
