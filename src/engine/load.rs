//! Adaptive throttling: how busy the database is, read after each batch,
//! decides the pause before the next one (`zdm.adaptive_throttle`, on by
//! default). The backfill yields while the workload needs the machine or
//! waits for locks on the migrating table, and hurries while nobody else
//! works. The configured `pause_ms` is the middle setting; why a pause was
//! longer or shorter is recorded with the next batch (`zdm.batches`).
//!
//! Before each batch the worker also looks at the machine's CPUs during the
//! wait it just took (Linux `/proc/stat`): if less than half a core was
//! idle while it slept, the workload alone fills them, and every batch
//! would take CPU from it — so batches are held to a small share of the
//! time until the CPUs have room again.

use crate::spi;

/// What the workload looks like right now.
pub struct Load {
    /// client sessions running a statement (not counting this one)
    pub active: i64,
    /// sessions waiting for a lock on the migrating table
    pub waiting: i64,
    pub cores: i64,
}

fn cores() -> i64 {
    std::thread::available_parallelism().map(|n| n.get() as i64).unwrap_or(2)
}

pub fn sample(migration: i64) -> Load {
    let cores = cores();
    let (active, waiting) = spi::first_row(
        "SELECT (SELECT count(*) FROM pg_catalog.pg_stat_activity a \
                  WHERE a.backend_type = 'client backend' AND a.state = 'active' AND a.pid <> pg_catalog.pg_backend_pid()), \
                (SELECT count(*) FROM pg_catalog.pg_locks l JOIN zdm.migrations m ON l.relation = m.relid::pg_catalog.oid \
                  WHERE m.id = $1 AND NOT l.granted)",
        &[migration.into()],
        |r| Ok((r.get::<i64>(1)?.unwrap_or(0), r.get::<i64>(2)?.unwrap_or(0))),
    )
    .unwrap_or((0, 0));
    Load { active, waiting, cores }
}

impl Load {
    /// The workload needs the machine (or the table) now.
    pub fn busy(&self) -> bool {
        self.waiting > 0 || self.active >= self.cores
    }
}

/// The batch time to steer the next batch size to: half the configured one
/// while the workload is busy — rows a batch updates stay locked until it
/// commits, so shorter batches keep the workload's tail latency down.
pub fn target_batch_ms(target: Option<i32>, load: &Load) -> Option<i32> {
    target.map(|t| if load.busy() { (t / 2).max(1) } else { t })
}

/// The pause before the next batch, and why it differs from `pause_ms`.
pub fn pause(pause_ms: i32, load: &Load) -> (i32, Option<String>) {
    if load.waiting > 0 {
        let ms = (pause_ms.saturating_mul(4)).max(1000);
        return (ms, Some(format!("{} session(s) waiting for locks on the table: pause {ms} ms", load.waiting)));
    }
    if load.active >= load.cores {
        // Proportional: twice as many active sessions as cores, three times the pause.
        let factor = 1.0 + load.active as f64 / load.cores.max(1) as f64;
        let ms = ((pause_ms.max(50) as f64) * factor).round() as i32;
        return (ms, Some(format!("workload busy ({} active sessions on {} cores): pause {ms} ms", load.active, load.cores)));
    }
    if load.active == 0 {
        let ms = pause_ms / 4;
        return (ms, Some(format!("database idle: pause {ms} ms")));
    }
    (pause_ms, None)
}

/// The machine's CPU time so far (Linux `/proc/stat`): (idle, total) ticks.
#[derive(Clone, Copy)]
pub struct CpuTicks {
    idle: u64,
    total: u64,
}

pub fn cpu_ticks() -> Option<CpuTicks> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let fields: Vec<u64> = stat.lines().next()?.strip_prefix("cpu ")?.split_whitespace().filter_map(|f| f.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal
    (fields.len() >= 5).then(|| CpuTicks { idle: fields[3] + fields[4], total: fields.iter().take(8).sum() })
}

/// The share of the machine's CPU time left idle between two readings, if
/// the interval is long enough to tell (20 ticks: 0.1 s on 2 cores).
pub fn idle_share(from: CpuTicks, to: CpuTicks) -> Option<f64> {
    let total = to.total.saturating_sub(from.total);
    (total >= 20).then(|| to.idle.saturating_sub(from.idle) as f64 / total as f64)
}

/// The CPUs are saturated when less than this many cores' worth of time
/// was idle: a batch (one core) would take most of its CPU from the workload.
pub const SATURATED_IDLE_CORES: f64 = 0.5;
/// While they are, batches take at most this share of the time. A batch
/// costs the workload more than its CPU time (its WAL is flushed ahead of
/// the workload's commits, its new row versions are read past), so the
/// share is small: at 5 % pgbench kept only 0.88–0.93× of its TPS in
/// bench/live.sh, see bench/README.md.
pub const SATURATED_DUTY: f64 = 0.02;

/// How much longer to wait before the next batch when the CPUs were
/// saturated while this worker waited (so by the workload alone): batches
/// are held to SATURATED_DUTY of the time, measured on the last one. None:
/// go on.
pub fn saturated_wait(idle: f64, cores: i64, last_batch_ms: f64, waited_ms: f64) -> Option<f64> {
    if idle * cores.max(1) as f64 >= SATURATED_IDLE_CORES {
        return None;
    }
    let needed = last_batch_ms * (1.0 / SATURATED_DUTY - 1.0);
    (waited_ms < needed).then(|| (needed - waited_ms).clamp(10.0, 1000.0))
}

/// The CPU gate before a batch: compares the CPU time since `mark` (set
/// when the last batch or wait ended) and moves the mark to now. Returns
/// how long to wait, and why.
pub fn cpu_gate(mark: &mut Option<CpuTicks>, last_batch_ms: f64, waited_ms: f64) -> Option<(f64, String)> {
    let now = cpu_ticks()?;
    let idle = idle_share((*mark)?, now);
    *mark = Some(now);
    let idle = idle?;
    let ms = saturated_wait(idle, cores(), last_batch_ms, waited_ms)?;
    Some((
        ms,
        format!(
            "CPU saturated ({:.0}% idle while the backfill waited): batches held to {:.0}% of the time",
            idle * 100.0,
            SATURATED_DUTY * 100.0
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::{pause, Load};

    #[test]
    fn saturated_cpu_holds_batches_to_a_small_share() {
        use super::saturated_wait;
        assert_eq!(saturated_wait(0.5, 2, 100.0, 0.0), None, "a core idle: go on");
        assert_eq!(saturated_wait(0.05, 16, 100.0, 0.0), None, "0.8 of a core idle on 16: go on");
        assert_eq!(saturated_wait(0.02, 2, 100.0, 0.0), Some(1000.0), "49 × 100 ms to wait, in steps of at most 1 s");
        assert_eq!(saturated_wait(0.2, 2, 100.0, 4500.0), Some(400.0));
        assert_eq!(saturated_wait(0.02, 2, 100.0, 4900.0), None, "waited enough: one batch");
        assert!(super::cpu_ticks().is_some() || !std::path::Path::new("/proc/stat").exists());
    }

    #[test]
    fn pause_follows_the_workload() {
        let l = |active, waiting| Load { active, waiting, cores: 2 };
        assert_eq!(pause(400, &l(1, 0)), (400, None));
        assert_eq!(pause(400, &l(0, 0)).0, 100);
        assert_eq!(pause(400, &l(4, 0)).0, 1200);
        assert_eq!(pause(400, &l(2, 0)).0, 800);
        assert_eq!(pause(400, &l(0, 1)).0, 1600);
        assert_eq!(pause(0, &l(2, 0)).0, 100);
        assert_eq!(super::target_batch_ms(Some(100), &l(2, 0)), Some(50));
        assert_eq!(super::target_batch_ms(Some(100), &l(1, 0)), Some(100));
        assert_eq!(super::target_batch_ms(None, &l(4, 0)), None);
    }
}
