//! The Modbus read planner: how many requests it saves, and what planning costs.
//!
//! `cargo bench -p shouwang-gateway --bench plan`
//!
//! Prints, before criterion's timings, requests per poll without the planner (one per point)
//! and with it, for each shipped device profile (`gateway/profiles/`), the demo's building
//! (`demo/building.toml`), the 32-storey example (`docs/examples/building-32-floors.toml`),
//! a device with 20 scattered
//! points (the layout of `gateway/tests/modbus.rs`), an elevator monitoring terminal, a
//! fire panel interface with a register per zone and one with a coil and a discrete input
//! per zone and its status word's bits as bit fields; then, for a device with 100 points
//! scattered over 2,000 registers, requests and registers read at several
//! `max_gap_registers`, with the RTU wire time they would take at 9600 baud (an estimate
//! from frame sizes, to show why the default gap is 8; `--bench bus` measures a line).
//! Asserts nothing about timings.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group};
use shouwang_gateway::config::{
    Config, DEFAULT_MAX_GAP_BITS, DEFAULT_MAX_GAP_REGISTERS, DataType, PointConfig, Profiles,
    RegisterTable,
};
use shouwang_gateway::sources::modbus::{PlanLimits, ProfilePlans, ReadPlan, SitePlan};

const DEFAULT_LIMITS: PlanLimits = PlanLimits::DEFAULT;

fn point(i: usize, table: RegisterTable, register: u16, data_type: DataType) -> PointConfig {
    PointConfig::modbus(format!("p{i}"), table, register, data_type)
}

fn points(layout: &[(u16, RegisterTable, DataType)]) -> Vec<PointConfig> {
    layout
        .iter()
        .enumerate()
        .map(|(i, &(r, t, d))| point(i, t, r, d))
        .collect()
}

/// The 20 scattered points of `gateway/tests/modbus.rs`.
fn scattered_20() -> Vec<PointConfig> {
    use DataType::*;
    use RegisterTable::{Holding as H, Input as I};
    points(&[
        (0, H, U16),
        (1, H, U16),
        (2, H, I16),
        (4, H, F32),
        (6, H, U32),
        (10, H, U16),
        (19, H, U16),
        (20, H, I32),
        (40, H, U16),
        (41, H, U16),
        (100, H, F32),
        (107, H, U16),
        (200, H, U16),
        (300, H, U16),
        (0, I, U16),
        (3, I, U16),
        (12, I, F32),
        (14, I, I16),
        (30, I, U16),
        (31, I, U16),
    ])
}

/// An elevator monitoring terminal (GB/T 24476 data): floor, direction, speed, door state,
/// occupancy, service mode, fault code, heartbeat in input registers, trip and door
/// counters as u32 a little further up.
fn elevator_terminal() -> Vec<PointConfig> {
    use DataType::*;
    use RegisterTable::Input as I;
    points(&[
        (0, I, I16),
        (1, I, U16),
        (2, I, U16),
        (3, I, U16),
        (4, I, U16),
        (5, I, U16),
        (6, I, U16),
        (9, I, U16),
        (16, I, U32),
        (18, I, U32),
    ])
}

/// A fire panel interface: one status word per zone (200 zones) and ten loop fault words
/// far above them.
fn fire_panel_interface() -> Vec<PointConfig> {
    let mut layout: Vec<_> = (0..200)
        .map(|z| (z, RegisterTable::Holding, DataType::U16))
        .collect();
    layout.extend((0..10).map(|l| (1000 + l * 4, RegisterTable::Holding, DataType::U16)));
    points(&layout)
}

/// A fire panel interface that gives each of 400 zones a fire coil and a fault discrete
/// input, and its panel status word (holding register 0) as 16 bit fields.
fn fire_panel_bits() -> Vec<PointConfig> {
    let mut layout: Vec<_> = (0..400)
        .map(|z| (z, RegisterTable::Coil, DataType::Bit))
        .collect();
    layout.extend((0..400).map(|z| (z, RegisterTable::DiscreteInput, DataType::Bit)));
    layout.extend((0..16).map(|_| (0, RegisterTable::Holding, DataType::Bit)));
    let mut pts = points(&layout);
    for (bit, p) in pts[800..].iter_mut().enumerate() {
        p.bit = u8::try_from(bit).ok();
    }
    pts
}

/// 100 u16/f32 points scattered over registers 0..2000 (a fixed LCG: the same every run).
fn scattered_100() -> Vec<PointConfig> {
    let mut x: u32 = 12345;
    let mut next = move || {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
        (x >> 8) % 2000
    };
    (0..100)
        .map(|i| {
            let r = next() as u16;
            let t = if i % 4 == 0 {
                DataType::F32
            } else {
                DataType::U16
            };
            point(i, RegisterTable::Holding, r, t)
        })
        .collect()
}

/// Read wire time of one request of `count` registers on Modbus RTU at `baud`, 11 bits a
/// character: an 8-byte request, a 5 + 2n byte answer, and a 3.5-character silence after
/// each (no device turnaround, which only makes more requests costlier).
fn rtu_ms(count: u32, baud: f64) -> f64 {
    let chars = 8.0 + 3.5 + 5.0 + 2.0 * f64::from(count) + 3.5;
    chars * 11.0 * 1000.0 / baud
}

fn figures() {
    let shipped = Profiles::shipped();
    print!("shipped {}", ProfilePlans::of(&shipped, None));
    for (name, path, text) in [
        (
            "demo building",
            "demo/building.toml",
            include_str!("../../demo/building.toml"),
        ),
        (
            "32-storey example",
            "docs/examples/building-32-floors.toml",
            include_str!("../../docs/examples/building-32-floors.toml"),
        ),
    ] {
        let config = Config::from_toml_str(text, path).unwrap();
        let site = SitePlan::of(&config);
        println!(
            "{name}: {} devices, {} points; requests per poll {} -> {} ({} saved); per second {:.1} -> {:.1}",
            site.devices.len(),
            site.points(),
            site.requests_per_poll_unplanned(),
            site.requests_per_poll(),
            site.requests_per_poll_unplanned() - site.requests_per_poll(),
            site.requests_per_s_unplanned(),
            site.requests_per_s(),
        );
    }
    for (name, pts) in [
        ("20 scattered points", scattered_20()),
        ("elevator terminal", elevator_terminal()),
        ("fire panel interface", fire_panel_interface()),
        ("fire panel by coils and bits", fire_panel_bits()),
        ("100 points over 2000 registers", scattered_100()),
    ] {
        let plan = ReadPlan::new(&pts, DEFAULT_LIMITS);
        println!(
            "{name}: {} points, requests per poll {} -> {} (max_gap_registers {DEFAULT_MAX_GAP_REGISTERS}, max_gap_bits {DEFAULT_MAX_GAP_BITS})",
            pts.len(),
            pts.len(),
            plan.blocks().len()
        );
    }
    println!("100 points over 2000 registers, by max_gap_registers (RTU 9600 baud estimate):");
    let pts = scattered_100();
    let per_point: f64 = pts
        .iter()
        .map(|p| rtu_ms(u32::from(p.modbus_registers()), 9600.0))
        .sum();
    println!("  one per point: {} requests, {per_point:.0} ms", pts.len());
    for gap in [0u16, 4, 8, 10, 16, 32, 50, 123] {
        let plan = ReadPlan::new(
            &pts,
            PlanLimits {
                max_gap_registers: gap,
                ..DEFAULT_LIMITS
            },
        );
        let registers: u32 = plan.blocks().iter().map(|b| u32::from(b.count)).sum();
        let ms: f64 = plan
            .blocks()
            .iter()
            .map(|b| rtu_ms(u32::from(b.count), 9600.0))
            .sum();
        println!(
            "  max_gap_registers {gap:>3}: {:>3} requests, {registers:>4} registers read, {ms:.0} ms",
            plan.blocks().len()
        );
    }
}

fn planning(c: &mut Criterion) {
    let mut group = c.benchmark_group("plan");
    for (name, pts) in [
        ("20 scattered points", scattered_20()),
        ("fire panel interface, 210 points", fire_panel_interface()),
        (
            "fire panel by coils and bits, 816 points",
            fire_panel_bits(),
        ),
    ] {
        group.throughput(Throughput::Elements(pts.len() as u64));
        group.bench_function(name, |b| {
            b.iter(|| black_box(ReadPlan::new(black_box(&pts), DEFAULT_LIMITS)))
        });
    }
    let pts = fire_panel_interface();
    group.throughput(Throughput::Elements(1));
    group.bench_function("split a 125-point block (plan cloned each time)", |b| {
        let plan = ReadPlan::new(&pts, DEFAULT_LIMITS);
        b.iter(|| {
            let mut plan = plan.clone();
            black_box(plan.split(0, &pts))
        })
    });
    group.finish();
}

criterion_group!(benches, planning);

fn main() {
    figures();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
