//! A user-space UDP impairment proxy between one QUIC client and the
//! server: loss per direction, delay, reordering, duplication, partition and
//! NAT rebinding. The client sends to `addr`; the proxy relays from its own
//! "NAT" socket to the server and back. One task, a bounded delay queue, a
//! seeded generator (each run drops the same packets).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// What the link does to packets. Probabilities are in [0, 1].
#[derive(Clone, Copy, Debug, Default)]
pub struct Faults {
    /// Client to server.
    pub loss_up: f64,
    /// Server to client.
    pub loss_down: f64,
    /// Added to every packet, both ways.
    pub delay: Duration,
    /// This share of packets is held `delay + 5 ms` longer (overtaken).
    pub reorder: f64,
    /// This share of packets is sent twice.
    pub duplicate: f64,
    /// Nothing passes either way.
    pub partition: bool,
}

impl Faults {
    pub fn loss(each_way: f64) -> Faults {
        Faults {
            loss_up: each_way,
            loss_down: each_way,
            ..Default::default()
        }
    }
}

enum Cmd {
    Set(Faults),
    /// The NAT forgets its mapping: a new source port towards the server.
    Rebind,
}

pub struct FaultProxy {
    /// Where the client sends.
    pub addr: SocketAddr,
    cmds: mpsc::Sender<Cmd>,
    task: JoinHandle<()>,
}

/// Packets waiting for their time, at most this many (a router's queue:
/// past it they are dropped).
const QUEUE: usize = 8192;

#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Held {
    due: Instant,
    seq: u64,
    up: bool,
    client: SocketAddr,
    data: Vec<u8>,
}

impl FaultProxy {
    pub async fn start(server: SocketAddr, faults: Faults) -> FaultProxy {
        let front = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = front.local_addr().unwrap();
        let (cmds, mut rx) = mpsc::channel(16);
        let task = tokio::spawn(async move {
            let mut faults = faults;
            // A NAT's mappings: each client source gets its own socket
            // towards the server (a second sender, such as a probe, is a
            // flow of its own and does not take the first one's replies).
            let mut nat = Nat::new(server);
            let mut rng = 0x9e37_79b9_7f4a_7c15u64;
            let mut held: BinaryHeap<Reverse<Held>> = BinaryHeap::new();
            let mut seq = 0u64;
            let mut a = vec![0u8; 65536];
            loop {
                let next_due = held.peek().map(|h| h.0.due);
                let sleep = async {
                    match next_due {
                        Some(d) => tokio::time::sleep_until(d).await,
                        None => std::future::pending().await,
                    }
                };
                let (up, client, data) = tokio::select! {
                    r = front.recv_from(&mut a) => {
                        let Ok((n, from)) = r else { continue };
                        (true, from, a[..n].to_vec())
                    }
                    Some((client, data)) = nat.down.recv() => (false, client, data),
                    _ = sleep => {
                        let Reverse(h) = held.pop().unwrap();
                        nat.send(&front, h.client, h.up, &h.data).await;
                        continue;
                    }
                    c = rx.recv() => match c {
                        Some(Cmd::Set(f)) => { faults = f; continue }
                        Some(Cmd::Rebind) => { nat.rebind().await; continue }
                        None => return,
                    },
                };
                let loss = if up { faults.loss_up } else { faults.loss_down };
                if faults.partition || chance(&mut rng, loss) {
                    continue;
                }
                let copies = if chance(&mut rng, faults.duplicate) {
                    2
                } else {
                    1
                };
                let mut delay = faults.delay;
                if chance(&mut rng, faults.reorder) {
                    delay += Duration::from_millis(5);
                }
                for _ in 0..copies {
                    if delay.is_zero() {
                        nat.send(&front, client, up, &data).await;
                    } else if held.len() < QUEUE {
                        seq += 1;
                        held.push(Reverse(Held {
                            due: Instant::now() + delay,
                            seq,
                            up,
                            client,
                            data: data.clone(),
                        }));
                    }
                }
            }
        });
        FaultProxy { addr, cmds, task }
    }

    pub async fn set(&self, faults: Faults) {
        self.cmds.send(Cmd::Set(faults)).await.unwrap();
    }

    pub async fn rebind(&self) {
        self.cmds.send(Cmd::Rebind).await.unwrap();
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The proxy's NAT: one socket towards the server per client source (at
/// most [`FLOWS`]), each read by a task of its own that hands what the
/// server sends to the proxy's loop.
struct Nat {
    server: SocketAddr,
    flows: Vec<(SocketAddr, std::sync::Arc<UdpSocket>)>,
    readers: tokio::task::JoinSet<()>,
    down_tx: mpsc::Sender<(SocketAddr, Vec<u8>)>,
    down: mpsc::Receiver<(SocketAddr, Vec<u8>)>,
}

const FLOWS: usize = 16;

impl Nat {
    fn new(server: SocketAddr) -> Nat {
        let (down_tx, down) = mpsc::channel(QUEUE);
        Nat {
            server,
            flows: Vec::new(),
            readers: tokio::task::JoinSet::new(),
            down_tx,
            down,
        }
    }

    async fn open(&mut self, client: SocketAddr) -> std::sync::Arc<UdpSocket> {
        let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        s.connect(self.server).await.unwrap();
        let s = std::sync::Arc::new(s);
        let (reader, tx) = (s.clone(), self.down_tx.clone());
        self.readers.spawn(async move {
            let mut b = vec![0u8; 65536];
            while let Ok(n) = reader.recv(&mut b).await {
                // A full queue drops, as a link would.
                let _ = tx.try_send((client, b[..n].to_vec()));
            }
        });
        s
    }

    /// The NAT forgets its mappings: every flow gets a new source port.
    async fn rebind(&mut self) {
        self.readers.abort_all();
        let clients: Vec<SocketAddr> = self.flows.drain(..).map(|(c, _)| c).collect();
        for c in clients {
            let s = self.open(c).await;
            self.flows.push((c, s));
        }
    }

    async fn send(&mut self, front: &UdpSocket, client: SocketAddr, up: bool, d: &[u8]) {
        // A full socket buffer drops, as a link would.
        if !up {
            let _ = front.send_to(d, client).await;
            return;
        }
        let back = match self.flows.iter().find(|(c, _)| *c == client) {
            Some((_, s)) => s.clone(),
            None if self.flows.len() < FLOWS => {
                let s = self.open(client).await;
                self.flows.push((client, s.clone()));
                s
            }
            None => return,
        };
        let _ = back.send(d).await;
    }
}

/// xorshift64*: true with probability `p`.
fn chance(state: &mut u64, p: f64) -> bool {
    if p <= 0.0 {
        return false;
    }
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    let x = state.wrapping_mul(0x2545_f491_4f6c_dd1d);
    ((x >> 11) as f64 / (1u64 << 53) as f64) < p
}

/// A TCP proxy that can be cut off, for the TCP transport's partitions:
/// while cut, nothing passes either way (bytes wait in the proxy and the
/// kernels, as on a stalled path) and new connections wait to be passed
/// on. One task per connection and direction, ended with the proxy.
pub struct TcpFaultProxy {
    pub addr: SocketAddr,
    cut: tokio::sync::watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl TcpFaultProxy {
    pub async fn start(server: SocketAddr) -> TcpFaultProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (cut, rx) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((down, _)) = listener.accept().await {
                let mut open = rx.clone();
                conns.spawn(async move {
                    let _ = open.wait_for(|cut| !cut).await;
                    let Ok(up) = tokio::net::TcpStream::connect(server).await else {
                        return;
                    };
                    let (dr, dw) = down.into_split();
                    let (ur, uw) = up.into_split();
                    tokio::join!(pass(dr, uw, open.clone()), pass(ur, dw, open));
                });
            }
        });
        TcpFaultProxy { addr, cut, task }
    }

    /// Cuts the path (`true`) or heals it.
    pub fn partition(&self, on: bool) {
        let _ = self.cut.send(on);
    }
}

/// Copies `from` to `to`, holding what it read while the path is cut.
async fn pass(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut open: tokio::sync::watch::Receiver<bool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(n) if n > 0 => n,
            _ => break,
        };
        if open.wait_for(|cut| !cut).await.is_err() || to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

impl Drop for TcpFaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
