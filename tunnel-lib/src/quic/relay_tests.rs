//! A real QUIC connection over a stream: the server's endpoint keeps its
//! UDP socket and relays a peer through a [`Hub`]; the client's endpoint
//! has only the stream.

use super::*;
use crate::quic::{client_config, server_config, server_endpoint, stream_endpoint, Tuning};
use crate::tls::{fingerprint, CertPair, ServerTrust};

fn pair() -> CertPair {
    let g = rcgen::generate_simple_self_signed(vec!["tunnel.test".to_string()]).unwrap();
    CertPair {
        chain: vec![g.cert.der().clone()],
        key: rustls::pki_types::PrivateKeyDer::Pkcs8(g.signing_key.serialize_der().into()),
    }
}

#[test]
fn relay_addresses_are_their_own_prefix() {
    assert!(is_relay_addr(&relay_addr(0)));
    assert!(is_relay_addr(&relay_addr(u64::MAX)));
    assert_ne!(relay_addr(1), relay_addr(2));
    assert!(!is_relay_addr(&"[::1]:443".parse().unwrap()));
    assert!(!is_relay_addr(&"127.0.0.1:443".parse().unwrap()));
}

#[tokio::test]
async fn a_quic_connection_runs_over_a_stream_with_streams_and_datagrams() {
    let t = Tuning::default();
    let pair = pair();
    let fp = fingerprint(&pair.chain[0]);
    let hub = Hub::new();
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let server = server_endpoint(
        udp,
        server_config(pair, &t).unwrap(),
        b"k",
        &t,
        Some(hub.clone()),
    )
    .unwrap();
    let (client, ends) = stream_endpoint(&t).unwrap();
    let (near, far) = tokio::io::duplex(64 * 1024);
    let real: SocketAddr = "192.0.2.9:5000".parse().unwrap();
    let relaying = hub.serve(far, real);
    let pumping = ends.run(near);
    let cfg = client_config(&ServerTrust::Pinned(vec![fp]), &t).unwrap();
    let peer = relay_addr(0);
    let connecting = client.connect_with(cfg, peer, "tunnel.test").unwrap();
    let exchange = async {
        let (conn, incoming) =
            tokio::join!(connecting, async { server.accept().await.unwrap().await });
        let (conn, incoming) = (conn.unwrap(), incoming.unwrap());
        assert!(is_relay_addr(&incoming.remote_address()));
        assert_eq!(hub.real_peer(incoming.remote_address()), real);
        assert_eq!(hub.linked(), 1);
        // 4 MiB up and back on one stream (more than every queue holds).
        let sent: Vec<u8> = (0..4u32 << 20).map(|i| (i % 251) as u8).collect();
        let echo = async {
            let (mut send, mut recv) = incoming.accept_bi().await.unwrap();
            let got = recv.read_to_end(8 << 20).await.unwrap();
            send.write_all(&got).await.unwrap();
            send.finish().unwrap();
            send.stopped().await.ok();
        };
        let ask = async {
            let (mut send, mut recv) = conn.open_bi().await.unwrap();
            send.write_all(&sent).await.unwrap();
            send.finish().unwrap();
            recv.read_to_end(8 << 20).await.unwrap()
        };
        let ((), back) = tokio::join!(echo, ask);
        assert!(back == sent, "the bytes came back intact");
        // DATAGRAMs (UDP tunnels) too.
        conn.send_datagram(Bytes::from_static(b"ping")).unwrap();
        assert_eq!(&incoming.read_datagram().await.unwrap()[..], b"ping");
        conn.close(0u32.into(), b"done");
        incoming.closed().await;
    };
    tokio::select! {
        () = exchange => {}
        r = relaying => panic!("the relay ended first: {r:?}"),
        r = pumping => panic!("the pump ended first: {r:?}"),
    }
}
