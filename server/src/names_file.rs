//! The names the server holds, kept in its state directory (`names.json`,
//! 0600) so that after a restart, even `kill -9`, each name goes back to
//! its owner only: restored as reservations for `--name-grace`.
//!
//! Owners are written as the SHA-256 digest of their token (what the server
//! keeps in memory anyway), so the file holds no token, and a token removed
//! from the configuration loses its names. The file is rewritten (atomically)
//! whenever claims or reservations change, by one task.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::registry::{Owner, Registry};

pub(crate) const NAMES_FILE: &str = "names.json";

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The file's contents for `names`.
pub(crate) fn encode(names: &[(String, Owner)], tokens: &[[u8; 32]]) -> Vec<u8> {
    let owners: Vec<String> = tokens
        .iter()
        .map(|t| format!("token-sha256:{}", hex(t)))
        .collect();
    // Borrowed entries, serialised straight to bytes: no JSON tree of
    // tens of thousands of small maps on the way.
    #[derive(serde::Serialize)]
    struct Entry<'a> {
        host: &'a str,
        owner: &'a str,
    }
    #[derive(serde::Serialize)]
    struct File<'a> {
        version: u32,
        names: Vec<Entry<'a>>,
    }
    let names = names
        .iter()
        .filter_map(|(host, owner)| {
            let owner = match owner {
                Owner::Anonymous => "anonymous",
                Owner::Token(i) => owners.get(*i)?.as_str(),
            };
            Some(Entry { host, owner })
        })
        .collect();
    serde_json::to_vec_pretty(&File { version: 1, names }).unwrap_or_default()
}

/// The names in a file's contents, their owners matched against today's
/// tokens (names of tokens no longer configured are dropped).
pub(crate) fn decode(data: &[u8], tokens: &[[u8; 32]]) -> Result<Vec<(String, Owner)>, String> {
    let v: serde_json::Value = serde_json::from_slice(data).map_err(|e| e.to_string())?;
    let list = v["names"].as_array().ok_or("no \"names\" list")?;
    let mut out = Vec::new();
    for e in list {
        let (Some(host), Some(owner)) = (e["host"].as_str(), e["owner"].as_str()) else {
            continue;
        };
        let owner = match owner {
            "anonymous" if tokens.is_empty() => Owner::Anonymous,
            o => match o.strip_prefix("token-sha256:") {
                Some(d) => match tokens.iter().position(|t| hex(t) == d) {
                    Some(i) => Owner::Token(i),
                    None => continue,
                },
                None => continue,
            },
        };
        out.push((host.to_owned(), owner));
    }
    Ok(out)
}

/// Restores the names of the previous run, if the file is there.
pub(crate) async fn restore(dir: &Path, registry: &Registry, tokens: &[[u8; 32]]) {
    let path = dir.join(NAMES_FILE);
    let Ok(data) = tokio::fs::read(&path).await else {
        return;
    };
    match decode(&data, tokens) {
        Ok(names) => registry.restore_names(names),
        Err(e) => warn!("ignoring {}: {e}; names start free", path.display()),
    }
}

/// At most one write per this long: the first change is written at once
/// (a redeploy that copies the state right after sees it), the changes of
/// a burst after it together at the end of the interval.
pub(crate) const COALESCE: std::time::Duration = std::time::Duration::from_secs(1);

/// Rewrites the file after changes (at once, then at most once per
/// [`COALESCE`]) until `shutdown`, then once more.
pub(crate) async fn keep(
    registry: Arc<Registry>,
    path: PathBuf,
    tokens: Arc<[[u8; 32]]>,
    shutdown: CancellationToken,
) {
    let changes = registry.changes();
    loop {
        tokio::select! {
            _ = changes.notified() => {}
            _ = shutdown.cancelled() => break,
        }
        write(&registry, &path, &tokens).await;
        // Changes meanwhile leave a permit in `changes`: the next turn
        // writes them, a second after this write at the earliest.
        tokio::select! {
            _ = tokio::time::sleep(COALESCE) => {}
            _ = shutdown.cancelled() => break,
        }
    }
    write(&registry, &path, &tokens).await;
}

/// Writes the file now. The snapshot and its encoding (megabytes for tens
/// of thousands of names) run on a blocking thread, off the runtime's.
pub(crate) async fn write(registry: &Arc<Registry>, path: &Path, tokens: &Arc<[[u8; 32]]>) {
    let (registry, tokens) = (registry.clone(), tokens.clone());
    let encoded = tokio::task::spawn_blocking(move || encode(&registry.held_names(), &tokens));
    let Ok(data) = encoded.await else {
        return;
    };
    save(path, &data).await;
}

async fn save(path: &Path, data: &[u8]) {
    if let Err(e) = tunnel_lib::paths::write_atomic(path, data, 0o600).await {
        warn!(
            "cannot save {}: {e}; names will not survive a restart",
            path.display()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_round_trip_by_token_digest() {
        let tokens = [[1u8; 32], [2u8; 32]];
        let names = vec![
            ("a.example.com".to_owned(), Owner::Token(1)),
            ("b.example.com".to_owned(), Owner::Token(0)),
        ];
        let data = encode(&names, &tokens);
        assert!(!String::from_utf8_lossy(&data).contains("Token("));
        assert_eq!(decode(&data, &tokens).unwrap(), names);
        // Tokens reordered: the same owners, by digest.
        let swapped = [[2u8; 32], [1u8; 32]];
        assert_eq!(
            decode(&data, &swapped).unwrap(),
            vec![
                ("a.example.com".to_owned(), Owner::Token(0)),
                ("b.example.com".to_owned(), Owner::Token(1)),
            ]
        );
        // A token removed: its names are free.
        assert_eq!(decode(&data, &[[1u8; 32]]).unwrap().len(), 1);
        assert!(decode(b"not json", &tokens).is_err());
    }
}
