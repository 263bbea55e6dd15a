//! The read planner: a device's points in, the fewest read requests out.
//!
//! Pure: no I/O, no time. [`ReadPlan::new`] coalesces the points of one device into
//! [`Block`]s, one read request each (function code 1 for coils, 2 for discrete inputs, 3 for
//! holding and 4 for input registers); the poll loop reads every block and decodes each
//! point from its slice of the answer.
//! When the device refuses a block with exception 02 (illegal data address) or 03 (illegal
//! data value), the poll loop calls [`ReadPlan::split`] and reads the halves; the plan keeps
//! the split, so later polls send the smaller blocks straight away.
//!
//! # How blocks are made
//! "Register" below means an address of the point's table: a 16-bit register in holding and
//! input registers, one bit in coils and discrete inputs. Each table has its limits
//! ([`PlanLimits::of_table`]): `max_read_registers` and `max_gap_registers` for the register
//! tables, `max_read_bits` and `max_gap_bits` for the bit tables.
//!
//! Points are sorted by (table, register, register count, config index) and swept once: a
//! point joins the block being built when it is in the same table, starts at most its
//! table's gap past the block's end (overlapping and contiguous points start at or before
//! it: a gap of 0) and the block would still hold at most its table's read limit. Otherwise
//! it starts a new block. O(n log n), like Telegraf's `max_insert` and unlike its
//! `aggressive` optimisation, which could take factorial time (telegraf#14030). Bit fields
//! (`type = "bit"` in a holding or input register) are one-register points: several in one
//! register overlap, so they share a block, and the register is read once for all of them.
//!
//! # Invariants (checked by the property tests below)
//! - Every point is in exactly one block, and its registers lie inside that block.
//! - A block starts at its first point's first register and ends at the last register any
//!   of its points uses: it reads nothing outside its points but the gaps between them.
//! - No block holds more than its table's read limit (a config check makes sure no point is
//!   larger than that), and no run of registers inside a block that no point uses is longer
//!   than its table's gap.
//! - The number of blocks is minimal among plans that cut the sorted points into runs. With
//!   points of at most 2 registers (all of today's data types) a run that fits stays fitting
//!   without its first point, which is what makes the greedy sweep minimal; the property
//!   test compares it with an exhaustive search over runs.
//! - Deterministic: blocks come by table in function-code order (coils, discrete inputs,
//!   holding, input registers), then by start register; a block's points by register. The
//!   same points give the same plan, whatever their config order.
//! - A split replaces one block by two, each with half of its points (the first half by
//!   register), and never merges blocks again: a plan only gets finer. A block of one
//!   point is not split; the device's refusal is then that point's fault.

use std::fmt;
use std::ops::Range;

use crate::config::{
    Config, DEFAULT_MAX_GAP_BITS, DEFAULT_MAX_GAP_REGISTERS, DeviceConfig, MAX_READ_BITS,
    MAX_READ_REGISTERS, PointConfig, Profile, Profiles, RegisterTable,
};

/// What bounds a block: from the device's config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlanLimits {
    /// The most registers one request may read (`max_read_registers`, at most 125).
    pub max_read_registers: u16,
    /// The longest run of unused registers a block may read (`max_gap_registers`).
    pub max_gap_registers: u16,
    /// The most coils or discrete inputs one request may read (`max_read_bits`, at most
    /// 2000).
    pub max_read_bits: u16,
    /// The longest run of unused bits a block of coils or discrete inputs may read
    /// (`max_gap_bits`).
    pub max_gap_bits: u16,
}

impl PlanLimits {
    /// The limits of a device whose config sets none of them.
    pub const DEFAULT: PlanLimits = PlanLimits {
        max_read_registers: MAX_READ_REGISTERS,
        max_gap_registers: DEFAULT_MAX_GAP_REGISTERS,
        max_read_bits: MAX_READ_BITS,
        max_gap_bits: DEFAULT_MAX_GAP_BITS,
    };

    pub fn of(device: &DeviceConfig) -> PlanLimits {
        PlanLimits {
            max_read_registers: device.max_read_registers,
            max_gap_registers: device.max_gap_registers,
            max_read_bits: device.max_read_bits,
            max_gap_bits: device.max_gap_bits,
        }
    }

    /// (the most addresses one read may ask for, the longest unused run a block may read)
    /// in `table`: registers for holding and input registers, bits for the bit tables. A
    /// read limit of 0 counts as 1.
    pub fn of_table(&self, table: RegisterTable) -> (u16, u16) {
        let (read, gap) = if table.holds_bits() {
            (self.max_read_bits, self.max_gap_bits)
        } else {
            (self.max_read_registers, self.max_gap_registers)
        };
        (read.max(1), gap)
    }
}

/// One read request: `count` registers (or bits) of `table` from `start`, and the points in
/// them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    pub table: RegisterTable,
    /// The first register (or bit) read (0-based, as on the wire).
    pub start: u16,
    /// How many registers (or bits) are read; at least 1.
    pub count: u16,
    /// Indices into the device's points, by register.
    pub points: Vec<usize>,
}

impl Block {
    /// Where `point`'s registers are in this block's answer (for a coil or discrete input,
    /// the one word of its bit; for a bit field, the word of its register). `point` must be
    /// one of the block's points (then the range lies inside `0..count`).
    pub fn slice_of(&self, point: &PointConfig) -> Range<usize> {
        let from = usize::from(point.modbus_register().saturating_sub(self.start));
        from..from + usize::from(point.modbus_registers())
    }

    fn end(&self) -> u32 {
        u32::from(self.start) + u32::from(self.count)
    }
}

/// The blocks one device is read with, and how they were split after refusals. Kept by the
/// device's poll loop for as long as it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadPlan {
    blocks: Vec<Block>,
    /// How many times a refused block was split.
    splits: u32,
}

/// Registers `[start, end)` of a point, as u32 so that register 65535 + 2 does not wrap.
fn span(point: &PointConfig) -> (u32, u32) {
    let start = u32::from(point.modbus_register());
    (start, start + u32::from(point.modbus_registers()))
}

/// Tables in function-code order.
fn table_rank(table: RegisterTable) -> u8 {
    match table {
        RegisterTable::Coil => 1,
        RegisterTable::DiscreteInput => 2,
        RegisterTable::Holding => 3,
        RegisterTable::Input => 4,
    }
}

/// The order points are swept in (see the module docs).
fn sorted(points: &[PointConfig]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..points.len()).collect();
    order.sort_by_key(|&i| {
        let p = &points[i];
        (
            table_rank(p.modbus_table()),
            p.modbus_register(),
            p.modbus_registers(),
            i,
        )
    });
    order
}

/// A block holding exactly `members` (indices into `points`, in sweep order).
fn block_of(points: &[PointConfig], members: Vec<usize>) -> Option<Block> {
    let first = points.get(*members.first()?)?;
    let start = span(first).0;
    let end = members
        .iter()
        .filter_map(|&i| points.get(i))
        .map(|p| span(p).1)
        .max()?;
    Some(Block {
        table: first.modbus_table(),
        start: first.modbus_register(),
        // A point ends at register 65535 at the latest (config check), so this fits.
        count: u16::try_from(end - start).unwrap_or(u16::MAX),
        points: members,
    })
}

impl ReadPlan {
    /// The fewest blocks for `points` within `limits` (see the module docs).
    pub fn new(points: &[PointConfig], limits: PlanLimits) -> ReadPlan {
        let mut blocks: Vec<Block> = Vec::new();
        for i in sorted(points) {
            let p = &points[i];
            let (start, end) = span(p);
            let (max_read, max_gap) = limits.of_table(p.modbus_table());
            let (max_read, max_gap) = (u32::from(max_read), u32::from(max_gap));
            if let Some(b) = blocks.last_mut()
                && b.table == p.modbus_table()
                && start <= b.end() + max_gap
                && end.max(b.end()) - u32::from(b.start) <= max_read
            {
                let new_end = end.max(b.end());
                b.count = u16::try_from(new_end - u32::from(b.start)).unwrap_or(u16::MAX);
                b.points.push(i);
                continue;
            }
            blocks.push(Block {
                table: p.modbus_table(),
                start: p.modbus_register(),
                count: p.modbus_registers(),
                points: vec![i],
            });
        }
        ReadPlan { blocks, splits: 0 }
    }

    /// The device's plan from its config.
    pub fn for_device(device: &DeviceConfig) -> ReadPlan {
        ReadPlan::new(&device.points, PlanLimits::of(device))
    }

    pub fn blocks(&self) -> &[Block] {
        &self.blocks
    }

    /// How many refused blocks were split so far.
    pub fn splits(&self) -> u32 {
        self.splits
    }

    /// The device refused block `index`: replace it by two blocks with half of its points
    /// each, at `index` and `index + 1`. false (and nothing changes) for a block of one
    /// point or an index past the end.
    pub fn split(&mut self, index: usize, points: &[PointConfig]) -> bool {
        let Some(block) = self.blocks.get(index) else {
            return false;
        };
        if block.points.len() < 2 {
            return false;
        }
        let mut first = block.points.clone();
        let second = first.split_off(first.len() / 2);
        let (Some(a), Some(b)) = (block_of(points, first), block_of(points, second)) else {
            return false;
        };
        self.blocks.splice(index..=index, [a, b]);
        self.splits += 1;
        true
    }

    /// The most requests one poll can take with this plan: every block, and, if the device
    /// refuses them all down to single points, every split on the way (a block of k points
    /// splits into at most 2k - 1 requests).
    pub fn worst_requests_per_poll(&self) -> usize {
        self.blocks
            .iter()
            .map(|b| 2 * b.points.len().max(1) - 1)
            .sum()
    }
}

/// The plan of every device in a config, for `shouwang-gateway plan` and the benchmarks.
#[derive(Debug, Clone)]
pub struct SitePlan<'a> {
    pub devices: Vec<(&'a DeviceConfig, ReadPlan)>,
}

impl<'a> SitePlan<'a> {
    pub fn of(config: &'a Config) -> SitePlan<'a> {
        SitePlan {
            devices: config
                .devices
                .iter()
                .filter(|d| d.transport.is_modbus())
                .map(|d| (d, ReadPlan::for_device(d)))
                .collect(),
        }
    }

    pub fn points(&self) -> usize {
        self.devices.iter().map(|(d, _)| d.points.len()).sum()
    }

    /// Requests per poll of every device once: one per point without the planner.
    pub fn requests_per_poll_unplanned(&self) -> usize {
        self.points()
    }

    pub fn requests_per_poll(&self) -> usize {
        self.devices.iter().map(|(_, p)| p.blocks().len()).sum()
    }

    /// Requests per second at each device's `poll_interval_ms`, one per point.
    pub fn requests_per_s_unplanned(&self) -> f64 {
        self.devices
            .iter()
            .map(|(d, _)| per_s(d.points.len(), d.poll_interval_ms))
            .sum()
    }

    pub fn requests_per_s(&self) -> f64 {
        self.devices
            .iter()
            .map(|(d, p)| per_s(p.blocks().len(), d.poll_interval_ms))
            .sum()
    }
}

/// Each profile's register map read once, with and without coalescing: what the planner
/// saves on every device of the profile. For `shouwang-gateway plan` and the benchmark.
#[derive(Debug, Clone)]
pub struct ProfilePlans<'a> {
    /// (profile, its plan at its own limits, devices of the config naming it).
    pub rows: Vec<(&'a Profile, ReadPlan, usize)>,
}

impl<'a> ProfilePlans<'a> {
    /// Every profile of `profiles`; device counts from `config` when given.
    pub fn of(profiles: &'a Profiles, config: Option<&Config>) -> ProfilePlans<'a> {
        let rows = profiles
            .iter()
            .map(|profile| {
                let d = PlanLimits::DEFAULT;
                let limits = PlanLimits {
                    max_read_registers: profile.max_read_registers.unwrap_or(d.max_read_registers),
                    max_gap_registers: profile.max_gap_registers.unwrap_or(d.max_gap_registers),
                    max_read_bits: profile.max_read_bits.unwrap_or(d.max_read_bits),
                    max_gap_bits: profile.max_gap_bits.unwrap_or(d.max_gap_bits),
                };
                let devices = config.map_or(0, |c| {
                    c.devices
                        .iter()
                        .filter(|dev| dev.profile.as_deref() == Some(profile.id.as_str()))
                        .count()
                });
                (profile, ReadPlan::new(&profile.points, limits), devices)
            })
            .collect();
        ProfilePlans { rows }
    }
}

impl fmt::Display for ProfilePlans<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "profiles: requests per poll of one device, one per point -> coalesced (saved)"
        )?;
        let (mut before, mut after) = (0, 0);
        for (profile, plan, devices) in &self.rows {
            let (n, m) = (profile.points.len(), plan.blocks().len());
            before += n * devices;
            after += m * devices;
            let here = match devices {
                0 => String::new(),
                1 => ", 1 device here".to_string(),
                n => format!(", {n} devices here"),
            };
            writeln!(
                f,
                "  {:<22} {:>3} point{}: {:>3} -> {:>2} ({} saved){here}",
                profile.id,
                n,
                if n == 1 { " " } else { "s" },
                n,
                m,
                n - m,
            )?;
        }
        if before > 0 {
            writeln!(
                f,
                "  devices with a profile here: {before} -> {after} requests per poll ({} saved)",
                before - after
            )?;
        }
        Ok(())
    }
}

fn per_s(requests: usize, interval_ms: u64) -> f64 {
    requests as f64 * 1000.0 / interval_ms.max(1) as f64
}

fn table_name(table: RegisterTable) -> &'static str {
    match table {
        RegisterTable::Coil => "coil (FC1)",
        RegisterTable::DiscreteInput => "discrete input (FC2)",
        RegisterTable::Holding => "holding (FC3)",
        RegisterTable::Input => "input (FC4)",
    }
}

impl fmt::Display for SitePlan<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (device, plan) in &self.devices {
            // The bit tables' limits only for a device that has bits to read.
            let bit_limits = if device.points.iter().any(|p| p.modbus_table().holds_bits()) {
                format!(
                    ", max_gap_bits {}, max_read_bits {}",
                    device.max_gap_bits, device.max_read_bits
                )
            } else {
                String::new()
            };
            writeln!(
                f,
                "device {} ({} unit {}, every {} ms, max_gap_registers {}, max_read_registers {}{bit_limits}): \
                 {} points, {} requests per poll (one per point: {})",
                device.id,
                device
                    .link
                    .as_deref()
                    .or(device.address.as_deref())
                    .unwrap_or("?"),
                device.modbus_unit(),
                device.poll_interval_ms,
                device.max_gap_registers,
                device.max_read_registers,
                device.points.len(),
                plan.blocks().len(),
                device.points.len(),
            )?;
            writeln!(f, "  {:<20} {:>5} {:>5}  points", "table", "start", "count")?;
            for block in plan.blocks() {
                let names: Vec<&str> = block
                    .points
                    .iter()
                    .filter_map(|&i| device.points.get(i))
                    .map(|p| p.name.as_str())
                    .collect();
                writeln!(
                    f,
                    "  {:<20} {:>5} {:>5}  {}",
                    table_name(block.table),
                    block.start,
                    block.count,
                    names.join(", ")
                )?;
            }
        }
        let (before, after) = (self.requests_per_poll_unplanned(), self.requests_per_poll());
        writeln!(
            f,
            "total: {} devices, {} points; requests per poll {} -> {} ({} saved); \
             requests per second at the configured poll intervals {:.1} -> {:.1}",
            self.devices.len(),
            self.points(),
            before,
            after,
            before.saturating_sub(after),
            self.requests_per_s_unplanned(),
            self.requests_per_s(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DataType;

    fn pt(name: &str, table: RegisterTable, register: u16, data_type: DataType) -> PointConfig {
        PointConfig::modbus(name, table, register, data_type)
    }

    fn holding(register: u16, data_type: DataType) -> PointConfig {
        pt(
            &format!("h{register}"),
            RegisterTable::Holding,
            register,
            data_type,
        )
    }

    /// 125 and 8 registers, 2000 and 128 bits.
    const LIMITS: PlanLimits = PlanLimits::DEFAULT;

    fn bit_field(name: &str, register: u16, bit: u8) -> PointConfig {
        PointConfig {
            bit: Some(bit),
            ..pt(name, RegisterTable::Holding, register, DataType::Bit)
        }
    }

    fn coil(address: u16) -> PointConfig {
        pt(
            &format!("c{address}"),
            RegisterTable::Coil,
            address,
            DataType::Bit,
        )
    }

    /// (table, start, count) of each block.
    fn shape(plan: &ReadPlan) -> Vec<(RegisterTable, u16, u16)> {
        plan.blocks()
            .iter()
            .map(|b| (b.table, b.start, b.count))
            .collect()
    }

    #[test]
    fn contiguous_and_nearby_points_of_one_table_share_a_request() {
        let points = [
            holding(0, DataType::U16),
            holding(1, DataType::F32),
            holding(11, DataType::U16), // a gap of 8 after register 2
            holding(21, DataType::U16), // a gap of 9 after register 11: a new block
        ];
        let plan = ReadPlan::new(&points, LIMITS);
        use RegisterTable::Holding;
        assert_eq!(shape(&plan), [(Holding, 0, 12), (Holding, 21, 1)]);
        assert_eq!(plan.blocks()[0].points, [0, 1, 2]);
    }

    #[test]
    fn a_gap_tolerance_of_zero_joins_only_contiguous_and_overlapping_points() {
        let points = [
            holding(0, DataType::U32),
            holding(1, DataType::U16), // overlaps the u32's low word
            holding(2, DataType::U16), // contiguous
            holding(4, DataType::U16), // one register apart
        ];
        let limits = PlanLimits {
            max_gap_registers: 0,
            ..LIMITS
        };
        let plan = ReadPlan::new(&points, limits);
        use RegisterTable::Holding;
        assert_eq!(shape(&plan), [(Holding, 0, 3), (Holding, 4, 1)]);
    }

    #[test]
    fn holding_and_input_registers_are_never_read_together_and_holding_come_first() {
        let points = [
            pt("in", RegisterTable::Input, 0, DataType::U16),
            pt("hold", RegisterTable::Holding, 1, DataType::U16),
        ];
        let plan = ReadPlan::new(&points, LIMITS);
        use RegisterTable::{Holding, Input};
        assert_eq!(shape(&plan), [(Holding, 1, 1), (Input, 0, 1)]);
    }

    #[test]
    fn bit_fields_of_one_register_share_one_read_of_it() {
        let points = [
            bit_field("fire", 10, 0),
            bit_field("fault", 10, 3),
            pt("status", RegisterTable::Holding, 10, DataType::U16),
            bit_field("isolated", 10, 15),
            pt("flow", RegisterTable::Holding, 11, DataType::F32),
            bit_field("pump", 13, 1),
        ];
        let plan = ReadPlan::new(&points, LIMITS);
        assert_eq!(shape(&plan), [(RegisterTable::Holding, 10, 4)]);
        let block = &plan.blocks()[0];
        assert_eq!(block.points, [0, 1, 2, 3, 4, 5]);
        for p in [0, 1, 2, 3] {
            assert_eq!(block.slice_of(&points[p]), 0..1, "{}", points[p].name);
        }
        assert_eq!(block.slice_of(&points[5]), 3..4);
    }

    #[test]
    fn coils_and_discrete_inputs_are_read_apart_up_to_2000_bits_a_request() {
        let mut points: Vec<_> = (0..2100).map(coil).collect();
        let discrete = |address: u16| {
            pt(
                &format!("d{address}"),
                RegisterTable::DiscreteInput,
                address,
                DataType::Bit,
            )
        };
        // 99 unused bits between 0 and 100: within the default 128; 299 before 400 is not.
        points.extend([discrete(0), discrete(100), discrete(400)]);
        points.push(holding(0, DataType::U16));
        let plan = ReadPlan::new(&points, LIMITS);
        use RegisterTable::{Coil, DiscreteInput, Holding};
        assert_eq!(
            shape(&plan),
            [
                (Coil, 0, 2000),
                (Coil, 2000, 100),
                (DiscreteInput, 0, 101),
                (DiscreteInput, 400, 1),
                (Holding, 0, 1),
            ]
        );
        // A device that reads at most 8 coils at a time.
        let limits = PlanLimits {
            max_read_bits: 8,
            ..LIMITS
        };
        let small = ReadPlan::new(&points[..20], limits);
        assert_eq!(shape(&small), [(Coil, 0, 8), (Coil, 8, 8), (Coil, 16, 4)]);
    }

    #[test]
    fn the_gap_of_a_bit_table_is_counted_in_bits_and_the_register_gap_does_not_apply() {
        let points = [
            coil(0),
            coil(50), // 49 unused bits
            holding(0, DataType::U16),
            holding(2, DataType::U16), // 1 unused register
        ];
        let limits = PlanLimits {
            max_gap_registers: 0,
            max_gap_bits: 49,
            ..LIMITS
        };
        use RegisterTable::{Coil, Holding};
        assert_eq!(
            shape(&ReadPlan::new(&points, limits)),
            [(Coil, 0, 51), (Holding, 0, 1), (Holding, 2, 1)]
        );
        let limits = PlanLimits {
            max_gap_registers: 1,
            max_gap_bits: 48,
            ..LIMITS
        };
        assert_eq!(
            shape(&ReadPlan::new(&points, limits)),
            [(Coil, 0, 1), (Coil, 50, 1), (Holding, 0, 3)]
        );
    }

    #[test]
    fn a_block_never_passes_the_read_limit() {
        // 130 contiguous registers: 125 in one read, 5 in the next.
        let points: Vec<_> = (0..130).map(|r| holding(r, DataType::U16)).collect();
        let plan = ReadPlan::new(&points, LIMITS);
        use RegisterTable::Holding;
        assert_eq!(shape(&plan), [(Holding, 0, 125), (Holding, 125, 5)]);
        // A device with a lower limit.
        let limits = PlanLimits {
            max_read_registers: 16,
            ..LIMITS
        };
        assert_eq!(ReadPlan::new(&points, limits).blocks().len(), 9);
    }

    #[test]
    fn a_point_at_the_top_of_the_address_space_is_planned_without_overflow() {
        let points = [holding(65533, DataType::U16), holding(65534, DataType::F32)];
        let plan = ReadPlan::new(&points, LIMITS);
        assert_eq!(shape(&plan), [(RegisterTable::Holding, 65533, 3)]);
    }

    #[test]
    fn config_order_does_not_change_the_plan() {
        let a = [holding(7, DataType::U16), holding(0, DataType::U16)];
        let b = [holding(0, DataType::U16), holding(7, DataType::U16)];
        assert_eq!(
            shape(&ReadPlan::new(&a, LIMITS)),
            shape(&ReadPlan::new(&b, LIMITS))
        );
        assert_eq!(ReadPlan::new(&a, LIMITS).blocks()[0].points, [1, 0]);
    }

    #[test]
    fn a_refused_block_splits_in_halves_down_to_single_points_and_stays_split() {
        let points: Vec<_> = (0..5).map(|r| holding(r * 2, DataType::U16)).collect();
        let mut plan = ReadPlan::new(&points, LIMITS);
        use RegisterTable::Holding;
        assert_eq!(shape(&plan), [(Holding, 0, 9)]);
        assert!(plan.split(0, &points));
        assert_eq!(shape(&plan), [(Holding, 0, 3), (Holding, 4, 5)]);
        assert!(plan.split(1, &points));
        assert_eq!(
            shape(&plan),
            [(Holding, 0, 3), (Holding, 4, 1), (Holding, 6, 3)]
        );
        assert!(!plan.split(1, &points), "one point: nothing to split");
        assert!(!plan.split(9, &points), "no such block");
        assert_eq!(plan.splits(), 2);
        assert_eq!(plan.worst_requests_per_poll(), 3 + 1 + 3);
    }

    #[test]
    fn the_site_plan_prints_each_devices_blocks_and_the_totals() {
        let text = r#"
[gateway]
id = "gw"
community = "c"
data_dir = "data"

[[devices]]
id = "lift-1"
kind = "elevator"
building = "B1"
floor = "01"
unit = "01"
transport = "tcp"
address = "127.0.0.1:1502"
poll_interval_ms = 500

[[devices.points]]
name = "floor"
register = 0
type = "i16"

[[devices.points]]
name = "speed"
register = 3
table = "input"
type = "u16"

[[devices.points]]
name = "door"
register = 2
type = "u16"
"#;
        let config = Config::from_toml_str(text, "t.toml").unwrap();
        let site = SitePlan::of(&config);
        assert_eq!(site.points(), 3);
        assert_eq!(site.requests_per_poll_unplanned(), 3);
        assert_eq!(site.requests_per_poll(), 2);
        assert_eq!(site.requests_per_s(), 4.0);
        let out = site.to_string();
        assert!(
            out.contains("device lift-1 (127.0.0.1:1502 unit 1, every 500 ms"),
            "{out}"
        );
        assert!(
            out.contains("  holding (FC3)            0     3  floor, door\n"),
            "{out}"
        );
        assert!(
            out.contains("  input (FC4)              3     1  speed\n"),
            "{out}"
        );
        assert!(
            out.contains("requests per poll 3 -> 2 (1 saved); requests per second at the configured poll intervals 6.0 -> 4.0"),
            "{out}"
        );
        assert!(!out.contains("max_read_bits"), "no bits to read: {out}");
    }

    #[test]
    fn the_site_plan_names_the_bit_tables_and_their_limits() {
        let text = r#"
[gateway]
id = "gw"
community = "c"
data_dir = "data"

[[devices]]
id = "panel-1"
kind = "fire_panel"
building = "B1"
floor = "01"
unit = "01"
transport = "tcp"
address = "127.0.0.1:1502"
max_gap_bits = 16

[[devices.points]]
name = "fault"
register = 4
table = "discrete_input"
type = "bit"

[[devices.points]]
name = "fire"
register = 0
table = "coil"
type = "bit"
"#;
        let config = Config::from_toml_str(text, "t.toml").unwrap();
        let out = SitePlan::of(&config).to_string();
        assert!(
            out.contains("max_read_registers 125, max_gap_bits 16, max_read_bits 2000): 2 points"),
            "{out}"
        );
        assert!(
            out.contains(&format!("  {:<20} {:>5} {:>5}  fire\n", "coil (FC1)", 0, 1)),
            "{out}"
        );
        assert!(
            out.contains("  discrete input (FC2)     4     1  fault\n"),
            "{out}"
        );
    }

    #[test]
    fn the_slice_of_a_point_is_where_its_registers_are_in_the_answer() {
        let points = [holding(10, DataType::U16), holding(13, DataType::F32)];
        let plan = ReadPlan::new(&points, LIMITS);
        let block = &plan.blocks()[0];
        assert_eq!(block.slice_of(&points[0]), 0..1);
        assert_eq!(block.slice_of(&points[1]), 3..5);
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use crate::config::DataType;
    use proptest::prelude::*;

    const TABLES: [RegisterTable; 4] = [
        RegisterTable::Holding,
        RegisterTable::Input,
        RegisterTable::Coil,
        RegisterTable::DiscreteInput,
    ];
    const TYPES: [DataType; 6] = [
        DataType::U16,
        DataType::I16,
        DataType::U32,
        DataType::I32,
        DataType::F32,
        DataType::Bit,
    ];

    /// (table, register, type, bit) as indices; points_of makes them a valid point.
    fn arb_point() -> impl Strategy<Value = (usize, u16, usize, u8)> {
        // Registers in a small window (so that points collide, touch and sit near each
        // other) or anywhere (so that the top of the address space is reached). Bit fields
        // often, so that several share a register.
        (
            0..TABLES.len(),
            prop_oneof![0u16..300, 65400u16..=65534],
            0..TYPES.len(),
            0u8..16,
        )
    }

    fn points_of(raw: &[(usize, u16, usize, u8)]) -> Vec<PointConfig> {
        raw.iter()
            .enumerate()
            .map(|(i, &(table, register, ty, bit))| {
                let table = TABLES[table];
                // What the config check allows: bits alone in the bit tables, a `bit` only
                // on a bit field.
                let data_type = if table.holds_bits() {
                    DataType::Bit
                } else {
                    TYPES[ty]
                };
                let bit = (data_type == DataType::Bit && !table.holds_bits()).then_some(bit);
                PointConfig {
                    bit,
                    ..PointConfig::modbus(format!("p{i}"), table, register, data_type)
                }
            })
            .collect()
    }

    fn arb_limits() -> impl Strategy<Value = PlanLimits> {
        (
            2u16..=125,
            0u16..=20,
            prop_oneof![1u16..=40, 1u16..=2000],
            0u16..=200,
        )
            .prop_map(
                |(max_read_registers, max_gap_registers, max_read_bits, max_gap_bits)| PlanLimits {
                    max_read_registers,
                    max_gap_registers,
                    max_read_bits,
                    max_gap_bits,
                },
            )
    }

    /// Whether the points `run` (in sweep order) fit one block.
    fn fits(points: &[PointConfig], run: &[usize], limits: PlanLimits) -> bool {
        let first = &points[run[0]];
        let (max_read, max_gap) = limits.of_table(first.modbus_table());
        let start = span(first).0;
        let mut end = span(first).1;
        for &i in &run[1..] {
            let p = &points[i];
            let (s, e) = span(p);
            if p.modbus_table() != first.modbus_table() || s > end + u32::from(max_gap) {
                return false;
            }
            end = end.max(e);
        }
        end - start <= u32::from(max_read)
    }

    /// The fewest runs the sorted points can be cut into, by exhaustive search.
    fn fewest_runs(points: &[PointConfig], limits: PlanLimits) -> usize {
        let order = sorted(points);
        let n = order.len();
        let mut best = vec![usize::MAX; n + 1];
        best[0] = 0;
        for j in 1..=n {
            for i in 0..j {
                if best[i] != usize::MAX && fits(points, &order[i..j], limits) {
                    best[j] = best[j].min(best[i] + 1);
                }
            }
        }
        best[n]
    }

    /// Every invariant of the module docs that holds for any plan, split or not.
    fn check_invariants(points: &[PointConfig], plan: &ReadPlan, limits: PlanLimits) {
        let mut seen = vec![0u32; points.len()];
        for b in plan.blocks() {
            let (max_read, max_gap) = limits.of_table(b.table);
            assert!(b.count >= 1);
            assert!(b.count <= max_read, "{b:?}");
            let mut used = vec![false; usize::from(b.count)];
            for &i in &b.points {
                seen[i] += 1;
                let p = &points[i];
                assert_eq!(p.modbus_table(), b.table);
                let (s, e) = span(p);
                assert!(
                    s >= u32::from(b.start) && e <= b.end(),
                    "{p:?} outside {b:?}"
                );
                for r in b.slice_of(p) {
                    used[r] = true;
                }
            }
            assert!(
                used[0] && used[used.len() - 1],
                "{b:?} reads past its points"
            );
            let longest_gap = used.split(|&u| u).map(<[bool]>::len).max().unwrap_or(0);
            assert!(
                longest_gap <= usize::from(max_gap),
                "{b:?} has a gap of {longest_gap}"
            );
            let by_register: Vec<u16> = b
                .points
                .iter()
                .map(|&i| points[i].modbus_register())
                .collect();
            assert!(by_register.is_sorted(), "{b:?}");
        }
        assert!(
            seen.iter().all(|&n| n == 1),
            "points not in one block each: {seen:?}"
        );
        let keys: Vec<_> = plan
            .blocks()
            .iter()
            .map(|b| (table_rank(b.table), b.start))
            .collect();
        assert!(keys.is_sorted(), "blocks out of order: {keys:?}");
    }

    proptest! {
        #[test]
        fn every_plan_keeps_the_invariants_and_is_minimal(
            raw in proptest::collection::vec(arb_point(), 1..40),
            limits in arb_limits(),
        ) {
            let points = points_of(&raw);
            let plan = ReadPlan::new(&points, limits);
            check_invariants(&points, &plan, limits);
            prop_assert_eq!(plan.blocks().len(), fewest_runs(&points, limits));
            // The same points in another order give the same blocks.
            let mut reversed = points.clone();
            reversed.reverse();
            let again = ReadPlan::new(&reversed, limits);
            let shape = |p: &ReadPlan| -> Vec<(RegisterTable, u16, u16)> {
                p.blocks().iter().map(|b| (b.table, b.start, b.count)).collect()
            };
            prop_assert_eq!(shape(&plan), shape(&again));
        }

        #[test]
        fn splitting_keeps_the_invariants_and_ends_in_single_points(
            raw in proptest::collection::vec(arb_point(), 1..40),
            max_gap in 0u16..=20,
            picks in proptest::collection::vec(any::<prop::sample::Index>(), 0..100),
        ) {
            let points = points_of(&raw);
            let limits = PlanLimits {
                max_gap_registers: max_gap,
                max_gap_bits: max_gap * 10,
                ..PlanLimits::DEFAULT
            };
            let mut plan = ReadPlan::new(&points, limits);
            let before = plan.blocks().len();
            for pick in picks {
                let i = pick.index(plan.blocks().len());
                let many = plan.blocks()[i].points.len() > 1;
                prop_assert_eq!(plan.split(i, &points), many);
                check_invariants(&points, &plan, limits);
            }
            prop_assert_eq!(plan.blocks().len(), before + plan.splits() as usize);
            while let Some(i) = plan.blocks().iter().position(|b| b.points.len() > 1) {
                prop_assert!(plan.split(i, &points));
            }
            check_invariants(&points, &plan, limits);
            prop_assert_eq!(plan.blocks().len(), points.len());
        }
    }
}
