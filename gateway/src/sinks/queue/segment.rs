//! Record framing and segment files.
//!
//! The frame codec ([`encode`], [`decode_header`], [`checksum`]) is pure: bytes in, bytes
//! out. [`scan`] and [`read_frame`] are the only functions here that touch files; they turn
//! what is on disk into [`Slot`]s and payloads, and never trust a byte they did not check.
//!
//! A frame is `len: u32 LE | crc: u32 LE | seq: u64 LE | payload (len bytes)`, where `crc`
//! is CRC-32/IEEE over the eight seq bytes followed by the payload. The length is not
//! covered by the checksum: a damaged length either fails the checksum of the frame it
//! describes (counted as corrupt) or runs past the end of the file (counted as torn); either
//! way reading that segment stops or skips, and no wrong record is ever returned.

use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};

/// Bytes in front of every payload: length, checksum, seq.
pub const HEADER_BYTES: usize = 16;

/// The largest payload one record may hold: 1 MiB. Anything bigger is refused when it is
/// appended, and a length field above it is read as damage, not as a record.
pub const MAX_RECORD_BYTES: usize = 1 << 20;

/// Where one record sits in its segment file, and whether the receiver has confirmed it.
/// Kept in memory for every record on disk (24 bytes each).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Slot {
    pub seq: u64,
    /// Offset of the frame (its header) in the file.
    pub offset: u64,
    /// Payload bytes.
    pub len: u32,
    pub acked: bool,
}

/// The decoded header of a frame whose length field is plausible.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    pub len: u32,
    pub crc: u32,
    pub seq: u64,
}

/// CRC-32/IEEE of the seq (little endian) followed by the payload.
pub(crate) fn checksum(seq: u64, payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&seq.to_le_bytes());
    hasher.update(payload);
    hasher.finalize()
}

/// Replace `frame` with the frame of one record. The caller has checked that the payload
/// is not empty and at most [`MAX_RECORD_BYTES`], so the length fits a `u32`.
pub(crate) fn encode(seq: u64, payload: &[u8], frame: &mut Vec<u8>) {
    frame.clear();
    frame.reserve(HEADER_BYTES + payload.len());
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    frame.extend_from_slice(&len.to_le_bytes());
    frame.extend_from_slice(&checksum(seq, payload).to_le_bytes());
    frame.extend_from_slice(&seq.to_le_bytes());
    frame.extend_from_slice(payload);
}

/// The header at the start of a frame, or `None` when its length field cannot be a record:
/// zero (no record is empty, and a zero-filled tail left by a power cut must read as
/// damage, not as a run of empty records) or above [`MAX_RECORD_BYTES`].
pub(crate) fn decode_header(bytes: &[u8; HEADER_BYTES]) -> Option<Header> {
    let [
        l0,
        l1,
        l2,
        l3,
        c0,
        c1,
        c2,
        c3,
        s0,
        s1,
        s2,
        s3,
        s4,
        s5,
        s6,
        s7,
    ] = *bytes;
    let len = u32::from_le_bytes([l0, l1, l2, l3]);
    if len == 0 || len as usize > MAX_RECORD_BYTES {
        return None;
    }
    Some(Header {
        len,
        crc: u32::from_le_bytes([c0, c1, c2, c3]),
        seq: u64::from_le_bytes([s0, s1, s2, s3, s4, s5, s6, s7]),
    })
}

/// What a segment file holds, read from its start.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Scan {
    /// The records that checked out, in file order, seqs strictly increasing.
    pub records: Vec<Slot>,
    /// Complete frames skipped: bad checksum, or a seq outside the segment's range or not
    /// above the record before it.
    pub corrupt: u64,
    /// Where the last readable frame ends. Bytes from here on are a torn tail or garbage
    /// after a length field that cannot be right.
    pub good_len: u64,
    /// The file's size when it was read.
    pub file_len: u64,
}

/// Read every frame of a segment whose records must have seqs in `seqs` (from the file's
/// own first seq up to the next segment's). Stops at the first frame that cannot be read;
/// skips complete frames that fail their checks.
pub(crate) fn scan(file: &File, seqs: std::ops::Range<u64>) -> io::Result<Scan> {
    let file_len = file.metadata()?.len();
    let mut reader = BufReader::with_capacity(64 * 1024, file);
    reader.seek(SeekFrom::Start(0))?;
    let mut scan = Scan {
        file_len,
        ..Scan::default()
    };
    let mut payload = Vec::new();
    let mut offset = 0u64;
    let mut last_seq: Option<u64> = None;
    loop {
        let mut head = [0u8; HEADER_BYTES];
        if file_len - offset < HEADER_BYTES as u64 {
            break;
        }
        reader.read_exact(&mut head)?;
        let Some(header) = decode_header(&head) else {
            break;
        };
        let frame_len = HEADER_BYTES as u64 + u64::from(header.len);
        if file_len - offset < frame_len {
            break;
        }
        payload.resize(header.len as usize, 0);
        reader.read_exact(&mut payload)?;
        let in_order = seqs.contains(&header.seq) && last_seq.is_none_or(|last| header.seq > last);
        if checksum(header.seq, &payload) == header.crc && in_order {
            scan.records.push(Slot {
                seq: header.seq,
                offset,
                len: header.len,
                acked: false,
            });
            last_seq = Some(header.seq);
        } else {
            scan.corrupt += 1;
        }
        offset += frame_len;
    }
    scan.good_len = offset;
    Ok(scan)
}

/// The payload of the record at `slot`, or `None` when the bytes there no longer check out
/// (the file was damaged after it was scanned).
pub(crate) fn read_frame(file: &mut File, slot: &Slot) -> io::Result<Option<Vec<u8>>> {
    file.seek(SeekFrom::Start(slot.offset))?;
    let mut head = [0u8; HEADER_BYTES];
    let mut payload = vec![0u8; slot.len as usize];
    let read = file
        .read_exact(&mut head)
        .and_then(|()| file.read_exact(&mut payload));
    match read {
        Ok(()) => {}
        // Shorter than when it was scanned: damaged, not an I/O failure.
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let intact = decode_header(&head).is_some_and(|h| {
        h.len == slot.len && h.seq == slot.seq && h.crc == checksum(h.seq, &payload)
    });
    Ok(intact.then_some(payload))
}

/// `seg-<first seq, 20 digits>.q`: names sort in seq order, and the name alone says where
/// the segment's seqs start even when it holds no readable record.
pub(crate) fn file_name(first_seq: u64) -> String {
    format!("seg-{first_seq:020}.q")
}

/// The first seq in a segment file's name, or `None` for any other file.
pub(crate) fn parse_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("seg-")?.strip_suffix(".q")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn header_of(frame: &[u8]) -> Option<Header> {
        decode_header(frame[..HEADER_BYTES].try_into().unwrap())
    }

    #[test]
    fn a_frame_is_length_checksum_seq_then_payload_little_endian() {
        let mut frame = Vec::new();
        encode(0x0102_0304_0506_0708, b"smoke", &mut frame);
        assert_eq!(frame.len(), HEADER_BYTES + 5);
        assert_eq!(&frame[0..4], &5u32.to_le_bytes());
        assert_eq!(
            &frame[4..8],
            &checksum(0x0102_0304_0506_0708, b"smoke").to_le_bytes()
        );
        assert_eq!(&frame[8..16], &[8, 7, 6, 5, 4, 3, 2, 1]);
        assert_eq!(&frame[16..], b"smoke");
    }

    #[test]
    fn the_checksum_is_crc32_ieee_over_seq_then_payload() {
        // CRC-32/IEEE check value: "123456789" -> 0xCBF43926. Here the seq bytes come
        // first, so compare with the same bytes run through the reference in one piece.
        let mut bytes = 7u64.to_le_bytes().to_vec();
        bytes.extend_from_slice(b"123456789");
        assert_eq!(checksum(7, b"123456789"), crc32fast::hash(&bytes));
        assert_eq!(crc32fast::hash(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn lengths_that_cannot_be_a_record_make_the_header_unreadable() {
        let mut frame = Vec::new();
        encode(1, b"x", &mut frame);
        assert!(header_of(&frame).is_some());
        frame[0..4].copy_from_slice(&0u32.to_le_bytes());
        assert_eq!(header_of(&frame), None);
        frame[0..4].copy_from_slice(&(MAX_RECORD_BYTES as u32 + 1).to_le_bytes());
        assert_eq!(header_of(&frame), None);
        assert_eq!(decode_header(&[0; HEADER_BYTES]), None);
    }

    #[test]
    fn segment_names_carry_their_first_seq_and_sort_in_seq_order() {
        assert_eq!(file_name(42), "seg-00000000000000000042.q");
        assert_eq!(parse_file_name(&file_name(42)), Some(42));
        assert_eq!(parse_file_name(&file_name(u64::MAX)), Some(u64::MAX));
        assert!(file_name(9) < file_name(10));
        for other in [
            "acked",
            "acked.tmp",
            "seg-42.q",
            "seg-0000000000000000004x.q",
            "seg-00000000000000000042.q.tmp",
            "seg-99999999999999999999.q",
        ] {
            assert_eq!(parse_file_name(other), None, "{other}");
        }
    }

    proptest! {
        #[test]
        fn any_record_decodes_to_what_was_encoded(seq in any::<u64>(), payload in proptest::collection::vec(any::<u8>(), 1..2048)) {
            let mut frame = Vec::new();
            encode(seq, &payload, &mut frame);
            let header = header_of(&frame).unwrap();
            prop_assert_eq!(header.len as usize, payload.len());
            prop_assert_eq!(header.seq, seq);
            prop_assert_eq!(header.crc, checksum(seq, &frame[HEADER_BYTES..]));
        }

        #[test]
        fn no_header_bytes_make_the_decoder_panic(bytes in any::<[u8; HEADER_BYTES]>()) {
            if let Some(h) = decode_header(&bytes) {
                prop_assert!(h.len >= 1 && h.len as usize <= MAX_RECORD_BYTES);
            }
        }
    }
}
