//! The read planner end to end: a simulated device whose register map has a hole -> the
//! `shouwang-gateway` binary -> a real mosquitto. The device's points are read in blocks;
//! the refused register is that point's fault while its neighbours keep being published, and
//! the split is kept. Requests are counted by the simulator itself, in a register the
//! gateway reads (`SimDevice::count_requests_in`), so the count per poll is exact.

use std::time::Duration;

use shouwang_hil_tests::rig::{self, Listener};
use shouwang_hil_tests::servers;
use shouwang_hil_tests::sim::SimDevice;
use shouwang_wire::{AlarmEvent, Message, ReadingBatch, SignalClass, TransitionKind};

/// A lift terminal at `addr`: u16 points at registers 0-5 and `requests` at 10 (where the
/// simulator writes each request's number), polled every 100 ms.
fn config(mqtt_port: u16, addr: std::net::SocketAddr) -> String {
    let mut text = format!(
        r#"
[gateway]
id = "gw-p"
community = "riverside"
data_dir = "data"

[mqtt]
port = {mqtt_port}
keep_alive_s = 2

[[devices]]
id = "lift-B1-01-01"
kind = "elevator"
building = "B1"
floor = "01"
unit = "01"
transport = "tcp"
address = "{addr}"
poll_interval_ms = 100
timeout_ms = 500
"#
    );
    for (name, register) in [
        ("floor", 0),
        ("direction", 1),
        ("speed", 2),
        ("door", 3),
        ("occupied", 4),
        ("mode", 5),
        ("requests", 10),
    ] {
        text.push_str(&format!(
            "\n[[devices.points]]\nname = \"{name}\"\nregister = {register}\ntype = \"u16\"\n"
        ));
    }
    text
}

fn lift_reading(h: &rig::Heard) -> Option<ReadingBatch> {
    if !h.topic.ends_with("/readings") {
        return None;
    }
    ReadingBatch::decode(&h.payload)
        .ok()
        .filter(|r| r.device == "lift-B1-01-01")
}

fn value(batch: &ReadingBatch, point: &str) -> Option<f64> {
    batch
        .points
        .iter()
        .find(|p| p.point == point)
        .and_then(|p| p.good_value())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_that_refuses_one_register_has_its_other_points_published_in_fewer_requests() {
    let broker = servers::mosquitto().unwrap();
    let listener = Listener::start(broker.port(), "shouwang/v1/#")
        .await
        .unwrap();
    let lift = SimDevice::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    for r in 0..6 {
        lift.set_u16(r, 10 + r);
    }
    // The door state's register is a hole in this device's map: exception 02.
    lift.refuse_registers(&[3]);
    lift.count_requests_in(Some(10));
    let text = config(broker.port(), lift.local_addr());

    // What the plan says before anything runs: one request for all seven points.
    let (code, out, err) = rig::gateway_once("plan", &text).unwrap();
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("floor, direction, speed, door, occupied, mode, requests"),
        "{out}"
    );
    assert!(out.contains("requests per poll 7 -> 1 (6 saved)"), "{out}");

    let gateway = rig::start_gateway(&text).unwrap();
    // The first poll: 0-10 refused, 0-2 read, 3-10 refused, 3-4 refused, 3 refused, 4 read,
    // 5-10 read: `requests` was read by the 7th request. Every later poll reads 0-2, 3, 4
    // and 5-10: 4 requests.
    let mut counts = Vec::new();
    listener
        .wait_for("five lift readings", Duration::from_secs(20), |h| {
            let batch = lift_reading(h)?;
            counts.push(batch.clone());
            (counts.len() >= 5).then_some(())
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", gateway.log()));
    let first = &counts[0];
    assert_eq!(
        value(first, "door"),
        None,
        "the refused point is not a reading"
    );
    assert_eq!(value(first, "floor"), Some(10.0));
    assert_eq!(value(first, "occupied"), Some(14.0));
    assert_eq!(value(first, "mode"), Some(15.0));
    let requests: Vec<f64> = counts
        .iter()
        .map(|b| value(b, "requests").unwrap())
        .collect();
    println!("request number that read register 10, poll by poll: {requests:?}");
    assert_eq!(requests[0], 7.0, "{requests:?}");
    for pair in requests.windows(2) {
        assert_eq!(
            pair[1] - pair[0],
            4.0,
            "4 requests a poll after the split: {requests:?}"
        );
    }

    // The refused point is the device's point fault, not a lost device.
    let raised = listener
        .wait_for("the point fault", Duration::from_secs(10), |h| {
            if !h.topic.ends_with("/events") {
                return None;
            }
            let e = AlarmEvent::decode(&h.payload).ok()?;
            (e.alarm_id == "riverside:gw-p:lift-B1-01-01:point_fault"
                && e.transition == TransitionKind::Raised)
                .then_some(e)
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", gateway.log()));
    assert_eq!(raised.class, SignalClass::Fault);
    let heard = listener.heard();
    assert!(
        !heard.iter().any(|h| h.topic.ends_with("/events")
            && AlarmEvent::decode(&h.payload).is_ok_and(|e| e.alarm_id.ends_with(":comm_lost"))),
        "a refused register is not communication lost"
    );
}
