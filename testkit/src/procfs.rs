//! What `/proc` says about a process (Linux).

use std::process::Command;

/// Open file descriptors of `pid` (0 if it cannot be read).
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Clock ticks per second (the unit of `/proc/PID/stat`'s CPU times).
#[allow(clippy::disallowed_methods)] // outside any runtime (the load harness)
pub fn clk_tck() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// User + system CPU seconds of a process.
#[allow(clippy::disallowed_methods)] // outside any runtime (the load harness)
pub fn cpu_seconds(pid: u32, tck: f64) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ut: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    let st: f64 = f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    (ut + st) / tck
}

/// A `kB` field of `/proc/PID/status` (`VmRSS:`, `VmHWM:`).
#[allow(clippy::disallowed_methods)] // outside any runtime (the load harness)
pub fn status_kib(pid: u32, field: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| {
            l.strip_prefix(field)
                .map(|v| v.trim().trim_end_matches(" kB").trim().parse().unwrap_or(0))
        })
        .unwrap_or(0)
}

/// Resets `VmHWM` (the peak resident size) of `pid`.
#[allow(clippy::disallowed_methods)] // outside any runtime (the load harness)
pub fn reset_peak(pid: u32) {
    let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
}

#[cfg(test)]
mod tests {
    #[test]
    fn this_process_has_descriptors_and_memory() {
        let me = std::process::id();
        assert!(super::open_fds(me) >= 3);
        assert!(super::status_kib(me, "VmRSS:") > 0);
        assert!(super::clk_tck() > 0.0);
    }
}
