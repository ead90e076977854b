use bytes::BytesMut;

use super::*;
use crate::error::ProtoError;

fn samples() -> Vec<Control> {
    vec![
        Control::Hello {
            version: 1,
            token: "s3cr€t".into(),
            client_id: [7; 16],
            agent: "tunnel-client/0.1".into(),
        },
        Control::Hello {
            version: 9,
            token: "".into(),
            client_id: [0; 16],
            agent: String::new(),
        },
        Control::Welcome {
            version: 1,
            session_id: u64::MAX,
        },
        Control::Register {
            request_id: 1,
            subdomain: "myapp".into(),
            local: "127.0.0.1:8080".into(),
            kind: TunnelKind::Http,
            plain_http: false,
            remote_port: 0,
            policy: Default::default(),
        },
        Control::Register {
            request_id: u32::MAX,
            subdomain: String::new(),
            local: String::new(),
            kind: TunnelKind::Tls,
            plain_http: true,
            remote_port: 0,
            policy: Default::default(),
        },
        Control::Register {
            request_id: 7,
            subdomain: String::new(),
            local: "localhost:22".into(),
            kind: TunnelKind::Tcp,
            plain_http: false,
            remote_port: 40022,
            policy: Default::default(),
        },
        Control::Register {
            request_id: 8,
            subdomain: "gated".into(),
            local: "localhost:5173".into(),
            kind: TunnelKind::Http,
            plain_http: false,
            remote_port: 0,
            policy: crate::proto::Policy {
                basic_auth: vec!["ann:pw".into()],
                allow: vec!["10.0.0.0/8".into(), "2001:db8::/32".into()],
                deny: vec!["10.9.0.0/16".into()],
                rate_per_ip: 20,
                host_header: "rewrite".into(),
                add_request_headers: vec![("X-Env".into(), "dev".into())],
                remove_request_headers: vec!["Cookie".into()],
                add_response_headers: vec![("X-Robots-Tag".into(), "noindex".into())],
                remove_response_headers: vec!["Server".into()],
            },
        },
        Control::Registered {
            request_id: 1,
            tunnel_id: 42,
            hostname: "a.localhost".into(),
            url: "http://a.localhost:8000".into(),
        },
        Control::Error {
            request_id: 0,
            code: ErrorCode::Unauthorized,
            message: "no".into(),
        },
        Control::Error {
            request_id: 3,
            code: ErrorCode::Other(999),
            message: "x".repeat(1000),
        },
        Control::GoingAway {
            reason: "restart".into(),
        },
    ]
}

#[test]
fn control_round_trips() {
    for msg in samples() {
        let mut buf = BytesMut::new();
        msg.encode(&mut buf);
        let got = Control::decode(&mut buf).unwrap().unwrap();
        assert_eq!(got, msg);
        assert!(buf.is_empty());
    }
}

#[test]
fn control_split_at_every_byte() {
    let mut wire = BytesMut::new();
    let msgs = samples();
    for m in &msgs {
        m.encode(&mut wire);
    }
    for split in 0..=wire.len() {
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for part in [&wire[..split], &wire[split..]] {
            buf.extend_from_slice(part);
            while let Some(m) = Control::decode(&mut buf).unwrap() {
                out.push(m);
            }
        }
        assert_eq!(out, msgs, "split at {split}");
    }
    // And fed one byte at a time.
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for b in wire.iter() {
        buf.extend_from_slice(&[*b]);
        while let Some(m) = Control::decode(&mut buf).unwrap() {
            out.push(m);
        }
    }
    assert_eq!(out, msgs);
}

#[test]
fn control_rejects_garbage_without_panicking() {
    // Oversized length.
    let mut buf = BytesMut::from(&[0xff, 0xff, 0xff, 0xff, 1][..]);
    assert!(matches!(
        Control::decode(&mut buf),
        Err(ProtoError::FrameTooLarge { .. })
    ));
    // Unknown type.
    let mut buf = BytesMut::from(&[0, 0, 0, 1, 0x7f][..]);
    assert_eq!(
        Control::decode(&mut buf),
        Err(ProtoError::UnknownType(0x7f))
    );
    // Empty frame.
    let mut buf = BytesMut::from(&[0, 0, 0, 0][..]);
    assert!(Control::decode(&mut buf).is_err());
    // Every truncation of every valid frame body, re-framed with an honest
    // length, is an error, never a panic and never a different message.
    for msg in samples() {
        let mut full = BytesMut::new();
        msg.encode(&mut full);
        let body = &full[4..];
        for cut in 1..body.len() {
            let mut f = BytesMut::new();
            f.extend_from_slice(&(cut as u32).to_be_bytes());
            f.extend_from_slice(&body[..cut]);
            assert!(Control::decode(&mut f).is_err(), "{msg:?} cut at {cut}");
        }
        // Trailing garbage.
        let mut f = BytesMut::new();
        f.extend_from_slice(&((body.len() + 1) as u32).to_be_bytes());
        f.extend_from_slice(body);
        f.extend_from_slice(&[0]);
        assert!(Control::decode(&mut f).is_err());
    }
    // Invalid UTF-8 in a string.
    let mut f = BytesMut::from(&[0, 0, 0, 4, 0x06, 0, 1, 0xff][..]);
    assert!(Control::decode(&mut f).is_err());
}

#[test]
fn preface_and_reply_round_trip_split_everywhere() {
    let prefaces = [
        Preface {
            kind: StreamKind::Http1,
            tunnel_id: 7,
            visitor: "203.0.113.9:5555".parse().unwrap(),
        },
        Preface {
            kind: StreamKind::Tls,
            tunnel_id: u32::MAX,
            visitor: "[2001:db8::1]:443".parse().unwrap(),
        },
    ];
    for p in &prefaces {
        let mut wire = BytesMut::new();
        p.encode(&mut wire);
        wire.extend_from_slice(b"GET / HTTP/1.1\r\n"); // raw bytes follow
        for split in 0..=wire.len() {
            let mut buf = BytesMut::from(&wire[..split]);
            let mut got = Preface::decode(&mut buf).unwrap();
            if got.is_none() {
                buf.extend_from_slice(&wire[split..]);
                got = Preface::decode(&mut buf).unwrap();
            } else {
                buf.extend_from_slice(&wire[split..]);
            }
            assert_eq!(got.as_ref(), Some(p));
            assert_eq!(
                &buf[..],
                b"GET / HTTP/1.1\r\n",
                "leftover kept at split {split}"
            );
        }
    }
    let replies = [
        Reply::Connected,
        Reply::Failed {
            code: ReplyCode::Refused,
            message: "connection refused".into(),
        },
        Reply::Failed {
            code: ReplyCode::Other(77),
            message: String::new(),
        },
    ];
    for r in &replies {
        let mut wire = BytesMut::new();
        r.encode(&mut wire);
        for split in 0..=wire.len() {
            let mut buf = BytesMut::from(&wire[..split]);
            let first = Reply::decode(&mut buf).unwrap();
            buf.extend_from_slice(&wire[split..]);
            let got = first.or_else(|| Reply::decode(&mut buf).unwrap());
            assert_eq!(got.as_ref(), Some(r));
        }
    }
    let mut bad = BytesMut::from(&[0, 0, 0, 7, 1, 0, 0, 0, 1, 9, 0][..]);
    assert!(Preface::decode(&mut bad).is_err());
}
