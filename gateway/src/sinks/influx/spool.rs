//! The readings lane on disk: reading batches as records of a [`DiskQueue`] in
//! `<data_dir>/readings`, so that what the time-series store has not confirmed survives a
//! server outage, a restart, SIGKILL and (up to the last sync) a power cut.
//!
//! Synchronous `std::fs`, like the queue: the writer calls it from `spawn_blocking`, never
//! on the runtime's threads. The record codec ([`encode_record`], [`decode_record`]) is
//! pure.
//!
//! # Record format
//! The queue frames and checksums each record (see `crate::sinks::queue`); inside, one reading
//! batch: `version: u8 (1) | lines: u32 LE | ts_ms: i64 LE | line protocol (UTF-8)`, a
//! 13-byte header. `ts_ms` is the batch's own timestamp, by which it ages
//! (`queue_max_age_s`); `lines` is checked against the text's line count when read back.
//! A record that passes the queue's checksum but not these checks (a future version, a
//! bug) is dropped and counted like a damaged one, never sent.
//!
//! # Bounds
//! The queue's `max_bytes` is `queue_max_bytes`, in segments of a sixteenth of it (4 KiB to
//! 4 MiB): when full, the oldest segment goes, so a full lane sheds about 6 % of what it
//! holds at a time and keeps the newest readings.
//!
//! # When the disk fails
//! If the directory cannot be opened at start, every reading is held in memory until the
//! next start (bounded by `queue_max_batches`). If one append fails (a full or failing
//! disk), that batch is held in memory and the next one tries the disk again. Either way
//! [`DiskFigures::failing`] says so and the change is logged once. Alarms do not share
//! anything with this lane (their own queue, thread and fault).

use std::path::{Path, PathBuf};

use super::queue::{Arrived, DiskFigures};
use crate::sinks::queue::{DiskQueue, QueueError, QueueLimits};

/// The record format's version byte.
const VERSION: u8 = 1;
/// Bytes in front of the line protocol in a record.
pub const RECORD_HEADER_BYTES: usize = 13;
/// Smallest and largest segment file.
const MIN_SEGMENT_BYTES: u64 = 4 << 10;
const MAX_SEGMENT_BYTES: u64 = 4 << 20;

/// One reading batch as a record payload.
pub fn encode_record(lines: usize, ts_ms: i64, text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(RECORD_HEADER_BYTES + text.len());
    out.push(VERSION);
    out.extend_from_slice(&u32::try_from(lines).unwrap_or(u32::MAX).to_le_bytes());
    out.extend_from_slice(&ts_ms.to_le_bytes());
    out.extend_from_slice(text.as_bytes());
    out
}

/// A record payload read back: (lines, ts_ms, text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub lines: usize,
    pub ts_ms: i64,
    pub text: String,
}

/// Why a record payload is not a reading batch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("shorter than the {RECORD_HEADER_BYTES}-byte record header")]
    Short,
    #[error("record version {0}, this gateway reads version {VERSION}")]
    Version(u8),
    #[error("the line protocol is not UTF-8")]
    NotUtf8,
    #[error("the header says {header} lines, the text has {text}")]
    LineCount { header: usize, text: usize },
}

/// Decode a record payload. Pure; any bytes in, never a panic.
pub fn decode_record(payload: &[u8]) -> Result<Record, RecordError> {
    let Some((header, text)) = payload.split_first_chunk::<RECORD_HEADER_BYTES>() else {
        return Err(RecordError::Short);
    };
    let [version, l0, l1, l2, l3, t0, t1, t2, t3, t4, t5, t6, t7] = *header;
    if version != VERSION {
        return Err(RecordError::Version(version));
    }
    let lines = u32::from_le_bytes([l0, l1, l2, l3]) as usize;
    let ts_ms = i64::from_le_bytes([t0, t1, t2, t3, t4, t5, t6, t7]);
    let text = std::str::from_utf8(text).map_err(|_| RecordError::NotUtf8)?;
    let counted = text.bytes().filter(|b| *b == b'\n').count();
    if counted != lines || lines == 0 {
        return Err(RecordError::LineCount {
            header: lines,
            text: counted,
        });
    }
    Ok(Record {
        lines,
        ts_ms,
        text: text.to_string(),
    })
}

/// The disk queue's limits for a lane of `max_bytes`.
pub fn limits(max_bytes: u64) -> QueueLimits {
    let segment_max_bytes = (max_bytes / 16).clamp(MIN_SEGMENT_BYTES, MAX_SEGMENT_BYTES);
    QueueLimits {
        segment_max_bytes,
        max_bytes: Some(max_bytes.max(segment_max_bytes)),
    }
}

/// A record found at start, to wait again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Restored {
    pub seq: u64,
    pub lines: usize,
    pub ts_ms: i64,
}

/// The readings lane: the disk queue, or nothing when it could not be opened.
#[derive(Debug)]
pub struct Spool {
    queue: Option<DiskQueue>,
    dir: PathBuf,
    /// The last append or sync failed (or the queue could not be opened).
    failing: bool,
    /// Records that passed the queue's checks but did not decode.
    undecodable: u64,
}

impl Spool {
    /// Open `dir` and read back what waits there, oldest first. Never fails: a lane that
    /// cannot be opened is a lane in memory, logged and shown in [`DiskFigures::failing`].
    pub fn open(dir: &Path, max_bytes: u64) -> (Spool, Vec<Restored>) {
        let mut spool = Spool {
            queue: None,
            dir: dir.to_path_buf(),
            failing: false,
            undecodable: 0,
        };
        let mut restored = Vec::new();
        match DiskQueue::open(dir, limits(max_bytes)) {
            Ok((mut queue, recovery)) => {
                if recovery.corrupt_records > 0 || recovery.torn_bytes > 0 {
                    tracing::warn!(
                        dir = %dir.display(),
                        corrupt_records = recovery.corrupt_records,
                        torn_bytes = recovery.torn_bytes,
                        "the readings queue had damaged records or a torn tail; they were skipped"
                    );
                }
                let seqs: Vec<u64> = queue.pending().collect();
                for seq in seqs {
                    match queue.read(seq) {
                        Ok(Some(payload)) => match decode_record(&payload) {
                            Ok(r) => restored.push(Restored {
                                seq,
                                lines: r.lines,
                                ts_ms: r.ts_ms,
                            }),
                            Err(e) => {
                                tracing::warn!(seq, error = %e, "a readings record does not decode; dropped");
                                spool.undecodable += 1;
                                queue.ack(seq);
                            }
                        },
                        Ok(None) => {}
                        // Counted by the queue, which dropped it.
                        Err(QueueError::Damaged { .. }) => {}
                        Err(e) => {
                            // Left on disk: a later start may read it; the bound sheds it
                            // otherwise.
                            tracing::warn!(seq, error = %e, "cannot read a readings record back");
                        }
                    }
                }
                if !restored.is_empty() {
                    tracing::info!(
                        dir = %dir.display(),
                        batches = restored.len(),
                        bytes = queue.stats().bytes_on_disk,
                        "readings from before the restart wait to be written"
                    );
                }
                spool.queue = Some(queue);
            }
            Err(e) => {
                tracing::error!(dir = %dir.display(), error = %e, "cannot open the readings queue; readings are held in memory only (queue_max_batches) until the next start");
                spool.failing = true;
            }
        }
        (spool, restored)
    }

    /// A lane without a disk: every batch stays in memory. For when opening failed.
    pub fn in_memory(dir: &Path) -> Spool {
        Spool {
            queue: None,
            dir: dir.to_path_buf(),
            failing: true,
            undecodable: 0,
        }
    }

    /// Append one batch. `None`: it could not be written and stays in memory.
    pub fn append(&mut self, arrived: &Arrived) -> Option<u64> {
        let queue = self.queue.as_mut()?;
        let record = encode_record(arrived.lines, arrived.ts_ms, &arrived.text);
        match queue.append(&record) {
            Ok(seq) => {
                if self.failing {
                    self.failing = false;
                    tracing::info!(dir = %self.dir.display(), "the readings queue writes to disk again");
                }
                Some(seq)
            }
            Err(e) => {
                self.note_failure(&e);
                None
            }
        }
    }

    /// fsync what was appended and the delivered mark; delete delivered segments.
    pub fn sync(&mut self) {
        if let Some(queue) = self.queue.as_mut()
            && let Err(e) = queue.sync()
        {
            self.note_failure(&e);
        }
    }

    /// The line protocol of record `seq`, or `None` when it is gone or damaged (counted).
    pub fn read(&mut self, seq: u64) -> Option<String> {
        let queue = self.queue.as_mut()?;
        match queue.read(seq) {
            Ok(Some(payload)) => match decode_record(&payload) {
                Ok(r) => Some(r.text),
                Err(e) => {
                    tracing::warn!(seq, error = %e, "a readings record does not decode; dropped");
                    self.undecodable += 1;
                    queue.ack(seq);
                    None
                }
            },
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(seq, error = %e, "cannot read a readings record back; dropped");
                if !matches!(e, QueueError::Damaged { .. }) {
                    // An I/O error: the record is not sent, so it must not stay pending
                    // for ever either. Counted with the damaged ones.
                    self.undecodable += 1;
                    queue.ack(seq);
                }
                None
            }
        }
    }

    /// The store confirmed (or refused for good) these records. Memory only until the next
    /// [`sync`](Self::sync).
    pub fn ack(&mut self, seqs: &[u64]) {
        if let Some(queue) = self.queue.as_mut() {
            for &seq in seqs {
                queue.ack(seq);
            }
        }
    }

    pub fn is_pending(&self, seq: u64) -> bool {
        self.queue.as_ref().is_some_and(|q| q.is_pending(seq))
    }

    /// Records the disk queue shed to stay under its bytes, since start.
    pub fn records_shed(&self) -> u64 {
        self.queue.as_ref().map_or(0, |q| q.stats().records_shed)
    }

    pub fn figures(&self) -> DiskFigures {
        let stats = self
            .queue
            .as_ref()
            .map(DiskQueue::stats)
            .unwrap_or_default();
        DiskFigures {
            bytes: stats.bytes_on_disk,
            fsyncs: stats.fsyncs,
            corrupt_records: stats.corrupt_records + self.undecodable,
            torn_bytes: stats.torn_bytes,
            failing: self.failing,
        }
    }

    fn note_failure(&mut self, e: &QueueError) {
        if !self.failing {
            tracing::error!(dir = %self.dir.display(), error = %e, "the readings queue cannot write to disk; new readings are held in memory only (queue_max_batches)");
        } else {
            tracing::debug!(error = %e, "readings queue write failed again");
        }
        self.failing = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn arrived(text: &str, ts_ms: i64) -> Arrived {
        Arrived {
            text: text.to_string(),
            lines: text.lines().count(),
            ts_ms,
            since: Instant::now(),
        }
    }

    #[test]
    fn a_record_decodes_to_what_was_encoded() {
        let text = "m,device=d value=1 1\nm,device=d value=2 2\n";
        let record = encode_record(2, -5, text);
        assert_eq!(record.len(), RECORD_HEADER_BYTES + text.len());
        assert_eq!(
            decode_record(&record),
            Ok(Record {
                lines: 2,
                ts_ms: -5,
                text: text.into()
            })
        );
    }

    #[test]
    fn records_that_are_not_reading_batches_are_refused_by_reason() {
        let good = encode_record(1, 7, "a 1\n");
        assert_eq!(decode_record(&good[..5]), Err(RecordError::Short));
        let mut v2 = good.clone();
        v2[0] = 2;
        assert_eq!(decode_record(&v2), Err(RecordError::Version(2)));
        let mut bad_utf8 = good.clone();
        bad_utf8[RECORD_HEADER_BYTES] = 0xff;
        assert_eq!(decode_record(&bad_utf8), Err(RecordError::NotUtf8));
        assert_eq!(
            decode_record(&encode_record(3, 7, "a 1\n")),
            Err(RecordError::LineCount { header: 3, text: 1 })
        );
        assert!(decode_record(&encode_record(0, 7, "")).is_err());
    }

    #[test]
    fn random_bytes_never_make_the_decoder_panic() {
        let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
        for len in 0..400 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    if seed.is_multiple_of(3) {
                        b'\n'
                    } else {
                        seed as u8
                    }
                })
                .collect();
            let _ = decode_record(&bytes);
        }
    }

    #[test]
    fn segments_are_a_sixteenth_of_the_bound_within_4_kib_and_4_mib() {
        assert_eq!(limits(64 << 20).segment_max_bytes, 4 << 20);
        assert_eq!(limits(1 << 30).segment_max_bytes, 4 << 20);
        assert_eq!(limits(1 << 20).segment_max_bytes, 64 << 10);
        assert_eq!(limits(64 << 10).segment_max_bytes, 4 << 10);
        let tiny = limits(1000);
        assert_eq!(tiny.max_bytes, Some(4 << 10));
    }

    #[test]
    fn what_was_appended_and_not_acknowledged_is_restored_after_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (mut spool, restored) = Spool::open(dir.path(), 1 << 20);
        assert!(restored.is_empty());
        let a = spool.append(&arrived("a 1\n", 10)).unwrap();
        let b = spool.append(&arrived("b 1\nb 2\n", 20)).unwrap();
        let c = spool.append(&arrived("c 1\n", 30)).unwrap();
        assert_eq!(spool.read(b).as_deref(), Some("b 1\nb 2\n"));
        spool.ack(&[a]);
        spool.sync();
        spool.ack(&[c]); // not synced: comes back (at-least-once)
        drop(spool);
        let (spool, restored) = Spool::open(dir.path(), 1 << 20);
        assert_eq!(
            restored,
            [
                Restored {
                    seq: b,
                    lines: 2,
                    ts_ms: 20
                },
                Restored {
                    seq: c,
                    lines: 1,
                    ts_ms: 30
                }
            ]
        );
        assert!(!spool.figures().failing);
    }

    #[test]
    fn a_lane_that_cannot_be_opened_holds_readings_in_memory_and_says_so() {
        let dir = tempfile::tempdir().unwrap();
        // A file where the directory should be.
        let blocked = dir.path().join("readings");
        std::fs::write(&blocked, b"not a directory").unwrap();
        let (mut spool, restored) = Spool::open(&blocked, 1 << 20);
        assert!(restored.is_empty());
        assert!(spool.figures().failing);
        assert_eq!(spool.append(&arrived("a 1\n", 1)), None);
        assert_eq!(spool.read(0), None);
        spool.sync();
    }

    #[test]
    fn a_full_lane_sheds_its_oldest_records_and_reports_them() {
        let dir = tempfile::tempdir().unwrap();
        let (mut spool, _) = Spool::open(dir.path(), 64 << 10);
        let line = format!("{}\n", "x".repeat(200));
        let seqs: Vec<u64> = (0..1000)
            .map(|i| spool.append(&arrived(&line, i)).unwrap())
            .collect();
        let shed = spool.records_shed();
        assert!(shed > 0);
        assert!(spool.figures().bytes <= 64 << 10);
        // The oldest went, the newest stayed.
        assert!(!spool.is_pending(seqs[0]));
        assert!(spool.is_pending(seqs[999]));
        let kept = seqs.iter().filter(|s| spool.is_pending(**s)).count() as u64;
        assert_eq!(kept + shed, 1000);
    }
}
