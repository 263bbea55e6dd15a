//! The device simulator against a tokio-modbus client and the real `mbpoll` CLI.

use std::net::SocketAddr;
use std::time::Duration;

use shouwang_hil_tests::sim::SimDevice;
use tokio_modbus::client::{Client, Context, Reader, Writer, tcp};
use tokio_modbus::{ExceptionCode, Request, Response, Slave};

async fn device() -> SimDevice {
    SimDevice::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
}

async fn client(dev: &SimDevice, unit: u8) -> Context {
    tcp::connect_slave(dev.local_addr(), Slave(unit))
        .await
        .unwrap()
}

/// A read with a deadline: Err(()) when the device did not answer in time.
async fn read_holding(ctx: &mut Context, register: u16, count: u16) -> Result<Vec<u16>, ()> {
    match tokio::time::timeout(
        Duration::from_millis(500),
        ctx.read_holding_registers(register, count),
    )
    .await
    {
        Ok(answer) => Ok(answer.unwrap().unwrap()),
        Err(_elapsed) => Err(()),
    }
}

#[tokio::test]
async fn holding_and_input_reads_see_the_same_registers_and_unset_ones_read_zero() {
    let dev = device().await;
    dev.set_u16(0, 250);
    dev.set_u16(7, 0xBEEF);
    let mut ctx = client(&dev, 1).await;
    assert_eq!(
        ctx.read_holding_registers(0, 3).await.unwrap().unwrap(),
        vec![250, 0, 0]
    );
    assert_eq!(
        ctx.read_input_registers(0, 3).await.unwrap().unwrap(),
        vec![250, 0, 0]
    );
    assert_eq!(
        ctx.read_input_registers(6, 2).await.unwrap().unwrap(),
        vec![0, 0xBEEF]
    );
    assert_eq!(dev.requests_served(), 3);
}

#[tokio::test]
async fn thirty_two_bit_values_are_sent_high_word_first() {
    let dev = device().await;
    dev.set_f32(0, 0.55);
    dev.set_u32(10, 0x0001_0002);
    dev.set_i16(20, -3);
    let mut ctx = client(&dev, 1).await;
    let words = ctx.read_holding_registers(0, 2).await.unwrap().unwrap();
    let bits = (u32::from(words[0]) << 16) | u32::from(words[1]);
    assert_eq!(f32::from_bits(bits), 0.55);
    assert_eq!(
        ctx.read_holding_registers(10, 2).await.unwrap().unwrap(),
        vec![1, 2]
    );
    assert_eq!(
        ctx.read_holding_registers(20, 1).await.unwrap().unwrap(),
        vec![0xFFFD]
    );
    assert_eq!(dev.get_f32(0), 0.55);
    assert_eq!(dev.get_u32(10), 0x0001_0002);
}

#[tokio::test]
async fn writes_with_fc06_and_fc16_land_in_the_bank() {
    let dev = device().await;
    let mut ctx = client(&dev, 1).await;
    ctx.write_single_register(5, 321).await.unwrap().unwrap();
    ctx.write_multiple_registers(100, &[1, 2, 3])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(dev.get_u16(5), 321);
    assert_eq!(
        [dev.get_u16(100), dev.get_u16(101), dev.get_u16(102)],
        [1, 2, 3]
    );
    assert_eq!(
        ctx.read_holding_registers(100, 3).await.unwrap().unwrap(),
        vec![1, 2, 3]
    );
}

#[tokio::test]
async fn any_unit_id_is_answered() {
    let dev = device().await;
    dev.set_u16(0, 9);
    for unit in [0, 1, 17, 247, 255] {
        let mut ctx = client(&dev, unit).await;
        assert_eq!(
            ctx.read_holding_registers(0, 1).await.unwrap().unwrap(),
            vec![9],
            "unit {unit}"
        );
    }
}

#[tokio::test]
async fn bad_requests_get_exceptions_and_the_connection_stays_up() {
    let dev = device().await;
    dev.set_u16(0, 42);
    let mut ctx = client(&dev, 1).await;
    assert_eq!(
        ctx.write_multiple_coils(0, &[true]).await.unwrap(),
        Err(ExceptionCode::IllegalFunction)
    );
    assert_eq!(
        ctx.write_single_coil(0, true).await.unwrap(),
        Err(ExceptionCode::IllegalFunction)
    );
    assert_eq!(
        ctx.masked_write_register(0, 0xFF, 0).await.unwrap(),
        Err(ExceptionCode::IllegalFunction)
    );
    let custom = ctx
        .call(Request::Custom(0x41, vec![1, 2, 3].into()))
        .await
        .unwrap();
    assert_eq!(custom, Err(ExceptionCode::IllegalFunction));
    assert_eq!(
        ctx.read_holding_registers(65535, 2).await.unwrap(),
        Err(ExceptionCode::IllegalDataAddress)
    );
    assert_eq!(
        ctx.read_holding_registers(0, 126).await.unwrap(),
        Err(ExceptionCode::IllegalDataValue)
    );
    assert_eq!(
        ctx.read_holding_registers(0, 0).await.unwrap(),
        Err(ExceptionCode::IllegalDataValue)
    );

    dev.set_register_count(10);
    assert_eq!(
        ctx.read_input_registers(9, 2).await.unwrap(),
        Err(ExceptionCode::IllegalDataAddress)
    );
    assert_eq!(
        ctx.write_single_register(10, 1).await.unwrap(),
        Err(ExceptionCode::IllegalDataAddress)
    );
    assert_eq!(
        ctx.write_multiple_registers(8, &[1, 2, 3]).await.unwrap(),
        Err(ExceptionCode::IllegalDataAddress)
    );
    assert_eq!(dev.get_u16(8), 0, "a refused write changes nothing");

    // Still the same connection, still answering.
    assert_eq!(
        ctx.read_holding_registers(0, 10).await.unwrap().unwrap()[0],
        42
    );
    assert_eq!(dev.requests_served(), 11);
}

#[tokio::test]
async fn a_device_that_stops_responding_times_out_and_answers_again_when_restored() {
    let dev = device().await;
    dev.set_u16(0, 7);
    let mut ctx = client(&dev, 1).await;
    assert_eq!(read_holding(&mut ctx, 0, 1).await, Ok(vec![7]));

    dev.set_responding(false);
    assert_eq!(
        read_holding(&mut ctx, 0, 1).await,
        Err(()),
        "a hung device must not answer"
    );
    let served = dev.requests_served();
    // It still accepts new connections, it just never answers on them.
    let mut other = client(&dev, 1).await;
    assert_eq!(read_holding(&mut other, 0, 1).await, Err(()));
    assert_eq!(dev.requests_served(), served);

    dev.set_responding(true);
    let mut fresh = client(&dev, 1).await;
    assert_eq!(read_holding(&mut fresh, 0, 1).await, Ok(vec![7]));
    // The connection that saw a timeout works again too: nothing stale was queued on it.
    assert_eq!(read_holding(&mut ctx, 0, 1).await, Ok(vec![7]));
}

#[tokio::test]
async fn a_failing_device_answers_every_request_with_the_chosen_exception() {
    let dev = device().await;
    let mut ctx = client(&dev, 1).await;
    dev.fail_with(Some(ExceptionCode::ServerDeviceFailure));
    assert_eq!(
        ctx.read_holding_registers(0, 1).await.unwrap(),
        Err(ExceptionCode::ServerDeviceFailure)
    );
    dev.fail_with(None);
    assert_eq!(ctx.read_holding_registers(0, 1).await.unwrap(), Ok(vec![0]));
}

#[tokio::test]
async fn a_stopped_device_refuses_connections_and_drops_open_ones() {
    let dev = device().await;
    let addr = dev.local_addr();
    let mut ctx = client(&dev, 1).await;
    dev.stop();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while tokio::net::TcpStream::connect(addr).await.is_ok() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "port still open after stop()"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let read = tokio::time::timeout(Duration::from_secs(2), ctx.read_holding_registers(0, 1)).await;
    assert!(
        matches!(read, Ok(Err(_))),
        "the open connection must fail, got {read:?}"
    );
}

#[tokio::test]
async fn dropping_the_last_handle_closes_the_port() {
    let dev = device().await;
    let addr = dev.local_addr();
    let clone = dev.clone();
    drop(dev);
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_ok(),
        "a clone keeps it serving"
    );
    drop(clone);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while tokio::net::TcpStream::connect(addr).await.is_ok() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "port still open after the last drop"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_device_can_be_started_on_a_chosen_address() {
    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let dev = SimDevice::start(free).await.unwrap();
    assert_eq!(dev.local_addr(), free);
    // The same address twice is an error, not a panic.
    let again: anyhow::Result<SimDevice> = SimDevice::start(free).await;
    assert!(again.is_err());
}

#[tokio::test]
async fn coils_and_discrete_inputs_are_banks_of_their_own_read_up_to_2000_bits() {
    let dev = device().await;
    dev.set_coil(1, true);
    dev.set_coil(1999, true);
    dev.set_discrete_input(2, true);
    dev.set_u16(1, 0xFFFF); // the register bank is another table
    let mut ctx = client(&dev, 1).await;
    assert_eq!(
        ctx.read_coils(0, 3).await.unwrap().unwrap(),
        [false, true, false]
    );
    assert_eq!(
        ctx.read_discrete_inputs(0, 3).await.unwrap().unwrap(),
        [false, false, true]
    );
    // On the wire the bits come packed in whole bytes: 3 asked for, 8 arrive.
    let raw = ctx.call(Request::ReadCoils(0, 3)).await.unwrap().unwrap();
    assert_eq!(
        raw,
        Response::ReadCoils(vec![false, true, false, false, false, false, false, false])
    );
    let all = ctx.read_coils(0, 2000).await.unwrap().unwrap();
    assert_eq!(all.len(), 2000);
    assert_eq!(all.iter().filter(|&&b| b).count(), 2);
    assert_eq!(
        ctx.read_coils(0, 2001).await.unwrap(),
        Err(ExceptionCode::IllegalDataValue)
    );
    assert_eq!(
        ctx.read_discrete_inputs(0, 0).await.unwrap(),
        Err(ExceptionCode::IllegalDataValue)
    );
    // The map's holes and end apply to the bit tables too.
    dev.refuse_registers(&[5]);
    assert_eq!(
        ctx.read_coils(4, 2).await.unwrap(),
        Err(ExceptionCode::IllegalDataAddress)
    );
    dev.set_register_count(10);
    assert_eq!(
        ctx.read_discrete_inputs(9, 2).await.unwrap(),
        Err(ExceptionCode::IllegalDataAddress)
    );
    assert!(dev.get_coil(1999) && dev.get_discrete_input(2) && !dev.get_coil(2));
}

#[tokio::test]
async fn raw_requests_are_answered_with_the_response_they_ask_for() {
    let dev = device().await;
    let mut ctx = client(&dev, 3).await;
    let answer = ctx
        .call(Request::WriteSingleRegister(4, 0x1234))
        .await
        .unwrap();
    assert_eq!(answer, Ok(Response::WriteSingleRegister(4, 0x1234)));
}

// --- mbpoll: a third-party Modbus master ---------------------------------------------------

/// Run mbpoll against the device, once (`-1`), PDU addressing (`-0`), with a short timeout;
/// `values` (after the host on mbpoll's command line) makes it a write.
async fn mbpoll(addr: SocketAddr, args: &[&str]) -> (bool, String) {
    mbpoll_write(addr, args, &[]).await
}

async fn mbpoll_write(addr: SocketAddr, args: &[&str], values: &[&str]) -> (bool, String) {
    let bin = shouwang_hil_tests::servers::find_binary("mbpoll", "mbpoll").unwrap();
    let port = addr.port().to_string();
    let out = tokio::process::Command::new(bin)
        .args(["-m", "tcp", "-p", &port, "-0", "-1", "-o", "0.5"])
        .args(args)
        .arg(addr.ip().to_string())
        .args(values)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test]
async fn mbpoll_reads_holding_and_input_registers() {
    let dev = device().await;
    dev.set_u16(0, 250);
    dev.set_u16(1, 17);
    let (ok, out) = mbpoll(dev.local_addr(), &["-a", "1", "-r", "0", "-c", "2"]).await;
    assert!(ok, "{out}");
    assert!(out.contains("[0]: \t250"), "{out}");
    assert!(out.contains("[1]: \t17"), "{out}");

    let (ok, out) = mbpoll(
        dev.local_addr(),
        &["-a", "5", "-t", "3", "-r", "1", "-c", "1"],
    )
    .await;
    assert!(ok, "{out}");
    assert!(out.contains("[1]: \t17"), "{out}");
}

#[tokio::test]
async fn mbpoll_reads_a_big_endian_float() {
    let dev = device().await;
    dev.set_f32(0, 0.72);
    let (ok, out) = mbpoll(
        dev.local_addr(),
        &["-t", "4:float", "-B", "-r", "0", "-c", "1"],
    )
    .await;
    assert!(ok, "{out}");
    assert!(out.contains("[0]: \t0.72"), "{out}");
}

#[tokio::test]
async fn mbpoll_reads_coils_and_discrete_inputs() {
    let dev = device().await;
    dev.set_coil(1, true);
    dev.set_discrete_input(0, true);
    let (ok, out) = mbpoll(dev.local_addr(), &["-t", "0", "-r", "0", "-c", "3"]).await;
    assert!(ok, "{out}");
    assert!(
        out.contains("[0]: \t0") && out.contains("[1]: \t1") && out.contains("[2]: \t0"),
        "{out}"
    );
    let (ok, out) = mbpoll(dev.local_addr(), &["-t", "1", "-r", "0", "-c", "2"]).await;
    assert!(ok, "{out}");
    assert!(
        out.contains("[0]: \t1") && out.contains("[1]: \t0"),
        "{out}"
    );
}

/// What a gateway point's `byte_order` means, checked against a third-party master: mbpoll
/// writes a float low word first (the gateway's `CDAB`) unless told `-B` (`ABCD`); 10.0 is
/// 0x41200000. (The gateway's decoder is tested on these very registers.)
#[tokio::test]
async fn mbpoll_writes_a_float_low_word_first_unless_told_big_endian() {
    let dev = device().await;
    let addr = dev.local_addr();
    let (ok, out) = mbpoll_write(addr, &["-t", "4:float", "-r", "0"], &["10"]).await;
    assert!(ok, "{out}");
    assert_eq!([dev.get_u16(0), dev.get_u16(1)], [0x0000, 0x4120]);
    let (ok, out) = mbpoll_write(addr, &["-t", "4:float", "-B", "-r", "2"], &["10"]).await;
    assert!(ok, "{out}");
    assert_eq!([dev.get_u16(2), dev.get_u16(3)], [0x4120, 0x0000]);
}

#[tokio::test]
async fn mbpoll_writes_land_in_the_bank() {
    let dev = device().await;
    let addr = dev.local_addr();
    let (ok, out) = mbpoll_write(addr, &["-r", "3"], &["300"]).await;
    assert!(ok, "{out}");
    assert_eq!(dev.get_u16(3), 300);
    let (ok, out) = mbpoll_write(addr, &["-r", "10"], &["1", "2", "3"]).await;
    assert!(ok, "{out}");
    assert_eq!(
        [dev.get_u16(10), dev.get_u16(11), dev.get_u16(12)],
        [1, 2, 3]
    );
}

#[tokio::test]
async fn mbpoll_times_out_on_a_hung_device_and_reads_again_when_restored() {
    let dev = device().await;
    dev.set_u16(0, 5);
    dev.set_responding(false);
    let (ok, out) = mbpoll(dev.local_addr(), &["-r", "0", "-c", "1"]).await;
    assert!(
        !ok && !out.contains("[0]: \t5"),
        "a hung device must not answer mbpoll: {out}"
    );
    assert!(out.to_lowercase().contains("timed out"), "{out}");

    dev.set_responding(true);
    let (ok, out) = mbpoll(dev.local_addr(), &["-r", "0", "-c", "1"]).await;
    assert!(ok, "{out}");
    assert!(out.contains("[0]: \t5"), "{out}");
}

#[tokio::test]
async fn mbpoll_gets_illegal_data_address_beyond_the_register_count() {
    let dev = device().await;
    dev.set_register_count(4);
    let (ok, out) = mbpoll(dev.local_addr(), &["-r", "3", "-c", "2"]).await;
    assert!(!ok, "{out}");
    assert!(out.to_lowercase().contains("illegal data address"), "{out}");
}

#[tokio::test]
async fn a_refused_register_is_a_hole_in_the_map_its_neighbours_still_read() {
    let dev = device().await;
    dev.set_u16(4, 44);
    dev.set_u16(6, 66);
    dev.refuse_registers(&[5]);
    let mut ctx = client(&dev, 1).await;
    for (start, count) in [(5, 1), (0, 8), (5, 2), (4, 2)] {
        assert_eq!(
            ctx.read_holding_registers(start, count).await.unwrap(),
            Err(ExceptionCode::IllegalDataAddress),
            "{start}+{count}"
        );
    }
    assert_eq!(
        ctx.write_single_register(5, 1).await.unwrap(),
        Err(ExceptionCode::IllegalDataAddress)
    );
    assert_eq!(
        ctx.read_input_registers(4, 1).await.unwrap().unwrap(),
        vec![44]
    );
    assert_eq!(
        ctx.read_holding_registers(6, 1).await.unwrap().unwrap(),
        vec![66]
    );
    // mbpoll, a third-party master, sees the same hole.
    let (ok, out) = mbpoll(dev.local_addr(), &["-r", "4", "-c", "3"]).await;
    assert!(!ok, "{out}");
    assert!(out.to_lowercase().contains("illegal data address"), "{out}");
    let (ok, out) = mbpoll(dev.local_addr(), &["-r", "6", "-c", "1"]).await;
    assert!(ok && out.contains("[6]: \t66"), "{out}");

    dev.refuse_registers(&[]);
    assert_eq!(
        ctx.read_holding_registers(4, 3).await.unwrap().unwrap(),
        vec![44, 0, 66]
    );
}
