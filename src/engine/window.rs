//! Maintenance windows: a job may run only inside one of its windows,
//! `'HH:MM-HH:MM [time zone]'` (UTC when no zone is given; a window may wrap
//! past midnight, `'22:00-02:00 Europe/Berlin'`). Outside them the worker
//! waits between batches (or steps), with the reason in zdm.status.

use crate::errors::{raise, Code};
use crate::spi;

/// A window: minutes after midnight [start, end) in `zone`.
struct Window {
    start: u32,
    end: u32,
    zone: String,
}

fn parse(text: &str) -> Option<Window> {
    let (span, zone) = match text.trim().split_once(' ') {
        Some((s, z)) => (s, z.trim().to_string()),
        None => (text.trim(), "UTC".to_string()),
    };
    let (a, b) = span.split_once('-')?;
    let minutes = |t: &str| -> Option<u32> {
        let (h, m) = t.split_once(':')?;
        let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
        (h <= 24 && m < 60 && (h < 24 || m == 0)).then_some(h * 60 + m)
    };
    let (start, end) = (minutes(a)?, minutes(b)?);
    (start != end && !zone.is_empty()).then_some(Window { start, end, zone })
}

/// Check and normalise windows given by a caller (22023 for a bad one).
pub fn validate(windows: &[String]) -> Vec<String> {
    windows
        .iter()
        .map(|w| {
            let bad = |why: &str| -> ! {
                raise(
                    Code::ERRCODE_INVALID_PARAMETER_VALUE,
                    format!("invalid maintenance window {}: {why}", spi::literal(w)),
                    "Write 'HH:MM-HH:MM' with an optional time zone, e.g. '01:00-05:00 Europe/Berlin' or '22:00-02:00 UTC'.",
                )
            };
            let Some(p) = parse(w) else { bad("not of the form HH:MM-HH:MM [zone]") };
            let known = spi::one::<bool>(
                "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_timezone_names WHERE name = $1) \
                     OR EXISTS (SELECT 1 FROM pg_catalog.pg_timezone_abbrevs WHERE abbrev = $1)",
                &[p.zone.as_str().into()],
            );
            if known != Some(true) {
                bad(&format!("unknown time zone {}", spi::literal(&p.zone)));
            }
            format!("{:02}:{:02}-{:02}:{:02} {}", p.start / 60, p.start % 60, p.end / 60, p.end % 60, p.zone)
        })
        .collect()
}

/// None when now is inside one of `windows` (or there are none); else why
/// the job waits.
pub fn outside(windows: &[String]) -> Option<String> {
    if windows.is_empty() {
        return None;
    }
    let inside = windows.iter().filter_map(|w| parse(w)).any(|w| {
        let now = spi::one::<i32>(
            "SELECT (extract(hour FROM t) * 60 + extract(minute FROM t))::int FROM (SELECT (clock_timestamp() AT TIME ZONE $1)::time AS t) x",
            &[w.zone.as_str().into()],
        )
        .unwrap_or(0) as u32;
        if w.start < w.end { w.start <= now && now < w.end } else { now >= w.start || now < w.end }
    });
    (!inside).then(|| format!("outside its maintenance window(s) {}", windows.join(", ")))
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn windows_parse_and_wrap() {
        let w = parse("22:00-02:00 Europe/Berlin").unwrap();
        assert_eq!((w.start, w.end, w.zone.as_str()), (1320, 120, "Europe/Berlin"));
        assert_eq!(parse("01:00-05:00").unwrap().zone, "UTC");
        assert_eq!(parse("00:00-24:00").unwrap().end, 1440);
        assert!(parse("25:00-02:00").is_none());
        assert!(parse("01:00-01:00").is_none());
        assert!(parse("1-2").is_none());
        assert!(parse("24:30-01:00").is_none());
    }
}
