//! Time, as the gateway uses it.
//!
//! A Raspberry Pi has no battery clock: it boots with the time it saved last (fake-hwclock)
//! or 1970, and NTP steps it later by minutes, hours or decades. So:
//!
//! - every "how long" (on-delays, communication loss, staleness, delivery age) runs on
//!   [`Stamp::mono_ms`], a monotonic clock that never steps (`CLOCK_MONOTONIC`);
//! - wall time ([`Stamp::wall_ms`]) is only written on what people read (an alarm's time on
//!   the board, a reading's time in the time-series store), never compared to decide
//!   anything;
//! - the order of an alarm's events is the gateway's sequence ([`BootCounter`] plus a
//!   per-boot counter in the watch), never a comparison of wall clocks.
//!
//! Under `faketime`, set `FAKETIME_DONT_FAKE_MONOTONIC=1`: the monotonic clock stays real
//! and only the wall clock is faked, which is exactly what a Pi's NTP step looks like.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// One moment, on both clocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// Milliseconds since the gateway started, from the monotonic clock.
    pub mono_ms: i64,
    /// Milliseconds since the Unix epoch, from the wall clock (may be wrong or step).
    pub wall_ms: i64,
}

impl Stamp {
    /// A stamp with both clocks at the same value, for tests.
    pub fn at(ms: i64) -> Stamp {
        Stamp {
            mono_ms: ms,
            wall_ms: ms,
        }
    }
}

/// The gateway's clock: monotonic time from one origin, and the wall clock.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    origin: Instant,
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}

impl Clock {
    pub fn new() -> Clock {
        Clock {
            origin: Instant::now(),
        }
    }

    pub fn now(&self) -> Stamp {
        Stamp {
            mono_ms: i64::try_from(self.origin.elapsed().as_millis()).unwrap_or(i64::MAX),
            wall_ms: wall_ms(),
        }
    }
}

/// Milliseconds since the Unix epoch, from the wall clock (0 if it reads before 1970).
pub fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Wall-clock seconds below this (2025-01-01) mean the clock has not been set: a Pi
/// that booted without a network. Such a clock never raises the boot counter.
const PLAUSIBLE_WALL_S: u64 = 1_735_689_600;

/// The gateway's boot counter, kept in `<data_dir>/boot`: a number that is larger at every
/// start, so `(boot, seq)` orders every event this gateway ever sent.
///
/// The next value is the larger of the stored value plus one and the wall clock in seconds
/// when that clock is plausible. The wall clock only ever raises it, so a data directory
/// that was wiped (or a new SD card) still starts above the old gateway's counter as long as
/// the clock is set, and a clock that is wrong never lowers it.
#[derive(Debug)]
pub struct BootCounter {
    pub boot: u64,
    /// Whether the new value is on disk. When it is not (disk full, read-only), the gateway
    /// runs on and reports it: the next start may repeat this boot number.
    pub persisted: Result<(), String>,
}

impl BootCounter {
    /// Read, raise and store the counter. Never fails: a counter that cannot be read
    /// starts from the wall clock (or 1), and one that cannot be written says so.
    pub fn next(data_dir: &Path, wall_ms: i64) -> BootCounter {
        let path = data_dir.join("boot");
        let stored = std::fs::read_to_string(&path)
            .ok()
            .and_then(|t| t.trim().parse::<u64>().ok())
            .unwrap_or(0);
        let wall_s = u64::try_from(wall_ms / 1000).unwrap_or(0);
        let from_clock = if wall_s >= PLAUSIBLE_WALL_S {
            wall_s
        } else {
            0
        };
        let boot = stored.saturating_add(1).max(from_clock);
        let persisted = write_atomically(&path, format!("{boot}\n").as_bytes())
            .map_err(|e| format!("cannot store the boot counter in {}: {e}", path.display()));
        BootCounter { boot, persisted }
    }
}

/// Replace `path` with `bytes` so that a power cut leaves either the old or the new file:
/// write a temporary file, fsync it, rename it over, fsync the directory.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    std::fs::create_dir_all(&dir)?;
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(&dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_boot_counter_grows_at_every_start_and_survives_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let first = BootCounter::next(dir.path(), 0);
        assert_eq!(first.boot, 1);
        assert!(first.persisted.is_ok());
        assert_eq!(BootCounter::next(dir.path(), 0).boot, 2);
        assert_eq!(BootCounter::next(dir.path(), 0).boot, 3);
    }

    #[test]
    fn a_set_clock_raises_the_counter_and_a_clock_stepped_back_never_lowers_it() {
        let dir = tempfile::tempdir().unwrap();
        let now_s: u64 = 1_800_000_000;
        let set = BootCounter::next(dir.path(), (now_s * 1000) as i64);
        assert_eq!(set.boot, now_s);
        // The Pi boots in 1970 next time: the counter still grows.
        assert_eq!(BootCounter::next(dir.path(), 0).boot, now_s + 1);
        // A clock a day behind does not lower it either.
        let behind = BootCounter::next(dir.path(), ((now_s - 86_400) * 1000) as i64);
        assert_eq!(behind.boot, now_s + 2);
    }

    #[test]
    fn a_wiped_data_dir_with_a_set_clock_still_starts_above_the_old_counter() {
        let old = tempfile::tempdir().unwrap();
        let t0: u64 = 1_800_000_000;
        let before = BootCounter::next(old.path(), (t0 * 1000) as i64).boot;
        let fresh = tempfile::tempdir().unwrap();
        let after = BootCounter::next(fresh.path(), ((t0 + 60) * 1000) as i64).boot;
        assert!(after > before);
    }

    #[test]
    fn a_garbled_counter_file_does_not_stop_the_gateway() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("boot"), b"\xff\x00garbage").unwrap();
        let b = BootCounter::next(dir.path(), 0);
        assert_eq!(b.boot, 1);
        assert!(b.persisted.is_ok());
    }

    #[test]
    fn an_unwritable_data_dir_is_reported_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-dir");
        std::fs::write(&file, b"x").unwrap();
        let b = BootCounter::next(&file, 0);
        assert_eq!(b.boot, 1);
        assert!(b.persisted.is_err());
    }
}
