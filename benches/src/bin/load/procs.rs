//! Child processes: where the workspace is, whether a program is installed,
//! and the test kit's process, /proc and port helpers.

use super::*;

pub(crate) use tunnel_testkit::net::{free_port, wait_addr};
pub(crate) use tunnel_testkit::process::{spawn_lines, Guard as Proc};
pub(crate) use tunnel_testkit::procfs::{clk_tck, cpu_seconds, open_fds, reset_peak, status_kib};

pub(crate) fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

pub(crate) fn have(cmd: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {cmd}"))
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

pub(crate) fn wait_port(port: u16) {
    wait_addr(SocketAddr::from(([127, 0, 0, 1], port)));
}
