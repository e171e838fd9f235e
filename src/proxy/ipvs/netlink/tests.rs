use super::*;

fn key() -> ServiceKey {
    ServiceKey { protocol: Protocol::Tcp, addr: IpAddr::V4(Ipv4Addr::new(10, 96, 0, 10)), port: 80 }
}

#[test]
fn a_service_round_trips_through_its_attributes() {
    let spec = ServiceSpec::new("wrr", Some(10800));
    let m = message(&Op::AddService(key(), spec.clone()));
    let mut buf = vec![0u8; m.buffer_len()];
    m.emit(&mut buf);
    let back = IpvsMessage::parse_with_param(&buf, GenlHeader { cmd: m.cmd, version: 1 }).unwrap();
    assert_eq!(parse_service(&back).unwrap(), Some((key(), spec)));
}

#[test]
fn a_dest_round_trips_through_its_attributes() {
    let d = DestKey { addr: IpAddr::V4(Ipv4Addr::new(10, 244, 0, 7)), port: 8080 };
    let m = message(&Op::UpdateDest(key(), d, 0));
    let mut buf = vec![0u8; m.buffer_len()];
    m.emit(&mut buf);
    let back = IpvsMessage::parse_with_param(&buf, GenlHeader { cmd: m.cmd, version: 1 }).unwrap();
    assert_eq!(parse_dest(&back, AF_INET).unwrap(), Some(Dest { key: d, weight: 0, active: 0, inactive: 0 }));
}

/// The bytes ipvsadm's libipvs sends for the same requests (nested
/// flag, 16-byte addresses, ports in network order, flags with a full
/// mask, netmask all ones).
#[test]
fn golden_wire_messages() {
    let d = DestKey { addr: IpAddr::V4(Ipv4Addr::new(10, 244, 0, 7)), port: 8080 };
    let ops = [
        Op::AddService(key(), ServiceSpec::new("rr", None)),
        Op::AddService(key(), ServiceSpec::new("sh", Some(10800))),
        Op::AddService(key(), ServiceSpec::new("mh", None)),
        Op::DelService(key()),
        Op::AddDest(key(), d, 1),
        Op::UpdateDest(key(), d, 0),
        Op::DelDest(key(), d),
        Op::SetTimeouts { tcp: 900, tcp_fin: 120, udp: 300 },
    ];
    let mut text = String::new();
    for op in &ops {
        text.push_str(&format!("# {op}\n"));
        for chunk in wire(op, 0x1c).chunks(16) {
            text.push_str(&hex::encode(chunk));
            text.push('\n');
        }
    }
    crate::proxy::golden::check("tests/golden/ipvs/messages.hex", &text);
}

fn key6() -> ServiceKey {
    ServiceKey { protocol: Protocol::Udp, addr: "fd00:10:96::a".parse().unwrap(), port: 53 }
}

/// IPv6: the family in the service and the server, all 16 bytes of the
/// address, and a persistence netmask that is a prefix length (128), as
/// the kernel checks for AF_INET6.
#[test]
fn ipv6_services_and_servers_round_trip() {
    let spec = ServiceSpec::new("rr", Some(10800));
    let m = message(&Op::AddService(key6(), spec.clone()));
    let mut buf = vec![0u8; m.buffer_len()];
    m.emit(&mut buf);
    let back = IpvsMessage::parse_with_param(&buf, GenlHeader { cmd: m.cmd, version: 1 }).unwrap();
    assert_eq!(parse_service(&back).unwrap(), Some((key6(), spec)));
    let svc = raw_attrs(nested(&back, top::SERVICE).unwrap()).unwrap();
    assert_eq!(field::<2>(&svc, svc::AF).map(u16::from_ne_bytes), Some(AF_INET6));
    assert_eq!(field::<4>(&svc, svc::NETMASK).map(u32::from_ne_bytes), Some(128));
    let d = DestKey { addr: "fd00:10:244:1::10".parse().unwrap(), port: 5353 };
    let m = message(&Op::AddDest(key6(), d, 1));
    let mut buf = vec![0u8; m.buffer_len()];
    m.emit(&mut buf);
    let back = IpvsMessage::parse_with_param(&buf, GenlHeader { cmd: m.cmd, version: 1 }).unwrap();
    assert_eq!(parse_dest(&back, AF_INET6).unwrap(), Some(Dest { key: d, weight: 1, active: 0, inactive: 0 }));
    assert_eq!(key6().to_string(), "udp [fd00:10:96::a]:53");
    assert_eq!(d.to_string(), "[fd00:10:244:1::10]:5353");
}
