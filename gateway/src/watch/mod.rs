//! The gateway's watch: poll outcomes, commands and the time in, alarm events and reading
//! batches out.
//!
//! Pure, like the rule engine it wraps: no I/O, no clock, no randomness. The runtime loop
//! ([`crate::run`]) feeds it and sends what it returns. It adds to the engine what the
//! engine does not know: where each device is, which rule and point an alarm came from,
//! communication-loss counting, the stable `event_id` every event carries
//! (`<boot id>-<sequence>`, unique because the boot id is new at every start), and the
//! `(boot, seq)` pair that orders every event this gateway ever sent (see [`crate::clock`]).
//!
//! After a restart, [`Watch::restore`] puts every alarm back in the state it had (from
//! [`crate::sinks::alarm_state`]), so nothing is raised twice; [`Watch::snapshot`] states every
//! alarm for the console once the first poll cycle is done ([`Watch::first_cycle_done`]).
//!
//! Time comes in as a [`Stamp`]: the rule engine runs on its monotonic part only, so a
//! wall clock stepped back or forward neither delays nor hides an alarm; the wall part is
//! only written on events and readings for people to read.

use std::collections::HashMap;
use std::sync::Arc;

pub mod exception;

use shouwang_rules::{AckError, Engine, RuleError, Transition};
use shouwang_wire::{
    Action, AlarmEvent, AlarmState, Command, CommandReply, EventKey, Place, PointValue, Quality,
    ReadingBatch, Snapshot, TransitionKind,
};

use crate::clock::Stamp;
use crate::config::{AlarmMeta, COMM_LOST_RULE, Config, POINT_FAULT_RULE};
use crate::sources::{PollOutcome, PolledValues};

/// Polls in a row with a point the device refuses before its `point_fault` is raised: one
/// bad answer is not yet a fault.
const POINT_FAULT_AFTER_POLLS: u32 = 3;

/// Set one of the gateway's built-in faults (a device's `comm_lost` or `point_fault`).
fn set_fault(engine: &mut Engine, alarm_id: &str, active: bool, ts_ms: i64) -> Vec<Transition> {
    // They are created with the engine from the same config, so the id always exists and
    // is External; an error here is a broken invariant, logged by returning nothing rather
    // than crashing the gateway.
    engine
        .set_external(alarm_id, active, None, ts_ms)
        .unwrap_or_else(|e| {
            tracing::error!(alarm_id, error = %e, "built-in fault missing from the engine");
            Vec::new()
        })
}

/// One point of a reading batch: its value or none, its quality, its unit (`units`: a
/// device's, sorted by point name).
fn point_value(
    units: &[(String, Option<String>)],
    point: &str,
    value: Option<f64>,
    quality: Quality,
) -> PointValue {
    PointValue {
        point: point.to_string(),
        value,
        engineering_unit: unit_of(units, point),
        quality,
    }
}

/// The engineering unit of `point` in a device's `units` (sorted by point name).
fn unit_of(units: &[(String, Option<String>)], point: &str) -> Option<String> {
    units
        .binary_search_by(|(name, _)| name.as_str().cmp(point))
        .ok()
        .and_then(|i| units[i].1.clone())
}

/// What one poll produced.
#[derive(Debug, Default, PartialEq)]
pub struct PollReport {
    /// Alarm transitions, in the order they happened.
    pub events: Vec<AlarmEvent>,
    /// The device's values, when the poll succeeded.
    pub readings: Option<ReadingBatch>,
}

struct DeviceState {
    id: String,
    kind: String,
    place: Arc<Place>,
    /// Silence longer than this raises `comm_lost` (monotonic ms).
    comm_loss_after_ms: i64,
    /// When the device last answered (monotonic ms; the gateway's start until it has).
    last_answer_ms: i64,
    comm_lost_alarm: Arc<str>,
    /// Polls in a row in which some point could not be read.
    point_failures: u32,
    point_fault_alarm: Arc<str>,
    /// Each point's name and engineering unit, by name (a device has a few points: a
    /// vector, not a map per device).
    units: Vec<(String, Option<String>)>,
    /// Whether a poll of it has ended (answered or not) since the gateway started.
    polled: bool,
    /// Report by exception (`report_every_s`, default 60 s); `None`: every poll's values
    /// are reported (`report_every_s = 0`).
    exception: Option<exception::ExceptionFilter>,
    /// The device's `alive_counter`, and when it last moved.
    alive: Option<Alive>,
}

/// A counter that must move for a device's values to be fresh (see
/// [`crate::config::DeviceConfig::alive_counter`]).
struct Alive {
    point: String,
    stale_after_ms: i64,
    /// Its last value, and when (monotonic ms) it took it; `None` until it is first read.
    last: Option<(f64, i64)>,
}

impl Alive {
    /// Why the poll's values are held ones, if they are: the counter has not moved for
    /// `stale_after_ms`. Its first reading counts as a move; a poll without it (a point
    /// fault) moves nothing.
    fn stale(&mut self, polled: &PolledValues, now_ms: i64) -> Option<String> {
        let value = polled
            .values
            .iter()
            .find(|(name, _)| *name == self.point)
            .map(|(_, v)| *v);
        match (value, self.last) {
            (Some(v), Some((last, _))) if v != last => self.last = Some((v, now_ms)),
            (Some(v), None) => self.last = Some((v, now_ms)),
            _ => {}
        }
        let since = self.last.map_or(0, |(_, at)| at);
        let still = now_ms.saturating_sub(since);
        (self.last.is_some() && still >= self.stale_after_ms).then(|| {
            format!(
                "alive counter `{}` has not changed for {} s: the device serves held values",
                self.point,
                still / 1000
            )
        })
    }
}

pub struct Watch {
    gateway: String,
    community: String,
    engine: Engine,
    /// What each alarm is, in the engine's order ([`Engine::index_of`]).
    meta: Vec<AlarmMeta>,
    devices: Vec<DeviceState>,
    boot_id: String,
    /// This start's boot counter: events are ordered by `(boot, seq)`.
    boot: u64,
    next_seq: u64,
    /// Each alarm's latest event (restored ones included): what a snapshot states, and
    /// what an acknowledgement is checked against. Bounded by the number of alarms.
    latest: HashMap<String, AlarmEvent>,
    /// Batches saying a device's points are `comm-lost`, made when its communication loss
    /// was raised by a tick ([`Watch::take_readings`]); at most one per device.
    comm_lost_readings: Vec<ReadingBatch>,
    /// The coincidences' zones (`config/zones.rs`), and for each alarm that counts in one
    /// (by its index in the engine) the zones and the device it counts for.
    zones: Vec<ZoneWatch>,
    counts_in: HashMap<usize, Vec<(usize, usize)>>,
}

/// One zone of a coincidence: which of its devices have an alarm that counts.
struct ZoneWatch {
    alarm: Arc<str>,
    at_least: usize,
    /// Device index -> the engine indices of its active alarms that count.
    active: HashMap<usize, Vec<usize>>,
}

impl ZoneWatch {
    /// Note alarm `alarm` of device `device` active or not; whether the zone is now met.
    fn note(&mut self, device: usize, alarm: usize, active: bool) -> bool {
        let alarms = self.active.entry(device).or_default();
        alarms.retain(|a| *a != alarm);
        if active {
            alarms.push(alarm);
        }
        if alarms.is_empty() {
            self.active.remove(&device);
        }
        self.active.len() >= self.at_least
    }
}

impl Watch {
    /// `boot_id` must be new at every gateway start (a UUID): event ids are built from it.
    /// `boot` must be larger than at any earlier start ([`crate::clock::BootCounter`]).
    pub fn new(config: &Config, boot_id: String, boot: u64) -> Result<Watch, Vec<RuleError>> {
        let (specs, meta): (Vec<_>, Vec<AlarmMeta>) = config.alarm_specs().into_iter().unzip();
        // Each device's place, shared with its alarms' metadata (one copy per device).
        let places: HashMap<&str, Arc<Place>> =
            meta.iter().map(|m| (&*m.device, m.place.clone())).collect();
        let engine = Engine::new(specs)?;
        // A device's own faults by the engine's copy of their ids.
        let fault = |device: &str, rule: &str| -> Arc<str> {
            let id = shouwang_wire::alarm_id(
                &config.gateway.community,
                &config.gateway.id,
                device,
                rule,
            );
            engine
                .alarm(&id)
                .map(|a| a.spec.alarm_id.clone())
                .unwrap_or_else(|| id.into())
        };
        // Coincidences: each zone's alarm, and which device alarms count in which zone.
        let mut zones = Vec::new();
        let mut counts_in: HashMap<usize, Vec<(usize, usize)>> = HashMap::new();
        for zone in config.zones() {
            let Some(c) = config.coincidences.get(zone.coincidence) else {
                continue;
            };
            let alarm = shouwang_wire::alarm_id(
                &config.gateway.community,
                &config.gateway.id,
                &zone.id,
                &c.id,
            );
            let Some(alarm) = engine.alarm(&alarm).map(|a| a.spec.alarm_id.clone()) else {
                continue;
            };
            let z = zones.len();
            for &d in &zone.devices {
                for rule in &c.of {
                    let id = shouwang_wire::alarm_id(
                        &config.gateway.community,
                        &config.gateway.id,
                        &config.devices[d].id,
                        rule,
                    );
                    if let Some(index) = engine.index_of(&id) {
                        counts_in.entry(index).or_default().push((z, d));
                    }
                }
            }
            zones.push(ZoneWatch {
                alarm,
                at_least: usize::try_from(c.at_least).unwrap_or(usize::MAX),
                active: HashMap::new(),
            });
        }
        let devices = config
            .devices
            .iter()
            .map(|d| DeviceState {
                id: d.id.clone(),
                kind: d.kind.clone(),
                place: places
                    .get(d.id.as_str())
                    .cloned()
                    .unwrap_or_else(|| Arc::new(config.place(d))),
                comm_loss_after_ms: i64::try_from(d.comm_loss_after_s.saturating_mul(1000))
                    .unwrap_or(i64::MAX),
                last_answer_ms: 0,
                comm_lost_alarm: fault(&d.id, COMM_LOST_RULE),
                point_failures: 0,
                point_fault_alarm: fault(&d.id, POINT_FAULT_RULE),
                units: {
                    let mut units: Vec<(String, Option<String>)> = d
                        .points
                        .iter()
                        .map(|p| (p.name.clone(), p.engineering_unit.clone()))
                        .collect();
                    units.sort();
                    units
                },
                polled: false,
                alive: d.alive_counter.as_ref().map(|a| Alive {
                    point: a.point.clone(),
                    stale_after_ms: i64::try_from(a.stale_after_s.saturating_mul(1000))
                        .unwrap_or(i64::MAX),
                    last: None,
                }),
                exception: d.report_every().map(|s| {
                    exception::ExceptionFilter::new(
                        i64::try_from(s.saturating_mul(1000)).unwrap_or(i64::MAX),
                        d.points
                            .iter()
                            .map(|p| (p.name.clone(), p.report_deadband.unwrap_or(0.0)))
                            .collect(),
                    )
                }),
            })
            .collect();
        Ok(Watch {
            gateway: config.gateway.id.clone(),
            community: config.gateway.community.clone(),
            engine,
            meta,
            devices,
            boot_id,
            boot,
            next_seq: 0,
            comm_lost_readings: Vec::new(),
            latest: HashMap::new(),
            zones,
            counts_in,
        })
    }

    /// Put alarms back in the state their latest event from before this start says (see
    /// [`crate::sinks::journal::Journal::start`]). Events of alarms this config does not have are
    /// skipped. Makes no event: the console has these already, and the first poll moves
    /// each alarm on from there. Returns how many alarms were restored.
    pub fn restore(&mut self, events: Vec<AlarmEvent>) -> usize {
        let mut restored = 0;
        for event in events {
            if self.engine.index_of(&event.alarm_id).is_none() {
                continue;
            }
            if self
                .engine
                .restore(&event.alarm_id, event.state, event.value)
                .is_ok()
            {
                restored += 1;
                // A restored alarm counts in its zones as it stands; the zone alarm is
                // restored by its own event.
                if let Some(index) = self.engine.index_of(&event.alarm_id)
                    && let Some(links) = self.counts_in.get(&index)
                {
                    for &(z, d) in links {
                        if let Some(zone) = self.zones.get_mut(z) {
                            zone.note(d, index, event.active);
                        }
                    }
                }
                self.latest.insert(event.alarm_id.clone(), event);
            }
        }
        restored
    }

    /// The earliest monotonic time at which a tick would raise or clear an alarm whose on-
    /// or off-delay is running (comm loss aside), if any.
    pub fn next_deadline_ms(&self) -> Option<i64> {
        self.engine.next_deadline_ms()
    }

    /// Every alarm's id (the engine's copies, shared).
    pub fn alarm_ids(&self) -> std::collections::HashSet<Arc<str>> {
        self.engine
            .alarms()
            .map(|a| a.spec.alarm_id.clone())
            .collect()
    }

    /// Whether every device has had a poll end since the gateway started: its alarms then
    /// reflect the field, not only what was restored.
    pub fn first_cycle_done(&self) -> bool {
        self.devices.iter().all(|d| d.polled)
    }

    /// Every alarm of this gateway and its latest event, split into parts of at most
    /// `max_bytes` (see [`Snapshot`]).
    pub fn snapshot(&self, snapshot_id: &str, wall_ms: i64, max_bytes: usize) -> Vec<Snapshot> {
        let mut events = Vec::new();
        let mut quiet = Vec::new();
        for alarm in self.engine.alarms() {
            let id = &alarm.spec.alarm_id;
            match self.latest.get(&**id) {
                Some(event) => events.push(event.clone()),
                None => quiet.push(id.to_string()),
            }
        }
        let position = EventKey {
            boot: self.boot,
            seq: self.next_seq,
        };
        Snapshot::split(
            &self.gateway,
            snapshot_id,
            position,
            events,
            quiet,
            wall_ms,
            max_bytes,
        )
    }

    pub fn on_poll(&mut self, outcome: &PollOutcome) -> PollReport {
        let mut report = PollReport::default();
        let Some(device) = self.devices.get_mut(outcome.device) else {
            return report;
        };
        device.polled = true;
        let mut transitions = Vec::new();
        match &outcome.result {
            Err(_) => {
                let (lost, batch) = self.silence(outcome.device, outcome.at);
                transitions.extend(lost);
                report.readings = batch;
            }
            Ok(polled) => {
                let at = outcome.at.mono_ms;
                let held;
                let polled = match device.alive.as_mut().and_then(|a| a.stale(polled, at)) {
                    Some(reason) => {
                        held = polled.clone().into_stale(&reason);
                        &held
                    }
                    None => polled,
                };
                let fresh = polled.is_fresh();
                if fresh {
                    device.last_answer_ms = device.last_answer_ms.max(at);
                }
                // Same threshold as comm loss: one bad answer is not yet a fault. Held
                // values are no answer at all: they count towards comm loss instead.
                let refused = polled.faults.iter().any(|f| f.quality != Quality::Stale);
                let point_fault = if !refused {
                    device.point_failures = 0;
                    false
                } else {
                    device.point_failures = device.point_failures.saturating_add(1);
                    device.point_failures >= POINT_FAULT_AFTER_POLLS
                };
                if !fresh {
                    let (lost, batch) = self.silence(outcome.device, outcome.at);
                    transitions.extend(lost);
                    if batch.is_some() {
                        report.readings = batch;
                        report.events = self.events(transitions, outcome.at.wall_ms);
                        return report;
                    }
                }
                let Some(device) = self.devices.get_mut(outcome.device) else {
                    return report;
                };
                // The engine and the device are separate fields: no id is copied per poll.
                let engine = &mut self.engine;
                if fresh {
                    transitions.extend(set_fault(engine, &device.comm_lost_alarm, false, at));
                    if point_fault || !refused {
                        let alarm = &device.point_fault_alarm;
                        transitions.extend(set_fault(engine, alarm, point_fault, at));
                    }
                }
                for (point, value) in &polled.values {
                    transitions.extend(engine.on_reading(&device.id, point, *value, at));
                }
                // The rules saw every value above; the sinks get what is worth reporting.
                // Report by exception decides on the values first, so a poll that reports
                // nothing (most of them) builds no batch: no copy of the device's place and
                // names for a batch that would be thrown away.
                let values = polled
                    .values
                    .iter()
                    .map(|(point, value)| (point, Some(*value), Quality::Good));
                let faults = polled
                    .faults
                    .iter()
                    .map(|fault| (&fault.point, None, fault.quality));
                let reported = values.chain(faults);
                let points: Vec<PointValue> = match device.exception.as_mut() {
                    Some(filter) => {
                        let heartbeat = filter.heartbeat(at);
                        reported
                            .filter(|&(point, value, quality)| {
                                filter.report(point, value, quality, heartbeat)
                            })
                            .map(|(point, value, quality)| {
                                point_value(&device.units, point, value, quality)
                            })
                            .collect()
                    }
                    None => reported
                        .map(|(point, value, quality)| {
                            point_value(&device.units, point, value, quality)
                        })
                        .collect(),
                };
                if !points.is_empty() {
                    report.readings = Some(ReadingBatch {
                        schema: ReadingBatch::SCHEMA,
                        gateway: self.gateway.clone(),
                        device: device.id.clone(),
                        device_kind: device.kind.clone(),
                        place: (*device.place).clone(),
                        ts_ms: outcome.at.wall_ms,
                        points,
                    });
                }
            }
        }
        report.events = self.events(transitions, outcome.at.wall_ms);
        report
    }

    /// The events of transitions that happened at `wall_ms`.
    fn events(&mut self, mut transitions: Vec<Transition>, wall_ms: i64) -> Vec<AlarmEvent> {
        let zoned = self.zone_transitions(&transitions);
        transitions.extend(zoned);
        transitions
            .into_iter()
            .filter_map(|t| self.event(t, None, wall_ms))
            .collect()
    }

    /// The zone alarms that `transitions` move: each transition of an alarm that counts in a
    /// zone notes its device active or not there, and the zone's alarm is set by whether
    /// `at_least` devices are (at the transition's monotonic time).
    fn zone_transitions(&mut self, transitions: &[Transition]) -> Vec<Transition> {
        let mut out = Vec::new();
        if self.counts_in.is_empty() {
            return out;
        }
        for t in transitions {
            let Some(index) = self.engine.index_of(&t.alarm_id) else {
                continue;
            };
            let Some(links) = self.counts_in.get(&index) else {
                continue;
            };
            for &(z, d) in links {
                let Some(zone) = self.zones.get_mut(z) else {
                    continue;
                };
                let met = zone.note(d, index, t.active);
                let alarm = zone.alarm.clone();
                out.extend(set_fault(&mut self.engine, &alarm, met, t.ts_ms));
            }
        }
        out
    }

    /// Device `index` gave no fresh answer at `at`: when it has been silent for its
    /// `comm_loss_after_s`, its `comm_lost` is raised, with the batch of its points as
    /// `comm-lost` when that raise is new.
    fn silence(&mut self, index: usize, at: Stamp) -> (Vec<Transition>, Option<ReadingBatch>) {
        let Some(device) = self.devices.get(index) else {
            return (Vec::new(), None);
        };
        if at.mono_ms.saturating_sub(device.last_answer_ms) < device.comm_loss_after_ms {
            return (Vec::new(), None);
        }
        let id = device.comm_lost_alarm.clone();
        let raised = set_fault(&mut self.engine, &id, true, at.mono_ms);
        let batch = if raised.iter().any(|t| t.kind == TransitionKind::Raised) {
            self.comm_lost_batch(index, at)
        } else {
            None
        };
        (raised, batch)
    }

    /// Time passes: on-delays may run out, and devices silent for too long (whether their
    /// polls fail or never come, as from a stalled poller) lose communication.
    pub fn on_tick(&mut self, now: Stamp) -> Vec<AlarmEvent> {
        let mut transitions = Vec::new();
        for device in 0..self.devices.len() {
            let (lost, batch) = self.silence(device, now);
            transitions.extend(lost);
            self.comm_lost_readings.extend(batch);
        }
        transitions.extend(self.engine.tick(now.mono_ms));
        self.events(transitions, now.wall_ms)
    }

    /// The readings batches made since the last call: every point of a device whose
    /// communication loss a tick raised, as `comm-lost` with no value, so the broker's
    /// listeners and the store see the device go dark rather than its last value standing.
    pub fn take_readings(&mut self) -> Vec<ReadingBatch> {
        std::mem::take(&mut self.comm_lost_readings)
    }

    /// Every point of device `index` as `comm-lost`, through its report-by-exception filter
    /// (so the point's return to good is reported at once too).
    fn comm_lost_batch(&mut self, index: usize, now: Stamp) -> Option<ReadingBatch> {
        let device = self.devices.get_mut(index)?;
        let points: Vec<PointValue> = device
            .units
            .iter()
            .map(|(point, unit)| PointValue {
                point: point.clone(),
                value: None,
                engineering_unit: unit.clone(),
                quality: Quality::CommLost,
            })
            .collect();
        let points = match device.exception.as_mut() {
            Some(filter) => filter.filter(points, now.mono_ms),
            None => points,
        };
        (!points.is_empty()).then(|| ReadingBatch {
            schema: ReadingBatch::SCHEMA,
            gateway: self.gateway.clone(),
            device: device.id.clone(),
            device_kind: device.kind.clone(),
            place: (*device.place).clone(),
            ts_ms: now.wall_ms,
            points,
        })
    }

    /// One of the gateway's own faults ([`crate::config::GATEWAY_FAULTS`]) is active or not.
    pub fn set_gateway_fault(&mut self, rule: &str, active: bool, now: Stamp) -> Vec<AlarmEvent> {
        let id = shouwang_wire::alarm_id(&self.community, &self.gateway, &self.gateway, rule);
        let transitions = set_fault(&mut self.engine, &id, active, now.mono_ms);
        transitions
            .into_iter()
            .filter_map(|t| self.event(t, None, now.wall_ms))
            .collect()
    }

    /// A command from the console. Always yields a reply; an accepted acknowledgement also
    /// yields the alarm's new state as an event. A resync is answered with a snapshot,
    /// which the runtime loop sends ([`Watch::snapshot`]).
    pub fn on_command(&mut self, command: &Command, now: Stamp) -> (Vec<AlarmEvent>, CommandReply) {
        let mut reply = CommandReply {
            schema: CommandReply::SCHEMA,
            command_id: command.command_id.clone(),
            gateway: self.gateway.clone(),
            ok: false,
            error: None,
            ts_ms: now.wall_ms,
        };
        match &command.action {
            Action::Acknowledge {
                alarm_id,
                event_id: Some(seen),
            } if self.changed_since(alarm_id, seen) => {
                reply.error = Some(format!(
                    "alarm {alarm_id:?} has changed since event {seen:?} that the operator saw; \
                     look at it again before acknowledging"
                ));
                (Vec::new(), reply)
            }
            Action::Acknowledge { alarm_id, .. } => {
                match self.engine.acknowledge(alarm_id, now.mono_ms) {
                    Ok(t) => {
                        reply.ok = true;
                        let event = self.event(t, Some(command.operator.clone()), now.wall_ms);
                        (event.into_iter().collect(), reply)
                    }
                    Err(e) => {
                        reply.error = Some(match e {
                            AckError::UnknownAlarm(id) => {
                                format!("gateway {} has no alarm {id:?}", self.gateway)
                            }
                            other => other.to_string(),
                        });
                        (Vec::new(), reply)
                    }
                }
            }
            Action::Resync => {
                reply.ok = true;
                (Vec::new(), reply)
            }
        }
    }

    /// Whether the alarm has had an event after `seen`. An alarm this gateway has sent no
    /// event for since it started has nothing newer to protect.
    /// Only asked while the alarm awaits an acknowledgement: otherwise the engine's
    /// "nothing to acknowledge" is the better answer.
    fn changed_since(&self, alarm_id: &str, seen: &str) -> bool {
        let awaits_ack = self.engine.alarm(alarm_id).is_some_and(|a| {
            matches!(
                a.state,
                AlarmState::Unacknowledged | AlarmState::ReturnedUnacknowledged
            )
        });
        awaits_ack
            && self
                .latest
                .get(alarm_id)
                .is_some_and(|latest| latest.event_id != seen)
    }

    /// The event for one transition. `wall_ms` is the wall-clock time of the call that
    /// caused it (the transition's own time is monotonic, for the engine only).
    fn event(
        &mut self,
        t: Transition,
        operator: Option<String>,
        wall_ms: i64,
    ) -> Option<AlarmEvent> {
        let meta = self.meta.get(self.engine.index_of(&t.alarm_id)?)?;
        let view = self.engine.alarm(&t.alarm_id)?;
        self.next_seq += 1;
        let event = AlarmEvent {
            schema: AlarmEvent::SCHEMA,
            event_id: format!("{}-{}", self.boot_id, self.next_seq),
            boot: self.boot,
            seq: self.next_seq,
            alarm_id: t.alarm_id.to_string(),
            gateway: self.gateway.clone(),
            device: meta.device.to_string(),
            device_kind: meta.device_kind.to_string(),
            point: meta.point.as_deref().map(str::to_string),
            rule: meta.rule.to_string(),
            class: view.spec.class,
            priority: view.spec.priority,
            transition: t.kind,
            state: t.state,
            active: t.active,
            value: t.value.or(view.last_value),
            engineering_unit: meta.engineering_unit.as_deref().map(str::to_string),
            place: (*meta.place).clone(),
            message: meta.message.to_string(),
            ts_ms: wall_ms,
            operator,
        };
        self.latest.insert(event.alarm_id.clone(), event.clone());
        Some(event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::{LinkError, PolledValues};
    use shouwang_wire::{SignalClass, TransitionKind};

    const CONFIG: &str = r#"
[gateway]
id = "gw"
community = "c"
data_dir = "data"

[[devices]]
id = "smoke-1"
kind = "smoke"
building = "B1"
floor = "12"
unit = "03"
transport = "tcp"
address = "127.0.0.1:1"
comm_loss_after_s = 2

[[devices.points]]
name = "obscuration"
register = 0
type = "u16"
engineering_unit = "%/m"

[[rules]]
id = "smoke-high"
device_kind = "smoke"
point = "obscuration"
class = "alarm"
priority = "high"
above = 2.5
deadband = 0.5
message = "Smoke detected"
"#;

    fn watch() -> Watch {
        let config = Config::from_toml_str(CONFIG, "t").unwrap();
        Watch::new(&config, "boot".into(), 7).unwrap()
    }

    fn good(value: f64, ts_ms: i64) -> PollOutcome {
        PollOutcome {
            device: 0,
            at: Stamp::at(ts_ms),
            result: Ok(PolledValues {
                values: vec![("obscuration".into(), value)],
                faults: vec![],
            }),
        }
    }

    fn failed(ts_ms: i64) -> PollOutcome {
        PollOutcome {
            device: 0,
            at: Stamp::at(ts_ms),
            result: Err(LinkError::Timeout(500)),
        }
    }

    #[test]
    fn smoke_over_the_limit_becomes_an_alarm_event_with_its_place() {
        let mut w = watch();
        let quiet = w.on_poll(&good(0.2, 1_000));
        assert!(quiet.events.is_empty());
        assert_eq!(
            quiet.readings.unwrap().points[0]
                .engineering_unit
                .as_deref(),
            Some("%/m")
        );
        let report = w.on_poll(&good(3.0, 2_000));
        let [event] = report.events.as_slice() else {
            panic!("{report:?}")
        };
        assert_eq!(event.alarm_id, "c:gw:smoke-1:smoke-high");
        assert_eq!(event.place.short(), "B1-12-03");
        assert_eq!(event.place.community, "c");
        assert_eq!(event.class, SignalClass::Alarm);
        assert_eq!(event.state, AlarmState::Unacknowledged);
        assert_eq!(event.transition, TransitionKind::Raised);
        assert_eq!(event.value, Some(3.0));
        assert_eq!(event.ts_ms, 2_000);
        assert_eq!(event.event_id, "boot-1");
    }

    #[test]
    fn reported_by_exception_the_sinks_get_changes_and_heartbeats_while_the_rules_see_every_poll() {
        let text = CONFIG.replace(
            "comm_loss_after_s = 2",
            "comm_loss_after_s = 2\nreport_every_s = 60",
        );
        let config = Config::from_toml_str(&text, "t").unwrap();
        let mut w = Watch::new(&config, "boot".into(), 7).unwrap();
        assert!(
            w.on_poll(&good(0.2, 1_000)).readings.is_some(),
            "the first poll"
        );
        let flat = w.on_poll(&good(0.2, 2_000));
        assert!(flat.readings.is_none() && flat.events.is_empty());
        // Smoke: reported, and the rule raised it.
        let smoke = w.on_poll(&good(3.0, 3_000));
        assert_eq!(smoke.readings.unwrap().points[0].value, Some(3.0));
        assert_eq!(smoke.events.len(), 1);
        // Still smoke: nothing new to report, and the alarm is not raised twice.
        let still = w.on_poll(&good(3.0, 4_000));
        assert!(still.readings.is_none() && still.events.is_empty());
        // A minute after the last full report: the heartbeat.
        assert!(w.on_poll(&good(3.0, 61_000)).readings.is_some());
    }

    #[test]
    fn a_wall_clock_stepped_back_ten_minutes_neither_hides_nor_delays_a_smoke_alarm() {
        let mut w = watch();
        let at = |mono_ms, wall_ms| Stamp { mono_ms, wall_ms };
        let poll = |value, stamp| PollOutcome {
            device: 0,
            at: stamp,
            result: Ok(PolledValues {
                values: vec![("obscuration".into(), value)],
                faults: vec![],
            }),
        };
        let t0 = 1_800_000_000_000;
        assert!(w.on_poll(&poll(0.2, at(1_000, t0))).events.is_empty());
        // NTP steps the wall clock back ten minutes; monotonic time goes on.
        let stepped = t0 - 600_000 + 100;
        let events = w.on_poll(&poll(3.0, at(1_100, stepped))).events;
        let [raised] = events.as_slice() else {
            panic!("the alarm must be raised at once: {events:?}")
        };
        assert_eq!(raised.state, AlarmState::Unacknowledged);
        assert_eq!(
            raised.ts_ms, stepped,
            "the wall time is only written, not compared"
        );
        // Forward by a day: the clear is not mistaken for anything older or newer.
        let cleared = w.on_poll(&poll(0.1, at(1_200, t0 + 86_400_000))).events;
        assert_eq!(cleared[0].state, AlarmState::ReturnedUnacknowledged);
        assert!((raised.boot, raised.seq) < (cleared[0].boot, cleared[0].seq));
    }

    #[test]
    fn events_are_numbered_by_boot_and_a_sequence_that_only_grows() {
        let mut w = watch();
        let mut seqs = Vec::new();
        for (i, v) in [3.0, 0.1, 3.0, 0.1].into_iter().enumerate() {
            for e in w.on_poll(&good(v, 1_000 * (i as i64 + 1))).events {
                assert_eq!(e.boot, 7);
                seqs.push(e.seq);
            }
        }
        assert_eq!(seqs, [1, 2, 3, 4]);
    }

    #[test]
    fn the_gateways_own_fault_is_raised_once_and_cleared_with_the_gateway_as_its_device() {
        let mut w = watch();
        let raised = w.set_gateway_fault("undelivered", true, Stamp::at(1_000));
        assert_eq!(raised.len(), 1);
        assert_eq!(raised[0].alarm_id, "c:gw:gw:undelivered");
        assert_eq!(raised[0].device_kind, "gateway");
        assert_eq!(raised[0].class, SignalClass::Fault);
        assert!(
            w.set_gateway_fault("undelivered", true, Stamp::at(2_000))
                .is_empty()
        );
        let cleared = w.set_gateway_fault("undelivered", false, Stamp::at(3_000));
        assert_eq!(cleared[0].state, AlarmState::ReturnedUnacknowledged);
    }

    #[test]
    fn communication_is_lost_after_the_configured_failures_and_comes_back() {
        let mut w = watch();
        assert!(w.on_poll(&failed(1_000)).events.is_empty());
        let lost = w.on_poll(&failed(2_000)).events;
        assert_eq!(lost.len(), 1);
        assert_eq!(lost[0].rule, "comm_lost");
        assert_eq!(lost[0].class, SignalClass::Fault);
        assert!(lost[0].active);
        assert!(
            w.on_poll(&failed(3_000)).events.is_empty(),
            "raised once, not per poll"
        );
        let back = w.on_poll(&good(0.1, 4_000)).events;
        assert_eq!(back[0].state, AlarmState::ReturnedUnacknowledged);
    }

    #[test]
    fn a_device_whose_poller_stalls_loses_communication_by_time_alone() {
        let mut w = watch();
        w.on_poll(&good(0.2, 1_000));
        // No outcome at all after that: no failed poll to count, only silence.
        assert!(w.on_tick(Stamp::at(2_900)).is_empty());
        let lost = w.on_tick(Stamp::at(3_000));
        assert_eq!(lost.len(), 1, "{lost:?}");
        assert_eq!(lost[0].rule, "comm_lost");
        assert!(w.on_tick(Stamp::at(4_000)).is_empty(), "raised once");
        let back = w.on_poll(&good(0.2, 5_000)).events;
        assert_eq!(back[0].state, AlarmState::ReturnedUnacknowledged);
    }

    #[test]
    fn a_device_that_goes_silent_reports_its_points_comm_lost_once_and_good_again_at_once() {
        let mut w = watch();
        w.on_poll(&good(0.2, 1_000));
        assert!(w.take_readings().is_empty());
        w.on_tick(Stamp::at(3_000));
        let dark = w.take_readings();
        assert_eq!(dark.len(), 1, "{dark:?}");
        assert!(
            dark[0]
                .points
                .iter()
                .all(|p| p.quality == Quality::CommLost && p.value.is_none()),
            "{dark:?}"
        );
        w.on_tick(Stamp::at(4_000));
        assert!(w.take_readings().is_empty(), "once, not per tick");
        // The first answer is reported at once (its quality changed), though the value
        // did not move.
        let back = w.on_poll(&good(0.2, 5_000)).readings.expect("reported");
        assert_eq!(back.points[0].quality, Quality::Good);
        assert_eq!(back.points[0].value, Some(0.2));
    }

    #[test]
    fn the_silence_limit_is_checked_by_the_config_against_gb_50166() {
        let bad = CONFIG.replace("comm_loss_after_s = 2", "comm_loss_after_s = 101");
        let report = Config::from_toml_str(&bad, "t").unwrap_err();
        assert!(
            report.to_string().contains("between 1 and 100 seconds"),
            "{report}"
        );
    }

    #[test]
    fn a_point_the_device_keeps_refusing_becomes_a_device_fault_and_clears_when_it_reads() {
        let mut w = watch();
        let refused = |ts_ms| PollOutcome {
            device: 0,
            at: Stamp::at(ts_ms),
            result: Ok(PolledValues {
                values: vec![],
                faults: vec![crate::sources::PointFault {
                    point: "obscuration".into(),
                    reason: "exception".into(),
                    quality: shouwang_wire::Quality::Bad,
                }],
            }),
        };
        assert!(w.on_poll(&refused(1_000)).events.is_empty());
        assert!(w.on_poll(&refused(1_500)).events.is_empty());
        let fault = w.on_poll(&refused(2_000)).events;
        assert_eq!(fault.len(), 1, "{fault:?}");
        assert_eq!(fault[0].rule, "point_fault");
        assert_eq!(fault[0].class, SignalClass::Fault);
        let back = w.on_poll(&good(0.1, 3_000)).events;
        assert_eq!(back[0].rule, "point_fault");
        assert_eq!(back[0].state, AlarmState::ReturnedUnacknowledged);
    }

    /// The test device with a heartbeat register as its alive counter (stale after 1 s;
    /// comm loss after 2 s).
    fn watch_with_alive_counter() -> Watch {
        let text = CONFIG
            .replace(
                "comm_loss_after_s = 2",
                "comm_loss_after_s = 2\nreport_every_s = 0\n\
                 alive_counter = { point = \"heartbeat\", stale_after_s = 1 }",
            )
            .replace(
                "[[rules]]",
                "[[devices.points]]\nname = \"heartbeat\"\nregister = 1\ntype = \"u16\"\n\n[[rules]]",
            );
        let config = Config::from_toml_str(&text, "t").unwrap();
        Watch::new(&config, "boot".into(), 7).unwrap()
    }

    fn counted(obscuration: f64, heartbeat: f64, ts_ms: i64) -> PollOutcome {
        PollOutcome {
            device: 0,
            at: Stamp::at(ts_ms),
            result: Ok(PolledValues {
                values: vec![
                    ("obscuration".into(), obscuration),
                    ("heartbeat".into(), heartbeat),
                ],
                faults: vec![],
            }),
        }
    }

    #[test]
    fn values_held_behind_a_counter_that_stopped_are_stale_reach_no_rule_and_lose_communication() {
        let mut w = watch_with_alive_counter();
        assert!(w.on_poll(&counted(0.2, 1.0, 1_000)).events.is_empty());
        assert!(w.on_poll(&counted(0.2, 2.0, 1_500)).events.is_empty());
        // The counter stops at 2 (a converter whose own link died serves held registers).
        let fresh = w.on_poll(&counted(0.2, 2.0, 2_400)).readings.unwrap();
        assert!(fresh.points.iter().all(|p| p.quality == Quality::Good));
        let held = w.on_poll(&counted(3.0, 2.0, 2_500));
        assert!(
            held.events.is_empty(),
            "a held value raises nothing: {held:?}"
        );
        let points = held.readings.unwrap().points;
        assert!(
            points
                .iter()
                .all(|p| p.quality == Quality::Stale && p.value.is_none()),
            "{points:?}"
        );
        // Two seconds after the last fresh answer (at 2_400: the counter moved at 1_500,
        // so the poll at 2_400 was still fresh): communication is lost.
        assert!(w.on_poll(&counted(3.0, 2.0, 4_000)).events.is_empty());
        let lost = w.on_poll(&counted(3.0, 2.0, 4_400));
        assert_eq!(lost.events.len(), 1, "{lost:?}");
        assert_eq!(lost.events[0].rule, "comm_lost");
        assert!(
            lost.readings
                .unwrap()
                .points
                .iter()
                .all(|p| p.quality == Quality::CommLost)
        );
        // The counter moves again: communication is back, and the rules see the smoke.
        let back = w.on_poll(&counted(3.0, 3.0, 5_000));
        let rules: Vec<&str> = back.events.iter().map(|e| e.rule.as_str()).collect();
        assert_eq!(rules, ["comm_lost", "smoke-high"], "{back:?}");
        assert!(back.events[1].active);
    }

    #[test]
    fn a_held_value_does_not_clear_an_alarm() {
        let mut w = watch_with_alive_counter();
        w.on_poll(&counted(0.2, 1.0, 1_000));
        let raised = w.on_poll(&counted(3.0, 2.0, 1_500)).events;
        assert_eq!(raised[0].rule, "smoke-high");
        // The counter stops; the register falls back to clean air (held, or reset by the
        // converter): the alarm stays.
        assert!(w.on_poll(&counted(3.0, 2.0, 2_000)).events.is_empty());
        assert!(w.on_poll(&counted(0.1, 2.0, 2_600)).events.is_empty());
    }

    #[test]
    fn an_alive_counter_must_name_a_point_of_the_device_and_a_sane_time() {
        let text = CONFIG.replace(
            "comm_loss_after_s = 2",
            "comm_loss_after_s = 2\nalive_counter = { point = \"beat\", stale_after_s = 0 }",
        );
        let report = Config::from_toml_str(&text, "t").unwrap_err().to_string();
        assert!(
            report.contains("alive_counter.point") && report.contains("\"beat\""),
            "{report}"
        );
        assert!(report.contains("its points: obscuration"), "{report}");
        assert!(
            report.contains("alive_counter.stale_after_s: must be between 1 and 100"),
            "{report}"
        );
    }

    /// Two smoke detectors in B1, one in B2, and a coincidence of two per building.
    fn watch_with_zones() -> Watch {
        let device = |id: &str, building: &str, floor: &str| {
            format!(
                "\n[[devices]]\nid = \"{id}\"\nkind = \"smoke\"\nbuilding = \"{building}\"\nfloor = \"{floor}\"\n\
                 transport = \"tcp\"\naddress = \"127.0.0.1:1\"\nunit_id = {}\n\n[[devices.points]]\n\
                 name = \"obscuration\"\nregister = 0\ntype = \"u16\"\n",
                &id[1..]
            )
        };
        let text = format!(
            "[gateway]\nid = \"gw\"\ncommunity = \"c\"\ndata_dir = \"data\"\n{}{}{}\n\
             [[rules]]\nid = \"smoke-high\"\ndevice_kind = \"smoke\"\npoint = \"obscuration\"\nclass = \"alarm\"\n\
             priority = \"high\"\nabove = 2.5\nmessage = \"Smoke\"\n\n\
             [[coincidences]]\nid = \"fire-confirmed\"\nzone = \"building\"\nof = [\"smoke-high\"]\nat_least = 2\n\
             class = \"alarm\"\npriority = \"high\"\nmessage = \"Fire confirmed by two detectors\"\n",
            device("s1", "B1", "1"),
            device("s2", "B1", "2"),
            device("s3", "B2", "1"),
        );
        let config = Config::from_toml_str(&text, "t").unwrap_or_else(|e| panic!("{e}"));
        Watch::new(&config, "boot".into(), 7).unwrap()
    }

    fn smoke_at(device: usize, value: f64, ts_ms: i64) -> PollOutcome {
        PollOutcome {
            device,
            at: Stamp::at(ts_ms),
            result: Ok(PolledValues {
                values: vec![("obscuration".into(), value)],
                faults: vec![],
            }),
        }
    }

    fn rules_of(report: &PollReport) -> Vec<(&str, &str, bool)> {
        report
            .events
            .iter()
            .map(|e| (e.device.as_str(), e.rule.as_str(), e.active))
            .collect()
    }

    #[test]
    fn two_detectors_in_one_building_confirm_a_fire_and_one_in_each_of_two_does_not() {
        let mut w = watch_with_zones();
        for d in 0..3 {
            assert!(w.on_poll(&smoke_at(d, 0.2, 1_000)).events.is_empty());
        }
        // One detector in B1 and one in B2: two alarms, no confirmed fire anywhere.
        let first = w.on_poll(&smoke_at(0, 3.0, 2_000));
        assert_eq!(rules_of(&first), [("s1", "smoke-high", true)]);
        assert_eq!(
            rules_of(&w.on_poll(&smoke_at(2, 3.0, 2_100))),
            [("s3", "smoke-high", true)]
        );
        // The second detector of B1: the zone alarm in the same poll, with B1's place.
        let second = w.on_poll(&smoke_at(1, 3.0, 2_200));
        assert_eq!(
            rules_of(&second),
            [
                ("s2", "smoke-high", true),
                ("zone-B1", "fire-confirmed", true)
            ]
        );
        let zone = &second.events[1];
        assert_eq!(zone.alarm_id, "c:gw:zone-B1:fire-confirmed");
        assert_eq!(zone.device_kind, "zone");
        assert_eq!(
            (zone.place.building.as_str(), zone.place.floor.as_str()),
            ("B1", "")
        );
        assert_eq!(zone.state, AlarmState::Unacknowledged);
        // Acknowledging a detector changes nothing in the zone; one clearing ends it.
        let seen = first.events[0].event_id.clone();
        let (acked, _) = w.on_command(&ack("c:gw:s1:smoke-high", &seen), Stamp::at(2_300));
        assert_eq!(acked.len(), 1);
        let cleared = w.on_poll(&smoke_at(0, 0.1, 3_000));
        assert_eq!(
            rules_of(&cleared),
            [
                ("s1", "smoke-high", false),
                ("zone-B1", "fire-confirmed", false)
            ]
        );
    }

    #[test]
    fn after_a_restart_the_zone_counts_the_detectors_still_in_alarm() {
        let mut before = watch_with_zones();
        before.on_poll(&smoke_at(0, 3.0, 1_000));
        let mut w = watch_with_zones();
        let latest: Vec<AlarmEvent> = before.latest.values().cloned().collect();
        assert_eq!(w.restore(latest), 1);
        // s1 is restored active: the second detector confirms at once.
        let second = w.on_poll(&smoke_at(1, 3.0, 500));
        assert_eq!(
            rules_of(&second),
            [
                ("s2", "smoke-high", true),
                ("zone-B1", "fire-confirmed", true)
            ]
        );
    }

    #[test]
    fn a_coincidence_must_name_rules_that_apply_and_ask_for_two_or_more() {
        let text = CONFIG.to_string()
            + "\n[[coincidences]]\nid = \"smoke-high\"\nzone = \"building\"\nof = [\"smok\"]\nat_least = 1\n\
               class = \"alarm\"\npriority = \"high\"\nmessage = \"\"\n";
        let report = Config::from_toml_str(&text, "t").unwrap_err().to_string();
        for needle in [
            "coincidences[0] (smoke-high).id: \"smoke-high\" is a rule's id",
            "coincidences[0] (smoke-high).of[0]: no rule \"smok\" applies to any device",
            "coincidences[0] (smoke-high).at_least: is 1; must be 2 to 64",
            "coincidences[0] (smoke-high).message: must not be empty",
        ] {
            assert!(report.contains(needle), "missing {needle:?} in {report}");
        }
    }

    #[test]
    fn an_acknowledgement_changes_the_state_and_names_the_operator() {
        let mut w = watch();
        w.on_poll(&good(3.0, 1_000));
        let cmd = Command {
            schema: Command::SCHEMA,
            command_id: "c1".into(),
            operator: "wang".into(),
            ts_ms: 1_500,
            ttl_ms: None,
            action: Action::Acknowledge {
                alarm_id: "c:gw:smoke-1:smoke-high".into(),
                event_id: Some("boot-1".into()),
            },
        };
        let (events, reply) = w.on_command(&cmd, Stamp::at(1_600));
        assert!(reply.ok);
        let [event] = events.as_slice() else {
            panic!("{events:?}")
        };
        assert_eq!(event.state, AlarmState::Acknowledged);
        assert_eq!(event.operator.as_deref(), Some("wang"));
        let (again, reply) = w.on_command(&cmd, Stamp::at(1_700));
        assert!(again.is_empty());
        assert!(!reply.ok);
        assert!(
            reply.error.unwrap().contains("acknowledge"),
            "nothing to acknowledge"
        );
    }

    #[test]
    fn an_ack_for_an_occurrence_the_operator_did_not_see_is_refused() {
        let mut w = watch();
        w.on_poll(&good(3.0, 1_000)); // boot-1: raised, the operator sees this
        w.on_poll(&good(0.1, 2_000)); // boot-2: cleared
        w.on_poll(&good(3.5, 3_000)); // boot-3: raised again, not yet on the operator's screen
        let cmd = Command {
            schema: Command::SCHEMA,
            command_id: "c4".into(),
            operator: "wang".into(),
            ts_ms: 3_100,
            ttl_ms: None,
            action: Action::Acknowledge {
                alarm_id: "c:gw:smoke-1:smoke-high".into(),
                event_id: Some("boot-1".into()),
            },
        };
        let (events, reply) = w.on_command(&cmd, Stamp::at(3_100));
        assert!(events.is_empty());
        assert!(!reply.ok);
        assert!(reply.error.unwrap().contains("has changed since"));
        let fresh = Command {
            action: Action::Acknowledge {
                alarm_id: "c:gw:smoke-1:smoke-high".into(),
                event_id: Some("boot-3".into()),
            },
            ..cmd
        };
        let (events, reply) = w.on_command(&fresh, Stamp::at(3_200));
        assert!(reply.ok, "{reply:?}");
        assert_eq!(events[0].state, AlarmState::Acknowledged);
    }

    fn ack(alarm: &str, seen: &str) -> Command {
        Command {
            schema: Command::SCHEMA,
            command_id: "c5".into(),
            operator: "wang".into(),
            ts_ms: 100,
            ttl_ms: None,
            action: Action::Acknowledge {
                alarm_id: alarm.into(),
                event_id: Some(seen.into()),
            },
        }
    }

    /// A watch that ran, then a new one restored from its latest events, as after a restart.
    fn restarted(before: &Watch) -> Watch {
        let config = Config::from_toml_str(CONFIG, "t").unwrap();
        let mut after = Watch::new(&config, "boot2".into(), 8).unwrap();
        let latest: Vec<AlarmEvent> = before.latest.values().cloned().collect();
        assert_eq!(after.restore(latest.clone()), latest.len());
        after
    }

    #[test]
    fn a_raised_alarm_still_active_after_a_restart_is_not_raised_again() {
        let mut w = watch();
        w.on_poll(&good(3.0, 1_000_000));
        let mut after = restarted(&w);
        // The new process's monotonic clock starts again near zero.
        let report = after.on_poll(&good(3.2, 50));
        assert!(report.events.is_empty(), "{:?}", report.events);
        // The raise seen before the restart can still be acknowledged by its event id.
        let (events, reply) =
            after.on_command(&ack("c:gw:smoke-1:smoke-high", "boot-1"), Stamp::at(60));
        assert!(reply.ok, "{reply:?}");
        assert_eq!(events[0].state, AlarmState::Acknowledged);
        assert_eq!((events[0].boot, events[0].seq), (8, 1));
    }

    #[test]
    fn an_acknowledged_alarm_that_cleared_during_a_restart_returns_to_normal_on_the_first_poll() {
        let mut w = watch();
        w.on_poll(&good(3.0, 1_000));
        let (_, reply) = w.on_command(&ack("c:gw:smoke-1:smoke-high", "boot-1"), Stamp::at(1_100));
        assert!(reply.ok);
        let mut after = restarted(&w);
        let report = after.on_poll(&good(0.1, 10));
        let [event] = report.events.as_slice() else {
            panic!("{:?}", report.events)
        };
        assert_eq!(event.state, AlarmState::Normal);
        assert_eq!(event.transition, TransitionKind::Cleared);
    }

    #[test]
    fn a_returned_alarm_from_before_a_restart_is_acknowledged_as_usual() {
        let mut w = watch();
        w.on_poll(&good(3.0, 1_000));
        w.on_poll(&good(0.1, 2_000));
        let mut after = restarted(&w);
        let (events, reply) =
            after.on_command(&ack("c:gw:smoke-1:smoke-high", "boot-2"), Stamp::at(10));
        assert!(reply.ok, "{reply:?}");
        assert_eq!(events[0].state, AlarmState::Normal);
        assert_eq!(events[0].transition, TransitionKind::Acknowledged);
    }

    #[test]
    fn an_ack_for_a_normal_alarm_the_gateway_never_raised_is_refused() {
        let mut w = watch();
        let (events, reply) =
            w.on_command(&ack("c:gw:smoke-1:smoke-high", "old-7"), Stamp::at(100));
        assert!(events.is_empty());
        assert!(!reply.ok);
    }

    #[test]
    fn the_snapshot_after_the_first_poll_cycle_names_every_alarm_once() {
        let mut w = watch();
        assert!(!w.first_cycle_done());
        w.on_poll(&good(3.0, 1_000)); // boot-1: raised
        assert!(w.first_cycle_done());
        let parts = w.snapshot("s1", 5, 256 * 1024);
        let [part] = parts.as_slice() else {
            panic!("{parts:?}")
        };
        assert_eq!((part.boot, part.seq), (7, 1));
        let events: Vec<&str> = part.events.iter().map(|e| e.event_id.as_str()).collect();
        assert_eq!(events, ["boot-1"]);
        let mut all: Vec<String> = part
            .events
            .iter()
            .map(|e| e.alarm_id.clone())
            .chain(part.quiet.iter().cloned())
            .collect();
        let count = all.len();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), count, "an alarm named twice");
        assert!(all.contains(&"c:gw:smoke-1:comm_lost".to_string()));
        assert!(all.contains(&"c:gw:gw:undelivered".to_string()));
    }

    #[test]
    fn a_resync_is_answered_ok_and_leaves_the_events_to_the_snapshot() {
        let mut w = watch();
        w.on_poll(&good(3.0, 1_000));
        let cmd = Command {
            schema: Command::SCHEMA,
            command_id: "c3".into(),
            operator: "console".into(),
            ts_ms: 5_000,
            ttl_ms: None,
            action: Action::Resync,
        };
        let (events, reply) = w.on_command(&cmd, Stamp::at(5_000));
        assert!(reply.ok);
        assert!(events.is_empty());
    }

    #[test]
    fn an_ack_for_an_unknown_alarm_is_refused_by_name() {
        let mut w = watch();
        let cmd = Command {
            schema: Command::SCHEMA,
            command_id: "c2".into(),
            operator: "wang".into(),
            ts_ms: 0,
            ttl_ms: None,
            action: Action::Acknowledge {
                alarm_id: "c:gw:nope:x".into(),
                event_id: None,
            },
        };
        let (_, reply) = w.on_command(&cmd, Stamp::at(0));
        assert!(reply.error.unwrap().contains("c:gw:nope:x"));
    }
}
