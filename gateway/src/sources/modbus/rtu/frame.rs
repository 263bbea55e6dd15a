//! Modbus RTU frames, as a master sees them: pure, bytes and requests in, bytes and answers
//! out. No I/O and no time (the silences are kept by [`super::RtuMaster`]).
//!
//! An RTU frame (an ADU) is the unit id, the PDU (function code and data) and a CRC-16,
//! low byte first, at most 256 bytes (Modbus over Serial Line V1.02 §2.2, §2.5.1). Requests and answers use
//! tokio-modbus's [`Request`] and [`Response`], so the poll path speaks one language over
//! Modbus TCP (tokio-modbus's client) and RTU (ours).
//!
//! # Why our own framing
//! tokio-modbus 0.17 frames RTU by length and CRC only, with no silent interval, and accepts
//! a late reply to a timed-out request as the answer to the next one (tokio-modbus#180,
//! #324; `../shared/notes/acquisition-anchors.md` §2). The master here owns the line: it
//! decides when a frame may be sent and which bytes are an answer, and the decoding it needs
//! is this small file.
//!
//! # Invariants (the tests and the property test below check them)
//! - [`parse_answer`] never panics and never reads past the buffer, whatever the bytes.
//! - It accepts a frame only when its CRC is right, its unit and function are the request's,
//!   its length is the one the request implies, and (for writes) its echo is the request's.
//!   Anything else is a [`FrameError`]; which bytes are missing is said by
//!   [`Parsed::Incomplete`], so a caller never waits for more than the longest answer.

use tokio_modbus::{ExceptionCode, Request, Response};

/// The longest RTU frame (Modbus over Serial Line V1.02 §2.2).
pub const MAX_FRAME: usize = 256;

/// Modbus CRC-16 (polynomial 0xA001 reflected, initial value 0xFFFF). On the wire low byte
/// first.
pub fn crc16(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0xFFFF;
    for &b in bytes {
        crc ^= u16::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xA001
            } else {
                crc >> 1
            };
        }
    }
    crc
}

/// Why a request cannot be framed, or an answer was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("request not supported on RTU: {0}")]
    Unsupported(String),
    #[error("the answer's CRC is wrong (line noise or a collision)")]
    Crc,
    #[error("the answer came from unit {got}, not {expected}")]
    WrongUnit { expected: u8, got: u8 },
    #[error("the answer has function code {got:#04x}, the request {expected:#04x}")]
    WrongFunction { expected: u8, got: u8 },
    #[error("the answer holds {got} data bytes, the request asks for {expected}")]
    WrongByteCount { expected: usize, got: usize },
    #[error("the answer to a write does not echo the request")]
    WrongEcho,
}

/// The frame of `request` to `unit`, CRC included.
pub fn encode_request(unit: u8, request: &Request<'_>) -> Result<Vec<u8>, FrameError> {
    let mut f = vec![unit];
    let quantity_ok = |q: u16, max: u16| q >= 1 && q <= max;
    match request {
        Request::ReadCoils(a, q) | Request::ReadDiscreteInputs(a, q) => {
            if !quantity_ok(*q, 2000) {
                return Err(FrameError::Unsupported(format!("read of {q} bits")));
            }
            f.push(function_code(request));
            push16(&mut f, *a);
            push16(&mut f, *q);
        }
        Request::ReadHoldingRegisters(a, q) | Request::ReadInputRegisters(a, q) => {
            if !quantity_ok(*q, 125) {
                return Err(FrameError::Unsupported(format!("read of {q} registers")));
            }
            f.push(function_code(request));
            push16(&mut f, *a);
            push16(&mut f, *q);
        }
        Request::WriteSingleCoil(a, on) => {
            f.push(0x05);
            push16(&mut f, *a);
            push16(&mut f, if *on { 0xFF00 } else { 0x0000 });
        }
        Request::WriteSingleRegister(a, v) => {
            f.push(0x06);
            push16(&mut f, *a);
            push16(&mut f, *v);
        }
        Request::WriteMultipleCoils(a, bits) => {
            let n = u16::try_from(bits.len()).unwrap_or(u16::MAX);
            if !quantity_ok(n, 1968) {
                return Err(FrameError::Unsupported(format!("write of {n} coils")));
            }
            f.push(0x0F);
            push16(&mut f, *a);
            push16(&mut f, n);
            let bytes = pack_bits(bits);
            f.push(bytes.len() as u8);
            f.extend_from_slice(&bytes);
        }
        Request::WriteMultipleRegisters(a, words) => {
            let n = u16::try_from(words.len()).unwrap_or(u16::MAX);
            if !quantity_ok(n, 123) {
                return Err(FrameError::Unsupported(format!("write of {n} registers")));
            }
            f.push(0x10);
            push16(&mut f, *a);
            push16(&mut f, n);
            f.push((2 * n) as u8);
            for w in words.iter() {
                push16(&mut f, *w);
            }
        }
        other => {
            return Err(FrameError::Unsupported(format!(
                "function {:?}",
                other.function_code()
            )));
        }
    }
    let crc = crc16(&f);
    f.extend_from_slice(&crc.to_le_bytes());
    Ok(f)
}

/// What a buffer of received bytes holds so far.
#[derive(Debug, Clone, PartialEq)]
pub enum Parsed {
    /// Not a whole answer yet: at least this many bytes in all are needed.
    Incomplete { need: usize },
    /// A whole answer, `len` bytes long: the device's response or its exception.
    Answer {
        answer: Result<Response, ExceptionCode>,
        len: usize,
    },
}

/// Read the answer to `request` sent to `unit` from the start of `buf`.
pub fn parse_answer(unit: u8, request: &Request<'_>, buf: &[u8]) -> Result<Parsed, FrameError> {
    let fc = function_code(request);
    if buf.len() < 2 {
        return Ok(Parsed::Incomplete { need: 5 });
    }
    if buf[0] != unit {
        return Err(FrameError::WrongUnit {
            expected: unit,
            got: buf[0],
        });
    }
    if buf[1] == fc | 0x80 {
        let Some(frame) = buf.get(..5) else {
            return Ok(Parsed::Incomplete { need: 5 });
        };
        check_crc(frame)?;
        return Ok(Parsed::Answer {
            answer: Err(ExceptionCode::new(frame[2])),
            len: 5,
        });
    }
    if buf[1] != fc {
        return Err(FrameError::WrongFunction {
            expected: fc,
            got: buf[1],
        });
    }
    let len = match request {
        Request::ReadCoils(_, q) | Request::ReadDiscreteInputs(_, q) => {
            5 + data_bytes(buf, usize::from(q.div_ceil(8)))?
        }
        Request::ReadHoldingRegisters(_, q) | Request::ReadInputRegisters(_, q) => {
            5 + data_bytes(buf, 2 * usize::from(*q))?
        }
        _ => 8,
    };
    let Some(frame) = buf.get(..len) else {
        return Ok(Parsed::Incomplete { need: len });
    };
    check_crc(frame)?;
    let data = &frame[2..len - 2];
    let word = |i: usize| u16::from_be_bytes([data[i], data[i + 1]]);
    let answer = match request {
        Request::ReadCoils(_, q) => Response::ReadCoils(unpack_bits(&data[1..], *q)),
        Request::ReadDiscreteInputs(_, q) => {
            Response::ReadDiscreteInputs(unpack_bits(&data[1..], *q))
        }
        Request::ReadHoldingRegisters(..) => Response::ReadHoldingRegisters(words(&data[1..])),
        Request::ReadInputRegisters(..) => Response::ReadInputRegisters(words(&data[1..])),
        Request::WriteSingleCoil(a, on) => {
            let value = if *on { 0xFF00 } else { 0 };
            if (word(0), word(2)) != (*a, value) {
                return Err(FrameError::WrongEcho);
            }
            Response::WriteSingleCoil(*a, *on)
        }
        Request::WriteSingleRegister(a, v) => {
            if (word(0), word(2)) != (*a, *v) {
                return Err(FrameError::WrongEcho);
            }
            Response::WriteSingleRegister(*a, *v)
        }
        Request::WriteMultipleCoils(a, bits) => echo_quantity(word(0), word(2), *a, bits.len())
            .map(|q| Response::WriteMultipleCoils(*a, q))?,
        Request::WriteMultipleRegisters(a, ws) => echo_quantity(word(0), word(2), *a, ws.len())
            .map(|q| Response::WriteMultipleRegisters(*a, q))?,
        other => {
            return Err(FrameError::Unsupported(format!(
                "function {:?}",
                other.function_code()
            )));
        }
    };
    Ok(Parsed::Answer {
        answer: Ok(answer),
        len,
    })
}

/// The longest answer `request` can have: what a reader may wait for at most.
pub fn longest_answer(request: &Request<'_>) -> usize {
    match request {
        Request::ReadCoils(_, q) | Request::ReadDiscreteInputs(_, q) => {
            5 + usize::from(q.div_ceil(8))
        }
        Request::ReadHoldingRegisters(_, q) | Request::ReadInputRegisters(_, q) => {
            5 + 2 * usize::from(*q)
        }
        _ => 8,
    }
    .min(MAX_FRAME)
}

/// The length of the frame at the front of `buf` by its own header, whoever it is from
/// (for the standard function codes: reads by their byte count, exceptions 5, writes 8), if
/// enough of it is there to tell. Used to step over a whole frame that answers someone
/// else's request.
pub fn frame_len(buf: &[u8]) -> Option<usize> {
    let fc = *buf.get(1)?;
    match fc {
        0x81..=0xFF => Some(5),
        0x01..=0x04 => buf.get(2).map(|&n| 5 + usize::from(n)),
        0x05 | 0x06 | 0x0F | 0x10 => Some(8),
        _ => None,
    }
}

/// Whether `frame` (a whole frame) has a right CRC.
pub fn crc_ok(frame: &[u8]) -> bool {
    frame.len() >= 4 && check_crc(frame).is_ok()
}

fn function_code(request: &Request<'_>) -> u8 {
    request.function_code().value()
}

fn push16(f: &mut Vec<u8>, v: u16) {
    f.extend_from_slice(&v.to_be_bytes());
}

/// The byte count of a read answer, checked against the request's.
fn data_bytes(buf: &[u8], expected: usize) -> Result<usize, FrameError> {
    match buf.get(2) {
        None => Ok(expected),
        Some(&n) if usize::from(n) == expected => Ok(expected),
        Some(&n) => Err(FrameError::WrongByteCount {
            expected,
            got: usize::from(n),
        }),
    }
}

fn check_crc(frame: &[u8]) -> Result<(), FrameError> {
    let (body, crc) = frame.split_at(frame.len() - 2);
    if crc16(body).to_le_bytes() == [crc[0], crc[1]] {
        Ok(())
    } else {
        Err(FrameError::Crc)
    }
}

fn echo_quantity(addr: u16, quantity: u16, want_addr: u16, want: usize) -> Result<u16, FrameError> {
    if addr == want_addr && usize::from(quantity) == want {
        Ok(quantity)
    } else {
        Err(FrameError::WrongEcho)
    }
}

fn words(data: &[u8]) -> Vec<u16> {
    data.chunks_exact(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]))
        .collect()
}

fn pack_bits(bits: &[bool]) -> Vec<u8> {
    let mut out = vec![0u8; bits.len().div_ceil(8)];
    for (i, &b) in bits.iter().enumerate() {
        if b {
            out[i / 8] |= 1 << (i % 8);
        }
    }
    out
}

/// The first `count` bits of `data`, least significant bit of the first byte first.
fn unpack_bits(data: &[u8], count: u16) -> Vec<bool> {
    (0..usize::from(count))
        .map(|i| data.get(i / 8).is_some_and(|b| b & (1 << (i % 8)) != 0))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A device's answer to `pdu` from `unit`, CRC appended.
    fn framed(unit: u8, pdu: &[u8]) -> Vec<u8> {
        let mut f = vec![unit];
        f.extend_from_slice(pdu);
        let crc = crc16(&f);
        f.extend_from_slice(&crc.to_le_bytes());
        f
    }

    #[test]
    fn the_crc_is_the_one_in_the_modbus_spec() {
        // Modbus over Serial Line V1.02, §6.2.2's example: 02 07 -> CRC 0x1241, sent 41 12.
        assert_eq!(crc16(&[0x02, 0x07]), 0x1241);
        // A read of holding registers as every Modbus tool frames it: 01 03 00 00 00 0A C5 CD.
        assert_eq!(
            encode_request(1, &Request::ReadHoldingRegisters(0, 10)).unwrap(),
            vec![0x01, 0x03, 0x00, 0x00, 0x00, 0x0A, 0xC5, 0xCD]
        );
    }

    #[test]
    fn a_register_answer_is_read_whole_or_said_incomplete() {
        let req = Request::ReadHoldingRegisters(0, 2);
        let frame = framed(7, &[0x03, 4, 0x00, 0x2A, 0x01, 0x00]);
        for cut in 0..frame.len() {
            assert!(
                matches!(
                    parse_answer(7, &req, &frame[..cut]),
                    Ok(Parsed::Incomplete { need }) if need > cut
                ),
                "cut at {cut}"
            );
        }
        assert_eq!(
            parse_answer(7, &req, &frame),
            Ok(Parsed::Answer {
                answer: Ok(Response::ReadHoldingRegisters(vec![42, 256])),
                len: 9
            })
        );
    }

    #[test]
    fn an_exception_is_the_devices_answer_not_a_link_error() {
        let req = Request::ReadInputRegisters(100, 4);
        let frame = framed(3, &[0x84, 0x02]);
        assert_eq!(
            parse_answer(3, &req, &frame),
            Ok(Parsed::Answer {
                answer: Err(ExceptionCode::IllegalDataAddress),
                len: 5
            })
        );
    }

    #[test]
    fn an_answer_from_another_unit_or_function_or_with_a_bad_crc_is_refused() {
        let req = Request::ReadHoldingRegisters(0, 1);
        let good = framed(5, &[0x03, 2, 0, 9]);
        assert_eq!(
            parse_answer(6, &req, &good),
            Err(FrameError::WrongUnit {
                expected: 6,
                got: 5
            })
        );
        let other_fc = framed(5, &[0x04, 2, 0, 9]);
        assert!(matches!(
            parse_answer(5, &req, &other_fc),
            Err(FrameError::WrongFunction { .. })
        ));
        let mut noisy = good.clone();
        noisy[3] ^= 0x10;
        assert_eq!(parse_answer(5, &req, &noisy), Err(FrameError::Crc));
        let wrong_count = framed(5, &[0x03, 4, 0, 9, 0, 1]);
        assert_eq!(
            parse_answer(5, &req, &wrong_count),
            Err(FrameError::WrongByteCount {
                expected: 2,
                got: 4
            })
        );
    }

    #[test]
    fn coils_come_back_as_many_as_asked() {
        let req = Request::ReadCoils(0, 10);
        let frame = framed(1, &[0x01, 2, 0b0000_0101, 0b0000_0010]);
        let Ok(Parsed::Answer {
            answer: Ok(Response::ReadCoils(bits)),
            ..
        }) = parse_answer(1, &req, &frame)
        else {
            panic!("not an answer");
        };
        assert_eq!(
            bits,
            vec![
                true, false, true, false, false, false, false, false, false, true
            ]
        );
    }

    #[test]
    fn a_write_is_accepted_only_with_its_echo() {
        let req = Request::WriteSingleCoil(0x10, true);
        assert_eq!(
            encode_request(2, &req).unwrap()[..6],
            [0x02, 0x05, 0x00, 0x10, 0xFF, 0x00]
        );
        let echo = framed(2, &[0x05, 0x00, 0x10, 0xFF, 0x00]);
        assert!(matches!(
            parse_answer(2, &req, &echo),
            Ok(Parsed::Answer {
                answer: Ok(_),
                len: 8
            })
        ));
        let wrong = framed(2, &[0x05, 0x00, 0x11, 0xFF, 0x00]);
        assert_eq!(parse_answer(2, &req, &wrong), Err(FrameError::WrongEcho));
        let regs = Request::WriteMultipleRegisters(3, vec![1, 2].into());
        assert_eq!(
            encode_request(1, &regs).unwrap()[..11],
            [0x01, 0x10, 0x00, 0x03, 0x00, 0x02, 4, 0, 1, 0, 2]
        );
    }

    #[test]
    fn a_request_out_of_the_protocols_limits_is_refused() {
        assert!(encode_request(1, &Request::ReadHoldingRegisters(0, 126)).is_err());
        assert!(encode_request(1, &Request::ReadHoldingRegisters(0, 0)).is_err());
        assert!(encode_request(1, &Request::ReadCoils(0, 2001)).is_err());
        assert!(encode_request(1, &Request::ReportServerId).is_err());
    }

    fn any_read() -> impl Strategy<Value = Request<'static>> {
        prop_oneof![
            (any::<u16>(), 1u16..=2000).prop_map(|(a, q)| Request::ReadCoils(a, q)),
            (any::<u16>(), 1u16..=2000).prop_map(|(a, q)| Request::ReadDiscreteInputs(a, q)),
            (any::<u16>(), 1u16..=125).prop_map(|(a, q)| Request::ReadHoldingRegisters(a, q)),
            (any::<u16>(), 1u16..=125).prop_map(|(a, q)| Request::ReadInputRegisters(a, q)),
            (any::<u16>(), any::<bool>()).prop_map(|(a, v)| Request::WriteSingleCoil(a, v)),
            (any::<u16>(), any::<u16>()).prop_map(|(a, v)| Request::WriteSingleRegister(a, v)),
        ]
    }

    proptest! {
        /// Whatever arrives, the parser answers without panicking; what it accepts has a
        /// right CRC and fits the buffer; and what it calls incomplete asks for more.
        #[test]
        fn any_bytes_are_parsed_without_a_panic(
            unit in 1u8..=247,
            request in any_read(),
            bytes in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            match parse_answer(unit, &request, &bytes) {
                Ok(Parsed::Answer { len, .. }) => {
                    prop_assert!(len <= bytes.len());
                    let (body, crc) = bytes[..len].split_at(len - 2);
                    prop_assert_eq!(crc16(body).to_le_bytes().to_vec(), crc.to_vec());
                }
                Ok(Parsed::Incomplete { need }) => {
                    prop_assert!(need > bytes.len());
                    prop_assert!(need <= longest_answer(&request));
                }
                Err(_) => {}
            }
        }

        /// A well-formed answer with noise after it is read as exactly its own bytes.
        #[test]
        fn a_good_answer_is_found_at_the_front_of_the_buffer(
            unit in 1u8..=247,
            words in proptest::collection::vec(any::<u16>(), 1..=125),
            tail in proptest::collection::vec(any::<u8>(), 0..20),
        ) {
            let request = Request::ReadHoldingRegisters(0, words.len() as u16);
            let mut pdu = vec![0x03, (2 * words.len()) as u8];
            for w in &words {
                pdu.extend_from_slice(&w.to_be_bytes());
            }
            let mut bytes = framed(unit, &pdu);
            let len = bytes.len();
            bytes.extend_from_slice(&tail);
            prop_assert_eq!(
                parse_answer(unit, &request, &bytes),
                Ok(Parsed::Answer { answer: Ok(Response::ReadHoldingRegisters(words)), len })
            );
        }
    }
}
