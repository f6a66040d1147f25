//! Adaptive throttling: how busy the database is, read after each batch,
//! decides the pause before the next one (`zdm.adaptive_throttle`, on by
//! default). The backfill yields while the workload needs the machine or
//! waits for locks on the migrating table, takes a share of the CPU the
//! workload leaves, and hurries while nobody else works. The configured
//! `pause_ms` scales every pause; why a pause differed from it is recorded
//! with the next batch (`zdm.batches`).
//!
//! The CPU the workload uses is measured on Linux (`/proc/stat`, I/O wait
//! counted as busy) over windows of at least 250 ms of batches and pauses,
//! minus the CPU time of zdm's own workers (`CpuMeter`). Three regimes
//! follow:
//!
//! * idle (the others use less than a fifth of a core): configured batches,
//!   a quarter of `pause_ms`;
//! * spare capacity: batches of at most `SPARE_TARGET_MS` — a batch's WAL
//!   is flushed by every commit that follows it, so a long batch stalls the
//!   workload's commits in one burst, and its rows stay locked until it
//!   commits — taking `SPARE_SHARE` × the idle cores beyond half a core as
//!   their share of the time;
//! * saturated (less than half a core left): batches held to
//!   `SATURATED_DUTY` of the time, checked before each batch (`cpu_gate`).
//!
//! Without `/proc/stat` the pause follows the number of active sessions.

use crate::spi;

/// What the workload looks like right now.
pub struct Load {
    /// client sessions running a statement (not counting this one)
    pub active: i64,
    /// sessions waiting for a lock on the migrating table
    pub waiting: i64,
    pub cores: i64,
    /// cores' worth of CPU the other processes used over the last batch and
    /// pause (None: not measured here)
    pub others: Option<f64>,
}

/// The machine's CPUs: the `cpuN` lines of `/proc/stat`, whose times the
/// readings below share out (not the CPUs this process may run on).
fn cores() -> i64 {
    static CORES: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    *CORES.get_or_init(|| {
        std::fs::read_to_string("/proc/stat")
            .ok()
            .map(|s| s.lines().filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit)).count() as i64)
            .filter(|n| *n > 0)
            .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get() as i64).unwrap_or(2))
    })
}

/// How often the workload is looked at (pg_stat_activity, pg_locks, the
/// CPU): batches of 10 ms would otherwise read them 50 times a second.
const SAMPLE_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

/// The last sample, reused for SAMPLE_EVERY.
#[derive(Default)]
pub struct Sampler {
    last: Option<(std::time::Instant, Load)>,
    meter: CpuMeter,
}

impl Sampler {
    pub fn sample(&mut self, migration: i64) -> &Load {
        let fresh = self.last.as_ref().is_some_and(|(at, _)| at.elapsed() < SAMPLE_EVERY);
        if !fresh {
            // pg_stat_activity afresh: this transaction's copy was taken
            // before the batch and misses sessions that connected since.
            // (pg_locks takes every lock partition's lock: read only while
            // somebody waits for a lock.)
            unsafe { pgrx::pg_sys::pgstat_clear_snapshot() };
            let (active, waiting, zdm_pids) = spi::first_row(
                &format!(
                    "SELECT (SELECT count(*) FROM pg_catalog.pg_stat_activity a \
                              WHERE a.backend_type = 'client backend' AND a.state = 'active' AND a.pid <> pg_catalog.pg_backend_pid()), \
                            CASE WHEN EXISTS (SELECT FROM pg_catalog.pg_stat_activity w WHERE w.wait_event_type = 'Lock') \
                            THEN (SELECT count(*) FROM pg_catalog.pg_locks l JOIN zdm.migrations m ON l.relation = m.relid::pg_catalog.oid \
                                   WHERE m.id = $1 AND NOT l.granted) ELSE 0 END, \
                            (SELECT pg_catalog.array_agg(pid) FROM pg_catalog.pg_stat_activity WHERE {})",
                    super::capacity::IS_ZDM_WORKER
                ),
                &[migration.into()],
                |r| Ok((r.get::<i64>(1)?.unwrap_or(0), r.get::<i64>(2)?.unwrap_or(0), r.get::<Vec<i32>>(3)?.unwrap_or_default())),
            )
            .unwrap_or((0, 0, Vec::new()));
            let others = self.meter.read(&zdm_pids);
            self.last = Some((std::time::Instant::now(), Load { active, waiting, cores: cores(), others }));
        }
        &self.last.as_ref().expect("sampled").1
    }

    /// The CPU the others used in the last complete window (see CpuMeter).
    pub fn others(&self) -> Option<f64> {
        self.meter.others
    }
}

/// Below this many cores' worth of CPU used by others, the machine is idle.
pub const IDLE_CORES: f64 = 0.2;
/// While the workload leaves capacity, batches take this many times the idle
/// cores beyond the half core that marks saturation (one batch runs on one
/// core) as their share of the time: steeply less as the workload nears
/// saturation (measured in bench/live.sh) …
pub const SPARE_SHARE: f64 = 1.5;
/// … at most this much; at least SATURATED_DUTY, as when saturated.
pub const SPARE_DUTY_MAX: f64 = 0.5;
/// … and last at most this long (unless `target_batch_ms` is smaller).
pub const SPARE_TARGET_MS: i32 = 10;
/// `pause_ms`'s default: the pauses scale with the configured one.
const DEFAULT_PAUSE_MS: f64 = 400.0;

impl Load {
    /// The workload needs the machine (or the table) now.
    pub fn busy(&self) -> bool {
        self.waiting > 0 || self.active >= self.cores
    }

    /// Somebody else works: batches are kept short.
    fn workload(&self) -> bool {
        match self.others {
            Some(others) => self.waiting > 0 || others >= IDLE_CORES,
            None => self.busy(),
        }
    }
}

/// The batch time to steer the next batch size to: while anybody else works,
/// at most SPARE_TARGET_MS (half the configured one without a CPU reading)
/// — rows a batch updates stay locked, and its WAL waits for the next
/// commit's flush, until it commits. `pause_ms` = 0 (full speed): as configured.
pub fn target_batch_ms(target: Option<i32>, load: &Load, pause_ms: i32) -> Option<i32> {
    target.map(|t| match (load.workload() && pause_ms > 0, load.others) {
        (false, _) => t,
        (true, Some(_)) => t.min(SPARE_TARGET_MS).max(1),
        (true, None) => (t / 2).max(1),
    })
}

/// The pause before the next batch, and why it differs from `pause_ms`.
pub fn pause(pause_ms: i32, load: &Load, last_batch_ms: f64) -> (i32, Option<String>) {
    if load.waiting > 0 {
        let ms = (pause_ms.saturating_mul(4)).max(1000);
        return (ms, Some(format!("{} session(s) waiting for locks on the table: pause {ms} ms", load.waiting)));
    }
    // Nobody else works: no active session, and (when measured) next to no CPU.
    if load.active == 0 && load.others.is_none_or(|o| o < IDLE_CORES) {
        let ms = pause_ms / 4;
        return (ms, Some(format!("database idle: pause {ms} ms")));
    }
    if let Some(others) = load.others {
        let spare = (load.cores as f64 - others).max(0.0);
        let duty = (SPARE_SHARE * (spare - SATURATED_IDLE_CORES)).clamp(SATURATED_DUTY, SPARE_DUTY_MAX);
        let ms = (last_batch_ms * (1.0 / duty - 1.0) * scale(pause_ms)).round().clamp(0.0, 60_000.0) as i32;
        return (
            ms,
            Some(format!(
                "workload uses {others:.1} of {} cores: batches take {:.0}% of the time, pause {ms} ms",
                load.cores,
                duty * 100.0
            )),
        );
    }
    if load.active >= load.cores {
        // Proportional: twice as many active sessions as cores, three times the pause.
        let factor = 1.0 + load.active as f64 / load.cores.max(1) as f64;
        let ms = ((pause_ms.max(50) as f64) * factor).round() as i32;
        return (ms, Some(format!("workload busy ({} active sessions on {} cores): pause {ms} ms", load.active, load.cores)));
    }
    (pause_ms, None)
}

/// How much longer than the default's every pause and wait is (`pause_ms`
/// 400 is 1×).
fn scale(pause_ms: i32) -> f64 {
    pause_ms.max(0) as f64 / DEFAULT_PAUSE_MS
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
    // user nice system idle iowait irq softirq steal: time waiting for I/O
    // counts as busy (a disk-bound workload needs the room too)
    (fields.len() >= 5).then(|| CpuTicks { idle: fields[3], total: fields.iter().take(8).sum() })
}

/// The share of the machine's CPU time left idle between two readings, if
/// the interval is long enough to tell (20 ticks: 0.1 s on 2 cores).
pub fn idle_share(from: CpuTicks, to: CpuTicks) -> Option<f64> {
    let total = to.total.saturating_sub(from.total);
    (total >= 20).then(|| to.idle.saturating_sub(from.idle) as f64 / total as f64)
}

/// A process's CPU time so far (`/proc/<pid>/stat` utime + stime), in the
/// same ticks as `/proc/stat`.
fn process_ticks(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // after "pid (comm) ": state is field 0 here, utime 11, stime 12
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// A window is at least this long: enough ticks (100 a second per CPU) to
/// tell, and several short batches and pauses averaged.
const WINDOW: std::time::Duration = std::time::Duration::from_millis(250);

/// The CPU the workload uses: the machine's busy time (I/O wait included)
/// minus that of zdm's own workers (this one, its helpers, other jobs'),
/// over windows of at least WINDOW.
#[derive(Default)]
pub struct CpuMeter {
    mark: Option<(std::time::Instant, CpuTicks, std::collections::HashMap<i32, u64>)>,
    others: Option<f64>,
}

impl CpuMeter {
    /// Cores' worth of CPU the others used in the last complete window;
    /// `zdm_pids`: zdm's workers now (this process is always counted).
    pub fn read(&mut self, zdm_pids: &[i32]) -> Option<f64> {
        let ticks = cpu_ticks()?;
        let me = unsafe { pgrx::pg_sys::MyProcPid };
        let zdm: std::collections::HashMap<i32, u64> = zdm_pids
            .iter()
            .copied()
            .chain(std::iter::once(me))
            .filter_map(|pid| Some((pid, process_ticks(pid)?)))
            .collect();
        match &self.mark {
            Some((at, from, before)) if at.elapsed() >= WINDOW => {
                // (a worker that started within the window: all its time)
                let own: u64 = zdm.iter().map(|(pid, t)| t.saturating_sub(before.get(pid).copied().unwrap_or(0))).sum();
                self.others = Some(others_cores(*from, ticks, own, cores()));
                self.mark = Some((std::time::Instant::now(), ticks, zdm));
            }
            Some(_) => {}
            None => self.mark = Some((std::time::Instant::now(), ticks, zdm)),
        }
        self.others
    }
}

/// Cores' worth of CPU used between two readings by all but `own` ticks.
fn others_cores(from: CpuTicks, to: CpuTicks, own: u64, cores: i64) -> f64 {
    let total = to.total.saturating_sub(from.total).max(1);
    let busy = total.saturating_sub(to.idle.saturating_sub(from.idle));
    busy.saturating_sub(own) as f64 / total as f64 * cores as f64
}

/// The CPUs are saturated when less than this many cores' worth of time
/// was idle (I/O wait counts as busy): a batch (one core) would take most of its CPU from the workload.
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
/// Like every pause, the wait scales with `pause_ms` (400 is 1×): the 2% is
/// the default's.
pub fn cpu_gate(mark: &mut Option<CpuTicks>, last_batch_ms: f64, waited_ms: f64, others: Option<f64>, pause_ms: i32) -> Option<(f64, String)> {
    let now = cpu_ticks()?;
    let idle = idle_share((*mark)?, now);
    *mark = Some(now);
    // A wait too short to tell (short pauses): the meter's last window.
    let idle = idle.or_else(|| others.map(|o| ((cores() as f64 - o) / cores() as f64).max(0.0)))?;
    let scale = scale(pause_ms);
    let ms = saturated_wait(idle, cores(), last_batch_ms * scale, waited_ms)?;
    Some((
        ms,
        format!(
            "CPU saturated ({:.0}% idle while the backfill waited): batches held to {:.0}% of the time",
            idle * 100.0,
            100.0 / (1.0 + (1.0 / SATURATED_DUTY - 1.0) * scale)
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
        // without a CPU reading: the number of active sessions
        let l = |active, waiting| Load { active, waiting, cores: 2, others: None };
        assert_eq!(pause(400, &l(1, 0), 100.0), (400, None));
        assert_eq!(pause(400, &l(0, 0), 100.0).0, 100);
        assert_eq!(pause(400, &l(4, 0), 100.0).0, 1200);
        assert_eq!(pause(400, &l(2, 0), 100.0).0, 800);
        assert_eq!(pause(400, &l(0, 1), 100.0).0, 1600);
        assert_eq!(pause(0, &l(2, 0), 100.0).0, 100);
        assert_eq!(super::target_batch_ms(Some(100), &l(2, 0), 400), Some(50));
        assert_eq!(super::target_batch_ms(Some(100), &l(1, 0), 400), Some(100));
        assert_eq!(super::target_batch_ms(None, &l(4, 0), 400), None);
    }

    #[test]
    fn batches_take_a_share_of_the_spare_cpu() {
        let l = |active, waiting, others| Load { active, waiting, cores: 2, others: Some(others) };
        // idle: a quarter of pause_ms, configured batches
        assert_eq!(pause(400, &l(0, 0, 0.1), 10.0).0, 100);
        assert_eq!(super::target_batch_ms(Some(100), &l(0, 0, 0.1), 400), Some(100));
        // a core left: half of the time, short batches
        let (ms, why) = pause(400, &l(2, 0, 1.0), 10.0);
        assert_eq!(ms, 10);
        assert!(why.unwrap().contains("batches take 50% of the time"));
        let (ms, why) = pause(400, &l(2, 0, 1.2), 10.0);
        assert_eq!(ms, 12);
        assert!(why.unwrap().contains("batches take 45% of the time"));
        assert_eq!(super::target_batch_ms(Some(100), &l(2, 0, 1.0), 400), Some(super::SPARE_TARGET_MS));
        assert_eq!(super::target_batch_ms(Some(5), &l(2, 0, 1.0), 400), Some(5));
        assert_eq!(super::target_batch_ms(Some(100), &l(2, 0, 1.0), 0), Some(100), "pause_ms 0: full speed");
        // a little more than half a core idle: 15%; saturated: the floor, 2%
        assert_eq!(pause(400, &l(4, 0, 1.4), 10.0).0, 57);
        assert_eq!(pause(400, &l(4, 0, 1.6), 10.0).0, 490);
        // nearly idle: at most half the time
        assert_eq!(pause(400, &l(1, 0, 0.3), 10.0).0, 10);
        // pause_ms scales it; lock waiters come first
        assert_eq!(pause(800, &l(2, 0, 1.2), 10.0).0, 24);
        assert_eq!(pause(400, &l(0, 1, 1.0), 10.0).0, 1600);
        assert_eq!(super::target_batch_ms(Some(100), &l(0, 1, 0.0), 400), Some(super::SPARE_TARGET_MS));
    }

    #[test]
    fn the_others_cpu_excludes_this_process() {
        use super::{others_cores, CpuTicks};
        let t = |idle, total| CpuTicks { idle, total };
        assert_eq!(others_cores(t(0, 0), t(100, 200), 50, 2), 0.5, "100 busy ticks, 50 of them ours");
        assert_eq!(others_cores(t(0, 0), t(0, 200), 0, 2), 2.0);
        assert_eq!(others_cores(t(0, 0), t(200, 200), 10, 2), 0.0);
        if std::path::Path::new("/proc/self/stat").exists() {
            assert!(super::process_ticks(std::process::id() as i32).is_some());
            assert!(super::cores() >= 1);
        }
    }
}
