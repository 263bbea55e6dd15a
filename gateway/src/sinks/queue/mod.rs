//! The gateway's durable on-disk queue: one [`DiskQueue`] per lane (alarms, readings), each
//! in its own directory.
//!
//! Synchronous `std::fs` only: the caller runs it on a blocking thread. One `DiskQueue` per
//! directory at a time; nothing here locks the directory against a second process.
//!
//! # On-disk format
//!
//! A queue directory holds:
//! - segment files `seg-<first seq, 20 digits zero-padded>.q`, e.g.
//!   `seg-00000000000000000042.q`. Each is a run of records with strictly increasing seqs,
//!   every one at least the seq in its name and below the next segment's. A segment holds
//!   only whole records; a record never spans two files. The segment with the highest name
//!   is the *open* segment, the only one appended to.
//! - records framed as `len: u32 LE | crc: u32 LE | seq: u64 LE | payload`, where `len` is
//!   the payload's length (1 to [`MAX_RECORD_BYTES`]) and `crc` is CRC-32/IEEE over the
//!   eight seq bytes followed by the payload: 16 bytes of framing per record. No padding,
//!   no file header.
//! - `acked`, 12 bytes: `floor: u64 LE | crc: u32 LE` (CRC-32/IEEE of the eight floor
//!   bytes). Every seq below the floor has been acknowledged by the receiver (or shed) and
//!   is never delivered again. It is rewritten atomically: `acked.tmp` is written and
//!   fsynced, then renamed over `acked`. The directory is not fsynced for that rename alone
//!   (only when segments are created or deleted): a power cut that loses the rename brings
//!   back an older floor, so more records are delivered again, never fewer. A missing file
//!   means floor 0.
//!
//! # Invariants
//! - Seqs strictly increase: within a segment, from one segment to the next, and across
//!   restarts. [`DiskQueue::open`] continues after the highest seq found on disk, at or
//!   after the floor, and at or after the open segment's name (after it when that segment
//!   holds any bytes, so the next segment's name is new). A seq is never handed out twice,
//!   except that
//!   a record lost in a crash *before it was synced* may see its seq given to a later
//!   record; callers that send only durable records ([`DiskQueue::durable_seq`]) never sent
//!   the lost one. A failed append uses up its seq.
//! - Nothing is durable until [`DiskQueue::sync`] returns `Ok`: it fdatasyncs every segment
//!   written since the last sync and, when a segment was created or deleted, the directory.
//!   Appends reach the file at once (one `write` per record, no user-space buffer), so an
//!   I/O error belongs to the record being appended and to no earlier one.
//! - Nothing is deleted before the receiver acknowledged it, except on the readings lane
//!   when it is full (below) and records whose bytes fail their checks; every such loss is
//!   counted.
//! - Acknowledgements ([`DiskQueue::ack`]) live in memory. The floor, the lowest seq not yet
//!   acknowledged, is written to `acked` by `sync` when it has moved, and before segments
//!   are deleted. After a crash, records acknowledged above the last written floor come
//!   back: delivery is at-least-once, and receivers drop duplicates by the event id each
//!   payload carries (never by this queue's seq).
//! - A segment that is not the open one and holds no unacknowledged record is deleted by
//!   the next `sync` (and by an append that needs room on the readings lane). The open
//!   segment is never deleted: its name keeps seqs increasing even when everything was
//!   acknowledged.
//! - Bounded: with [`QueueLimits::max_bytes`] set (the readings lane), an append that would
//!   take the segment files past it first deletes segments holding only acknowledged
//!   records, then whole oldest segments, counting their unacknowledged records as shed
//!   (`records_shed`). The newest records are kept. Without it (the alarm lane) nothing is
//!   ever shed and the disk filling up fails the append instead.
//! - Memory: about 24 bytes per record on disk (its seq, offset and length), plus one read
//!   and one write handle.
//!
//! # Recovery
//! [`DiskQueue::open`] never refuses to start because of what it finds in the files; only
//! I/O errors (a directory it cannot create, a file it cannot open) stop it. It reads every
//! segment from the start:
//! - a complete frame with a bad checksum, or with a seq outside its segment's range or not
//!   above the record before it, is skipped and counted (`corrupt_records`);
//! - a length field that cannot be right (zero, or above [`MAX_RECORD_BYTES`]) or a frame
//!   that runs past the end of the file ends that segment: the rest is cut off (truncated)
//!   and counted (`torn_bytes`). This is what a power cut in the middle of a write, or a
//!   zero-filled tail, looks like. A damaged length in the middle of a segment costs the
//!   records after it in that segment;
//! - an unreadable `acked` file is reported (`ack_floor_lost`) and read as floor 0: every
//!   record still on disk is delivered again;
//! - records below the floor are acknowledged; segments left with nothing unacknowledged,
//!   other than the last, are deleted. A leftover `acked.tmp` (a crash while the floor was
//!   written) is removed; files not named like a segment are left alone;
//! - every segment kept and the directory are fsynced, so what was found is durable.
//!
//! # Costs
//! A sync that has new records to cover costs one fdatasync (two just after a new segment
//! was started, plus a directory fsync). When acknowledgements moved the floor it also
//! writes `acked`: one more fsync, for `acked.tmp`. A sync with
//! nothing new costs nothing. [`QueueStats::fsyncs`] counts them all.
//!
//! # Known limits
//! - If an fdatasync fails, Linux may already have dropped the pages it could not write and
//!   will not report that again. `sync` returns the error, and the next append starts a new
//!   segment, but the records written between the last good sync and the failure count as
//!   durable after the next good sync although they might not be (PostgreSQL crashes and
//!   replays its log instead). They are still delivered: holding an alarm back for ever
//!   would be worse. Treat a sync error as a failing disk.

mod segment;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use segment::Slot;
pub use segment::{HEADER_BYTES, MAX_RECORD_BYTES};

/// Name of the file holding the ack floor.
const ACKED: &str = "acked";
/// Written first, then renamed over [`ACKED`].
const ACKED_TMP: &str = "acked.tmp";

/// Sizes, from the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueLimits {
    /// An append that would take the open segment past this many bytes starts a new
    /// segment first. Also the unit in which a full readings lane sheds. Default 4 MiB.
    pub segment_max_bytes: u64,
    /// `None`: never shed (the alarm lane). `Some(n)`: the readings lane; segment files
    /// never take more than `n` bytes together, and the oldest segments are deleted to stay
    /// under it. At least `segment_max_bytes`; several times it sheds in smaller steps.
    pub max_bytes: Option<u64>,
}

impl Default for QueueLimits {
    fn default() -> Self {
        QueueLimits {
            segment_max_bytes: 4 << 20,
            max_bytes: None,
        }
    }
}

impl QueueLimits {
    fn check(&self) -> Result<(), QueueError> {
        if self.segment_max_bytes == 0 {
            return Err(QueueError::Limits(
                "segment_max_bytes must be at least 1".into(),
            ));
        }
        match self.max_bytes {
            Some(max) if max < self.segment_max_bytes => Err(QueueError::Limits(format!(
                "max_bytes ({max}) must be at least segment_max_bytes ({}): the queue sheds whole segments",
                self.segment_max_bytes
            ))),
            Some(max) if max < (HEADER_BYTES + 1) as u64 => Err(QueueError::Limits(format!(
                "max_bytes ({max}) cannot hold a single record ({} bytes at least)",
                HEADER_BYTES + 1
            ))),
            _ => Ok(()),
        }
    }

    /// The largest payload this queue takes: [`MAX_RECORD_BYTES`], or less when a whole
    /// frame would not fit in `max_bytes`.
    pub fn max_record_bytes(&self) -> usize {
        match self.max_bytes {
            Some(max) => {
                let fits = max.saturating_sub(HEADER_BYTES as u64);
                MAX_RECORD_BYTES.min(usize::try_from(fits).unwrap_or(usize::MAX))
            }
            None => MAX_RECORD_BYTES,
        }
    }
}

/// What [`DiskQueue::open`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Recovery {
    /// Unacknowledged records found: they will be delivered (again).
    pub records: u64,
    /// Complete frames skipped because they failed their checks.
    pub corrupt_records: u64,
    /// Bytes cut off segment tails: partial frames, or garbage after a length field that
    /// cannot be right.
    pub torn_bytes: u64,
    /// The `acked` file could not be read, so every record on disk counts as unacknowledged.
    pub ack_floor_lost: bool,
}

/// The queue's state, for metrics and health checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QueueStats {
    /// Records appended and not yet acknowledged or shed.
    pub pending: u64,
    /// Bytes in segment files (the 12-byte `acked` file not counted).
    pub bytes_on_disk: u64,
    /// Segment files, the open one included.
    pub segments: u64,
    /// Unacknowledged records deleted to stay under `max_bytes`, since open.
    pub records_shed: u64,
    /// Records skipped because their bytes failed their checks: at open, or when read back.
    pub corrupt_records: u64,
    /// Bytes cut off segment tails at open.
    pub torn_bytes: u64,
    /// fsync and fdatasync calls made since open (segments, `acked.tmp`, the directory).
    pub fsyncs: u64,
    /// The highest seq covered by a completed sync (or found at open).
    pub durable_seq: Option<u64>,
}

/// Why the queue could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("{action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("a record of {size} bytes is larger than this queue takes ({max} bytes)")]
    RecordTooLarge { size: usize, max: usize },
    #[error("an empty record cannot be queued")]
    EmptyRecord,
    #[error("invalid queue limits: {0}")]
    Limits(String),
    #[error(
        "record {seq} in {} no longer matches its checksum; it was dropped from the queue",
        path.display()
    )]
    Damaged { seq: u64, path: PathBuf },
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> QueueError {
    move |source| QueueError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// One segment file and the records in it.
#[derive(Debug)]
struct Segment {
    path: PathBuf,
    /// Bytes of whole frames; appends go here.
    bytes: u64,
    /// Every readable record, in file order (so in seq order).
    slots: Vec<Slot>,
    /// Records not acknowledged.
    live: usize,
    /// Every slot before this index is acknowledged, so the oldest pending record is found
    /// without walking over the acknowledged ones again.
    first_live: usize,
}

impl Segment {
    fn empty(path: PathBuf) -> Segment {
        Segment {
            path,
            bytes: 0,
            slots: Vec::new(),
            live: 0,
            first_live: 0,
        }
    }

    fn skip_acked(&mut self) {
        while self.slots.get(self.first_live).is_some_and(|s| s.acked) {
            self.first_live += 1;
        }
    }

    fn oldest_pending(&self) -> Option<u64> {
        self.slots[self.first_live..]
            .iter()
            .find(|s| !s.acked)
            .map(|s| s.seq)
    }
}

/// A write the tests make fail, to check what a failing disk leaves behind.
#[cfg(test)]
#[derive(Debug, Clone, Copy)]
pub(crate) enum Fault {
    /// The next record's write puts this many bytes on disk, then fails with ENOSPC.
    PartialWrite(usize),
}

/// A durable, append-only queue of records on disk, with acknowledgements. See the module
/// docs for the format and the guarantees.
#[derive(Debug)]
pub struct DiskQueue {
    dir: PathBuf,
    limits: QueueLimits,
    /// Every segment on disk by first seq. Never empty; the last one is the open segment.
    segments: BTreeMap<u64, Segment>,
    /// Write handle of the open segment, positioned at its end.
    writer: File,
    /// The open segment has writes no sync has covered.
    writer_unsynced: bool,
    /// Closed segments with writes no sync has covered (rolled since the last sync), by
    /// first seq, with their handles.
    unsynced_closed: Vec<(u64, File)>,
    /// A segment was created or deleted, or `acked` renamed, since the directory's last fsync.
    dir_unsynced: bool,
    /// The next append must start a new segment: a failed write could not be undone, or an
    /// fdatasync of the open segment failed.
    must_roll: bool,
    /// The seq the next append gets.
    next_seq: u64,
    /// The seq of the last record appended (or found at open).
    last_seq: Option<u64>,
    durable_seq: Option<u64>,
    /// The floor last written to `acked` (or read at open).
    floor_on_disk: u64,
    pending: u64,
    bytes_on_disk: u64,
    records_shed: u64,
    corrupt_records: u64,
    torn_bytes: u64,
    fsyncs: u64,
    /// Read handle of one segment, by first seq: draining reads one segment after another.
    reader: Option<(u64, File)>,
    /// The frame being appended; kept to reuse its allocation.
    frame: Vec<u8>,
    #[cfg(test)]
    fault: Option<Fault>,
}

impl DiskQueue {
    /// Open the queue in `dir`, creating it if needed, and recover what is on disk (see the
    /// module docs). Fails only on I/O errors and on limits that cannot work.
    pub fn open(dir: &Path, limits: QueueLimits) -> Result<(DiskQueue, Recovery), QueueError> {
        limits.check()?;
        fs::create_dir_all(dir).map_err(io_error("creating", dir))?;
        let (floor_on_disk, ack_floor_lost) = read_floor(&dir.join(ACKED));
        let tmp = dir.join(ACKED_TMP);
        match fs::remove_file(&tmp) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(io_error("removing", &tmp)(e));
            }
            _ => {}
        }

        let mut firsts = Vec::new();
        for entry in fs::read_dir(dir).map_err(io_error("listing", dir))? {
            let entry = entry.map_err(io_error("listing", dir))?;
            let is_file = entry.file_type().is_ok_and(|t| t.is_file());
            if let Some(first) = entry
                .file_name()
                .to_str()
                .and_then(segment::parse_file_name)
                && is_file
            {
                firsts.push(first);
            }
        }
        firsts.sort_unstable();

        let mut recovery = Recovery {
            ack_floor_lost,
            ..Recovery::default()
        };
        let mut fsyncs = 0;
        let mut segments = BTreeMap::new();
        for (i, &first) in firsts.iter().enumerate() {
            let path = dir.join(segment::file_name(first));
            let end = firsts.get(i + 1).copied().unwrap_or(u64::MAX);
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(io_error("opening", &path))?;
            let scan = segment::scan(&file, first..end).map_err(io_error("reading", &path))?;
            if scan.good_len < scan.file_len {
                file.set_len(scan.good_len)
                    .map_err(io_error("truncating", &path))?;
            }
            // Data written before a crash of this process (not of the machine) may still
            // sit in the page cache only; after this it is on disk.
            file.sync_data().map_err(io_error("syncing", &path))?;
            fsyncs += 1;
            recovery.corrupt_records += scan.corrupt;
            recovery.torn_bytes += scan.file_len - scan.good_len;
            let mut seg = Segment {
                path,
                bytes: scan.good_len,
                slots: scan.records,
                live: 0,
                first_live: 0,
            };
            for slot in &mut seg.slots {
                slot.acked = slot.seq < floor_on_disk;
            }
            seg.live = seg.slots.iter().filter(|s| !s.acked).count();
            seg.skip_acked();
            segments.insert(first, seg);
        }

        let last_seq = segments
            .values()
            .filter_map(|s| s.slots.last())
            .map(|s| s.seq)
            .max();
        // Past the last segment's name too when that segment holds any bytes (even only
        // damaged ones): the next segment gets the next seq as its name, which must be new.
        let last_name = segments.last_key_value().map(|(&first, s)| {
            if s.bytes > 0 {
                first.saturating_add(1)
            } else {
                first
            }
        });
        let next_seq = [
            Some(floor_on_disk),
            last_seq.map(|s| s.saturating_add(1)),
            last_name,
        ]
        .into_iter()
        .flatten()
        .max()
        .unwrap_or(0);

        // Segments with nothing left to deliver, other than the last.
        let spent: Vec<u64> = segments
            .iter()
            .rev()
            .skip(1)
            .filter(|(_, s)| s.live == 0)
            .map(|(&first, _)| first)
            .collect();
        for first in spent {
            if let Some(seg) = segments.remove(&first) {
                fs::remove_file(&seg.path).map_err(io_error("deleting", &seg.path))?;
            }
        }

        if segments.is_empty() {
            let path = dir.join(segment::file_name(next_seq));
            create_segment(&path)?;
            segments.insert(next_seq, Segment::empty(path));
        }
        let Some((_, open)) = segments.last_key_value() else {
            unreachable!("a segment was created above when none was left")
        };
        let mut writer = OpenOptions::new()
            .write(true)
            .open(&open.path)
            .map_err(io_error("opening", &open.path))?;
        writer
            .seek(SeekFrom::Start(open.bytes))
            .map_err(io_error("seeking in", &open.path))?;

        let pending = segments.values().map(|s| s.live as u64).sum();
        let bytes_on_disk = segments.values().map(|s| s.bytes).sum();
        recovery.records = pending;
        let mut queue = DiskQueue {
            dir: dir.to_path_buf(),
            limits,
            segments,
            writer,
            writer_unsynced: false,
            unsynced_closed: Vec::new(),
            // Truncations and deletions above, and segments the previous run created
            // without syncing, are made durable before anything else happens.
            dir_unsynced: true,
            must_roll: false,
            next_seq,
            last_seq,
            durable_seq: last_seq,
            floor_on_disk,
            pending,
            bytes_on_disk,
            records_shed: 0,
            corrupt_records: recovery.corrupt_records,
            torn_bytes: recovery.torn_bytes,
            fsyncs,
            reader: None,
            frame: Vec::new(),
            #[cfg(test)]
            fault: None,
        };
        queue.sync_dir()?;
        Ok((queue, recovery))
    }

    /// Append one record and return its seq. The record is in the file (the page cache)
    /// when this returns, but not durable until the next [`sync`](Self::sync).
    ///
    /// On the readings lane this may first delete the oldest segments to stay under
    /// `max_bytes` (see the module docs). On an I/O error (a full disk, say) the segment is
    /// cut back to where it was, the record is not in the queue, and the queue stays
    /// usable; the seq is used up.
    pub fn append(&mut self, payload: &[u8]) -> Result<u64, QueueError> {
        let max = self.limits.max_record_bytes();
        if payload.is_empty() {
            return Err(QueueError::EmptyRecord);
        }
        if payload.len() > max {
            return Err(QueueError::RecordTooLarge {
                size: payload.len(),
                max,
            });
        }
        let seq = self.next_seq;
        self.next_seq = seq.saturating_add(1);
        let frame_bytes = (HEADER_BYTES + payload.len()) as u64;

        // After this the open segment plus the new frame fit in `segment_max_bytes`, and
        // so in `max_bytes`, unless the frame alone is bigger than a segment.
        let open_bytes = self.open_segment().bytes;
        if self.must_roll
            || (open_bytes > 0 && open_bytes + frame_bytes > self.limits.segment_max_bytes)
        {
            self.roll(seq)?;
        }
        self.make_room(seq, frame_bytes)?;

        segment::encode(seq, payload, &mut self.frame);
        let (&first, open) = self.open_segment_entry();
        let offset = open.bytes;
        if let Err(source) = self.write_frame() {
            // Cut the segment back to its last whole record. If that fails too, the next
            // append starts a new segment; the bytes left here read as a torn tail or, at
            // worst, as a record the caller was told failed (delivered once more).
            let undone = self
                .writer
                .set_len(offset)
                .and_then(|()| self.writer.seek(SeekFrom::Start(offset)));
            if undone.is_err() {
                self.must_roll = true;
            }
            return Err(QueueError::Io {
                action: "appending to",
                path: self.dir.join(segment::file_name(first)),
                source,
            });
        }

        let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
        if let Some(open) = self.segments.get_mut(&first) {
            open.slots.push(Slot {
                seq,
                offset,
                len,
                acked: false,
            });
            open.live += 1;
            open.bytes += frame_bytes;
        }
        self.bytes_on_disk += frame_bytes;
        self.pending += 1;
        self.writer_unsynced = true;
        self.last_seq = Some(seq);
        Ok(seq)
    }

    /// Make every record appended so far durable: fdatasync the segments written since the
    /// last sync, then write the floor if it moved, delete segments with nothing left to
    /// deliver, and fsync the directory if any of that changed it. Costs no fsync at all
    /// when nothing changed, so it can be called on a timer.
    ///
    /// [`durable_seq`](Self::durable_seq) moves once the data and the directory are synced,
    /// even if writing the floor or deleting a segment then fails (that error is returned).
    pub fn sync(&mut self) -> Result<(), QueueError> {
        self.sync_data()?;
        let reclaimed = self.reclaim();
        self.sync_dir()?;
        self.durable_seq = self.last_seq;
        reclaimed
    }

    /// The highest seq covered by a completed [`sync`](Self::sync) (or found on disk at
    /// open): that record and every earlier one still queued survive a power cut.
    pub fn durable_seq(&self) -> Option<u64> {
        self.durable_seq
    }

    /// The receiver confirmed `seq`. Acks may come in any order and more than once; seqs
    /// that are unknown, already acknowledged or shed are ignored. Memory only: the disk
    /// catches up at the next [`sync`](Self::sync).
    pub fn ack(&mut self, seq: u64) {
        let Some((_, seg)) = self.segments.range_mut(..=seq).next_back() else {
            return;
        };
        let Ok(i) = seg.slots.binary_search_by_key(&seq, |s| s.seq) else {
            return;
        };
        if seg.slots[i].acked {
            return;
        }
        seg.slots[i].acked = true;
        seg.live -= 1;
        seg.skip_acked();
        self.pending -= 1;
    }

    /// Whether `seq` is still to be delivered: appended, and neither acknowledged nor shed.
    /// The readings lane asks after an append that shed, to forget what it no longer holds.
    pub fn is_pending(&self, seq: u64) -> bool {
        let Some((_, seg)) = self.segments.range(..=seq).next_back() else {
            return false;
        };
        seg.slots
            .binary_search_by_key(&seq, |s| s.seq)
            .is_ok_and(|i| !seg.slots[i].acked)
    }

    /// Unacknowledged seqs, oldest first. Records appended but not yet synced are included;
    /// compare with [`durable_seq`](Self::durable_seq) to send only durable ones.
    pub fn pending(&self) -> impl Iterator<Item = u64> + '_ {
        self.segments.values().flat_map(|seg| {
            seg.slots[seg.first_live..]
                .iter()
                .filter(|s| !s.acked)
                .map(|s| s.seq)
        })
    }

    /// The payload of an unacknowledged record, read back from disk; `None` when `seq` is
    /// not pending. A record whose bytes no longer check out is dropped from the queue,
    /// counted in `corrupt_records`, and reported as [`QueueError::Damaged`].
    pub fn read(&mut self, seq: u64) -> Result<Option<Vec<u8>>, QueueError> {
        let Some((&first, seg)) = self.segments.range(..=seq).next_back() else {
            return Ok(None);
        };
        let Ok(i) = seg.slots.binary_search_by_key(&seq, |s| s.seq) else {
            return Ok(None);
        };
        let slot = seg.slots[i];
        if slot.acked {
            return Ok(None);
        }
        let path = seg.path.clone();
        let file = match &mut self.reader {
            Some((f, file)) if *f == first => file,
            reader => {
                let file = File::open(&path).map_err(io_error("opening", &path))?;
                &mut reader.insert((first, file)).1
            }
        };
        match segment::read_frame(file, &slot).map_err(io_error("reading", &path))? {
            Some(payload) => Ok(Some(payload)),
            None => {
                self.ack(seq);
                self.corrupt_records += 1;
                Err(QueueError::Damaged { seq, path })
            }
        }
    }

    pub fn stats(&self) -> QueueStats {
        QueueStats {
            pending: self.pending,
            bytes_on_disk: self.bytes_on_disk,
            segments: self.segments.len() as u64,
            records_shed: self.records_shed,
            corrupt_records: self.corrupt_records,
            torn_bytes: self.torn_bytes,
            fsyncs: self.fsyncs,
            durable_seq: self.durable_seq,
        }
    }

    /// Make the next write of a record fail as `fault` says.
    #[cfg(test)]
    pub(crate) fn inject(&mut self, fault: Fault) {
        self.fault = Some(fault);
    }

    fn open_segment_entry(&self) -> (&u64, &Segment) {
        // Never empty: `open` creates a segment when none is left, `roll` inserts the new
        // one before anything is removed, and the last segment is never deleted.
        match self.segments.last_key_value() {
            Some(entry) => entry,
            None => unreachable!("a queue always has an open segment"),
        }
    }

    fn open_segment(&self) -> &Segment {
        self.open_segment_entry().1
    }

    /// The lowest seq not yet acknowledged (or, when everything is, the next seq).
    fn floor(&self) -> u64 {
        self.segments
            .values()
            .find(|s| s.live > 0)
            .and_then(Segment::oldest_pending)
            .unwrap_or(self.next_seq)
    }

    fn write_frame(&mut self) -> io::Result<()> {
        #[cfg(test)]
        if let Some(Fault::PartialWrite(bytes)) = self.fault.take() {
            let part = &self.frame[..bytes.min(self.frame.len())];
            self.writer.write_all(part)?;
            return Err(io::Error::new(
                io::ErrorKind::StorageFull,
                "no space left on device (injected)",
            ));
        }
        self.writer.write_all(&self.frame)
    }

    /// Start a new open segment whose first record will be `first_seq`. The old open
    /// segment keeps its data; if it has writes no sync covered, its handle is kept so the
    /// next sync covers them.
    fn roll(&mut self, first_seq: u64) -> Result<(), QueueError> {
        let path = self.dir.join(segment::file_name(first_seq));
        let file = create_segment(&path)?;
        let old = std::mem::replace(&mut self.writer, file);
        if self.writer_unsynced {
            let old_first = *self.open_segment_entry().0;
            self.unsynced_closed.push((old_first, old));
        }
        self.writer_unsynced = false;
        self.must_roll = false;
        self.segments.insert(first_seq, Segment::empty(path));
        self.dir_unsynced = true;
        Ok(())
    }

    /// On the readings lane, make sure the frame of record `seq` (`frame_bytes`) fits under
    /// `max_bytes`: delete segments with nothing left to deliver, then the oldest, counting
    /// what they held as shed. The open segment is never deleted; `append` has made sure
    /// that it and the new frame fit on their own.
    fn make_room(&mut self, seq: u64, frame_bytes: u64) -> Result<(), QueueError> {
        let Some(max) = self.limits.max_bytes else {
            return Ok(());
        };
        if self.bytes_on_disk + frame_bytes <= max {
            return Ok(());
        }
        let open_first = *self.open_segment_entry().0;
        let mut doomed = Vec::new();
        let mut left = self.bytes_on_disk;
        for (&first, seg) in &self.segments {
            if first != open_first && seg.live == 0 {
                doomed.push(first);
                left -= seg.bytes;
            }
        }
        for (&first, seg) in &mut self.segments {
            if left + frame_bytes <= max || first == open_first {
                break;
            }
            if seg.live == 0 {
                continue;
            }
            // Shed: its records leave the queue now, whether or not the file goes at once.
            for slot in &mut seg.slots {
                slot.acked = true;
            }
            self.records_shed += seg.live as u64;
            self.pending -= seg.live as u64;
            seg.live = 0;
            seg.first_live = seg.slots.len();
            left -= seg.bytes;
            doomed.push(first);
        }
        // Best effort: a floor that lags only means more records delivered again after a
        // crash, and freeing the space matters more on a full disk. Never past `seq`, which
        // is not written yet.
        let floor = self.floor().min(seq);
        if floor > self.floor_on_disk {
            let _ = self.write_floor(floor);
        }
        for first in doomed {
            self.delete_segment(first)?;
        }
        Ok(())
    }

    /// fdatasync every segment with writes no sync covered.
    fn sync_data(&mut self) -> Result<(), QueueError> {
        for (first, file) in std::mem::take(&mut self.unsynced_closed) {
            // Not retried on failure: Linux reports a lost write once (see Known limits).
            self.fsyncs += 1;
            if let Err(source) = file.sync_data() {
                return Err(QueueError::Io {
                    action: "syncing",
                    path: self.dir.join(segment::file_name(first)),
                    source,
                });
            }
        }
        if self.writer_unsynced {
            self.fsyncs += 1;
            self.writer_unsynced = false;
            if let Err(source) = self.writer.sync_data() {
                self.must_roll = true;
                return Err(QueueError::Io {
                    action: "syncing",
                    path: self.open_segment().path.clone(),
                    source,
                });
            }
        }
        Ok(())
    }

    fn sync_dir(&mut self) -> Result<(), QueueError> {
        if !self.dir_unsynced {
            return Ok(());
        }
        self.fsyncs += 1;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io_error("syncing", &self.dir))?;
        self.dir_unsynced = false;
        Ok(())
    }

    /// Write the floor if it moved and delete closed segments with nothing left to deliver.
    /// Carries on past a failure and returns the first one.
    fn reclaim(&mut self) -> Result<(), QueueError> {
        let mut first_error = None;
        let floor = self.floor();
        if floor > self.floor_on_disk
            && let Err(e) = self.write_floor(floor)
        {
            first_error = Some(e);
        }
        let open_first = *self.open_segment_entry().0;
        let spent: Vec<u64> = self
            .segments
            .iter()
            .filter(|(first, s)| **first != open_first && s.live == 0)
            .map(|(&first, _)| first)
            .collect();
        for first in spent {
            if let Err(e) = self.delete_segment(first) {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Write `floor` to `acked` atomically: `acked.tmp`, fsync, rename.
    fn write_floor(&mut self, floor: u64) -> Result<(), QueueError> {
        let tmp = self.dir.join(ACKED_TMP);
        let mut bytes = floor.to_le_bytes().to_vec();
        bytes.extend_from_slice(&crc32fast::hash(&floor.to_le_bytes()).to_le_bytes());
        self.fsyncs += 1;
        File::create(&tmp)
            .and_then(|mut f| {
                f.write_all(&bytes)?;
                f.sync_all()
            })
            .map_err(io_error("writing", &tmp))?;
        let acked = self.dir.join(ACKED);
        fs::rename(&tmp, &acked).map_err(io_error("renaming", &acked))?;
        // No directory fsync for the rename alone: if a power cut loses it, the old floor
        // comes back and more records are delivered again (at-least-once), never fewer.
        // That saves one fsync per commit on an SD card. A segment deletion fsyncs the
        // directory, and with it this rename.
        self.floor_on_disk = floor;
        Ok(())
    }

    /// Delete a closed segment whose records are all acknowledged or shed. If the file
    /// cannot be deleted the segment stays, to be tried again.
    fn delete_segment(&mut self, first: u64) -> Result<(), QueueError> {
        let Some(seg) = self.segments.get(&first) else {
            return Ok(());
        };
        if self.reader.as_ref().is_some_and(|(f, _)| *f == first) {
            self.reader = None;
        }
        match fs::remove_file(&seg.path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(io_error("deleting", &seg.path)(e));
            }
            _ => {}
        }
        self.bytes_on_disk -= seg.bytes;
        self.segments.remove(&first);
        // Its data need not reach the disk any more.
        self.unsynced_closed.retain(|(f, _)| *f != first);
        self.dir_unsynced = true;
        Ok(())
    }
}

/// A new, empty segment file. Fails if the name is taken: seqs never repeat, so a file
/// already there is not ours to overwrite.
fn create_segment(path: &Path) -> Result<File, QueueError> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(io_error("creating", path))
}

/// The floor in `acked`, and whether the file was there but unreadable. A missing file is
/// floor 0 (a new queue); an unreadable one is floor 0 too, reported, so that every record
/// still on disk is delivered again rather than lost.
fn read_floor(path: &Path) -> (u64, bool) {
    match fs::read(path) {
        Ok(bytes) => match <[u8; 12]>::try_from(bytes.as_slice()) {
            Ok([f0, f1, f2, f3, f4, f5, f6, f7, c0, c1, c2, c3]) => {
                let floor = [f0, f1, f2, f3, f4, f5, f6, f7];
                if crc32fast::hash(&floor) == u32::from_le_bytes([c0, c1, c2, c3]) {
                    (u64::from_le_bytes(floor), false)
                } else {
                    (0, true)
                }
            }
            Err(_) => (0, true),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => (0, false),
        Err(_) => (0, true),
    }
}
