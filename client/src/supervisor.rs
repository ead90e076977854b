//! The supervisor: holds one connection to the server at a time,
//! reconnects with exponential backoff and full jitter, takes the streams
//! the server opens (one task each, bounded by the QUIC stream limit), and
//! reports the [`Status`] on a watch channel. Returns only after every task
//! it started has ended.

use crate::config::Config;
use crate::status::{ClientError, Outcome, Status};
use crate::{connect, forward, liveness, observe, target, transport, udp};

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use tunnel_lib::backoff::Backoff;
use tunnel_lib::proto::{close, Control};

/// How long a connection the server said it is leaving may keep serving
/// the streams it has (the server's drain is 30 s by default).
const GOING_AWAY_LIMIT: Duration = Duration::from_secs(60);

/// Runs until `shutdown` or a fatal error (bad token, version mismatch, a
/// name that is taken on the first registration). Every other failure is
/// retried with backoff.
pub async fn run(
    config: Config,
    shutdown: CancellationToken,
    status: watch::Sender<Status>,
) -> Result<(), ClientError> {
    run_with(config, shutdown, status, Arc::new(observe::Monitor::off())).await
}

/// [`run`], reporting to `monitor` (the status screen, the inspector and
/// the metrics read it): the connection it holds, the streams and the
/// requests they carry.
pub async fn run_with(
    config: Config,
    shutdown: CancellationToken,
    status: watch::Sender<Status>,
    monitor: Arc<observe::Monitor>,
) -> Result<(), ClientError> {
    if config.tunnels.is_empty() {
        return Err(ClientError::Config(
            "nothing to expose: pass --expose PORT".into(),
        ));
    }
    let client_id = random_id();
    let tracker = TaskTracker::new();
    let mut backoff = Backoff::new(config.backoff_base, config.backoff_cap);
    // Names learned at the first registration, asked for again on reconnect.
    let mut names: Vec<Option<String>> =
        config.tunnels.iter().map(|t| t.subdomain.clone()).collect();
    let mut generation = 0u64;
    let mut endpoints = transport::Endpoints::new(config.tuning.clone());
    let mut offline_since: Option<std::time::Instant> = None;
    // Without a connection since (for `give_up_after`).
    let mut down_since = std::time::Instant::now();
    let _ = status.send(Status::Connecting);

    let result = loop {
        // `--give-up-after` bounds an attempt too (a handshake nobody
        // answers takes `HANDSHAKE_TIMEOUT`).
        let give_up = async {
            match config.give_up_after {
                Some(limit) => tokio::time::sleep(limit.saturating_sub(down_since.elapsed())).await,
                None => std::future::pending().await,
            }
        };
        let attempt = tokio::select! {
            a = connect::attempt(&config, &mut endpoints, &tracker, client_id, &names, &monitor) => a,
            _ = shutdown.cancelled() => break Ok(()),
            _ = give_up => {
                let limit = config.give_up_after.unwrap_or_default();
                break Err(unreachable(&config, limit, "no answer"));
            }
        };
        let reason = match attempt {
            Ok(mut live) => {
                backoff.reset();
                generation += 1;
                // The full host: the server reads `label.domain` as the label.
                for (slot, t) in names.iter_mut().zip(&live.tunnels) {
                    *slot = Some(t.hostname.clone());
                }
                monitor.conn.store(Some(Arc::new(live.conn.clone())));
                monitor.targets.store(Some(live.targets.clone()));
                if generation > 1 {
                    if let Some(m) = &monitor.metrics {
                        m.reconnects.inc();
                    }
                    let urls: Vec<&str> = live.tunnels.iter().map(|t| t.url.as_str()).collect();
                    match offline_since.take() {
                        Some(t) => info!(
                            "back online after {:.1} s offline: {}",
                            t.elapsed().as_secs_f64(),
                            urls.join(", ")
                        ),
                        None => info!("back online: {}", urls.join(", ")),
                    }
                }
                let _ = status.send(Status::Online {
                    tunnels: live.tunnels.clone(),
                    generation,
                });
                let outcome = serve(
                    &config, &mut live, &endpoints, &tracker, &shutdown, &monitor,
                )
                .await;
                monitor.conn.store(None);
                down_since = std::time::Instant::now();
                // Offline since the server was last heard from: after a
                // laptop's sleep, not since the loss was noticed on waking.
                offline_since = Some(monitor.last_heard().unwrap_or_else(std::time::Instant::now));
                monitor.set_heard(None);
                match outcome {
                    Outcome::Shutdown => {
                        live.conn.close(
                            quinn::VarInt::from_u32(close::NORMAL),
                            b"client shutting down",
                        );
                        break Ok(());
                    }
                    Outcome::Fatal(e) => break Err(e),
                    Outcome::Lost(why) => {
                        warn!("connection to the server lost: {why}; reconnecting");
                        why
                    }
                    Outcome::GoingAway(why) => {
                        // Make-before-break: the old connection serves its
                        // streams until the server closes it (bounded), while
                        // the next one is made at once.
                        // It still takes the streams the server opens while
                        // it drains (requests that were already on their way).
                        let old = live.conn.clone();
                        let targets = live.targets.clone();
                        let mon = monitor.clone();
                        let stop = shutdown.clone();
                        let streams = tracker.clone();
                        tracker.spawn(async move {
                            let limit = tokio::time::sleep(GOING_AWAY_LIMIT);
                            tokio::pin!(limit);
                            loop {
                                tokio::select! {
                                    r = old.accept_bi() => match r {
                                        Ok((send, recv)) => spawn_stream(&streams, &old, (targets.clone(), mon.clone()), &stop, send, recv),
                                        Err(_) => break,
                                    },
                                    _ = &mut limit => break,
                                    _ = stop.cancelled() => break,
                                }
                            }
                        });
                        drop(live);
                        let _ = status.send(Status::Reconnecting {
                            attempt: 0,
                            reason: format!("the server is going away: {why}"),
                            retry_at: None,
                        });
                        continue;
                    }
                }
            }
            Err(connect::AttemptError::Fatal(e)) => break Err(e),
            // A name held by a live session is fatal only before we ever got
            // it: after that it is our own old session, not yet known dead.
            Err(connect::AttemptError::NameTaken(msg)) if generation == 0 => {
                break Err(ClientError::NameTaken(msg))
            }
            Err(connect::AttemptError::NameTaken(msg)) | Err(connect::AttemptError::Retry(msg)) => {
                msg
            }
        };
        if let Some(limit) = config.give_up_after {
            if down_since.elapsed() >= limit {
                break Err(unreachable(&config, limit, &reason));
            }
        }
        let mut delay = backoff.next_delay();
        if let Some(limit) = config.give_up_after {
            // The last try comes at the limit, not a backoff past it.
            delay = delay.min(limit.saturating_sub(down_since.elapsed()));
        }
        let _ = status.send(Status::Reconnecting {
            attempt: backoff.attempts(),
            reason: reason.clone(),
            retry_at: Some(std::time::Instant::now() + delay),
        });
        info!("retrying in {:.1}s ({reason})", delay.as_secs_f64());
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.cancelled() => break Ok(()),
        }
    };

    // Stop local forwards, then let the endpoint flush its close.
    tracker.close();
    tracker.wait().await;
    endpoints.wait_idle(Duration::from_secs(2)).await;
    result
}

fn unreachable(config: &Config, limit: Duration, why: &str) -> ClientError {
    let (server, secs) = (&config.server, limit.as_secs());
    let check = match config.transport {
        crate::Transport::Quic => format!(
            "check the address and that tunnel-server runs there; if this network drops UDP to \
             {server}, --transport tcp (or auto) reaches the server's https port over TLS"
        ),
        crate::Transport::Tcp => format!(
            "check that {} is the server's https port and that tunnel-server runs there",
            config.tcp_server()
        ),
        crate::Transport::Auto => format!(
            "neither QUIC to {server} nor TLS over TCP to {} answered; check the addresses and \
             that tunnel-server runs there",
            config.tcp_server()
        ),
    };
    ClientError::Unreachable(format!(
        "no connection to {server} for {secs} s (--give-up-after): {why}; {check}"
    ))
}

/// How often the client checks which local address reaches the server.
const PATH_CHECK: Duration = Duration::from_secs(1);

/// Accepts the server's data streams until the connection ends. Each stream
/// gets one task, tracked and bounded by the QUIC stream limit this client
/// grants (`MAX_STREAMS_PER_CLIENT`).
async fn serve(
    config: &Config,
    live: &mut connect::Live,
    endpoints: &transport::Endpoints,
    tracker: &TaskTracker,
    shutdown: &CancellationToken,
    monitor: &Arc<observe::Monitor>,
) -> Outcome {
    let udp_idle = config.udp_idle;
    if !live.udp.is_empty() {
        tracker.spawn(udp::dispatch(
            live.conn.clone(),
            live.udp.clone(),
            udp_idle,
            shutdown.clone(),
        ));
    }
    let remote = live.conn.remote_address();
    // Over TCP the connection follows its TCP connection, which does not
    // migrate: no path to watch.
    let relayed = tunnel_lib::quic::relay::is_relay_addr(&remote);
    let mut source = if relayed {
        None
    } else {
        transport::route_source(remote).await
    };
    let mut path_check = tokio::time::interval(PATH_CHECK);
    path_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let rx = || live.conn.stats().udp_rx.datagrams;
    let mut liveness = liveness::Liveness::new(rx(), std::time::Instant::now(), PATH_CHECK);
    monitor.set_heard(Some(liveness.heard_at()));
    let mut said_silent = false;
    // On TLS over TCP by `auto`'s choice: QUIC is tried again now and then,
    // and the client moves back to it make-before-break.
    let may_move_back =
        relayed && config.transport == crate::Transport::Auto && config.proxy.is_none();
    let mut next_probe = tokio::time::Instant::now() + config.quic_retry;
    let mut probe: Option<std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send + '_>>> =
        None;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Outcome::Shutdown,
            _ = async { match &live.link_down { Some(t) => t.cancelled().await, None => std::future::pending().await } } => {
                live.conn.close(quinn::VarInt::from_u32(0), b"the TCP link closed");
                return Outcome::Lost(format!("the TCP link to {} closed", config.tcp_server()));
            }
            _ = tokio::time::sleep_until(next_probe), if may_move_back && probe.is_none() => {
                probe = Some(Box::pin(connect::quic_answers(config)));
            }
            ok = async { probe.as_mut().expect("armed").await }, if probe.is_some() => {
                probe = None;
                next_probe = tokio::time::Instant::now() + config.quic_retry;
                if ok {
                    endpoints.quic_back();
                    let why = format!("QUIC to {} answers again: moving back from TLS over TCP", config.server);
                    info!("{why}");
                    return Outcome::GoingAway(why);
                }
            }
            _ = path_check.tick() => {
                let silent = liveness.observe(rx(), std::time::Instant::now());
                monitor.set_heard(Some(liveness.heard_at()));
                if silent >= liveness::SILENT_NOTICE && !said_silent {
                    warn!(
                        "no reply from the server for {:.0} s: it may be down, or the network cut; \
                         the connection is given up after {} s without a reply",
                        silent.as_secs_f64(),
                        tunnel_lib::limits::QUIC_IDLE_TIMEOUT.as_secs()
                    );
                }
                said_silent = silent >= liveness::SILENT_NOTICE;
                // Active migration: when the address this host would send
                // from changes (the laptop changed networks), move to a new
                // socket now instead of waiting for the peer to notice.
                let now = if relayed { None } else { transport::route_source(remote).await };
                if let (Some(old), Some(new)) = (source, now) {
                    if old != new {
                        match endpoints.rebind(remote) {
                            Ok(()) => info!("local address changed ({old} -> {new}): migrating the connection"),
                            Err(e) => warn!("local address changed ({old} -> {new}) but a new socket failed: {e}; \
                                              the connection stays on the old one"),
                        }
                    }
                }
                if now.is_some() {
                    source = now;
                }
            }
            r = live.conn.accept_bi() => match r {
                Ok((send, recv)) => spawn_stream(tracker, &live.conn, (live.targets.clone(), monitor.clone()), shutdown, send, recv),
                Err(e) => return connect::classify_lost(&e),
            },
            m = tunnel_lib::io::read_message(&mut live.control_recv, &mut live.control_buf, Control::decode) => match m {
                Ok(Some(Control::GoingAway { reason })) => {
                    info!("server is going away ({reason}): connecting again while exchanges in flight finish");
                    return Outcome::GoingAway(reason);
                }
                Ok(Some(other)) => warn!("unexpected control message {other:?}"),
                Ok(None) | Err(_) => {
                    // The control stream ended: the connection is going too.
                    let e = live.conn.closed().await;
                    return connect::classify_lost(&e);
                }
            },
        }
    }
}

/// One task per stream the server opens, tracked, ended by `stop`.
fn spawn_stream(
    tracker: &TaskTracker,
    conn: &quinn::Connection,
    (targets, monitor): (target::Targets, Arc<observe::Monitor>),
    stop: &CancellationToken,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
) {
    let stop = stop.clone();
    let conn = conn.clone();
    tracker.spawn(async move {
        tokio::select! {
            _ = forward::handle(targets, monitor, send, recv) => {}
            // At shutdown the connection is closed first (`run`), so the
            // streams dropped here end as part of that close, never as a
            // clean FIN the server would take for the end of the data.
            _ = async {
                stop.cancelled().await;
                let _ = tokio::time::timeout(Duration::from_secs(2), conn.closed()).await;
            } => {}
        }
    });
}

fn random_id() -> [u8; 16] {
    use ring::rand::SecureRandom;
    let mut id = [0u8; 16];
    if ring::rand::SystemRandom::new().fill(&mut id).is_err() {
        // Only used to recognise our own stale session; uniqueness suffices.
        id[..8].copy_from_slice(&u64::from(std::process::id()).to_be_bytes());
        id[8..].copy_from_slice(
            &(std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0))
            .to_be_bytes(),
        );
    }
    id
}

#[cfg(test)]
mod tests {
    #[test]
    fn debug_masks_the_token() {
        let c = super::Config {
            token: Some("hunter2-token".into()),
            ..Default::default()
        };
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
