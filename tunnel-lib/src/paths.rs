//! Where the dev server keeps its state, so the client on the same machine
//! finds the dev certificate by itself.

use std::path::{Path, PathBuf};

/// File names inside the state directory.
pub const DEV_CERT_FILE: &str = "cert.pem";
pub const DEV_KEY_FILE: &str = "key.pem";
/// The secret behind the QUIC stateless-reset tokens (0600).
pub const RESET_KEY_FILE: &str = "reset.key";

/// The stateless-reset secret in `dir`: read if present (and 32 bytes or
/// more), else made from the system's random source and written 0600.
pub async fn load_or_create_secret(dir: &Path, name: &str) -> std::io::Result<Vec<u8>> {
    let path = dir.join(name);
    match tokio::fs::read(&path).await {
        Ok(s) if s.len() >= 32 => return Ok(s),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    use ring::rand::SecureRandom;
    let mut secret = vec![0u8; 64];
    ring::rand::SystemRandom::new()
        .fill(&mut secret)
        .map_err(|_| std::io::Error::other("the system's random source failed"))?;
    write_atomic(&path, &secret, 0o600).await?;
    Ok(secret)
}

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

/// Creates `dir` and its missing parents readable by this user only
/// (0700: the state directory holds keys, tokens' names and account keys).
/// A directory that exists keeps its mode.
pub async fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut b = tokio::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    b.mode(0o700);
    b.create(dir).await
}

/// Writes `data` to `path` through a temporary file and a rename (a reader
/// never sees half a file), with `mode` (0o600 for secrets), creating the
/// parent directory if needed.
pub async fn write_atomic(path: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        create_private_dir(dir).await?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut f = tokio::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .await?;
    f.write_all(data).await?;
    f.sync_all().await?;
    drop(f);
    tokio::fs::rename(&tmp, path).await
}
