//! Adaptive throttling: how busy the database is, read after each batch,
//! decides the pause before the next one (`zdm.adaptive_throttle`, on by
//! default). The backfill yields while the workload needs the machine or
//! waits for locks on the migrating table, and hurries while nobody else
//! works. The configured `pause_ms` is the middle setting; why a pause was
//! longer or shorter is recorded with the next batch (`zdm.batches`).

use crate::spi;

/// What the workload looks like right now.
pub struct Load {
    /// client sessions running a statement (not counting this one)
    pub active: i64,
    /// sessions waiting for a lock on the migrating table
    pub waiting: i64,
    pub cores: i64,
}

pub fn sample(migration: i64) -> Load {
    let cores = std::thread::available_parallelism().map(|n| n.get() as i64).unwrap_or(2);
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

#[cfg(test)]
mod tests {
    use super::{pause, Load};

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
