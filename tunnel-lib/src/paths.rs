//! Where the dev server keeps its state, so the client on the same machine
//! finds the dev certificate by itself.

use std::path::PathBuf;

/// File names inside the state directory.
pub const DEV_CERT_FILE: &str = "cert.pem";
pub const DEV_KEY_FILE: &str = "key.pem";

/// The server's default state directory: `$TUNNEL_STATE_DIR`, else
/// `$XDG_STATE_HOME/tunnel-server`, else `$HOME/.local/state/tunnel-server`.
pub fn default_state_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("TUNNEL_STATE_DIR").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(d));
    }
    if let Some(d) = std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(d).join("tunnel-server"));
    }
    std::env::var_os("HOME")
        .filter(|d| !d.is_empty())
        .map(|h| PathBuf::from(h).join(".local/state/tunnel-server"))
}
