//! A Modbus RTU master on one line: a serial port (RS-485), or the TCP socket of a serial
//! device server that copies bytes to and from its RS-485 port.
//!
//! [`frame`] is the pure codec; [`RtuMaster`] is the session, generic over the line, and
//! owns what the codec cannot: time.
//!
//! # How one exchange goes ([`RtuMaster::call`])
//! 1. **Silence first.** The line must have been quiet for 3.5 character times (1.75 ms
//!    above 19200 baud; Modbus over Serial Line V1.02 §2.5.1.1) since the last byte sent or received, and for
//!    `recovery_silence`, counted from the failure, after a failed exchange. Every byte that arrives meanwhile (a late
//!    reply, noise, another master's traffic) is read and thrown away, and the silence
//!    starts again from it; a line that never falls silent within the timeout fails the
//!    exchange. This is the flush: nothing left over from before can be read as this
//!    request's answer.
//! 2. **Send** the frame. The line is busy until its last character is out, which the
//!    master works out from the baud rate ([`Timing::wire_time`]); the answer's timeout
//!    runs from there.
//! 3. **Read** exactly the answer the request implies ([`frame::parse_answer`]): never
//!    more bytes than it still needs, so what follows it stays in the line for step 1 of the
//!    next exchange. A whole frame with a right CRC from another unit is that unit's late
//!    reply to an earlier request: it is stepped over (counted as discarded) and the wait
//!    for this answer goes on. A wrong function, byte count, echo or CRC fails the
//!    exchange; so does another unit's frame that is not whole and sound.
//!
//! tokio-modbus's own RTU client does none of 1 and accepts a late reply as the next
//! answer (`../shared/notes/acquisition-anchors.md` §2); that is why this exists.
//!
//! # What is not done
//! The 1.5-character limit inside a frame is not enforced on receive: a USB serial adapter
//! delivers bytes in bursts a few ms apart, so a Linux master that enforced it would refuse
//! good frames; the CRC and the exact length catch torn frames instead.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::{Instant, timeout, timeout_at};
use tokio_modbus::{ExceptionCode, Request, Response};

pub mod frame;

use crate::sources::LinkError;
use frame::{MAX_FRAME, Parsed, encode_request, parse_answer};

/// The character timing of a serial line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// One character's time on the wire.
    pub char_time: Duration,
    /// The silence that ends a frame (3.5 characters; 1.75 ms above 19200 baud).
    pub t3_5: Duration,
}

impl Timing {
    /// The timing of a line at `baud` with `bits_per_char` (start, data, parity, stop).
    pub fn serial(baud: u32, bits_per_char: u32) -> Timing {
        let baud = u64::from(baud.max(1));
        let char_time = Duration::from_nanos(u64::from(bits_per_char) * 1_000_000_000 / baud);
        let t3_5 = if baud > 19_200 {
            Duration::from_micros(1750)
        } else {
            char_time * 7 / 2
        };
        Timing { char_time, t3_5 }
    }

    /// How long `bytes` characters take on the wire.
    pub fn wire_time(&self, bytes: usize) -> Duration {
        self.char_time * u32::try_from(bytes).unwrap_or(u32::MAX)
    }
}

/// A byte stream a master talks RTU on: a serial port or a TCP socket.
pub trait Line: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Line for T {}

/// The master's side of one RTU line. Serves any unit on it, one exchange at a time.
pub struct RtuMaster<L> {
    line: L,
    timing: Timing,
    /// How long the line must be quiet after a failed exchange.
    recovery_silence: Duration,
    /// When the line last carried a byte we know of (sent or received).
    last_activity: Instant,
    /// Whether the last exchange failed: the next waits for `recovery_silence`.
    recovering: bool,
    /// Bytes read outside any answer and thrown away (late replies, noise).
    discarded: u64,
}

impl<L> std::fmt::Debug for RtuMaster<L> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RtuMaster")
            .field("timing", &self.timing)
            .field("recovering", &self.recovering)
            .field("discarded", &self.discarded)
            .finish()
    }
}

impl<L: Line> RtuMaster<L> {
    /// A master on a freshly opened `line`. `recovering`: whether the line was opened after
    /// a failure (its first exchange then waits for the recovery silence too).
    pub fn new(line: L, timing: Timing, recovery_silence: Duration, recovering: bool) -> Self {
        RtuMaster {
            line,
            timing,
            recovery_silence,
            last_activity: Instant::now(),
            recovering,
            discarded: 0,
        }
    }

    /// Bytes thrown away so far because they were no answer.
    pub fn discarded(&self) -> u64 {
        self.discarded
    }

    /// One exchange with `unit`: the device's answer (a response or an exception), or why
    /// the exchange failed. `limit` bounds the wait for silence and the wait for the answer
    /// (from the moment the request is on the wire), each.
    pub async fn call(
        &mut self,
        unit: u8,
        request: &Request<'_>,
        limit: Duration,
    ) -> Result<Result<Response, ExceptionCode>, LinkError> {
        let frame =
            encode_request(unit, request).map_err(|e| LinkError::Transport(e.to_string()))?;
        let result = self.exchange(unit, request, &frame, limit).await;
        self.recovering = result.is_err();
        if self.recovering {
            // The recovery silence runs from the failure, not from the last byte seen: a
            // late reply may still be on its way.
            self.last_activity = self.last_activity.max(Instant::now());
        }
        result
    }

    async fn exchange(
        &mut self,
        unit: u8,
        request: &Request<'_>,
        frame: &[u8],
        limit: Duration,
    ) -> Result<Result<Response, ExceptionCode>, LinkError> {
        let silence = if self.recovering {
            self.recovery_silence.max(self.timing.t3_5)
        } else {
            self.timing.t3_5
        };
        self.wait_for_silence(silence, limit).await?;
        self.line
            .write_all(frame)
            .await
            .map_err(|e| LinkError::Transport(format!("writing the request: {e}")))?;
        self.line
            .flush()
            .await
            .map_err(|e| LinkError::Transport(format!("writing the request: {e}")))?;
        let on_wire = Instant::now() + self.timing.wire_time(frame.len());
        self.last_activity = on_wire;
        let deadline = on_wire + limit;
        let limit_ms = u64::try_from(limit.as_millis()).unwrap_or(u64::MAX);
        let mut buf = [0u8; MAX_FRAME];
        let mut have = 0;
        loop {
            match parse_answer(unit, request, &buf[..have]) {
                Ok(Parsed::Answer { answer, .. }) => return Ok(answer),
                Ok(Parsed::Incomplete { need }) => {
                    let want = need.min(MAX_FRAME);
                    let n = timeout_at(deadline, self.line.read(&mut buf[have..want]))
                        .await
                        .map_err(|_| LinkError::Timeout(limit_ms))?
                        .map_err(|e| LinkError::Transport(format!("reading the answer: {e}")))?;
                    if n == 0 {
                        return Err(LinkError::Transport("the line closed".into()));
                    }
                    have += n;
                    self.last_activity = Instant::now();
                }
                Err(frame::FrameError::WrongUnit { got, .. }) => {
                    // Another unit's whole, sound frame: its late reply to an earlier
                    // request. Step over it and keep waiting for ours.
                    match frame::frame_len(&buf[..have]) {
                        Some(len) if len <= have && frame::crc_ok(&buf[..len]) => {
                            self.discarded += len as u64;
                            tracing::debug!(
                                unit,
                                from = got,
                                "another unit's late reply thrown away"
                            );
                            buf.copy_within(len..have, 0);
                            have -= len;
                        }
                        Some(len) if len > have && len <= MAX_FRAME => {
                            let n = timeout_at(deadline, self.line.read(&mut buf[have..len]))
                                .await
                                .map_err(|_| LinkError::Timeout(limit_ms))?
                                .map_err(|e| {
                                    LinkError::Transport(format!("reading the answer: {e}"))
                                })?;
                            if n == 0 {
                                return Err(LinkError::Transport("the line closed".into()));
                            }
                            have += n;
                            self.last_activity = Instant::now();
                        }
                        _ => {
                            return Err(LinkError::Garbled(format!(
                                "unit {unit}: the answer came from unit {got}, and is no frame"
                            )));
                        }
                    }
                }
                Err(e) => return Err(LinkError::Garbled(format!("unit {unit}: {e}"))),
            }
        }
    }

    /// Wait until the line has been quiet for `silence`, throwing away what arrives.
    async fn wait_for_silence(
        &mut self,
        silence: Duration,
        limit: Duration,
    ) -> Result<(), LinkError> {
        let give_up = Instant::now() + limit.max(silence * 2);
        let mut scratch = [0u8; MAX_FRAME];
        loop {
            let quiet_at = self.last_activity + silence;
            let now = Instant::now();
            // Bytes already waiting are read at once; otherwise wait for the rest of the
            // silence, or the first byte that breaks it.
            let read = if quiet_at <= now {
                timeout(Duration::ZERO, self.line.read(&mut scratch)).await
            } else {
                timeout_at(quiet_at, self.line.read(&mut scratch)).await
            };
            match read {
                Err(_) if Instant::now() >= quiet_at => return Ok(()),
                Err(_) => {}
                Ok(Ok(0)) => return Err(LinkError::Transport("the line closed".into())),
                Ok(Ok(n)) => {
                    self.discarded += n as u64;
                    self.last_activity = Instant::now();
                    tracing::debug!(bytes = n, "bytes outside an answer thrown away");
                    if self.last_activity >= give_up {
                        return Err(LinkError::Garbled(format!(
                            "the line did not fall silent for {} µs within {} ms",
                            silence.as_micros(),
                            limit.as_millis()
                        )));
                    }
                }
                Ok(Err(e)) => return Err(LinkError::Transport(format!("reading the line: {e}"))),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::DuplexStream;

    const UNIT: u8 = 3;

    fn timing() -> Timing {
        Timing::serial(19_200, 11)
    }

    fn answer(words: &[u16]) -> Vec<u8> {
        answer_from(UNIT, words)
    }

    fn answer_from(unit: u8, words: &[u16]) -> Vec<u8> {
        let mut f = vec![unit, 0x03, (2 * words.len()) as u8];
        for w in words {
            f.extend_from_slice(&w.to_be_bytes());
        }
        let crc = frame::crc16(&f);
        f.extend_from_slice(&crc.to_le_bytes());
        f
    }

    fn master() -> (RtuMaster<DuplexStream>, DuplexStream) {
        let (ours, theirs) = tokio::io::duplex(1024);
        (
            RtuMaster::new(ours, timing(), Duration::from_millis(50), false),
            theirs,
        )
    }

    #[test]
    fn the_silence_is_three_and_a_half_characters_up_to_19200_baud() {
        let t = Timing::serial(9600, 11);
        assert_eq!(t.char_time, Duration::from_nanos(1_145_833));
        assert_eq!(t.t3_5, Duration::from_nanos(4_010_415));
        assert_eq!(Timing::serial(38_400, 11).t3_5, Duration::from_micros(1750));
    }

    #[tokio::test]
    async fn an_answer_is_read_and_the_request_framed() {
        let (mut m, mut peer) = master();
        let device = tokio::spawn(async move {
            let mut req = [0u8; 8];
            peer.read_exact(&mut req).await.unwrap();
            peer.write_all(&answer(&[7, 8])).await.unwrap();
            (req, peer)
        });
        let got = m
            .call(
                UNIT,
                &Request::ReadHoldingRegisters(10, 2),
                Duration::from_millis(500),
            )
            .await
            .unwrap();
        assert_eq!(got, Ok(Response::ReadHoldingRegisters(vec![7, 8])));
        let (req, _peer) = device.await.unwrap();
        assert_eq!(req[..6], [UNIT, 0x03, 0, 10, 0, 2]);
    }

    #[tokio::test]
    async fn a_late_reply_is_thrown_away_not_read_as_the_next_answer() {
        let (mut m, mut peer) = master();
        let limit = Duration::from_millis(100);
        let device = tokio::spawn(async move {
            let mut req = [0u8; 8];
            // Request 1 is answered late: after the master gave up, before request 2.
            peer.read_exact(&mut req).await.unwrap();
            tokio::time::sleep(Duration::from_millis(130)).await;
            peer.write_all(&answer(&[111, 111])).await.unwrap();
            // Request 2 is answered at once with its own value.
            peer.read_exact(&mut req).await.unwrap();
            peer.write_all(&answer(&[222, 222])).await.unwrap();
            peer
        });
        let first = m
            .call(UNIT, &Request::ReadHoldingRegisters(0, 2), limit)
            .await;
        assert_eq!(first, Err(LinkError::Timeout(100)));
        let second = m
            .call(UNIT, &Request::ReadHoldingRegisters(0, 2), limit)
            .await
            .unwrap();
        assert_eq!(second, Ok(Response::ReadHoldingRegisters(vec![222, 222])));
        assert_eq!(m.discarded(), 9);
        drop(device.await.unwrap());
    }

    #[tokio::test]
    async fn another_units_late_reply_is_stepped_over_and_our_answer_read() {
        let (mut m, mut peer) = master();
        let device = tokio::spawn(async move {
            let mut req = [0u8; 8];
            peer.read_exact(&mut req).await.unwrap();
            // Unit 9's late reply, the same function and length, then ours.
            peer.write_all(&answer_from(9, &[999, 999])).await.unwrap();
            peer.write_all(&answer(&[3, 3])).await.unwrap();
            peer
        });
        let got = m
            .call(
                UNIT,
                &Request::ReadHoldingRegisters(0, 2),
                Duration::from_millis(200),
            )
            .await
            .unwrap();
        assert_eq!(got, Ok(Response::ReadHoldingRegisters(vec![3, 3])));
        assert_eq!(m.discarded(), 9);
        drop(device.await.unwrap());
    }

    #[tokio::test]
    async fn a_garbled_answer_fails_the_exchange_and_the_next_one_is_clean() {
        let (mut m, mut peer) = master();
        let limit = Duration::from_millis(200);
        let device = tokio::spawn(async move {
            let mut req = [0u8; 8];
            peer.read_exact(&mut req).await.unwrap();
            let mut bad = answer(&[5, 5]);
            bad[4] ^= 0xFF;
            // A bad CRC, then more noise the master must not read as the next answer.
            peer.write_all(&bad).await.unwrap();
            peer.write_all(&[0x55; 20]).await.unwrap();
            peer.read_exact(&mut req).await.unwrap();
            peer.write_all(&answer(&[6, 6])).await.unwrap();
            peer
        });
        let first = m
            .call(UNIT, &Request::ReadHoldingRegisters(0, 2), limit)
            .await;
        assert!(
            matches!(first, Err(LinkError::Garbled(ref e)) if e.contains("CRC")),
            "{first:?}"
        );
        let second = m
            .call(UNIT, &Request::ReadHoldingRegisters(0, 2), limit)
            .await
            .unwrap();
        assert_eq!(second, Ok(Response::ReadHoldingRegisters(vec![6, 6])));
        drop(device.await.unwrap());
    }

    #[tokio::test]
    async fn a_line_that_never_falls_silent_fails_within_the_limit() {
        let (mut m, mut peer) = master();
        let babble = tokio::spawn(async move {
            loop {
                if peer.write_all(&[0xAA]).await.is_err() {
                    return;
                }
                tokio::task::yield_now().await;
            }
        });
        let started = Instant::now();
        let got = m
            .call(
                UNIT,
                &Request::ReadHoldingRegisters(0, 1),
                Duration::from_millis(100),
            )
            .await;
        assert!(
            matches!(got, Err(LinkError::Garbled(ref e)) if e.contains("silent")),
            "{got:?}"
        );
        assert!(started.elapsed() < Duration::from_millis(400));
        babble.abort();
    }
}
