//! Behaviour of the durable queue as its callers (and an operator after a power cut) see it,
//! and a model test of random appends, syncs, acks and crashes against a small reference
//! model.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use proptest::prelude::*;

use super::*;

/// A typical reading batch, numbered so that every payload differs; all the same length.
fn reading(i: u64) -> Vec<u8> {
    format!(
        r#"{{"schema":1,"gateway":"gw-1","device":"pump-{i:04}","points":[{{"point":"pressure","value":0.42}}]}}"#
    )
    .into_bytes()
}

/// Bytes a record of `payload_len` takes on disk.
fn frame(payload_len: usize) -> u64 {
    (HEADER_BYTES + payload_len) as u64
}

fn limits(segment_max_bytes: u64) -> QueueLimits {
    QueueLimits {
        segment_max_bytes,
        max_bytes: None,
    }
}

fn open(dir: &Path, limits: QueueLimits) -> (DiskQueue, Recovery) {
    DiskQueue::open(dir, limits).unwrap()
}

fn pending(q: &DiskQueue) -> Vec<u64> {
    q.pending().collect()
}

/// Segment files in the directory, oldest first.
fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.is_file()
                && p.file_name()
                    .and_then(|n| n.to_str())
                    .and_then(segment::parse_file_name)
                    .is_some()
        })
        .collect();
    files.sort();
    files
}

fn last_segment(dir: &Path) -> PathBuf {
    segment_files(dir).pop().unwrap()
}

fn append_to_file(path: &Path, bytes: &[u8]) {
    OpenOptions::new()
        .append(true)
        .open(path)
        .unwrap()
        .write_all(bytes)
        .unwrap();
}

fn flip_byte(path: &Path, at: usize) {
    let mut bytes = fs::read(path).unwrap();
    bytes[at] ^= 0x40;
    fs::write(path, bytes).unwrap();
}

#[test]
fn a_record_reads_back_with_the_bytes_it_was_appended_with_before_and_after_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (mut q, recovery) = open(dir.path(), QueueLimits::default());
    assert_eq!(recovery, Recovery::default());
    let seqs: Vec<u64> = (0..3).map(|i| q.append(&reading(i)).unwrap()).collect();
    assert_eq!(seqs, [0, 1, 2]);
    for (i, &seq) in seqs.iter().enumerate() {
        assert_eq!(q.read(seq).unwrap(), Some(reading(i as u64)));
    }
    q.sync().unwrap();
    drop(q);

    let (mut q, recovery) = open(dir.path(), QueueLimits::default());
    assert_eq!(recovery.records, 3);
    assert_eq!(pending(&q), seqs);
    for (i, &seq) in seqs.iter().enumerate() {
        assert_eq!(q.read(seq).unwrap(), Some(reading(i as u64)));
    }
    assert_eq!(q.read(99).unwrap(), None);
}

#[test]
fn seqs_keep_increasing_across_reopens_even_when_everything_was_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let small = limits(2 * frame(reading(0).len()));
    let mut last = None;
    for round in 0..4u64 {
        let (mut q, _) = open(dir.path(), small);
        for i in 0..5 {
            let seq = q.append(&reading(i)).unwrap();
            assert!(last.is_none_or(|l| seq > l), "{seq} after {last:?}");
            last = Some(seq);
        }
        q.sync().unwrap();
        // Every other round, acknowledge everything: the segments go, the seqs go on.
        if round % 2 == 0 {
            for seq in pending(&q) {
                q.ack(seq);
            }
            q.sync().unwrap();
            assert_eq!(q.stats().segments, 1);
        }
    }
}

#[test]
fn acks_in_any_order_delete_a_segment_once_all_its_records_are_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    // Four records to a segment.
    let (mut q, _) = open(dir.path(), limits(4 * frame(reading(0).len())));
    for i in 0..12 {
        q.append(&reading(i)).unwrap();
    }
    q.sync().unwrap();
    assert_eq!(segment_files(dir.path()).len(), 3);

    for seq in [3, 1, 0, 7, 5, 4, 6, 6, 42] {
        q.ack(seq);
    }
    q.sync().unwrap();
    // 4..=7 are all acknowledged; 2 is still waiting, so 0..=3 stay.
    assert_eq!(
        segment_files(dir.path()),
        [
            dir.path().join("seg-00000000000000000000.q"),
            dir.path().join("seg-00000000000000000008.q"),
        ]
    );
    assert_eq!(pending(&q), [2, 8, 9, 10, 11]);

    q.ack(2);
    q.sync().unwrap();
    assert_eq!(segment_files(dir.path()).len(), 1);
    for seq in 8..12 {
        q.ack(seq);
    }
    q.sync().unwrap();
    // The open segment stays, empty of anything to deliver.
    assert_eq!(segment_files(dir.path()).len(), 1);
    assert_eq!(q.stats().pending, 0);
    assert_eq!(pending(&q), Vec::<u64>::new());
}

#[test]
fn acks_of_unknown_repeated_or_future_seqs_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (mut q, _) = open(dir.path(), QueueLimits::default());
    for i in 0..3 {
        q.append(&reading(i)).unwrap();
    }
    q.ack(1);
    q.ack(1);
    q.ack(3);
    q.ack(u64::MAX);
    assert_eq!(pending(&q), [0, 2]);
    assert_eq!(q.stats().pending, 2);
    assert_eq!(q.read(1).unwrap(), None);
}

#[test]
fn after_a_crash_the_unacknowledged_records_come_back_and_acks_since_the_last_sync_may_too() {
    let dir = tempfile::tempdir().unwrap();
    let (mut q, _) = open(dir.path(), QueueLimits::default());
    for i in 0..10 {
        q.append(&reading(i)).unwrap();
    }
    q.sync().unwrap();
    for seq in 0..5 {
        q.ack(seq);
    }
    q.sync().unwrap(); // the floor is now 5 on disk
    for seq in [7, 9, 5] {
        q.ack(seq);
    }
    assert_eq!(pending(&q), [6, 8]);
    drop(q); // a crash: no sync

    let (q, recovery) = open(dir.path(), QueueLimits::default());
    // 0..5 never come back; 5, 7 and 9 were acknowledged after the last sync and do.
    assert_eq!(pending(&q), [5, 6, 7, 8, 9]);
    assert_eq!(recovery.records, 5);
}

#[test]
fn durable_seq_covers_what_the_last_sync_covered() {
    let dir = tempfile::tempdir().unwrap();
    let (mut q, _) = open(dir.path(), QueueLimits::default());
    assert_eq!(q.durable_seq(), None);
    q.append(&reading(0)).unwrap();
    q.append(&reading(1)).unwrap();
    assert_eq!(q.durable_seq(), None);
    q.sync().unwrap();
    assert_eq!(q.durable_seq(), Some(1));
    q.append(&reading(2)).unwrap();
    assert_eq!(q.durable_seq(), Some(1));
    q.sync().unwrap();
    assert_eq!(q.durable_seq(), Some(2));
    drop(q);
    let (q, _) = open(dir.path(), QueueLimits::default());
    assert_eq!(q.durable_seq(), Some(2));
}

#[test]
fn a_sync_with_nothing_new_costs_no_fsync() {
    let dir = tempfile::tempdir().unwrap();
    let (mut q, _) = open(dir.path(), QueueLimits::default());
    q.append(&reading(0)).unwrap();
    q.sync().unwrap();
    let after_first = q.stats().fsyncs;
    q.sync().unwrap();
    assert_eq!(q.stats().fsyncs, after_first);
    // An acknowledgement moves the floor, which the next sync writes.
    q.ack(0);
    q.sync().unwrap();
    assert!(q.stats().fsyncs > after_first);
    let after_floor = q.stats().fsyncs;
    q.sync().unwrap();
    assert_eq!(q.stats().fsyncs, after_floor);
}

#[test]
fn a_torn_tail_is_cut_off_and_counted_and_the_records_before_it_survive() {
    let dir = tempfile::tempdir().unwrap();
    let (mut q, _) = open(dir.path(), QueueLimits::default());
    for i in 0..5 {
        q.append(&reading(i)).unwrap();
    }
    q.sync().unwrap();
    drop(q);
    let path = last_segment(dir.path());
    let full = fs::metadata(&path).unwrap().len();
    // A power cut ten bytes before the end of the last record.
    OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(full - 10)
        .unwrap();

    let (mut q, recovery) = open(dir.path(), QueueLimits::default());
    assert_eq!(recovery.records, 4);
    assert_eq!(recovery.corrupt_records, 0);
    assert_eq!(recovery.torn_bytes, frame(reading(4).len()) - 10);
    assert_eq!(
        fs::metadata(&path).unwrap().len(),
        full - frame(reading(4).len())
    );
    assert_eq!(pending(&q), [0, 1, 2, 3]);
    for seq in 0..4 {
        assert_eq!(q.read(seq).unwrap(), Some(reading(seq)));
    }
    // The queue goes on after the cut, and the next open finds nothing torn.
    assert_eq!(q.append(&reading(9)).unwrap(), 4);
    q.sync().unwrap();
    drop(q);
    let (mut q, recovery) = open(dir.path(), QueueLimits::default());
    assert_eq!((recovery.records, recovery.torn_bytes), (5, 0));
    assert_eq!(q.read(4).unwrap(), Some(reading(9)));
}

#[test]
fn a_zero_filled_tail_reads_as_torn_bytes_not_as_a_run_of_records() {
    let dir = tempfile::tempdir().unwrap();
    let (mut q, _) = open(dir.path(), QueueLimits::default());
    q.append(&reading(0)).unwrap();
    q.append(&reading(1)).unwrap();
    q.sync().unwrap();
    drop(q);
    append_to_file(&last_segment(dir.path()), &[0; 4096]);

    let (q, recovery) = open(dir.path(), QueueLimits::default());
    assert_eq!(
        (
            recovery.records,
            recovery.corrupt_records,
            recovery.torn_bytes
        ),
        (2, 0, 4096)
    );
    assert_eq!(pending(&q), [0, 1]);
}

#[test]
fn a_flipped_byte_inside_a_record_skips_only_that_record() {
    let dir = tempfile::tempdir().unwrap();
    let (mut q, _) = open(dir.path(), QueueLimits::default());
    for i in 0..5 {
        q.append(&reading(i)).unwrap();
    }
    q.sync().unwrap();
    drop(q);
    // All readings have the same length; flip a payload byte of the third record.
    let record = frame(reading(0).len()) as usize;
    flip_byte(&last_segment(dir.path()), 2 * record + HEADER_BYTES + 7);

    let (mut q, recovery) = open(dir.path(), QueueLimits::default());
    assert_eq!(
        (
            recovery.records,
            recovery.corrupt_records,
            recovery.torn_bytes
        ),
        (4, 1, 0)
    );
    assert_eq!(pending(&q), [0, 1, 3, 4]);
    assert_eq!(q.read(3).unwrap(), Some(reading(3)));
    assert_eq!(q.read(4).unwrap(), Some(reading(4)));
    assert_eq!(q.stats().corrupt_records, 1);
}

#[test]
fn a_record_damaged_after_open_is_reported_by_seq_and_leaves_the_queue() {
    let dir = tempfile::tempdir().unwrap();
    let (mut q, _) = open(dir.path(), QueueLimits::default());
    for i in 0..3 {
        q.append(&reading(i)).unwrap();
    }
    q.sync().unwrap();
    let record = frame(reading(0).len()) as usize;
    flip_byte(&last_segment(dir.path()), record + HEADER_BYTES);

    let err = q.read(1).unwrap_err();
    assert!(matches!(err, QueueError::Damaged { seq: 1, .. }), "{err}");
    assert!(err.to_string().starts_with("record 1 in "), "{err}");
    assert_eq!(pending(&q), [0, 2]);
    assert_eq!(q.stats().corrupt_records, 1);
    assert_eq!(q.read(2).unwrap(), Some(reading(2)));
}

#[test]
fn an_unreadable_acked_file_replays_everything_instead_of_refusing_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let (mut q, _) = open(dir.path(), QueueLimits::default());
    for i in 0..4 {
        q.append(&reading(i)).unwrap();
    }
    q.sync().unwrap();
    q.ack(0);
    q.ack(1);
    q.sync().unwrap();
    drop(q);
    fs::write(dir.path().join("acked"), b"not a floor").unwrap();

    let (mut q, recovery) = open(dir.path(), QueueLimits::default());
    assert!(recovery.ack_floor_lost);
    assert_eq!(pending(&q), [0, 1, 2, 3]);
    assert_eq!(q.append(&reading(4)).unwrap(), 4);
}

#[test]
fn a_leftover_acked_tmp_is_removed_and_the_floor_kept() {
    let dir = tempfile::tempdir().unwrap();
    let (mut q, _) = open(dir.path(), QueueLimits::default());
    for i in 0..3 {
        q.append(&reading(i)).unwrap();
    }
    q.ack(0);
    q.sync().unwrap();
    drop(q);
    // A crash between writing acked.tmp and renaming it.
    fs::write(dir.path().join("acked.tmp"), [0xff; 5]).unwrap();
    let (q, recovery) = open(dir.path(), QueueLimits::default());
    assert!(!recovery.ack_floor_lost);
    assert_eq!(pending(&q), [1, 2]);
    assert!(!dir.path().join("acked.tmp").exists());
}

#[test]
fn the_readings_lane_sheds_its_oldest_segments_and_stays_under_its_bound() {
    let dir = tempfile::tempdir().unwrap();
    let per_record = frame(reading(0).len());
    let bounded = QueueLimits {
        segment_max_bytes: 10 * per_record,
        max_bytes: Some(30 * per_record),
    };
    let (mut q, _) = open(dir.path(), bounded);
    for i in 0..100 {
        assert_eq!(q.append(&reading(i)).unwrap(), i);
        let on_disk: u64 = segment_files(dir.path())
            .iter()
            .map(|p| fs::metadata(p).unwrap().len())
            .sum();
        assert_eq!(q.stats().bytes_on_disk, on_disk);
        assert!(on_disk <= 30 * per_record, "{on_disk} after record {i}");
    }
    q.sync().unwrap();
    let kept = pending(&q);
    // Whole segments go, oldest first: what is left is the newest, without a gap.
    // Three full segments fill the bound exactly.
    assert_eq!(kept, (70..100).collect::<Vec<u64>>());
    let stats = q.stats();
    assert_eq!(stats.records_shed, 70);
    assert_eq!(stats.pending, 30);
    for seq in kept {
        assert_eq!(q.read(seq).unwrap(), Some(reading(seq)));
    }
    // Shed records are gone for good: not pending after a reopen either.
    drop(q);
    let (q, _) = open(dir.path(), bounded);
    assert_eq!(pending(&q), (70..100).collect::<Vec<u64>>());
}

#[test]
fn is_pending_says_whether_a_record_is_still_to_be_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let per_record = frame(reading(0).len());
    let bounded = QueueLimits {
        segment_max_bytes: 2 * per_record,
        max_bytes: Some(4 * per_record),
    };
    let (mut q, _) = open(dir.path(), bounded);
    for i in 0..6 {
        q.append(&reading(i)).unwrap();
    }
    q.ack(4);
    // 0 and 1 were shed with their segment, 4 acknowledged, 6 never appended.
    let answers: Vec<bool> = (0..7).map(|seq| q.is_pending(seq)).collect();
    assert_eq!(answers, [false, false, true, true, false, true, false]);
    assert!(!q.is_pending(u64::MAX));
}

#[test]
fn a_full_readings_lane_frees_acknowledged_segments_before_shedding_anything() {
    let dir = tempfile::tempdir().unwrap();
    let per_record = frame(reading(0).len());
    let bounded = QueueLimits {
        segment_max_bytes: 10 * per_record,
        max_bytes: Some(30 * per_record),
    };
    let (mut q, _) = open(dir.path(), bounded);
    for i in 0..30 {
        q.append(&reading(i)).unwrap();
    }
    // The middle segment is delivered; the oldest is not.
    for seq in 10..20 {
        q.ack(seq);
    }
    q.append(&reading(30)).unwrap();
    let stats = q.stats();
    assert_eq!(stats.records_shed, 0);
    assert_eq!(stats.segments, 3);
    let expected: Vec<u64> = (0..10).chain(20..31).collect();
    assert_eq!(pending(&q), expected);
}

#[test]
fn the_alarm_lane_never_sheds() {
    let dir = tempfile::tempdir().unwrap();
    let (mut q, _) = open(dir.path(), limits(3 * frame(reading(0).len())));
    for i in 0..200 {
        q.append(&reading(i)).unwrap();
    }
    assert_eq!(q.stats().records_shed, 0);
    assert_eq!(pending(&q).len(), 200);
}

#[test]
fn an_oversized_record_is_refused_by_its_size_and_the_queue_keeps_working() {
    let dir = tempfile::tempdir().unwrap();
    let (mut q, _) = open(dir.path(), QueueLimits::default());
    let err = q.append(&vec![b'x'; MAX_RECORD_BYTES + 1]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "a record of 1048577 bytes is larger than this queue takes (1048576 bytes)"
    );
    let err = q.append(b"").unwrap_err();
    assert!(matches!(err, QueueError::EmptyRecord), "{err}");
    // Refusals use up no seq and leave nothing on disk.
    assert_eq!(q.stats().bytes_on_disk, 0);
    assert_eq!(q.append(&vec![b'x'; MAX_RECORD_BYTES]).unwrap(), 0);
    assert_eq!(q.append(&reading(1)).unwrap(), 1);
    assert_eq!(q.read(1).unwrap(), Some(reading(1)));

    // On a small readings lane the limit is what fits.
    let small = tempfile::tempdir().unwrap();
    let bounded = QueueLimits {
        segment_max_bytes: 100,
        max_bytes: Some(200),
    };
    let (mut q, _) = open(small.path(), bounded);
    assert!(matches!(
        q.append(&[1; 185]),
        Err(QueueError::RecordTooLarge {
            size: 185,
            max: 184
        })
    ));
    q.append(&[1; 184]).unwrap();
}

#[test]
fn a_failed_write_is_cut_back_and_the_queue_keeps_working() {
    let dir = tempfile::tempdir().unwrap();
    let (mut q, _) = open(dir.path(), QueueLimits::default());
    q.append(&reading(0)).unwrap();
    q.append(&reading(1)).unwrap();
    let before = q.stats().bytes_on_disk;

    q.inject(Fault::PartialWrite(30));
    let err = q.append(&reading(2)).unwrap_err();
    match &err {
        QueueError::Io { source, .. } => {
            assert_eq!(source.kind(), std::io::ErrorKind::StorageFull)
        }
        other => panic!("{other}"),
    }
    assert!(err.to_string().starts_with("appending to "), "{err}");
    // Nothing of the failed record is left: not in the queue, not in the file.
    assert_eq!(
        fs::metadata(last_segment(dir.path())).unwrap().len(),
        before
    );
    assert_eq!(pending(&q), [0, 1]);
    assert_eq!(q.stats().bytes_on_disk, before);

    // Its seq is used up; the next record goes on as usual.
    assert_eq!(q.append(&reading(3)).unwrap(), 3);
    q.sync().unwrap();
    drop(q);
    let (mut q, recovery) = open(dir.path(), QueueLimits::default());
    assert_eq!(
        (
            recovery.records,
            recovery.corrupt_records,
            recovery.torn_bytes
        ),
        (3, 0, 0)
    );
    assert_eq!(pending(&q), [0, 1, 3]);
    assert_eq!(q.read(3).unwrap(), Some(reading(3)));
}

#[test]
fn a_segment_that_cannot_be_created_fails_the_append_and_the_next_append_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    // One record per segment, so every append starts a new file.
    let one = limits(frame(reading(0).len()));
    let (mut q, _) = open(dir.path(), one);
    assert_eq!(q.append(&reading(0)).unwrap(), 0);
    // Something that is not ours sits where the next segment would go (a directory, so
    // this fails even for root).
    let squatter = dir.path().join(segment::file_name(1));
    fs::create_dir(&squatter).unwrap();

    let err = q.append(&reading(1)).unwrap_err();
    assert!(err.to_string().starts_with("creating "), "{err}");
    assert_eq!(pending(&q), [0]);
    assert_eq!(q.append(&reading(2)).unwrap(), 2);
    q.sync().unwrap();
    drop(q);

    let (mut q, recovery) = open(dir.path(), one);
    assert_eq!(recovery.records, 2);
    assert_eq!(pending(&q), [0, 2]);
    assert_eq!(q.read(2).unwrap(), Some(reading(2)));
    assert!(squatter.is_dir());
}

#[test]
fn limits_that_cannot_work_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let err = DiskQueue::open(dir.path(), limits(0)).unwrap_err();
    assert!(err.to_string().contains("segment_max_bytes"), "{err}");
    let err = DiskQueue::open(
        dir.path(),
        QueueLimits {
            segment_max_bytes: 4096,
            max_bytes: Some(1000),
        },
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid queue limits: max_bytes (1000) must be at least segment_max_bytes (4096): the queue sheds whole segments"
    );
}

proptest! {
    #[test]
    fn garbage_after_the_last_record_never_panics_and_never_loses_a_synced_record(
        count in 1..6u64,
        garbage in proptest::collection::vec(any::<u8>(), 0..600),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let (mut q, _) = open(dir.path(), QueueLimits::default());
        for i in 0..count {
            q.append(&reading(i)).unwrap();
        }
        q.sync().unwrap();
        drop(q);
        append_to_file(&last_segment(dir.path()), &garbage);

        let (mut q, recovery) = open(dir.path(), QueueLimits::default());
        let found = pending(&q);
        // Garbage would need a matching CRC-32 to pass as a record.
        let synced: Vec<u64> = (0..count).collect();
        prop_assert_eq!(&found[..count as usize], synced.as_slice());
        for seq in 0..count {
            prop_assert_eq!(q.read(seq).unwrap(), Some(reading(seq)));
        }
        prop_assert!(recovery.torn_bytes <= garbage.len() as u64);
        let next = q.append(&reading(99)).unwrap();
        prop_assert!(next > *found.last().unwrap());
    }

    #[test]
    fn a_segment_of_random_bytes_never_makes_open_panic_or_fail(
        bytes in proptest::collection::vec(any::<u8>(), 0..2048),
        first in 0..1000u64,
    ) {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(segment::file_name(first)), &bytes).unwrap();
        let (mut q, recovery) = open(dir.path(), QueueLimits::default());
        prop_assert!(recovery.torn_bytes <= bytes.len() as u64);
        let seq = q.append(b"after").unwrap();
        prop_assert!(seq >= first);
        prop_assert_eq!(q.read(seq).unwrap(), Some(b"after".to_vec()));
    }
}

/// One step of the model test.
#[derive(Debug, Clone)]
enum Op {
    Append {
        len: usize,
        fill: u8,
    },
    Sync,
    /// Acknowledge the n-th (modulo) unacknowledged record.
    Ack(usize),
    /// Acknowledge something already acknowledged, floored or never appended.
    AckStale(u64),
    /// The process dies without a sync and starts again.
    Crash,
    /// The machine loses power: the last segment keeps its synced bytes and an arbitrary
    /// part (per mille) of what was written after, followed by garbage.
    PowerCut {
        keep_per_mille: u64,
        garbage: Vec<u8>,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (1..90usize, any::<u8>()).prop_map(|(len, fill)| Op::Append { len, fill }),
        2 => Just(Op::Sync),
        4 => any::<usize>().prop_map(Op::Ack),
        1 => (0..300u64).prop_map(Op::AckStale),
        1 => Just(Op::Crash),
        1 => (0..=1000u64, proptest::collection::vec(any::<u8>(), 0..40))
            .prop_map(|(keep_per_mille, garbage)| Op::PowerCut { keep_per_mille, garbage }),
    ]
}

/// What the model knows of one record.
#[derive(Debug, Clone)]
struct Known {
    payload: Vec<u8>,
    /// Appended before a sync that returned Ok (or found at a reopen).
    durable: bool,
    /// Acknowledged since it was appended or last found at a reopen.
    acked: bool,
}

/// The reference model. What it allows after a reopen:
/// - a record that is durable and not acknowledged must be there, with the same bytes;
/// - a record that is not durable may be there (with the same bytes) or lost;
/// - a record acknowledged but not floored (acked after the last sync, or above a record
///   still waiting at that sync) may come back;
/// - a floored record (acknowledged, and below every unacknowledged record at a sync) and a
///   seq never appended never come back;
/// - appends get seqs above every seq that was ever durable or found at a reopen, and above
///   every seq appended since the reopen. A seq lost before it was durable may be reused.
#[derive(Debug, Default)]
struct Model {
    records: BTreeMap<u64, Known>,
    floored: BTreeSet<u64>,
    /// Highest seq that was durable or found at a reopen.
    durable_high: Option<u64>,
    /// Highest seq appended since the last reopen.
    session_high: Option<u64>,
    /// Segment file sizes right after the last sync or reopen: bytes below these are
    /// durable.
    synced_sizes: HashMap<PathBuf, u64>,
}

impl Model {
    fn unacked(&self) -> Vec<u64> {
        self.records
            .iter()
            .filter(|(_, k)| !k.acked)
            .map(|(&s, _)| s)
            .collect()
    }

    fn note_sizes(&mut self, dir: &Path) {
        self.synced_sizes = segment_files(dir)
            .into_iter()
            .map(|p| {
                let len = fs::metadata(&p).unwrap().len();
                (p, len)
            })
            .collect();
    }

    fn synced(&mut self, dir: &Path) {
        for known in self.records.values_mut() {
            known.durable = true;
        }
        self.durable_high = self
            .durable_high
            .max(self.records.keys().next_back().copied());
        let lowest_waiting = self.unacked().first().copied().unwrap_or(u64::MAX);
        let floored: Vec<u64> = self
            .records
            .range(..lowest_waiting)
            .map(|(&s, _)| s)
            .collect();
        for seq in floored {
            self.records.remove(&seq);
            self.floored.insert(seq);
        }
        self.note_sizes(dir);
    }

    /// Check what a reopened queue holds against what the model allows, then take it as
    /// the new truth.
    fn reopened(&mut self, q: &mut DiskQueue, dir: &Path) -> Result<(), TestCaseError> {
        let found = pending(q);
        for &seq in &found {
            prop_assert!(
                !self.floored.contains(&seq),
                "floored seq {} came back",
                seq
            );
            let known = self.records.get(&seq);
            prop_assert!(known.is_some(), "seq {} was never appended", seq);
            let payload = q.read(seq).unwrap();
            prop_assert_eq!(payload.as_ref(), known.map(|k| &k.payload));
        }
        for (seq, known) in &self.records {
            if known.durable && !known.acked {
                prop_assert!(found.contains(seq), "durable seq {} was lost", seq);
            }
        }
        self.records.retain(|seq, _| found.contains(seq));
        for known in self.records.values_mut() {
            known.durable = true;
            known.acked = false;
        }
        self.durable_high = self.durable_high.max(found.last().copied());
        self.session_high = None;
        prop_assert!(q.durable_seq() >= found.last().copied());
        self.note_sizes(dir);
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Random appends, syncs, acks, crashes and power cuts against the model above. The
    /// segments are tiny, so records roll over, segments are created and deleted often.
    #[test]
    fn the_queue_keeps_every_synced_unacknowledged_record_through_any_crash(
        ops in proptest::collection::vec(op(), 1..80),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let tiny = limits(200);
        let (mut q, _) = open(dir.path(), tiny);
        let mut model = Model::default();
        for op in ops {
            match op {
                Op::Append { len, fill } => {
                    let payload = vec![fill; len];
                    let seq = q.append(&payload).unwrap();
                    prop_assert!(model.durable_high.is_none_or(|h| seq > h));
                    prop_assert!(model.session_high.is_none_or(|h| seq > h));
                    model.session_high = Some(seq);
                    model.records.insert(seq, Known { payload, durable: false, acked: false });
                }
                Op::Sync => {
                    q.sync().unwrap();
                    if let Some(high) = model.session_high {
                        prop_assert_eq!(q.durable_seq(), Some(high));
                    }
                    model.synced(dir.path());
                }
                Op::Ack(n) => {
                    let unacked = model.unacked();
                    if !unacked.is_empty() {
                        let seq = unacked[n % unacked.len()];
                        q.ack(seq);
                        if let Some(known) = model.records.get_mut(&seq) {
                            known.acked = true;
                        }
                    }
                }
                Op::AckStale(seq) => {
                    // Floored, acknowledged, lost or not appended yet: nothing changes.
                    if !model.unacked().contains(&seq) {
                        q.ack(seq);
                    }
                }
                Op::Crash => {
                    drop(q);
                    q = open(dir.path(), tiny).0;
                    model.reopened(&mut q, dir.path())?;
                }
                Op::PowerCut { keep_per_mille, garbage } => {
                    drop(q);
                    let last = last_segment(dir.path());
                    let len = fs::metadata(&last).unwrap().len();
                    let synced = model.synced_sizes.get(&last).copied().unwrap_or(0).min(len);
                    let keep = synced + (len - synced) * keep_per_mille / 1000;
                    let file = OpenOptions::new().write(true).open(&last).unwrap();
                    file.set_len(keep).unwrap();
                    append_to_file(&last, &garbage);
                    q = open(dir.path(), tiny).0;
                    model.reopened(&mut q, dir.path())?;
                }
            }
            // Between crashes the queue holds exactly what the model holds.
            prop_assert_eq!(pending(&q), model.unacked());
            prop_assert_eq!(q.stats().pending, model.unacked().len() as u64);
        }
    }
}

/// One step of the bounded (readings lane) property test.
#[derive(Debug, Clone)]
enum BoundedOp {
    Append(usize),
    Ack(usize),
    Sync,
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// On the readings lane the segment files never take more than `max_bytes`, what is
    /// shed is the oldest and is counted exactly, and what is kept reads back intact.
    #[test]
    fn the_readings_lane_never_exceeds_its_bound_and_counts_every_shed_record(
        ops in proptest::collection::vec(prop_oneof![
            6 => (1..120usize).prop_map(BoundedOp::Append),
            3 => any::<usize>().prop_map(BoundedOp::Ack),
            1 => Just(BoundedOp::Sync),
        ], 1..150),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let max = 1000;
        let bounded = QueueLimits { segment_max_bytes: 300, max_bytes: Some(max) };
        let (mut q, _) = open(dir.path(), bounded);
        let mut waiting: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
        let mut shed = 0u64;
        for op in ops {
            match op {
                BoundedOp::Append(len) => {
                    let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
                    let seq = q.append(&payload).unwrap();
                    waiting.insert(seq, payload);
                }
                BoundedOp::Ack(n) => {
                    if !waiting.is_empty() {
                        let seq = *waiting.keys().nth(n % waiting.len()).unwrap();
                        q.ack(seq);
                        waiting.remove(&seq);
                    }
                }
                BoundedOp::Sync => q.sync().unwrap(),
            }
            let kept = pending(&q);
            // What is gone is the oldest: the kept records are the newest waiting ones.
            let expected: Vec<u64> = waiting.keys().skip(waiting.len() - kept.len()).copied().collect();
            prop_assert_eq!(&kept, &expected);
            let gone: Vec<u64> = waiting.keys().take(waiting.len() - kept.len()).copied().collect();
            for seq in gone {
                prop_assert!(!q.is_pending(seq), "shed record {} still pending", seq);
                waiting.remove(&seq);
                shed += 1;
            }
            for &seq in &kept {
                prop_assert!(q.is_pending(seq));
            }
            let stats = q.stats();
            prop_assert_eq!(stats.records_shed, shed);
            prop_assert!(stats.bytes_on_disk <= max, "{} bytes", stats.bytes_on_disk);
            for seq in kept {
                let payload = q.read(seq).unwrap();
                prop_assert_eq!(payload.as_ref(), waiting.get(&seq));
            }
        }
    }
}
