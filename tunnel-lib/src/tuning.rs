//! The tuning levers both binaries take as settings: flags (hidden from
//! `-h`, listed by `--help`), the `TUNNEL_*` variables BENCHMARKS.md names,
//! or a `[tuning]` table in the config file. Every default is the measured
//! one; a lever exists so a benchmark can compare against it.

use std::sync::Arc;

use quinn::VarInt;
use serde::Deserialize;

use crate::limits::{CONNECTION_RECEIVE_WINDOW, SEND_WINDOW};

/// quinn's congestion controllers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Congestion {
    /// The default (BENCHMARKS.md, "Levers tried for issue 12"): random
    /// loss does not collapse it the way it collapses CUBIC, and it keeps
    /// queues short.
    #[default]
    Bbr,
    Cubic,
    Newreno,
}

impl std::str::FromStr for Congestion {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "bbr" => Ok(Congestion::Bbr),
            "cubic" => Ok(Congestion::Cubic),
            "newreno" => Ok(Congestion::Newreno),
            other => Err(format!("{other:?}: expected bbr, cubic or newreno")),
        }
    }
}

crate::layered! {
    /// The levers, each absent by default.
    #[derive(Debug, Clone, Default, PartialEq, clap::Args, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[command(next_help_heading = "Tuning (levers for benchmarks; the defaults are measured in BENCHMARKS.md)")]
    pub struct Tuning {
        /// Runtime worker threads: 0 is one thread, measured best on small machines; on a large
        /// dedicated server, the core count [default: 0].
        #[arg(long, value_name = "N", env = "TUNNEL_WORKER_THREADS", hide_short_help = true)]
        pub worker_threads: Option<usize>,
        /// QUIC congestion control: bbr, cubic or newreno [default: bbr].
        #[arg(long, value_name = "NAME", env = "TUNNEL_CONGESTION", hide_short_help = true)]
        pub congestion: Option<Congestion>,
        /// The QUIC connection's send window in MiB [default: 64].
        #[arg(long, value_name = "MIB", env = "TUNNEL_SEND_WINDOW_MIB", hide_short_help = true)]
        pub send_window_mib: Option<u32>,
        /// The QUIC connection's receive window in MiB [default: 64].
        #[arg(long, value_name = "MIB", env = "TUNNEL_RECEIVE_WINDOW_MIB", hide_short_help = true)]
        pub receive_window_mib: Option<u32>,
        /// Send streams one after another instead of interleaving them.
        #[arg(long, env = "TUNNEL_NO_SEND_FAIRNESS", hide_short_help = true, value_parser = clap::builder::BoolishValueParser::new())]
        #[serde(default)]
        pub no_send_fairness: bool,
        /// Ask the peer to acknowledge every N ack-eliciting packets [default: quinn's, 2].
        #[arg(long, value_name = "N", env = "TUNNEL_ACK_THRESHOLD", hide_short_help = true)]
        pub ack_threshold: Option<u32>,
        /// Discover path MTUs up to N bytes (a jumbo-frame LAN, loopback) [default: 1452].
        #[arg(long, value_name = "BYTES", env = "TUNNEL_MTU_UPPER", hide_short_help = true)]
        pub mtu_upper: Option<u16>,
    }
}

impl Tuning {
    /// The connection receive window once a client is authenticated.
    pub fn receive_window(&self) -> VarInt {
        VarInt::from_u32(mib(self.receive_window_mib).unwrap_or(CONNECTION_RECEIVE_WINDOW))
    }

    pub fn send_window(&self) -> u64 {
        mib(self.send_window_mib).map_or(SEND_WINDOW, u64::from)
    }

    pub fn worker_threads(&self) -> usize {
        self.worker_threads.unwrap_or(0)
    }

    pub fn congestion_factory(
        &self,
    ) -> Arc<dyn quinn::congestion::ControllerFactory + Send + Sync> {
        match self.congestion.unwrap_or_default() {
            Congestion::Bbr => Arc::new(quinn::congestion::BbrConfig::default()),
            Congestion::Cubic => Arc::new(quinn::congestion::CubicConfig::default()),
            Congestion::Newreno => Arc::new(quinn::congestion::NewRenoConfig::default()),
        }
    }
}

fn mib(n: Option<u32>) -> Option<u32> {
    n?.checked_mul(1024 * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levers_default_to_the_measured_values() {
        let t = Tuning::default();
        assert_eq!(t.send_window(), SEND_WINDOW);
        assert_eq!(
            t.receive_window(),
            VarInt::from_u32(CONNECTION_RECEIVE_WINDOW)
        );
        assert_eq!(t.worker_threads(), 0);
        let t = Tuning {
            receive_window_mib: Some(8),
            send_window_mib: Some(5000),
            ..Tuning::default()
        };
        assert_eq!(t.receive_window(), VarInt::from_u32(8 << 20));
        // Too large to be a window: the default, never an overflow.
        assert_eq!(t.send_window(), SEND_WINDOW);
        assert!("reno".parse::<Congestion>().is_err());
    }

    #[test]
    fn the_tuning_table_rejects_unknown_levers() {
        let t: Tuning = toml::from_str("congestion = \"cubic\"\nmtu_upper = 8952\n").unwrap();
        assert_eq!(t.congestion, Some(Congestion::Cubic));
        assert!(toml::from_str::<Tuning>("congestion = \"fast\"\n").is_err());
        assert!(toml::from_str::<Tuning>("mtu = 1\n").is_err());
    }
}
