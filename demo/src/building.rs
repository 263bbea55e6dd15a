//! The demo building: its gateway config (`demo/building.toml`), what "normal" and "alarm"
//! mean for each kind of device, and how a value in engineering units becomes the registers
//! a simulated device holds.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context as _, bail};
use shouwang_gateway::config::{
    ByteOrder, Config, ConfigReport, DataType, DeviceConfig, PointConfig,
};
use shouwang_wire::Level;
use tokio_modbus::Slave;
use tokio_modbus::client::{Writer, tcp};

/// The demo's gateway config, compiled into the binary.
pub const BUILDING_TOML: &str = include_str!("../building.toml");

/// How long `trigger`/`clear` wait for a device before giving up.
const WRITE_TIMEOUT: Duration = Duration::from_secs(3);

/// The demo gateway config, parsed and checked with the gateway's own loader.
pub fn building_config() -> Result<Config, ConfigReport> {
    Config::from_toml_str(BUILDING_TOML, "demo/building.toml")
}

/// What a kind of device reads when all is well and when it raises its alarm, in the
/// point's engineering units.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KindValues {
    pub kind: &'static str,
    /// The point `trigger` and `clear` write.
    pub point: &'static str,
    pub normal: f64,
    pub alarm: f64,
    /// What the alarm value means, for the help text.
    pub alarm_means: &'static str,
}

/// Normal and alarm values of every kind in the demo building.
pub const KINDS: [KindValues; 4] = [
    KindValues {
        kind: "smoke",
        point: "obscuration",
        normal: 0.3,
        alarm: 4.0,
        alarm_means: "obscuration 4.0 %/m (alarm above 2.5)",
    },
    KindValues {
        kind: "leak",
        point: "leak",
        normal: 0.0,
        alarm: 1.0,
        alarm_means: "probe wet",
    },
    KindValues {
        kind: "pressure",
        point: "pressure",
        normal: 0.72,
        alarm: 0.52,
        alarm_means: "fire main at 0.52 MPa (supervisory below 0.60 for 2 s)",
    },
    KindValues {
        kind: "access",
        point: "door_open",
        normal: 0.0,
        alarm: 1.0,
        alarm_means: "fire exit door open (supervisory after 30 s)",
    },
];

/// The normal/alarm values of a kind, if the demo knows it.
pub fn kind_values(kind: &str) -> Option<&'static KindValues> {
    KINDS.iter().find(|k| k.kind == kind)
}

/// No device of that kind at that place; carries what there is instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownDevice {
    pub kind: String,
    pub place: String,
    /// `(kind, place)` of every device in the building.
    pub known: Vec<(String, String)>,
}

impl fmt::Display for UnknownDevice {
    /// Every known place, by kind, several to a line (the building has 128 smoke detectors).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "no {} device at {} in the demo building. Known devices (KIND PLACE):",
            self.kind, self.place
        )?;
        let mut kinds: Vec<&str> = self.known.iter().map(|(k, _)| k.as_str()).collect();
        kinds.dedup();
        for kind in kinds {
            let places: Vec<&str> = self
                .known
                .iter()
                .filter(|(k, _)| k == kind)
                .map(|(_, p)| p.as_str())
                .collect();
            for line in places.chunks(8) {
                writeln!(f, "  {kind:<9} {}", line.join(" "))?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for UnknownDevice {}

/// `B1-2-12-1203`: the ids of building, entrance, floor and room or area, as
/// [`shouwang_wire::Place::short`] writes them.
pub fn short_place(device: &DeviceConfig) -> String {
    let ids: Vec<&str> = Level::ADDRESS
        .iter()
        .filter_map(|level| device.place_id(*level))
        .collect();
    ids.join("-")
}

/// The device of `kind` at `place` (its [`short_place`], e.g. `B1-2-12-1203`).
pub fn find_device<'a>(
    config: &'a Config,
    kind: &str,
    place: &str,
) -> Result<&'a DeviceConfig, UnknownDevice> {
    config
        .devices
        .iter()
        .find(|d| d.kind == kind && short_place(d).eq_ignore_ascii_case(place))
        .ok_or_else(|| UnknownDevice {
            kind: kind.to_string(),
            place: place.to_string(),
            known: config
                .devices
                .iter()
                .map(|d| (d.kind.clone(), short_place(d)))
                .collect(),
        })
}

/// The point `trigger`/`clear` write on a device, with the kind's values.
pub fn trigger_point(device: &DeviceConfig) -> anyhow::Result<(&PointConfig, &'static KindValues)> {
    let values = kind_values(&device.kind).with_context(|| {
        format!(
            "the demo has no normal/alarm values for kind {:?}",
            device.kind
        )
    })?;
    let point = device
        .points
        .iter()
        .find(|p| p.name == values.point)
        .with_context(|| format!("device {} has no point {:?}", device.id, values.point))?;
    Ok((point, values))
}

/// The registers that make `point` read `value` (engineering units): the inverse of the
/// gateway's `raw * scale + offset`, high word first for 32-bit types.
pub fn encode(point: &PointConfig, value: f64) -> anyhow::Result<Vec<u16>> {
    if !value.is_finite() {
        bail!("{value} is not a number a device could hold");
    }
    let raw = (value - point.offset) / point.scale;
    if !raw.is_finite() {
        bail!(
            "point {} has scale 0: no raw value reads as {value}",
            point.name
        );
    }
    let out_of_range = || {
        anyhow::anyhow!(
            "{value} is out of range for point {} ({:?}, scale {}, offset {})",
            point.name,
            point.data_type,
            point.scale,
            point.offset
        )
    };
    let rounded = raw.round();
    let data_type = point
        .data_type
        .with_context(|| format!("point {} is not a Modbus point", point.name))?;
    // The demo's devices are big-endian registers; a profile with other layouts would need
    // the gateway's decoder inverted here.
    if !matches!(
        point.byte_order,
        None | Some(ByteOrder::Ab | ByteOrder::Abcd)
    ) {
        bail!(
            "point {} has byte_order {:?}: the demo writes big-endian registers only",
            point.name,
            point.byte_order
        );
    }
    let words = match data_type {
        DataType::Bit => bail!(
            "point {} is a bit: the demo writes registers, not bits",
            point.name
        ),
        DataType::U16 => {
            let v = u16::try_from(rounded as i64).map_err(|_| out_of_range())?;
            vec![v]
        }
        DataType::I16 => {
            let v = i16::try_from(rounded as i64).map_err(|_| out_of_range())?;
            vec![u16::from_be_bytes(v.to_be_bytes())]
        }
        DataType::U32 => split(u32::try_from(rounded as i64).map_err(|_| out_of_range())?),
        DataType::I32 => {
            let v = i32::try_from(rounded as i64).map_err(|_| out_of_range())?;
            split(u32::from_be_bytes(v.to_be_bytes()))
        }
        DataType::F32 => {
            let v = raw as f32;
            if !v.is_finite() {
                return Err(out_of_range());
            }
            split(v.to_bits())
        }
    };
    Ok(words)
}

fn split(v: u32) -> Vec<u16> {
    vec![(v >> 16) as u16, (v & 0xFFFF) as u16]
}

/// Write `value` into `point` of the device at `address` over Modbus TCP: FC06 for one
/// register, FC16 for two. This is what `shouwang demo trigger` does, so it works from a
/// second terminal against a running demo (or against a real device).
pub async fn write_value(
    address: SocketAddr,
    unit_id: u8,
    point: &PointConfig,
    value: f64,
) -> anyhow::Result<()> {
    let words = encode(point, value)?;
    let write = async {
        let mut ctx = tcp::connect_slave(address, Slave(unit_id))
            .await
            .with_context(|| {
                format!("no device answers at {address}: is `shouwang demo` running?")
            })?;
        let register = point
            .register
            .with_context(|| format!("point {} has no register", point.name))?;
        let answer = match words.as_slice() {
            [word] => ctx.write_single_register(register, *word).await,
            _ => ctx.write_multiple_registers(register, &words).await,
        };
        match answer {
            Ok(Ok(())) => Ok(()),
            Ok(Err(exception)) => Err(anyhow::anyhow!(
                "the device at {address} refused the write: {exception}"
            )),
            Err(err) => Err(anyhow::Error::new(err).context(format!("writing to {address}"))),
        }
    };
    tokio::time::timeout(WRITE_TIMEOUT, write)
        .await
        .with_context(|| {
            format!("the device at {address} did not answer within {WRITE_TIMEOUT:?}")
        })?
}

/// Where the device answers Modbus TCP: its link's address (a gateway in front of its bus,
/// where it answers at its unit id), or its own `address`.
pub fn device_addr(config: &Config, device: &DeviceConfig) -> anyhow::Result<SocketAddr> {
    let address = match &device.link {
        Some(link) => config
            .links
            .iter()
            .find(|l| &l.id == link)
            .and_then(|l| l.address.as_deref())
            .with_context(|| format!("device {}: link {link:?} has no address", device.id))?,
        None => device.address.as_deref().unwrap_or_default(),
    };
    address
        .parse()
        .with_context(|| format!("device {}: address {:?} is not ip:port", device.id, address))
}
