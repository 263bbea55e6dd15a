//! Decoding a point's registers: pure, registers in, a scaled value out; and the one seam
//! every transport reads through: the request of a block ([`read_request`]) and the words of
//! its answer ([`words_of`]).
//!
//! # Words
//! A block's answer becomes one `u16` per address read: a register's value, or for coils and
//! discrete inputs one word of 0 or 1 per bit. A point's words are its slice of them.
//!
//! # Byte order
//! A 32-bit value's four bytes, most significant `A` first, arrive in two registers (each
//! sent high byte first) in the point's `byte_order`: the wire bytes of the two registers
//! spell `ABCD` (default), `CDAB`, `BADC` or `DCBA`. A 16-bit value's arrive as `AB`
//! (default) or `BA`. Bit fields count from bit 0, the least significant bit of the
//! register's value.

use tokio_modbus::{Request, Response};

use crate::config::{ByteOrder, DataType, PointConfig, RegisterTable};

/// The request that reads `count` registers (or bits) of `table` from `start`.
pub fn read_request(table: RegisterTable, start: u16, count: u16) -> Request<'static> {
    match table {
        RegisterTable::Holding => Request::ReadHoldingRegisters(start, count),
        RegisterTable::Input => Request::ReadInputRegisters(start, count),
        RegisterTable::Coil => Request::ReadCoils(start, count),
        RegisterTable::DiscreteInput => Request::ReadDiscreteInputs(start, count),
    }
}

/// The words of an answer to a read of `count` registers (a bit table's bits as words of 0
/// or 1). An answer with another count (or, against the transport's own check, of another
/// function) is refused as a whole: which register each word would belong to is anyone's
/// guess, and a guess would be a wrong value.
///
/// Bits arrive packed in bytes, so an answer to a read of coils or discrete inputs holds a
/// multiple of 8 (tokio-modbus unpacks every byte it got): `count` to `count + 7` bits are
/// the answer, truncated to `count`; the padding is ignored, as the protocol says.
pub fn words_of(response: Response, count: u16) -> Result<Vec<u16>, String> {
    let count = usize::from(count);
    match response {
        Response::ReadHoldingRegisters(words) | Response::ReadInputRegisters(words)
            if words.len() == count =>
        {
            Ok(words)
        }
        Response::ReadHoldingRegisters(words) | Response::ReadInputRegisters(words) => {
            Err(format!(
                "the device answered {} registers to a read of {count}",
                words.len()
            ))
        }
        Response::ReadCoils(bits) | Response::ReadDiscreteInputs(bits)
            if (count..count + 8).contains(&bits.len()) =>
        {
            Ok(bits.into_iter().take(count).map(u16::from).collect())
        }
        Response::ReadCoils(bits) | Response::ReadDiscreteInputs(bits) => Err(format!(
            "the device answered {} bits to a read of {count}",
            bits.len()
        )),
        other => Err(format!(
            "the device answered a read with {:?}",
            other.function_code()
        )),
    }
}

/// Turn a point's raw registers into its scaled value: its `type` in its `byte_order` (see
/// the module docs), times `scale`, plus `offset`.
///
/// A raw value outside the point's raw validity (`wire_break_below`, `fault_above`: a 4-20 mA
/// loop below 3.6 mA is a broken wire, above 21 mA a failed sensor or a short) is that
/// point's fault for this poll, never a reading: a broken loop reads as a pressure of -0.1
/// MPa or an empty tank, which a rule would take for the real thing.
pub fn decode(point: &PointConfig, registers: &[u16]) -> Result<f64, DecodeError> {
    // The config refuses a `tcp` point without a type; this keeps a broken invariant a
    // point fault rather than a panic.
    let data_type = point.data_type.ok_or(DecodeError::NotModbus)?;
    let need = usize::from(data_type.registers());
    if registers.len() != need {
        return Err(DecodeError::WrongLength {
            expected: need,
            got: registers.len(),
        });
    }
    let raw = match data_type {
        DataType::U16 => f64::from(word(registers[0], point.byte_order)),
        DataType::I16 => f64::from(word(registers[0], point.byte_order) as i16),
        DataType::U32 => f64::from(double_word(registers, point.byte_order)),
        DataType::I32 => f64::from(double_word(registers, point.byte_order) as i32),
        DataType::F32 => f64::from(f32::from_bits(double_word(registers, point.byte_order))),
        // A coil's or discrete input's word is 0 or 1 (`words_of`) and it has no `bit`
        // (config check): bit 0. The config keeps `bit` at 15 or less; `& 15` keeps a broken
        // invariant from shifting out of range.
        DataType::Bit => f64::from((registers[0] >> (point.bit.unwrap_or(0) & 15)) & 1),
    };
    if !raw.is_finite() {
        return Err(DecodeError::NotFinite);
    }
    check_raw_validity(point, raw)?;
    Ok(raw * point.scale + point.offset)
}

/// The point's raw validity: `wire_break_below` and `fault_above`, in raw units.
fn check_raw_validity(point: &PointConfig, raw: f64) -> Result<(), DecodeError> {
    let unit = || point.raw_unit.clone();
    if let Some(limit) = point.wire_break_below
        && raw < limit
    {
        return Err(DecodeError::WireBreak {
            raw,
            limit,
            unit: unit(),
        });
    }
    if let Some(limit) = point.fault_above
        && raw > limit
    {
        return Err(DecodeError::OutOfRange {
            raw,
            limit,
            unit: unit(),
        });
    }
    Ok(())
}

/// A 16-bit value from its register, `AB` unless `order` says `BA`. (The config gives a
/// 16-bit type only `AB` or `BA`; a 4-byte order here is a broken invariant, read as `AB`.)
fn word(register: u16, order: Option<ByteOrder>) -> u16 {
    match order {
        Some(ByteOrder::Ba) => register.swap_bytes(),
        _ => register,
    }
}

/// A 32-bit value from its two registers laid out in `order` (`ABCD` when None; a 2-byte
/// order here is a broken invariant, read as `ABCD`). `registers` holds two words.
fn double_word(registers: &[u16], order: Option<ByteOrder>) -> u32 {
    let [a, b] = [registers[0], registers[1]].map(u16::to_be_bytes);
    // The wire bytes, in the order they arrived.
    let wire = [a[0], a[1], b[0], b[1]];
    // Where the value's bytes A, B, C and D (most significant first) are on the wire.
    let at: [usize; 4] = match order {
        None | Some(ByteOrder::Abcd | ByteOrder::Ab | ByteOrder::Ba) => [0, 1, 2, 3],
        Some(ByteOrder::Cdab) => [2, 3, 0, 1],
        Some(ByteOrder::Badc) => [1, 0, 3, 2],
        Some(ByteOrder::Dcba) => [3, 2, 1, 0],
    };
    u32::from_be_bytes(at.map(|i| wire[i]))
}

/// Why a point's registers give no reading. Each is that point's fault for the poll (the
/// device's `point_fault`), never a value; the kinds are kept apart so that a reading's
/// quality can tell a wire break from a device that answered nonsense.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    #[error("expected {expected} registers, the device sent {got}")]
    WrongLength { expected: usize, got: usize },
    #[error("the registers hold NaN or infinity (a sensor fault)")]
    NotFinite,
    #[error("the point has no Modbus register or type")]
    NotModbus,
    /// The raw value is below the point's `wire_break_below`: on a 4-20 mA loop, a broken
    /// wire or a dead transmitter (the loop current falls towards 0).
    #[error("wire break: {}, below {} (wire_break_below)", raw_text(*raw, unit), raw_text(*limit, unit))]
    WireBreak {
        /// The raw value read, before scale and offset.
        raw: f64,
        /// The point's `wire_break_below`.
        limit: f64,
        /// The point's `raw_unit`, for the message.
        unit: Option<String>,
    },
    /// The raw value is above the point's `fault_above`: on a 4-20 mA loop, a failed
    /// sensor or a short circuit (NAMUR NE 43 puts both above 21 mA).
    #[error("sensor fault or short circuit: {}, above {} (fault_above)", raw_text(*raw, unit), raw_text(*limit, unit))]
    OutOfRange {
        /// The raw value read, before scale and offset.
        raw: f64,
        /// The point's `fault_above`.
        limit: f64,
        /// The point's `raw_unit`, for the message.
        unit: Option<String>,
    },
}

/// `3100 µA` with the point's `raw_unit`, `raw 3100` without.
fn raw_text(value: f64, unit: &Option<String>) -> String {
    match unit {
        Some(unit) => format!("{value} {unit}"),
        None => format!("raw {value}"),
    }
}

impl DecodeError {
    /// What the error makes of the reading.
    pub fn quality(&self) -> shouwang_wire::Quality {
        match self {
            DecodeError::WrongLength { .. } | DecodeError::NotFinite | DecodeError::NotModbus => {
                shouwang_wire::Quality::Bad
            }
            DecodeError::WireBreak { .. } => shouwang_wire::Quality::WireBreak,
            DecodeError::OutOfRange { .. } => shouwang_wire::Quality::OutOfRange,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(data_type: DataType, scale: f64, offset: f64) -> PointConfig {
        PointConfig {
            scale,
            offset,
            ..PointConfig::modbus("p", RegisterTable::Holding, 0, data_type)
        }
    }

    #[test]
    fn sixteen_bit_values_are_scaled_and_offset() {
        assert_eq!(
            decode(&point(DataType::U16, 0.01, 0.0), &[250]).unwrap(),
            2.5
        );
        assert_eq!(
            decode(&point(DataType::I16, 1.0, 10.0), &[0xFFFF]).unwrap(),
            9.0
        );
    }

    #[test]
    fn thirty_two_bit_values_take_the_high_word_first() {
        let bits = 0.65f32.to_bits();
        let regs = [(bits >> 16) as u16, bits as u16];
        let v = decode(&point(DataType::F32, 1.0, 0.0), &regs).unwrap();
        assert!((v - 0.65).abs() < 1e-6);
        assert_eq!(
            decode(&point(DataType::U32, 1.0, 0.0), &[1, 2]).unwrap(),
            65538.0
        );
        assert_eq!(
            decode(&point(DataType::I32, 1.0, 0.0), &[0xFFFF, 0xFFFE]).unwrap(),
            -2.0
        );
    }

    #[test]
    fn a_nan_float_is_a_fault_not_a_reading() {
        let bits = f32::NAN.to_bits();
        let err = decode(
            &point(DataType::F32, 1.0, 0.0),
            &[(bits >> 16) as u16, bits as u16],
        );
        assert_eq!(err, Err(DecodeError::NotFinite));
    }

    #[test]
    fn a_short_answer_is_refused() {
        let err = decode(&point(DataType::F32, 1.0, 0.0), &[1]);
        assert_eq!(
            err,
            Err(DecodeError::WrongLength {
                expected: 2,
                got: 1
            })
        );
    }

    fn in_order(data_type: DataType, order: ByteOrder) -> PointConfig {
        PointConfig {
            byte_order: Some(order),
            ..point(data_type, 1.0, 0.0)
        }
    }

    #[test]
    fn ten_as_a_float_reads_as_ten_in_each_byte_order() {
        // 10.0f32 is 0x41200000: bytes A B C D = 41 20 00 00.
        assert_eq!(10.0f32.to_bits(), 0x4120_0000);
        for (order, registers) in [
            (ByteOrder::Abcd, [0x4120, 0x0000]),
            (ByteOrder::Cdab, [0x0000, 0x4120]),
            (ByteOrder::Badc, [0x2041, 0x0000]),
            (ByteOrder::Dcba, [0x0000, 0x2041]),
        ] {
            let v = decode(&in_order(DataType::F32, order), &registers);
            assert_eq!(v, Ok(10.0), "{order}");
        }
        // No byte_order is ABCD.
        assert_eq!(
            decode(&point(DataType::F32, 1.0, 0.0), &[0x4120, 0x0000]),
            Ok(10.0)
        );
    }

    #[test]
    fn every_byte_of_a_32_bit_integer_lands_where_its_order_says() {
        // 0x01020304 = 16909060: each byte distinct, so a wrong permutation shows.
        for (order, registers) in [
            (ByteOrder::Abcd, [0x0102, 0x0304]),
            (ByteOrder::Cdab, [0x0304, 0x0102]),
            (ByteOrder::Badc, [0x0201, 0x0403]),
            (ByteOrder::Dcba, [0x0403, 0x0201]),
        ] {
            let v = decode(&in_order(DataType::U32, order), &registers);
            assert_eq!(v, Ok(16_909_060.0), "{order}");
        }
        // -2 is FF FF FF FE; word-swapped, the low word comes first.
        assert_eq!(
            decode(&in_order(DataType::I32, ByteOrder::Cdab), &[0xFFFE, 0xFFFF]),
            Ok(-2.0)
        );
    }

    #[test]
    fn a_16_bit_value_with_swapped_bytes_reads_as_ba() {
        assert_eq!(
            decode(&in_order(DataType::U16, ByteOrder::Ba), &[0x3412]),
            Ok(f64::from(0x1234u16))
        );
        assert_eq!(
            decode(&in_order(DataType::I16, ByteOrder::Ba), &[0xFEFF]),
            Ok(-2.0)
        );
        assert_eq!(
            decode(&in_order(DataType::U16, ByteOrder::Ab), &[0x3412]),
            Ok(f64::from(0x3412u16))
        );
    }

    #[test]
    fn a_bit_field_reads_its_one_bit_of_the_register_counting_from_the_least_significant() {
        let register = [0b1000_0000_0000_0101];
        let bit = |n: u8| {
            decode(
                &PointConfig {
                    bit: Some(n),
                    ..point(DataType::Bit, 1.0, 0.0)
                },
                &register,
            )
        };
        assert_eq!(bit(0), Ok(1.0));
        assert_eq!(bit(1), Ok(0.0));
        assert_eq!(bit(2), Ok(1.0));
        assert_eq!(bit(14), Ok(0.0));
        assert_eq!(bit(15), Ok(1.0));
        // A coil's word (no `bit`) is its value; scale and offset apply, e.g. to invert it.
        let inverted = point(DataType::Bit, -1.0, 1.0);
        assert_eq!(decode(&inverted, &[1]), Ok(0.0));
        assert_eq!(decode(&inverted, &[0]), Ok(1.0));
    }

    /// A pressure transmitter on a 4-20 mA input that reports µA (0-20000): 4 mA is 0 MPa,
    /// 20 mA is 1.6 MPa.
    fn loop_input(unit: Option<&str>) -> PointConfig {
        PointConfig {
            wire_break_below: Some(3600.0),
            fault_above: Some(21000.0),
            raw_unit: unit.map(String::from),
            ..point(DataType::U16, 0.0001, -0.4)
        }
    }

    #[test]
    fn a_4_20_ma_loop_below_3_6_ma_is_a_wire_break_not_a_pressure() {
        let err = decode(&loop_input(Some("µA")), &[3100]).unwrap_err();
        assert_eq!(
            err,
            DecodeError::WireBreak {
                raw: 3100.0,
                limit: 3600.0,
                unit: Some("µA".into())
            }
        );
        assert_eq!(
            err.to_string(),
            "wire break: 3100 µA, below 3600 µA (wire_break_below)"
        );
        // An open loop reads 0.
        assert!(matches!(
            decode(&loop_input(None), &[0]),
            Err(DecodeError::WireBreak { .. })
        ));
        // Without a raw_unit the message says the figures are raw.
        assert_eq!(
            decode(&loop_input(None), &[0]).unwrap_err().to_string(),
            "wire break: raw 0, below raw 3600 (wire_break_below)"
        );
    }

    #[test]
    fn a_4_20_ma_loop_above_21_ma_is_a_sensor_fault_not_a_pressure() {
        let err = decode(&loop_input(Some("µA")), &[21_500]).unwrap_err();
        assert_eq!(
            err,
            DecodeError::OutOfRange {
                raw: 21_500.0,
                limit: 21_000.0,
                unit: Some("µA".into())
            }
        );
        assert_eq!(
            err.to_string(),
            "sensor fault or short circuit: 21500 µA, above 21000 µA (fault_above)"
        );
    }

    #[test]
    fn the_limits_themselves_and_everything_between_are_readings_scaled_as_usual() {
        let p = loop_input(Some("µA"));
        for (raw, want) in [
            (3600u16, -0.04),
            (4000, 0.0),
            (12_000, 0.8),
            (20_000, 1.6),
            (21_000, 1.7),
        ] {
            let v = decode(&p, &[raw]).unwrap();
            assert!((v - want).abs() < 1e-9, "{raw}: {v}");
        }
        // The limits are raw: a point whose scale inverts the value still judges the raw one.
        let inverted = PointConfig {
            scale: -1.0,
            offset: 0.0,
            ..loop_input(None)
        };
        assert!(decode(&inverted, &[3000]).is_err());
        assert_eq!(decode(&inverted, &[4000]), Ok(-4000.0));
    }

    #[test]
    fn a_wire_break_and_an_out_of_range_raw_value_give_their_own_qualities() {
        use shouwang_wire::Quality;
        let p = loop_input(Some("µA"));
        let quality = |raw: u16| decode(&p, &[raw]).unwrap_err().quality();
        assert_eq!(quality(0), Quality::WireBreak);
        assert_eq!(quality(30_000), Quality::OutOfRange);
        assert_eq!(
            decode(&point(DataType::F32, 1.0, 0.0), &[1])
                .unwrap_err()
                .quality(),
            Quality::Bad
        );
    }

    #[test]
    fn raw_limits_apply_to_signed_and_32_bit_raw_values() {
        let p = PointConfig {
            wire_break_below: Some(-100.0),
            fault_above: Some(100_000.0),
            ..point(DataType::I16, 1.0, 0.0)
        };
        assert!(matches!(
            decode(&p, &[(-101i16) as u16]),
            Err(DecodeError::WireBreak { .. })
        ));
        assert_eq!(decode(&p, &[(-100i16) as u16]), Ok(-100.0));
        let p = PointConfig {
            fault_above: Some(100_000.0),
            ..point(DataType::U32, 1.0, 0.0)
        };
        assert!(matches!(
            decode(&p, &[0x0001, 0x86A1]),
            Err(DecodeError::OutOfRange { .. })
        ));
        assert_eq!(decode(&p, &[0x0001, 0x86A0]), Ok(100_000.0));
    }

    #[test]
    fn each_table_is_read_with_its_own_function_code() {
        use RegisterTable::*;
        assert_eq!(
            read_request(Holding, 7, 2),
            Request::ReadHoldingRegisters(7, 2)
        );
        assert_eq!(read_request(Input, 7, 2), Request::ReadInputRegisters(7, 2));
        assert_eq!(read_request(Coil, 7, 2000), Request::ReadCoils(7, 2000));
        assert_eq!(
            read_request(DiscreteInput, 0, 1),
            Request::ReadDiscreteInputs(0, 1)
        );
    }

    #[test]
    fn a_bit_answer_padded_to_whole_bytes_is_cut_to_the_bits_asked_for() {
        // 3 coils asked for: one byte of 8 bits comes back, the last 5 padding.
        let answer = vec![true, false, true, true, true, true, true, true];
        assert_eq!(
            words_of(Response::ReadCoils(answer.clone()), 3),
            Ok(vec![1, 0, 1])
        );
        assert_eq!(
            words_of(Response::ReadDiscreteInputs(answer.clone()), 8),
            Ok(vec![1, 0, 1, 1, 1, 1, 1, 1])
        );
        // Too few bits, or a byte more than the count needs: refused as a whole.
        let short = words_of(Response::ReadCoils(answer.clone()), 9);
        assert_eq!(
            short,
            Err("the device answered 8 bits to a read of 9".into())
        );
        let long = words_of(Response::ReadDiscreteInputs(vec![false; 16]), 8);
        assert_eq!(
            long,
            Err("the device answered 16 bits to a read of 8".into())
        );
        assert!(words_of(Response::ReadCoils(Vec::new()), 1).is_err());
    }

    #[test]
    fn a_register_answer_must_hold_exactly_the_registers_asked_for() {
        assert_eq!(
            words_of(Response::ReadInputRegisters(vec![1, 2]), 2),
            Ok(vec![1, 2])
        );
        assert_eq!(
            words_of(Response::ReadHoldingRegisters(vec![1, 2, 3]), 2),
            Err("the device answered 3 registers to a read of 2".into())
        );
        assert!(words_of(Response::WriteSingleRegister(0, 1), 1).is_err());
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    /// How a device lays out `value` in two registers in `order`: written from the order's
    /// description (which words and which bytes swap), not from the decoder's byte table.
    fn lay_out(value: u32, order: ByteOrder) -> [u16; 2] {
        let (high, low) = ((value >> 16) as u16, value as u16);
        match order {
            ByteOrder::Abcd | ByteOrder::Ab | ByteOrder::Ba => [high, low],
            ByteOrder::Cdab => [low, high],
            ByteOrder::Badc => [high.swap_bytes(), low.swap_bytes()],
            ByteOrder::Dcba => [low.swap_bytes(), high.swap_bytes()],
        }
    }

    fn point(data_type: DataType, order: ByteOrder) -> PointConfig {
        PointConfig {
            byte_order: Some(order),
            ..PointConfig::modbus("p", RegisterTable::Holding, 0, data_type)
        }
    }

    fn four_byte_order() -> impl Strategy<Value = ByteOrder> {
        prop_oneof![
            Just(ByteOrder::Abcd),
            Just(ByteOrder::Cdab),
            Just(ByteOrder::Badc),
            Just(ByteOrder::Dcba),
        ]
    }

    proptest! {
        #[test]
        fn a_32_bit_value_laid_out_in_any_order_decodes_to_itself(
            value in any::<u32>(),
            order in four_byte_order(),
        ) {
            let registers = lay_out(value, order);
            prop_assert_eq!(
                decode(&point(DataType::U32, order), &registers),
                Ok(f64::from(value))
            );
            prop_assert_eq!(
                decode(&point(DataType::I32, order), &registers),
                Ok(f64::from(value as i32))
            );
            let float = f32::from_bits(value);
            let decoded = decode(&point(DataType::F32, order), &registers);
            if float.is_finite() {
                prop_assert_eq!(decoded, Ok(f64::from(float)));
            } else {
                prop_assert_eq!(decoded, Err(DecodeError::NotFinite));
            }
        }

        #[test]
        fn a_float_laid_out_in_any_order_decodes_to_itself(
            value in -1.0e30f32..1.0e30,
            order in four_byte_order(),
        ) {
            let registers = lay_out(value.to_bits(), order);
            prop_assert_eq!(
                decode(&point(DataType::F32, order), &registers),
                Ok(f64::from(value))
            );
        }

        #[test]
        fn any_bit_answer_gives_the_bits_asked_for_or_is_refused(
            all in proptest::collection::vec(any::<bool>(), 2024),
            count in 1u16..=2000,
            // The answer's length: from 8 short of `count` to 15 over it.
            around in 0usize..24,
            coils in any::<bool>(),
        ) {
            let bits = all[..(usize::from(count) + around).saturating_sub(8)].to_vec();
            let response = if coils {
                Response::ReadCoils(bits.clone())
            } else {
                Response::ReadDiscreteInputs(bits.clone())
            };
            let n = usize::from(count);
            match words_of(response, count) {
                Ok(words) => {
                    prop_assert!(bits.len() >= n && bits.len() < n + 8);
                    let want: Vec<u16> = bits[..n].iter().map(|&b| u16::from(b)).collect();
                    prop_assert_eq!(words, want);
                }
                Err(_) => prop_assert!(bits.len() < n || bits.len() >= n + 8),
            }
        }

        #[test]
        fn a_16_bit_value_laid_out_either_way_decodes_to_itself(value in any::<u16>()) {
            prop_assert_eq!(
                decode(&point(DataType::U16, ByteOrder::Ab), &[value]),
                Ok(f64::from(value))
            );
            prop_assert_eq!(
                decode(&point(DataType::U16, ByteOrder::Ba), &[value.swap_bytes()]),
                Ok(f64::from(value))
            );
            prop_assert_eq!(
                decode(&point(DataType::I16, ByteOrder::Ba), &[value.swap_bytes()]),
                Ok(f64::from(value as i16))
            );
        }
    }
}
