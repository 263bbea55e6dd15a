//! The local warning (GB 26875.1 §4.1.1.4): a sending device that cannot deliver must say
//! so where someone on site can see or hear it, since the monitoring centre cannot.
//!
//! [`LocalWarning::update`] is the judgment, pure but for the output it drives: the time
//! and what the gateway knows of its transmission path in, "on" or "off" out. It drives a
//! [`LocalOutput`]:
//!
//! - [`LogLine`] (the default): the output is the error line [`LocalWarning`] logs when the
//!   warning comes on (and the info line when it goes off) plus the gauge
//!   `shouwang_gateway_local_warning`, which the runtime loop sets from every output.
//! - `Relay` (built with `--features rpi`, configured with `[gateway] local_warning_gpio`):
//!   a GPIO pin through rppal, for a relay that switches a sounder and a lamp. With
//!   `local_warning_active_low = true` the pin is low while the warning is on (relay boards
//!   whose input is active low). The pin is left as it is when the process ends
//!   (rppal's reset-on-drop is off): a gateway that dies while warning keeps warning, and
//!   the next start sets it from scratch.
//! - [`ModbusRelay`] (`[gateway] local_warning_modbus`): a coil or register of a Modbus
//!   relay module, written through its link's task (`sources/modbus/link.rs`) by a small
//!   task of its own that holds the wanted state, writes it again after a failure (every
//!   second) and every 10 s while unchanged (a module that lost power forgets its coils).
//!   The watchdog cannot switch it when the runtime is wedged: the link's task would have
//!   to run. `set` never fails: it changes the wanted state.
//!
//! # When it is on
//! The intent of GB 26875.1 is a local warning when the transmission path to the
//! monitoring centre fails. So the warning is on while any of these holds:
//!
//! 1. an alarm event has waited longer than `[gateway] undelivered_fault_after_s` for the
//!    console's receipt ([`Cause::Undelivered`]; the `undelivered` fault says the same to
//!    the console, which may never see it);
//! 2. the broker link has been down for longer than the same time, even with nothing
//!    waiting ([`Cause::BrokerDown`]): the next alarm would not get out, and the commissioning
//!    checklist wants a failed network path reported within 100 s;
//! 3. the alarm journal's thread is dead or stalled ([`Cause::JournalStopped`]): no alarm
//!    can be delivered at all, and its age stops being reported, so 1. would never fire.
//!
//! Not on for the gateway's other faults: a clock far off, a disk the alarm queue cannot
//! write (alarms still go, from memory), a device's poller restarting (a device fault the
//! console does see). Those reach the console as faults; the local warning is kept for
//! "the console cannot hear us", so that a lamp that is on always means one thing.

use std::time::Duration;

use crate::config::Config;
use crate::sources::modbus::Writers;

/// A local output that can be switched on and off.
pub trait LocalOutput: Send {
    fn set(&mut self, on: bool) -> Result<(), OutputError>;
    /// What it is, for the log: `"GPIO 17 (relay, active high)"`.
    fn describe(&self) -> String;
}

/// A local output that could not be opened or switched.
#[derive(Debug, thiserror::Error)]
#[error("local warning output {output}: {reason}")]
pub struct OutputError {
    pub output: String,
    pub reason: String,
}

/// The output when no relay is configured: the log line and the gauge only.
#[derive(Debug, Default)]
pub struct LogLine;

impl LocalOutput for LogLine {
    fn set(&mut self, _on: bool) -> Result<(), OutputError> {
        // The line is written by `LocalWarning::update`, with the cause.
        Ok(())
    }

    fn describe(&self) -> String {
        "log line and metric (no relay configured)".into()
    }
}

/// A relay on a Raspberry Pi GPIO pin (BCM numbering).
#[cfg(feature = "rpi")]
pub struct Relay {
    pin: rppal::gpio::OutputPin,
    active_low: bool,
}

#[cfg(feature = "rpi")]
impl Relay {
    /// Take the pin as an output, with the warning off.
    pub fn open(gpio: u8, active_low: bool) -> Result<Relay, OutputError> {
        let err = |e: rppal::gpio::Error| OutputError {
            output: format!("GPIO {gpio}"),
            reason: e.to_string(),
        };
        let pin = rppal::gpio::Gpio::new()
            .map_err(err)?
            .get(gpio)
            .map_err(err)?;
        let mut pin = if active_low {
            pin.into_output_high()
        } else {
            pin.into_output_low()
        };
        // Keep the warning on if the process dies while it is on (see the module docs).
        pin.set_reset_on_drop(false);
        Ok(Relay { pin, active_low })
    }
}

#[cfg(feature = "rpi")]
impl LocalOutput for Relay {
    fn set(&mut self, on: bool) -> Result<(), OutputError> {
        if on != self.active_low {
            self.pin.set_high();
        } else {
            self.pin.set_low();
        }
        Ok(())
    }

    fn describe(&self) -> String {
        let level = if self.active_low {
            "active low"
        } else {
            "active high"
        };
        format!("GPIO {} (relay, {level})", self.pin.pin())
    }
}

/// A relay on a Modbus device's point (see the module docs).
pub struct ModbusRelay {
    wanted: tokio::sync::watch::Sender<bool>,
    describe: String,
}

/// How often a [`ModbusRelay`] writes its state again while it does not change.
const REASSERT_EVERY: Duration = Duration::from_secs(10);

impl ModbusRelay {
    /// Start the relay's task, with the warning off. Must be called in a tokio runtime.
    pub fn spawn(
        writers: Writers,
        device: usize,
        device_id: &str,
        point: &str,
        active_low: bool,
    ) -> ModbusRelay {
        let (wanted, mut rx) = tokio::sync::watch::channel(false);
        let describe = format!(
            "Modbus {device_id}/{point} ({})",
            if active_low {
                "0 while warning"
            } else {
                "1 while warning"
            }
        );
        let (id, point) = (device_id.to_string(), point.to_string());
        tokio::spawn(async move {
            let mut failing = false;
            loop {
                let on = *rx.borrow_and_update();
                let value = if on != active_low { 1.0 } else { 0.0 };
                let wait = match writers.write(device, &point, value).await {
                    Ok(()) => {
                        if failing {
                            tracing::info!(device = %id, %point, "local warning relay switched again");
                        }
                        failing = false;
                        REASSERT_EVERY
                    }
                    Err(e) => {
                        if !failing {
                            tracing::error!(device = %id, %point, error = %e, "cannot switch the local warning relay; trying every second");
                        }
                        failing = true;
                        Duration::from_secs(1)
                    }
                };
                tokio::select! {
                    changed = rx.changed() => if changed.is_err() { return },
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        });
        ModbusRelay { wanted, describe }
    }
}

impl LocalOutput for ModbusRelay {
    fn set(&mut self, on: bool) -> Result<(), OutputError> {
        self.wanted.send_replace(on);
        Ok(())
    }

    fn describe(&self) -> String {
        self.describe.clone()
    }
}

/// The output the config asks for: the GPIO relay when `local_warning_gpio` is set (the
/// config check refuses that key in a build without the `rpi` feature), the Modbus relay
/// when `local_warning_modbus` is, else [`LogLine`].
pub fn from_config(
    config: &Config,
    writers: &Writers,
) -> Result<Box<dyn LocalOutput>, OutputError> {
    let gateway = &config.gateway;
    if let Some(at) = &gateway.local_warning_modbus {
        let device = config
            .devices
            .iter()
            .position(|d| d.id == at.device)
            .ok_or_else(|| OutputError {
                output: format!("Modbus {}/{}", at.device, at.point),
                reason: "no such device".into(),
            })?;
        return Ok(Box::new(ModbusRelay::spawn(
            writers.clone(),
            device,
            &at.device,
            &at.point,
            gateway.local_warning_active_low,
        )));
    }
    match gateway.local_warning_gpio {
        #[cfg(feature = "rpi")]
        Some(gpio) => Ok(Box::new(Relay::open(
            gpio,
            gateway.local_warning_active_low,
        )?)),
        #[cfg(not(feature = "rpi"))]
        Some(gpio) => Err(OutputError {
            output: format!("GPIO {gpio}"),
            reason: "this gateway was built without the `rpi` feature".into(),
        }),
        None => Ok(Box::new(LogLine)),
    }
}

/// Why the local warning is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// An alarm event has waited too long for the console's receipt.
    Undelivered,
    /// The broker link has been down too long.
    BrokerDown,
    /// The alarm journal's thread is dead or stalled.
    JournalStopped,
}

impl Cause {
    fn text(self) -> &'static str {
        match self {
            Cause::Undelivered => "alarms have not been delivered to the console",
            Cause::BrokerDown => "the link to the broker has been down too long",
            Cause::JournalStopped => "the alarm journal has stopped; no alarm can be delivered",
        }
    }
}

/// What the gateway knows about its transmission path at one tick.
#[derive(Debug, Clone, Copy)]
pub struct PathState {
    /// Monotonic time in ms.
    pub mono_ms: i64,
    pub broker_connected: bool,
    /// Age of the oldest alarm event without the console's receipt, in ms.
    pub oldest_pending_ms: u64,
    /// The journal's thread runs and turns.
    pub journal_running: bool,
}

/// The output, shared between the runtime loop's [`LocalWarning`] and the watchdog that
/// switches it on when the loop stalls (the loop cannot warn about itself).
#[derive(Clone)]
pub struct StallSwitch {
    output: std::sync::Arc<std::sync::Mutex<Box<dyn LocalOutput>>>,
    /// Set by [`StallSwitch::force_on`]; the loop's next update re-applies its own answer.
    forced: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl StallSwitch {
    fn set(&self, on: bool) -> Result<(), OutputError> {
        let mut output = self
            .output
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        output.set(on)
    }

    /// The runtime loop has stalled: warning on, whatever the loop last decided. The loop's
    /// next turn, if it comes, decides again.
    pub fn force_on(&self) {
        self.forced
            .store(true, std::sync::atomic::Ordering::Relaxed);
        if let Err(e) = self.set(true) {
            tracing::error!(error = %e, "cannot switch the local warning output on for a stalled runtime loop");
        } else {
            tracing::error!("LOCAL WARNING ON: the gateway's runtime loop has stalled");
        }
    }
}

/// The local warning: when it is on (see the module docs) and the output it drives.
pub struct LocalWarning {
    after_ms: u64,
    output: StallSwitch,
    /// Since when the broker link is down (monotonic ms).
    broker_down_since: Option<i64>,
    /// What the output was last set to successfully; `None` before the first set, or
    /// after a failed one (tried again on the next update).
    applied: Option<bool>,
    cause: Option<Cause>,
}

impl LocalWarning {
    /// A warning that comes on after `after` of undelivered alarms or a broker link down.
    pub fn new(after: Duration, output: Box<dyn LocalOutput>) -> LocalWarning {
        tracing::info!(output = %output.describe(), "local warning output");
        LocalWarning {
            after_ms: u64::try_from(after.as_millis()).unwrap_or(u64::MAX),
            output: StallSwitch {
                output: std::sync::Arc::new(std::sync::Mutex::new(output)),
                forced: std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false)),
            },
            broker_down_since: None,
            applied: None,
            cause: None,
        }
    }

    /// A handle that switches the output on from outside the runtime loop: for the
    /// watchdog thread, when the loop itself has stalled and cannot.
    pub fn stall_switch(&self) -> StallSwitch {
        self.output.clone()
    }

    /// Why the warning is on, if it is.
    pub fn cause(&self) -> Option<Cause> {
        self.cause
    }

    /// Judge the path at one tick, switch the output when that changes the answer, and
    /// say whether the warning is on.
    pub fn update(&mut self, path: PathState) -> bool {
        if path.broker_connected {
            self.broker_down_since = None;
        } else if self.broker_down_since.is_none() {
            self.broker_down_since = Some(path.mono_ms);
        }
        let down_for = self
            .broker_down_since
            .map_or(0, |since| path.mono_ms.saturating_sub(since));
        let cause = if !path.journal_running {
            Some(Cause::JournalStopped)
        } else if path.oldest_pending_ms >= self.after_ms {
            Some(Cause::Undelivered)
        } else if u64::try_from(down_for).unwrap_or(0) >= self.after_ms {
            Some(Cause::BrokerDown)
        } else {
            None
        };
        if cause != self.cause {
            match cause {
                Some(c) => {
                    tracing::error!(cause = c.text(), "LOCAL WARNING ON: {}", c.text());
                }
                None => tracing::info!("the transmission path works again; local warning off"),
            }
            self.cause = cause;
        }
        let on = cause.is_some();
        if self
            .output
            .forced
            .swap(false, std::sync::atomic::Ordering::Relaxed)
        {
            // The watchdog switched it on while the loop stood still: judge afresh.
            self.applied = None;
        }
        if self.applied != Some(on) {
            match self.output.set(on) {
                Ok(()) => self.applied = Some(on),
                Err(e) => {
                    // Logged on the first failure of a run of them; tried every tick.
                    if self.applied.is_some() {
                        tracing::error!(error = %e, "cannot switch the local warning output");
                    }
                    self.applied = None;
                }
            }
        }
        on
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// An output that records what it was set to.
    #[derive(Clone, Default)]
    struct Recorder(Arc<Mutex<Vec<bool>>>);

    impl LocalOutput for Recorder {
        fn set(&mut self, on: bool) -> Result<(), OutputError> {
            self.0.lock().unwrap().push(on);
            Ok(())
        }
        fn describe(&self) -> String {
            "recorder".into()
        }
    }

    fn path(mono_ms: i64, connected: bool, oldest: u64) -> PathState {
        PathState {
            mono_ms,
            broker_connected: connected,
            oldest_pending_ms: oldest,
            journal_running: true,
        }
    }

    fn warning() -> (LocalWarning, Recorder) {
        let out = Recorder::default();
        (
            LocalWarning::new(Duration::from_secs(60), Box::new(out.clone())),
            out,
        )
    }

    #[test]
    fn the_output_goes_on_when_an_alarm_waited_too_long_and_off_once_it_is_delivered() {
        let (mut w, out) = warning();
        assert!(!w.update(path(0, true, 0)));
        assert!(!w.update(path(59_000, true, 59_999)));
        assert!(w.update(path(60_000, true, 60_000)));
        assert_eq!(w.cause(), Some(Cause::Undelivered));
        assert!(w.update(path(61_000, true, 61_000)));
        assert!(!w.update(path(62_000, true, 0)));
        // Off at start, on once, off once: the relay is not chattered every tick.
        assert_eq!(*out.0.lock().unwrap(), [false, true, false]);
    }

    #[test]
    fn a_broker_link_down_longer_than_the_limit_warns_even_with_nothing_waiting() {
        let (mut w, out) = warning();
        assert!(!w.update(path(1_000, false, 0)));
        assert!(!w.update(path(60_999, false, 0)));
        assert!(w.update(path(61_000, false, 0)));
        assert_eq!(w.cause(), Some(Cause::BrokerDown));
        assert!(!w.update(path(62_000, true, 0)), "back up: off");
        assert!(
            !w.update(path(63_000, false, 0)),
            "a new outage counts from its own start"
        );
        assert_eq!(*out.0.lock().unwrap(), [false, true, false]);
    }

    #[test]
    fn a_stopped_journal_warns_at_once() {
        let (mut w, out) = warning();
        let mut p = path(0, true, 0);
        p.journal_running = false;
        assert!(w.update(p));
        assert_eq!(w.cause(), Some(Cause::JournalStopped));
        assert_eq!(*out.0.lock().unwrap(), [true]);
    }

    /// Fails until told otherwise, recording each try.
    struct Flaky(Arc<Mutex<(bool, u32)>>);

    impl LocalOutput for Flaky {
        fn set(&mut self, _on: bool) -> Result<(), OutputError> {
            let mut state = self.0.lock().unwrap();
            state.1 += 1;
            if state.0 {
                Ok(())
            } else {
                Err(OutputError {
                    output: "flaky".into(),
                    reason: "busy".into(),
                })
            }
        }
        fn describe(&self) -> String {
            "flaky".into()
        }
    }

    #[test]
    fn an_output_that_failed_to_switch_is_tried_again_on_the_next_tick() {
        let state = Arc::new(Mutex::new((false, 0)));
        let mut w = LocalWarning::new(Duration::from_secs(1), Box::new(Flaky(state.clone())));
        assert!(w.update(path(0, true, 5_000)));
        assert!(w.update(path(100, true, 5_100)));
        assert_eq!(state.lock().unwrap().1, 2);
        state.lock().unwrap().0 = true;
        assert!(w.update(path(200, true, 5_200)));
        assert!(w.update(path(300, true, 5_300)));
        assert_eq!(state.lock().unwrap().1, 3, "once it took, no more tries");
    }

    #[test]
    fn a_stalled_runtime_loop_switches_the_warning_on_and_the_loop_judges_again_when_it_turns() {
        let recorder = Recorder::default();
        let mut warning = LocalWarning::new(Duration::from_secs(60), Box::new(recorder.clone()));
        let healthy = PathState {
            mono_ms: 0,
            broker_connected: true,
            oldest_pending_ms: 0,
            journal_running: true,
        };
        assert!(!warning.update(healthy));
        warning.stall_switch().force_on();
        // The loop turns again and all is well: off again.
        assert!(!warning.update(PathState {
            mono_ms: 1_000,
            ..healthy
        }));
        assert_eq!(*recorder.0.lock().unwrap(), [false, true, false]);
    }
}
