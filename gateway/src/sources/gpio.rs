//! Dry contacts on GPIO inputs: a fire panel's fire and fault relays, door contacts, a
//! pump's running signal. Each contact is a point whose value is 1 (closed, or "active")
//! or 0.
//!
//! - [`Debouncer`] is pure: raw samples and the time in, a stable state out once a change
//!   has held for the debounce time (relay contacts bounce for a few milliseconds; a door
//!   contact in the wind for longer).
//! - [`Contact`] reads one input through embedded-hal 1.0's `InputPin`, so the same code
//!   runs on rppal's pins (`--features rpi`, Raspberry Pi) and on any other HAL, and the
//!   tests run it on a pin of their own.
//! - [`watch_contacts`] samples a device's contacts every `sample` and reports a
//!   [`PollOutcome`] at once when a debounced state changes or an input becomes
//!   unreadable or readable again (so an alarm is not held back by the report period) and every `report_every` otherwise (so the watch knows the
//!   device is alive). A pin that cannot be read is that point's fault.
//!
//! # Invariants
//! - A state is reported only after it held, unbroken, for the debounce time; a bounce
//!   shorter than that is never reported.
//! - Before its first stable state a contact is not reported at all (no value is better
//!   than a guess); its device's communication-loss timer runs meanwhile.

use std::time::Duration;

use embedded_hal::digital::InputPin;
use tokio::sync::mpsc;
use tokio::time::MissedTickBehavior;

use super::{PointFault, PollOutcome, PolledValues};
use crate::clock::Clock;
use crate::supervise::Heartbeat;

/// One contact's debouncing. Times are monotonic ms.
#[derive(Debug, Clone, Default)]
pub struct Debouncer {
    /// The state last reported stable.
    stable: Option<bool>,
    /// A different raw state and since when it has held.
    candidate: Option<(bool, i64)>,
}

impl Debouncer {
    /// One raw sample at `now_ms`. Returns the new stable state when it changed.
    pub fn sample(&mut self, raw: bool, now_ms: i64, debounce_ms: i64) -> Option<bool> {
        if self.stable == Some(raw) {
            self.candidate = None;
            return None;
        }
        let since = match self.candidate {
            Some((state, since)) if state == raw => since,
            _ => {
                self.candidate = Some((raw, now_ms));
                now_ms
            }
        };
        if now_ms.saturating_sub(since) >= debounce_ms {
            self.stable = Some(raw);
            self.candidate = None;
            return Some(raw);
        }
        None
    }

    /// The stable state, once there is one.
    pub fn stable(&self) -> Option<bool> {
        self.stable
    }
}

/// Reading one contact: closed (active) or open.
pub trait ContactRead: Send {
    fn closed(&mut self) -> Result<bool, String>;
}

/// A contact on an embedded-hal input pin. `active_low`: the contact pulls the input to
/// ground when closed (the usual wiring of a dry contact with the pin's pull-up), so low
/// reads as closed.
pub struct Contact<P> {
    pub pin: P,
    pub active_low: bool,
}

impl<P> ContactRead for Contact<P>
where
    P: InputPin + Send,
{
    fn closed(&mut self) -> Result<bool, String> {
        let high = self.pin.is_high().map_err(|e| format!("{e:?}"))?;
        Ok(high != self.active_low)
    }
}

/// Open BCM GPIO `gpio` as a contact input with its pull-up on (a dry contact to ground
/// reads low when closed: `active_low`). Raspberry Pi only (`--features rpi`).
#[cfg(feature = "rpi")]
pub fn open_contact(gpio: u8, active_low: bool) -> Result<Box<dyn ContactRead>, String> {
    let pin = rppal::gpio::Gpio::new()
        .and_then(|g| g.get(gpio))
        .map_err(|e| format!("GPIO {gpio}: {e}"))?
        .into_input_pullup();
    Ok(Box::new(Contact { pin, active_low }))
}

/// How often contact inputs are read: well under any debounce time, a fraction of a core.
pub const SAMPLE: Duration = Duration::from_millis(10);
/// The debounce time when a device gives none.
pub const DEFAULT_DEBOUNCE_MS: u64 = 50;

/// How one `gpio` device is watched: its config's `debounce_ms` (default
/// [`DEFAULT_DEBOUNCE_MS`]) and `poll_interval_ms` as the report period.
pub fn timing(device: &crate::config::DeviceConfig) -> Timing {
    Timing {
        sample: SAMPLE,
        debounce: Duration::from_millis(device.debounce_ms.unwrap_or(DEFAULT_DEBOUNCE_MS)),
        report_every: Duration::from_millis(device.poll_interval_ms),
    }
}

/// Start one supervised task per `gpio` device (task `gpio/<device id>`). A pin that cannot
/// be opened ends the task with an error log; the supervisor tries again with its backoff,
/// and meanwhile the device's silence raises its `comm_lost`.
#[cfg(feature = "rpi")]
pub fn spawn(
    config: &crate::config::Config,
    clock: Clock,
    out: &mpsc::Sender<PollOutcome>,
    supervisor: &crate::supervise::Supervisor,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    for (index, device) in config.devices.iter().enumerate() {
        if device.transport != crate::config::Transport::Gpio {
            continue;
        }
        let (device, out) = (device.clone(), out.clone());
        let timing = timing(&device);
        // A turn is one sample: silent for a second is stalled.
        let stall_after = timing.sample.saturating_mul(100);
        tasks.push(supervisor.spawn(
            format!("gpio/{}", device.id),
            stall_after,
            crate::supervise::OnStall::Restart,
            move |heartbeat| {
                let (device, out) = (device.clone(), out.clone());
                async move {
                    let mut contacts = Vec::new();
                    for point in &device.points {
                        let Some(pin) = point.gpio else { continue };
                        match open_contact(pin, point.active_low.unwrap_or(true)) {
                            Ok(c) => contacts.push((point.name.clone(), c)),
                            Err(e) => {
                                tracing::error!(device = %device.id, point = %point.name, error = %e, "cannot open a contact input");
                                return;
                            }
                        }
                    }
                    watch_contacts(index, contacts, timing, clock, out, heartbeat).await;
                }
            },
        ));
    }
    tasks
}

/// How one device's contacts are watched.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// How often the inputs are read.
    pub sample: Duration,
    /// How long a change must hold before it counts.
    pub debounce: Duration,
    /// A report at least this often even when nothing changed.
    pub report_every: Duration,
}

/// Watch one device's contacts forever, sending outcomes on `out` (see the module docs).
/// Returns when `out` closes. Beats `heartbeat` every sample.
pub async fn watch_contacts(
    index: usize,
    mut contacts: Vec<(String, Box<dyn ContactRead>)>,
    timing: Timing,
    clock: Clock,
    out: mpsc::Sender<PollOutcome>,
    heartbeat: Heartbeat,
) {
    let debounce_ms = i64::try_from(timing.debounce.as_millis()).unwrap_or(i64::MAX);
    let report_ms = i64::try_from(timing.report_every.as_millis()).unwrap_or(i64::MAX);
    let mut debouncers = vec![Debouncer::default(); contacts.len()];
    let mut ticker = tokio::time::interval(timing.sample);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last_report: Option<i64> = None;
    // Which contacts could not be read at the last sample: a change is reported at once.
    let mut unreadable = vec![false; contacts.len()];
    loop {
        ticker.tick().await;
        heartbeat.beat();
        let now = clock.now();
        let mut changed = false;
        let mut faults = Vec::new();
        let contacts_now = contacts.iter_mut().zip(debouncers.iter_mut());
        for (((name, contact), debouncer), was_unreadable) in
            contacts_now.zip(unreadable.iter_mut())
        {
            let read = contact.closed();
            changed |= read.is_err() != *was_unreadable;
            *was_unreadable = read.is_err();
            match read {
                Ok(raw) => {
                    changed |= debouncer.sample(raw, now.mono_ms, debounce_ms).is_some();
                }
                Err(reason) => faults.push(PointFault {
                    point: name.clone(),
                    reason: format!("cannot read the input: {reason}"),
                    quality: crate::sources::Quality::Bad,
                }),
            }
        }
        let due = last_report.is_none_or(|at| now.mono_ms.saturating_sub(at) >= report_ms);
        if !(changed || due) {
            continue;
        }
        last_report = Some(now.mono_ms);
        let values = contacts
            .iter()
            .zip(&debouncers)
            .filter_map(|((name, _), d)| Some((name.clone(), f64::from(u8::from(d.stable()?)))))
            .collect();
        let outcome = PollOutcome {
            device: index,
            at: now,
            result: Ok(PolledValues { values, faults }),
        };
        if out.send(outcome).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[test]
    fn a_change_counts_only_once_it_held_for_the_debounce_time() {
        let mut d = Debouncer::default();
        assert_eq!(d.sample(false, 0, 50), None);
        assert_eq!(d.sample(false, 50, 50), Some(false));
        // A 30 ms bounce: never reported.
        assert_eq!(d.sample(true, 100, 50), None);
        assert_eq!(d.sample(true, 130, 50), None);
        assert_eq!(d.sample(false, 131, 50), None);
        assert_eq!(d.stable(), Some(false));
        // A closing that holds: reported once, 50 ms after it began.
        assert_eq!(d.sample(true, 200, 50), None);
        assert_eq!(d.sample(true, 249, 50), None);
        assert_eq!(d.sample(true, 250, 50), Some(true));
        assert_eq!(d.sample(true, 400, 50), None);
    }

    #[test]
    fn a_debounce_of_zero_reports_the_first_sample_and_every_change() {
        let mut d = Debouncer::default();
        assert_eq!(d.sample(true, 0, 0), Some(true));
        assert_eq!(d.sample(false, 1, 0), Some(false));
        assert_eq!(d.sample(false, 2, 0), None);
    }

    /// An input pin the test sets: the embedded-hal 1.0 trait rppal's pins implement.
    #[derive(Clone, Default)]
    struct TestPin {
        high: Arc<AtomicBool>,
        broken: Arc<AtomicBool>,
    }

    #[derive(Debug)]
    struct PinError;

    impl embedded_hal::digital::Error for PinError {
        fn kind(&self) -> embedded_hal::digital::ErrorKind {
            embedded_hal::digital::ErrorKind::Other
        }
    }

    impl embedded_hal::digital::ErrorType for TestPin {
        type Error = PinError;
    }

    impl InputPin for TestPin {
        fn is_high(&mut self) -> Result<bool, PinError> {
            if self.broken.load(Ordering::Relaxed) {
                return Err(PinError);
            }
            Ok(self.high.load(Ordering::Relaxed))
        }

        fn is_low(&mut self) -> Result<bool, PinError> {
            self.is_high().map(|h| !h)
        }
    }

    #[test]
    fn an_active_low_contact_reads_closed_when_its_pin_is_low() {
        let pin = TestPin::default();
        let mut contact = Contact {
            pin: pin.clone(),
            active_low: true,
        };
        assert_eq!(contact.closed(), Ok(true));
        pin.high.store(true, Ordering::Relaxed);
        assert_eq!(contact.closed(), Ok(false));
        let mut plain = Contact {
            pin: pin.clone(),
            active_low: false,
        };
        assert_eq!(plain.closed(), Ok(true));
        pin.broken.store(true, Ordering::Relaxed);
        assert!(plain.closed().is_err());
    }

    #[tokio::test]
    async fn a_fire_relay_closing_is_reported_at_once_and_a_broken_pin_is_a_point_fault() {
        // The fire relay's input idles high (open, pulled up); the fault relay likewise.
        let fire = TestPin::default();
        fire.high.store(true, Ordering::Relaxed);
        let fault = TestPin::default();
        fault.high.store(true, Ordering::Relaxed);
        let contacts: Vec<(String, Box<dyn ContactRead>)> = vec![
            (
                "fire".into(),
                Box::new(Contact {
                    pin: fire.clone(),
                    active_low: true,
                }),
            ),
            (
                "fault".into(),
                Box::new(Contact {
                    pin: fault.clone(),
                    active_low: true,
                }),
            ),
        ];
        let timing = Timing {
            sample: Duration::from_millis(10),
            debounce: Duration::from_millis(50),
            report_every: Duration::from_secs(10),
        };
        let (tx, mut rx) = mpsc::channel(16);
        let task = tokio::spawn(watch_contacts(
            3,
            contacts,
            timing,
            Clock::new(),
            tx,
            Heartbeat::default(),
        ));
        // The first report: nothing stable yet.
        let first = rx.recv().await.unwrap();
        assert_eq!(first.device, 3);
        assert!(first.result.as_ref().unwrap().values.is_empty());
        // Both open, stable: reported on the change, well before the next periodic report.
        let open = rx.recv().await.unwrap();
        let values = &open.result.as_ref().unwrap().values;
        assert_eq!(
            values,
            &[("fire".to_string(), 0.0), ("fault".to_string(), 0.0)]
        );
        // The fire relay closes: reported once debounced (about 50 ms), not with the next
        // periodic report 10 s on.
        let closed_at = std::time::Instant::now();
        fire.high.store(false, Ordering::Relaxed);
        let fire_report = rx.recv().await.unwrap();
        let took = closed_at.elapsed();
        assert!(took >= Duration::from_millis(40), "not debounced: {took:?}");
        assert!(took < Duration::from_secs(2), "{took:?}");
        let values = &fire_report.result.as_ref().unwrap().values;
        assert_eq!(values[0], ("fire".to_string(), 1.0));
        // The fault relay's input breaks: its point is a fault, the fire contact still reads.
        fault.broken.store(true, Ordering::Relaxed);
        let broken = loop {
            let o = rx.recv().await.unwrap();
            if !o.result.as_ref().unwrap().faults.is_empty() {
                break o;
            }
        };
        let polled = broken.result.unwrap();
        assert_eq!(polled.faults[0].point, "fault");
        assert!(polled.values.contains(&("fire".to_string(), 1.0)));
        task.abort();
    }
}
