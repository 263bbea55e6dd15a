//! The Modbus poller and its read planner against the repository's simulated device
//! (`shouwang_hil_tests::sim::SimDevice`, real Modbus TCP on a port from the OS): coalesced
//! reads give what point-by-point reads give, and a device that refuses a register in the
//! middle of a block still has its other points read, with the split remembered; coils,
//! discrete inputs, bit fields and word-swapped floats are read in one poll with a request
//! per table. Requests are counted at the simulator, one poll at a time.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use shouwang_gateway::config::{DataType, DeviceConfig, PointConfig, RegisterTable};
use shouwang_gateway::sources::PolledValues;
use shouwang_gateway::sources::modbus::{DeviceReader, decode};
use shouwang_hil_tests::sim::SimDevice;
use tokio_modbus::client::{Reader, tcp};
use tokio_modbus::{ExceptionCode, Slave};

async fn sim() -> SimDevice {
    SimDevice::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
}

/// A device at `sim` with `points` given as TOML `[[points]]` tables.
fn device(sim: &SimDevice, extra: &str, points: &str) -> DeviceConfig {
    let text = format!(
        "id = \"elevator-B1-1\"\nkind = \"elevator\"\nbuilding = \"B1\"\nfloor = \"01\"\n\
         unit = \"01\"\ntransport = \"tcp\"\naddress = \"{}\"\ntimeout_ms = 2000\n{extra}\n{points}",
        sim.local_addr()
    );
    toml::from_str(&text).unwrap()
}

/// 20 points scattered over holding and input registers, of every type, with values set in
/// the simulator: (TOML, what the simulator holds at each point in engineering units).
fn scattered(sim: &SimDevice) -> String {
    let mut toml = String::new();
    // (register, table, type), spread like an elevator terminal's and a fire panel
    // interface's maps: status words close together, analog values further apart.
    let layout: [(u16, &str, &str); 20] = [
        (0, "holding", "u16"),
        (1, "holding", "u16"),
        (2, "holding", "i16"),
        (4, "holding", "f32"),
        (6, "holding", "u32"),
        (10, "holding", "u16"),
        (19, "holding", "u16"),
        (20, "holding", "i32"),
        (40, "holding", "u16"),
        (41, "holding", "u16"),
        (100, "holding", "f32"),
        (107, "holding", "u16"),
        (200, "holding", "u16"),
        (300, "holding", "u16"),
        (0, "input", "u16"),
        (3, "input", "u16"),
        (12, "input", "f32"),
        (14, "input", "i16"),
        (30, "input", "u16"),
        (31, "input", "u16"),
    ];
    for (i, (register, table, ty)) in layout.iter().enumerate() {
        toml.push_str(&format!(
            "[[points]]\nname = \"p{i}\"\nregister = {register}\ntable = \"{table}\"\n\
             type = \"{ty}\"\nscale = 0.5\noffset = 1.0\n"
        ));
        // The simulator has one bank for both tables; input points sit where no holding
        // point does, or read the same words, which is fine for comparing reads.
        let v = 1000 + i as u32 * 37;
        match *ty {
            "u16" => sim.set_u16(*register, v as u16),
            "i16" => sim.set_i16(*register, -(v as i16)),
            "u32" => sim.set_u32(*register, v * 70_000),
            "i32" => sim.set_u32(*register, (-(v as i32) * 70_000) as u32),
            _ => sim.set_f32(*register, v as f32 / 7.0),
        }
    }
    toml
}

/// Each point read on its own with a plain tokio-modbus client, decoded the same way.
async fn point_by_point(sim: &SimDevice, device: &DeviceConfig) -> Vec<(String, f64)> {
    let mut ctx = tcp::connect_slave(sim.local_addr(), Slave(1))
        .await
        .unwrap();
    let mut out = Vec::new();
    for p in &device.points {
        let (at, n) = (p.modbus_register(), p.modbus_registers());
        let bits = |bits: Vec<bool>| bits.into_iter().map(u16::from).collect::<Vec<_>>();
        let words = match p.modbus_table() {
            RegisterTable::Holding => ctx.read_holding_registers(at, n).await.unwrap(),
            RegisterTable::Input => ctx.read_input_registers(at, n).await.unwrap(),
            RegisterTable::Coil => ctx.read_coils(at, n).await.unwrap().map(bits),
            RegisterTable::DiscreteInput => {
                ctx.read_discrete_inputs(at, n).await.unwrap().map(bits)
            }
        }
        .unwrap();
        out.push((p.name.clone(), decode(p, &words).unwrap()));
    }
    out
}

/// One poll, and how many requests the simulator answered for it.
async fn poll_counted(reader: &mut DeviceReader, sim: &SimDevice) -> (PolledValues, u64) {
    let before = sim.requests_served();
    let polled = reader.poll().await.expect("the link is fine");
    (polled, sim.requests_served() - before)
}

#[tokio::test]
async fn coalesced_reads_give_the_same_values_as_reading_each_point_alone() {
    let sim = sim().await;
    let points = scattered(&sim);
    let dev = device(&sim, "", &points);
    let expected = point_by_point(&sim, &dev).await;

    let mut reader = DeviceReader::new(dev.clone());
    let blocks = reader.plan().blocks().len();
    let (polled, requests) = poll_counted(&mut reader, &sim).await;
    assert_eq!(polled.values, expected, "values in config order, as before");
    assert!(polled.faults.is_empty(), "{:?}", polled.faults);
    assert_eq!(requests, blocks as u64);
    println!(
        "20 scattered points, max_gap_registers 8: {requests} requests per poll instead of 20"
    );
    assert_eq!(requests, 7);

    // Only contiguous and overlapping points together: more requests, same values.
    let mut contiguous = DeviceReader::new(device(&sim, "max_gap_registers = 0", &points));
    let (polled, requests) = poll_counted(&mut contiguous, &sim).await;
    assert_eq!(polled.values, expected);
    assert_eq!(requests, 13);
    // A device that reads at most 4 registers at a time.
    let mut small = DeviceReader::new(device(&sim, "max_read_registers = 4", &points));
    let (polled, _) = poll_counted(&mut small, &sim).await;
    assert_eq!(polled.values, expected);
    assert!(
        small
            .plan()
            .blocks()
            .iter()
            .all(|b| b.count <= 4 && b.table == dev.points[b.points[0]].modbus_table())
    );
}

fn u16_points(registers: impl IntoIterator<Item = u16>) -> String {
    registers
        .into_iter()
        .map(|r| format!("[[points]]\nname = \"r{r}\"\nregister = {r}\ntype = \"u16\"\n"))
        .collect()
}

#[tokio::test]
async fn a_refused_register_is_one_points_fault_the_others_read_and_the_split_is_remembered() {
    let sim = sim().await;
    for r in 0..8 {
        sim.set_u16(r, 100 + r);
    }
    // Register 5 is a hole in the device's map: any read touching it gets exception 02.
    sim.refuse_registers(&[5]);
    let mut reader = DeviceReader::new(device(&sim, "", &u16_points(0..8)));
    assert_eq!(reader.plan().blocks().len(), 1);

    let (polled, requests) = poll_counted(&mut reader, &sim).await;
    let names: Vec<&str> = polled.values.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["r0", "r1", "r2", "r3", "r4", "r6", "r7"]);
    assert_eq!(polled.values[4].1, 104.0);
    assert_eq!(polled.faults.len(), 1, "{:?}", polled.faults);
    assert_eq!(polled.faults[0].point, "r5");
    assert!(
        polled.faults[0].reason.contains("exception"),
        "{:?}",
        polled.faults[0]
    );
    // 0-7 refused, 0-3 read, 4-7 refused, 4-5 refused, 4 read, 5 refused, 6-7 read.
    assert_eq!(requests, 7);
    let shape: Vec<(u16, u16)> = reader
        .plan()
        .blocks()
        .iter()
        .map(|b| (b.start, b.count))
        .collect();
    assert_eq!(shape, [(0, 4), (4, 1), (5, 1), (6, 2)]);

    // The next polls start from the split: four requests, the same answer.
    for _ in 0..2 {
        let (again, requests) = poll_counted(&mut reader, &sim).await;
        assert_eq!(requests, 4);
        assert_eq!(again, polled);
    }
}

#[tokio::test]
async fn illegal_data_value_splits_too_and_the_split_outlives_the_refusal() {
    let sim = sim().await;
    let mut reader = DeviceReader::new(device(&sim, "", &u16_points(0..4)));
    // A device that answers exception 03 to everything (as some do to a read longer than
    // they take): split down to single points, each then its own fault.
    sim.fail_with(Some(ExceptionCode::IllegalDataValue));
    let (polled, requests) = poll_counted(&mut reader, &sim).await;
    assert!(polled.values.is_empty());
    assert_eq!(polled.faults.len(), 4);
    // 0-3, 0-1, 0, 1, 2-3, 2, 3.
    assert_eq!(requests, 7);
    // Once the device reads again, the plan stays as fine as the refusals made it: a split
    // is kept for as long as the poller runs (a restart plans afresh).
    sim.fail_with(None);
    let (polled, requests) = poll_counted(&mut reader, &sim).await;
    assert_eq!((polled.values.len(), requests), (4, 4));
}

#[tokio::test]
async fn other_exceptions_fault_every_point_of_the_block_without_splitting_it() {
    let sim = sim().await;
    let mut reader = DeviceReader::new(device(&sim, "", &u16_points(0..4)));
    sim.fail_with(Some(ExceptionCode::ServerDeviceBusy));
    let (polled, requests) = poll_counted(&mut reader, &sim).await;
    assert_eq!(requests, 1);
    assert!(polled.values.is_empty());
    assert_eq!(polled.faults.len(), 4);
    assert_eq!(
        reader.plan().blocks().len(),
        1,
        "busy is no reason to split"
    );

    sim.fail_with(None);
    let (polled, requests) = poll_counted(&mut reader, &sim).await;
    assert_eq!((polled.values.len(), requests), (4, 1));
}

#[tokio::test]
async fn a_device_that_is_gone_is_a_link_failure_not_point_faults() {
    let sim = sim().await;
    let mut reader = DeviceReader::new(device(&sim, "", &u16_points(0..4)));
    reader.poll().await.unwrap();
    sim.stop();
    // The port closes on the runtime's next turn: wait for the refusal, with a deadline.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match reader.poll().await {
            Err(_) => break,
            Ok(_) => assert!(tokio::time::Instant::now() < deadline, "still answering"),
        }
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn a_coil_a_discrete_input_bit_fields_and_a_word_swapped_float_take_one_request_per_table() {
    let sim = sim().await;
    sim.set_coil(3, true);
    sim.set_discrete_input(7, true);
    sim.set_coil(7, false); // the same address in another table
    sim.set_u16(10, 0b1000_0000_0000_0100);
    // 10.0 is 0x41200000; a CDAB device sends the low word first.
    sim.set_u16(11, 0x0000);
    sim.set_u16(12, 0x4120);
    let points = r#"
[[points]]
name = "pump_running"
register = 3
table = "coil"
type = "bit"

[[points]]
name = "fire"
register = 7
table = "discrete_input"
type = "bit"

[[points]]
name = "pump_auto"
register = 4
table = "coil"
type = "bit"

[[points]]
name = "fault"
register = 10
type = "bit"
bit = 2

[[points]]
name = "pressure"
register = 11
type = "f32"
byte_order = "CDAB"
scale = 0.1

[[points]]
name = "isolated"
register = 10
type = "bit"
bit = 15

[[points]]
name = "test_mode"
register = 10
type = "bit"
bit = 0
"#;
    let dev = device(&sim, "", points);
    let mut reader = DeviceReader::new(dev.clone());
    let shape: Vec<(RegisterTable, u16, u16)> = reader
        .plan()
        .blocks()
        .iter()
        .map(|b| (b.table, b.start, b.count))
        .collect();
    use RegisterTable::{Coil, DiscreteInput, Holding};
    assert_eq!(
        shape,
        [(Coil, 3, 2), (DiscreteInput, 7, 1), (Holding, 10, 3)],
        "one request per table; register 10 read once for its three bits"
    );
    let (polled, requests) = poll_counted(&mut reader, &sim).await;
    assert!(polled.faults.is_empty(), "{:?}", polled.faults);
    assert_eq!(requests, 3);
    let values: Vec<(&str, f64)> = polled
        .values
        .iter()
        .map(|(n, v)| (n.as_str(), *v))
        .collect();
    assert_eq!(
        values,
        [
            ("pump_running", 1.0),
            ("fire", 1.0),
            ("pump_auto", 0.0),
            ("fault", 1.0),
            ("pressure", 1.0),
            ("isolated", 1.0),
            ("test_mode", 0.0),
        ]
    );
    assert_eq!(polled.values, point_by_point(&sim, &dev).await);

    // A change is seen at the next poll, with the same requests.
    sim.set_coil(3, false);
    sim.set_u16(10, 0);
    let (polled, requests) = poll_counted(&mut reader, &sim).await;
    assert_eq!(requests, 3);
    assert_eq!(polled.values[0], ("pump_running".into(), 0.0));
    assert_eq!(polled.values[3], ("fault".into(), 0.0));
}

#[tokio::test]
async fn more_coils_than_one_request_may_hold_are_read_in_2000_bit_requests() {
    let sim = sim().await;
    for address in [0, 1999, 2000, 2049] {
        sim.set_coil(address, true);
    }
    let points: String = (0..2050)
        .map(|a| {
            format!(
                "[[points]]\nname = \"c{a}\"\nregister = {a}\ntable = \"coil\"\ntype = \"bit\"\n"
            )
        })
        .collect();
    let mut reader = DeviceReader::new(device(&sim, "", &points));
    let (polled, requests) = poll_counted(&mut reader, &sim).await;
    assert!(polled.faults.is_empty(), "{:?}", polled.faults);
    assert_eq!(requests, 2);
    let on: Vec<&str> = polled
        .values
        .iter()
        .filter(|(_, v)| *v == 1.0)
        .map(|(n, _)| n.as_str())
        .collect();
    assert_eq!(on, ["c0", "c1999", "c2000", "c2049"]);
    // A device that reads at most 100 bits at a time.
    let mut small = DeviceReader::new(device(&sim, "max_read_bits = 100", &points));
    let (again, requests) = poll_counted(&mut small, &sim).await;
    assert_eq!(requests, 21);
    assert_eq!(again, polled);
}

#[tokio::test]
async fn a_refused_coil_is_one_points_fault_and_its_neighbours_read() {
    let sim = sim().await;
    sim.set_coil(6, true);
    // Address 5 is a hole in the device's map (the simulator's holes are in every table).
    sim.refuse_registers(&[5]);
    let points: String = (0..8)
        .map(|a| {
            format!(
                "[[points]]\nname = \"c{a}\"\nregister = {a}\ntable = \"coil\"\ntype = \"bit\"\n"
            )
        })
        .collect();
    let mut reader = DeviceReader::new(device(&sim, "", &points));
    let (polled, _) = poll_counted(&mut reader, &sim).await;
    assert_eq!(polled.faults.len(), 1, "{:?}", polled.faults);
    assert_eq!(polled.faults[0].point, "c5");
    assert_eq!(polled.values.len(), 7);
    assert_eq!(polled.values[5], ("c6".into(), 1.0));
}

#[test]
fn the_reader_decodes_every_type_the_config_has() {
    // Guard for the scattered layout above: it covers every data type.
    let types = [
        DataType::U16,
        DataType::I16,
        DataType::U32,
        DataType::I32,
        DataType::F32,
        DataType::Bit,
    ];
    for t in types {
        let p = PointConfig::modbus("x", RegisterTable::Holding, 0, t);
        assert!(decode(&p, &vec![0; usize::from(t.registers())]).is_ok());
    }
}
