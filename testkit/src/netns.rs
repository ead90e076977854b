//! A network namespace with a veth pair to this one: real routing, real
//! packet loss (iptables `statistic`), real address changes, on links the
//! test made itself. Root and iproute2 are needed; [`Netns::create`] says
//! so when they are missing.

use std::net::IpAddr;
use std::process::{Command, Stdio};

/// `NET.1` here, `NET.2` in the namespace. Deleted (with its veth and
/// its iptables rules) on drop.
pub struct Netns {
    pub name: String,
    /// The /24 as `10.A.B`.
    pub net: String,
    outer: String,
    inner: String,
}

fn run(args: &[&str]) -> Result<(), String> {
    let ok = Command::new(args[0])
        .args(&args[1..])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        Ok(())
    } else {
        Err(format!("`{}` failed", args.join(" ")))
    }
}

impl Netns {
    /// A namespace `tnl-TAG-PID` on `net` (`10.A.B`). `tag` is at most 3
    /// characters (veth names are 15 at most).
    pub fn create(tag: &str, net: &str) -> Result<Netns, String> {
        let id = std::process::id() % 100_000;
        let ns = Netns {
            name: format!("tnl-{tag}-{}", std::process::id()),
            net: net.to_owned(),
            outer: format!("{tag}o{id}"),
            inner: format!("{tag}i{id}"),
        };
        run(&["ip", "netns", "add", &ns.name]).map_err(|e| {
            format!("{e}: cannot create a network namespace here (needs root and iproute2)")
        })?;
        let (n, o, i) = (ns.name.as_str(), ns.outer.as_str(), ns.inner.as_str());
        let (here, there) = (format!("{net}.1/24"), format!("{net}.2/24"));
        let inside = |args: &[&'static str]| -> Vec<String> {
            ["ip", "netns", "exec", n]
                .iter()
                .chain(args)
                .map(|s| s.to_string())
                .collect()
        };
        let steps: Vec<Vec<String>> = vec![
            ["ip", "link", "add", o, "type", "veth", "peer", "name", i]
                .map(String::from)
                .to_vec(),
            ["ip", "link", "set", i, "netns", n]
                .map(String::from)
                .to_vec(),
            ["ip", "addr", "add", &here, "dev", o]
                .map(String::from)
                .to_vec(),
            ["ip", "link", "set", o, "up"].map(String::from).to_vec(),
            inside(&["ip", "link", "set", "lo", "up"]),
            // Deleting the first address must keep the second (move_address).
            inside(&["sysctl", "-qw", "net.ipv4.conf.all.promote_secondaries=1"]),
            [
                &inside(&[])[..],
                &[
                    "sysctl".into(),
                    "-qw".into(),
                    format!("net.ipv4.conf.{i}.promote_secondaries=1"),
                ],
            ]
            .concat(),
            [
                &inside(&[])[..],
                &[
                    "ip".into(),
                    "addr".into(),
                    "add".into(),
                    there,
                    "dev".into(),
                    i.into(),
                ],
            ]
            .concat(),
            [
                &inside(&[])[..],
                &[
                    "ip".into(),
                    "link".into(),
                    "set".into(),
                    i.into(),
                    "up".into(),
                ],
            ]
            .concat(),
        ];
        for step in steps {
            let args: Vec<&str> = step.iter().map(String::as_str).collect();
            run(&args)?;
        }
        Ok(ns)
    }

    /// This side's address (`NET.1`).
    pub fn here(&self) -> IpAddr {
        format!("{}.1", self.net).parse().unwrap()
    }

    /// The namespace's first address (`NET.2`).
    pub fn there(&self) -> IpAddr {
        format!("{}.2", self.net).parse().unwrap()
    }

    /// `ip netns exec NAME`: put before a command to run it inside.
    pub fn exec_prefix(&self) -> [String; 4] {
        ["ip", "netns", "exec", &self.name].map(String::from)
    }

    /// Drops `percent` % of the packets crossing the veth, each direction,
    /// at random (iptables `statistic`), inside the namespace; 0 clears.
    pub fn set_loss(&self, percent: f64) -> Result<(), String> {
        let ipt = |args: &[&str]| {
            let mut all = vec!["ip", "netns", "exec", &self.name, "iptables"];
            all.extend_from_slice(args);
            run(&all)
        };
        ipt(&["-F"])?;
        if percent > 0.0 {
            let p = format!("{}", percent / 100.0);
            for (chain, dir) in [("INPUT", "-i"), ("OUTPUT", "-o")] {
                ipt(&[
                    "-A",
                    chain,
                    dir,
                    &self.inner,
                    "-m",
                    "statistic",
                    "--mode",
                    "random",
                    "--probability",
                    &p,
                    "-j",
                    "DROP",
                ])?;
            }
        }
        Ok(())
    }

    /// Only TCP to the addresses in `to` leaves the namespace (a network
    /// whose one way out is a proxy): every other packet out of the veth,
    /// UDP included, is dropped by iptables inside the namespace.
    pub fn only_tcp_out_to(&self, to: &[std::net::SocketAddr]) -> Result<(), String> {
        let ipt = |args: &[&str]| {
            let mut all = vec!["ip", "netns", "exec", &self.name, "iptables"];
            all.extend_from_slice(args);
            run(&all)
        };
        for addr in to {
            let (ip, port) = (addr.ip().to_string(), addr.port().to_string());
            ipt(&[
                "-A",
                "OUTPUT",
                "-o",
                &self.inner,
                "-p",
                "tcp",
                "-d",
                &ip,
                "--dport",
                &port,
                "-j",
                "ACCEPT",
            ])?;
        }
        ipt(&["-A", "OUTPUT", "-o", &self.inner, "-j", "DROP"])
    }

    /// How many packets the namespace's iptables rules have dropped on
    /// the way out.
    pub fn dropped_out(&self) -> Result<u64, String> {
        let out = Command::new("ip")
            .args([
                "netns", "exec", &self.name, "iptables", "-L", "OUTPUT", "-v", "-n", "-x",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .and_then(|c| c.wait_with_output())
            .map_err(|e| format!("iptables: {e}"))?;
        let text = String::from_utf8_lossy(&out.stdout);
        Ok(text
            .lines()
            .filter(|l| l.split_whitespace().nth(2) == Some("DROP"))
            .filter_map(|l| l.split_whitespace().next()?.parse::<u64>().ok())
            .sum())
    }

    /// The namespace's address moves from `NET.FROM` to `NET.TO` (a
    /// laptop changing networks): the new one is added, the old deleted.
    pub fn move_address(&self, from: u8, to: u8) -> Result<(), String> {
        for (op, a) in [("add", to), ("del", from)] {
            let addr = format!("{}.{a}/24", self.net);
            run(&[
                "ip",
                "netns",
                "exec",
                &self.name,
                "ip",
                "addr",
                op,
                &addr,
                "dev",
                &self.inner,
            ])?;
        }
        Ok(())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = run(&["ip", "netns", "del", &self.name]);
        // Normally gone with the namespace; this is for a half-made one.
        let _ = run(&["ip", "link", "del", &self.outer]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listed(name: &str) -> bool {
        let out = Command::new("ip")
            .args(["netns", "list"])
            .stdout(Stdio::piped())
            .spawn();
        let text = out
            .and_then(|c| c.wait_with_output())
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        text.lines()
            .any(|l| l.split_whitespace().next() == Some(name))
    }

    /// The namespace exists with its addresses while held, and is gone
    /// after. Where namespaces cannot be made (no root), says why.
    #[test]
    fn a_namespace_is_made_moved_and_removed() {
        let ns = match Netns::create("tk", &format!("10.214.{}", std::process::id() % 250 + 1)) {
            Ok(ns) => ns,
            Err(e) => {
                eprintln!("SKIPPED: {e}");
                return;
            }
        };
        let name = ns.name.clone();
        assert!(listed(&name));
        assert_eq!(ns.there().to_string(), format!("{}.2", ns.net));
        ns.move_address(2, 3).unwrap();
        assert!(ns.move_address(2, 4).is_err(), ".2 is gone");
        drop(ns);
        assert!(!listed(&name), "deleted on drop");
    }
}
