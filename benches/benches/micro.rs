//! Microbenchmarks of the hot pure functions: `cargo bench -p tunnel-benches`.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use divan::{black_box, Bencher};
use tunnel_lib::http1::{ChunkStep, ChunkedDecoder, Forwarded, Limits, RequestHead, ResponseHead};
use tunnel_lib::proto::{Control, Preface, StreamKind};

fn main() {
    divan::main();
}

const BROWSER_GET: &[u8] = b"GET /assets/app.js?v=3 HTTP/1.1\r\nHost: quiet-fox-42.localhost:8000\r\n\
User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:131.0) Gecko/20100101 Firefox/131.0\r\n\
Accept: */*\r\nAccept-Language: en-GB,en;q=0.5\r\nAccept-Encoding: gzip, deflate, br, zstd\r\n\
Referer: http://quiet-fox-42.localhost:8000/\r\nConnection: keep-alive\r\nCookie: session=abcdef0123456789\r\n\
Sec-Fetch-Dest: script\r\nSec-Fetch-Mode: no-cors\r\nSec-Fetch-Site: same-origin\r\n\r\n";

const WRK_GET: &[u8] = b"GET / HTTP/1.1\r\nHost: bench.localhost\r\n\r\n";

fn parse(input: &[u8], limits: &Limits) -> RequestHead {
    tunnel_lib::http1::RequestReader::new()
        .read(&mut bytes::BytesMut::from(input), limits)
        .unwrap()
        .expect("a complete head")
}

#[divan::bench(args = [("wrk", WRK_GET), ("browser", BROWSER_GET)])]
fn head_parse_and_rewrite(bencher: Bencher, (_, input): (&str, &[u8])) {
    let limits = Limits::default();
    let fwd = Forwarded::plain("203.0.113.9".parse().unwrap(), "http");
    let mut out = BytesMut::with_capacity(4096);
    bencher
        .counter(divan::counter::BytesCount::new(input.len()))
        .bench_local(|| {
            let head = parse(black_box(input), &limits);
            out.clear();
            head.write_forwarded(&mut out, &fwd);
            black_box(out.len())
        });
}

#[divan::bench]
fn response_head_parse(bencher: Bencher) {
    let input: &[u8] =
        b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Mon, 23 Nov 2026 00:00:00 GMT\r\n\
Content-Type: text/plain\r\nContent-Length: 100\r\nConnection: keep-alive\r\n\r\n";
    bencher.bench_local(|| ResponseHead::parse(black_box(input), false, 65536).unwrap());
}

#[divan::bench(args = [100, 16384])]
fn chunked_decode(bencher: Bencher, chunk: usize) {
    let mut wire = Vec::new();
    for _ in 0..16 {
        wire.extend_from_slice(format!("{chunk:x}\r\n").as_bytes());
        wire.extend(std::iter::repeat_n(b'x', chunk));
        wire.extend_from_slice(b"\r\n");
    }
    wire.extend_from_slice(b"0\r\n\r\n");
    bencher
        .counter(divan::counter::BytesCount::new(wire.len()))
        .bench_local(|| {
            let mut dec = ChunkedDecoder::new(4096, 16384);
            let mut rest: &[u8] = black_box(&wire);
            while !rest.is_empty() {
                match dec.step(rest).unwrap() {
                    ChunkStep::Data(n) | ChunkStep::Framing(n) | ChunkStep::Done(n) => {
                        rest = &rest[n..]
                    }
                }
            }
        });
}

#[divan::bench]
fn preface_encode_decode(bencher: Bencher) {
    let p = Preface {
        kind: StreamKind::Http1,
        tunnel_id: 7,
        visitor: "203.0.113.9:5555".parse::<SocketAddr>().unwrap(),
    };
    let mut buf = BytesMut::with_capacity(64);
    bencher.bench_local(|| {
        black_box(&p).encode(&mut buf);
        Preface::decode(&mut buf).unwrap().unwrap()
    });
}

#[divan::bench]
fn control_encode_decode(bencher: Bencher) {
    let m = Control::Registered {
        request_id: 1,
        tunnel_id: 7,
        hostname: "quiet-fox-42.localhost".into(),
        url: "http://quiet-fox-42.localhost:8000".into(),
    };
    let mut buf = BytesMut::with_capacity(128);
    bencher.bench_local(|| {
        black_box(&m).encode(&mut buf);
        Control::decode(&mut buf).unwrap().unwrap()
    });
}

#[divan::bench(args = [10, 10_000])]
fn route_lookup(bencher: Bencher, tunnels: usize) {
    let reg = tunnel_server::Registry::new(
        "localhost",
        tunnel_server::registry::Urls {
            scheme: "http",
            port: 8000,
            tls_port: None,
        },
        Duration::from_secs(60),
        32,
        Vec::new(),
    );
    for i in 0..tunnels {
        reg.add_static_route(&format!("t{i}"), i as u64, i as u32);
    }
    let hosts: Vec<String> = (0..64)
        .map(|i| format!("T{}.Localhost:8000", (i * 7919) % tunnels))
        .collect();
    let mut i = 0;
    bencher.bench_local(|| {
        i = (i + 1) % hosts.len();
        reg.route(black_box(hosts[i].as_bytes()))
            .map(|(r, _)| r.tunnel_id)
    });
}
