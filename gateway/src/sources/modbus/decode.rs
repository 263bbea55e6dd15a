//! Decoding a point's registers: pure, registers in, a scaled value out.

use tokio_modbus::{Request, Response};

use crate::config::{DataType, PointConfig, RegisterTable};

/// The request that reads `count` registers (or bits) of `table` from `start`.
pub fn read_request(table: RegisterTable, start: u16, count: u16) -> Request<'static> {
    match table {
        RegisterTable::Holding => Request::ReadHoldingRegisters(start, count),
        RegisterTable::Input => Request::ReadInputRegisters(start, count),
    }
}

/// The words of an answer to a read of `count` registers (a bit table's bits as words of 0
/// or 1). An answer with another count (or, against the transport's own check, of another
/// function) is refused as a whole: which register each word would belong to is anyone's
/// guess, and a guess would be a wrong value.
pub fn words_of(response: Response, count: u16) -> Result<Vec<u16>, String> {
    match response {
        Response::ReadHoldingRegisters(words) | Response::ReadInputRegisters(words)
            if words.len() == usize::from(count) =>
        {
            Ok(words)
        }
        Response::ReadHoldingRegisters(words) | Response::ReadInputRegisters(words) => {
            Err(format!(
                "the device answered {} registers to a read of {count}",
                words.len()
            ))
        }
        other => Err(format!(
            "the device answered a read with {:?}",
            other.function_code()
        )),
    }
}

/// Turn a point's raw registers into its scaled value. 32-bit values are high word first.
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
    let word = |i: usize| u32::from(registers[i]);
    let raw = match data_type {
        DataType::U16 => f64::from(registers[0]),
        DataType::I16 => f64::from(registers[0] as i16),
        DataType::U32 => f64::from((word(0) << 16) | word(1)),
        DataType::I32 => f64::from(((word(0) << 16) | word(1)) as i32),
        DataType::F32 => f64::from(f32::from_bits((word(0) << 16) | word(1))),
    };
    if !raw.is_finite() {
        return Err(DecodeError::NotFinite);
    }
    Ok(raw * point.scale + point.offset)
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    #[error("expected {expected} registers, the device sent {got}")]
    WrongLength { expected: usize, got: usize },
    #[error("the registers hold NaN or infinity (a sensor fault)")]
    NotFinite,
    #[error("the point has no Modbus register or type")]
    NotModbus,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(data_type: DataType, scale: f64, offset: f64) -> PointConfig {
        PointConfig {
            name: "p".into(),
            register: Some(0),
            table: None,
            data_type: Some(data_type),
            json: None,
            quality_field: None,
            quality_good: None,
            gpio: None,
            active_low: None,
            report_deadband: None,
            scale,
            offset,
            engineering_unit: None,
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
}
