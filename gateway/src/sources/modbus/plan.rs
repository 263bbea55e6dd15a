//! The read planner: a device's points in, the fewest read requests out.
//!
//! Pure: no I/O, no time. [`ReadPlan::new`] coalesces the points of one device into
//! [`Block`]s, one read request each (function code 3 for holding, 4 for input registers);
//! the poll loop reads every block and decodes each point from its slice of the answer.
//! When the device refuses a block with exception 02 (illegal data address) or 03 (illegal
//! data value), the poll loop calls [`ReadPlan::split`] and reads the halves; the plan keeps
//! the split, so later polls send the smaller blocks straight away.
//!
//! # How blocks are made
//! Points are sorted by (table, register, register count, config index) and swept once: a
//! point joins the block being built when it is in the same table, starts at most
//! `max_gap_registers` past the block's end (overlapping and contiguous points start at or
//! before it: a gap of 0) and the block would still hold at most `max_read_registers`.
//! Otherwise it starts a new block. O(n log n), like Telegraf's `max_insert` and unlike its
//! `aggressive` optimisation, which could take factorial time (telegraf#14030).
//!
//! # Invariants (checked by the property tests below)
//! - Every point is in exactly one block, and its registers lie inside that block.
//! - A block starts at its first point's first register and ends at the last register any
//!   of its points uses: it reads nothing outside its points but the gaps between them.
//! - No block holds more than `max_read_registers` registers (a config check makes sure no
//!   point is larger than that), and no run of registers inside a block that no point uses
//!   is longer than `max_gap_registers`.
//! - The number of blocks is minimal among plans that cut the sorted points into runs. With
//!   points of at most 2 registers (all of today's data types) a run that fits stays fitting
//!   without its first point, which is what makes the greedy sweep minimal; the property
//!   test compares it with an exhaustive search over runs.
//! - Deterministic: blocks come holding before input, then by start register; a block's
//!   points by register. The same points give the same plan, whatever their config order.
//! - A split replaces one block by two, each with half of its points (the first half by
//!   register), and never merges blocks again: a plan only gets finer. A block of one
//!   point is not split; the device's refusal is then that point's fault.

use std::fmt;
use std::ops::Range;

use crate::config::{Config, DeviceConfig, PointConfig, RegisterTable};

/// What bounds a block: from the device's config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlanLimits {
    /// The most registers one request may read (`max_read_registers`, at most 125).
    pub max_read_registers: u16,
    /// The longest run of unused registers a block may read (`max_gap_registers`).
    pub max_gap_registers: u16,
}

impl PlanLimits {
    pub fn of(device: &DeviceConfig) -> PlanLimits {
        PlanLimits {
            max_read_registers: device.max_read_registers,
            max_gap_registers: device.max_gap_registers,
        }
    }
}

/// One read request: `count` registers of `table` from `start`, and the points in them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    pub table: RegisterTable,
    /// The first register read (0-based, as on the wire).
    pub start: u16,
    /// How many registers are read; at least 1.
    pub count: u16,
    /// Indices into the device's points, by register.
    pub points: Vec<usize>,
}

impl Block {
    /// Where `point`'s registers are in this block's answer. `point` must be one of the
    /// block's points (then the range lies inside `0..count`).
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

fn table_rank(table: RegisterTable) -> u8 {
    match table {
        RegisterTable::Holding => 0,
        RegisterTable::Input => 1,
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
        let max_read = u32::from(limits.max_read_registers.max(1));
        let max_gap = u32::from(limits.max_gap_registers);
        let mut blocks: Vec<Block> = Vec::new();
        for i in sorted(points) {
            let p = &points[i];
            let (start, end) = span(p);
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

fn per_s(requests: usize, interval_ms: u64) -> f64 {
    requests as f64 * 1000.0 / interval_ms.max(1) as f64
}

fn table_name(table: RegisterTable) -> &'static str {
    match table {
        RegisterTable::Holding => "holding (FC3)",
        RegisterTable::Input => "input (FC4)",
    }
}

impl fmt::Display for SitePlan<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (device, plan) in &self.devices {
            writeln!(
                f,
                "device {} ({} unit {}, every {} ms, max_gap_registers {}, max_read_registers {}): \
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
            writeln!(f, "  {:<14} {:>5} {:>5}  points", "table", "start", "count")?;
            for block in plan.blocks() {
                let names: Vec<&str> = block
                    .points
                    .iter()
                    .filter_map(|&i| device.points.get(i))
                    .map(|p| p.name.as_str())
                    .collect();
                writeln!(
                    f,
                    "  {:<14} {:>5} {:>5}  {}",
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
        PointConfig {
            name: name.into(),
            register: Some(register),
            table: Some(table),
            data_type: Some(data_type),
            json: None,
            quality_field: None,
            quality_good: None,
            gpio: None,
            active_low: None,
            report_deadband: None,
            scale: 1.0,
            offset: 0.0,
            engineering_unit: None,
        }
    }

    fn holding(register: u16, data_type: DataType) -> PointConfig {
        pt(
            &format!("h{register}"),
            RegisterTable::Holding,
            register,
            data_type,
        )
    }

    const LIMITS: PlanLimits = PlanLimits {
        max_read_registers: 125,
        max_gap_registers: 8,
    };

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
            out.contains("  holding (FC3)      0     3  floor, door\n"),
            "{out}"
        );
        assert!(
            out.contains("  input (FC4)        3     1  speed\n"),
            "{out}"
        );
        assert!(
            out.contains("requests per poll 3 -> 2 (1 saved); requests per second at the configured poll intervals 6.0 -> 4.0"),
            "{out}"
        );
        assert!(out.contains("RTU buses"), "{out}");
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

    fn arb_point() -> impl Strategy<Value = (bool, u16, u8)> {
        // Registers in a small window (so that points collide, touch and sit near each
        // other) or anywhere (so that the top of the address space is reached).
        (
            any::<bool>(),
            prop_oneof![0u16..300, 65400u16..=65534],
            0u8..5,
        )
    }

    fn points_of(raw: &[(bool, u16, u8)]) -> Vec<PointConfig> {
        raw.iter()
            .enumerate()
            .map(|(i, &(input, register, ty))| PointConfig {
                name: format!("p{i}"),
                register: Some(register),
                table: Some(if input {
                    RegisterTable::Input
                } else {
                    RegisterTable::Holding
                }),
                json: None,
                quality_field: None,
                quality_good: None,
                gpio: None,
                active_low: None,
                report_deadband: None,
                data_type: Some(
                    [
                        DataType::U16,
                        DataType::I16,
                        DataType::U32,
                        DataType::I32,
                        DataType::F32,
                    ][usize::from(ty)],
                ),
                scale: 1.0,
                offset: 0.0,
                engineering_unit: None,
            })
            .collect()
    }

    /// Whether the points `run` (in sweep order) fit one block.
    fn fits(points: &[PointConfig], run: &[usize], limits: PlanLimits) -> bool {
        let first = &points[run[0]];
        let start = span(first).0;
        let mut end = span(first).1;
        for &i in &run[1..] {
            let p = &points[i];
            let (s, e) = span(p);
            if p.modbus_table() != first.modbus_table()
                || s > end + u32::from(limits.max_gap_registers)
            {
                return false;
            }
            end = end.max(e);
        }
        end - start <= u32::from(limits.max_read_registers)
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
            assert!(b.count >= 1);
            assert!(b.count <= limits.max_read_registers, "{b:?}");
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
                longest_gap <= usize::from(limits.max_gap_registers),
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
            max_gap in 0u16..=20,
            max_read in 2u16..=125,
        ) {
            let points = points_of(&raw);
            let limits = PlanLimits { max_read_registers: max_read, max_gap_registers: max_gap };
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
            let limits = PlanLimits { max_read_registers: 125, max_gap_registers: max_gap };
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
