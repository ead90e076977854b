//! The config files of both binaries: TOML parsed with serde, every error
//! naming the file and the line (from the `toml` crate's span).

use std::path::Path;

/// 1-based line of byte `offset` in `text`.
pub fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

/// Parses `text` (read from `path`), or says `FILE line N: what is wrong`.
pub fn parse<T: serde::de::DeserializeOwned>(path: &Path, text: &str) -> Result<T, String> {
    toml::from_str::<T>(text).map_err(|e| {
        let line = e
            .span()
            .map(|s| format!(" line {}", line_of(text, s.start)))
            .unwrap_or_default();
        format!("{}{line}: {}", path.display(), e.message().trim_end())
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn lines_count_from_one() {
        assert_eq!(super::line_of("a\nb\nc", 0), 1);
        assert_eq!(super::line_of("a\nb\nc", 2), 2);
        assert_eq!(super::line_of("a\nb\nc", 99), 3);
    }
}
