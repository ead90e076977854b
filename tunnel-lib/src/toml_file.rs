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

/// Parses `text` (read from `path`), or says `FILE line N: KEY: what is
/// wrong`. Values parse themselves (a port range, a domain grant), so a
/// value the server cannot use fails here, with its line and key.
pub fn parse<T: serde::de::DeserializeOwned>(path: &Path, text: &str) -> Result<T, String> {
    toml::from_str::<T>(text).map_err(|e| {
        let at = e
            .span()
            .map(|s| {
                let line = line_of(text, s.start);
                match key_on(text, line) {
                    Some(key) => format!(" line {line}: {key}"),
                    None => format!(" line {line}"),
                }
            })
            .unwrap_or_default();
        format!("{}{at}: {}", path.display(), e.message().trim_end())
    })
}

/// A parsed config file: its values and its text (for the line of a value
/// that only its neighbours make wrong).
pub struct Loaded<T> {
    pub path: std::path::PathBuf,
    pub values: T,
    text: String,
}

impl<T: serde::de::DeserializeOwned + Default> Loaded<T> {
    /// Parses `text` (read from `path`), or says what is wrong with the
    /// file's name, the line and the key.
    pub fn parse(path: &Path, text: String) -> Result<Loaded<T>, String> {
        let values = parse::<T>(path, &text)?;
        Ok(Loaded {
            path: path.to_owned(),
            values,
            text,
        })
    }

    /// The file's values, to be laid under the flags.
    pub fn take_values(&mut self) -> T {
        std::mem::take(&mut self.values)
    }

    pub fn text(&self) -> &str {
        &self.text
    }
}

impl<T> Loaded<T> {
    /// `FILE line N: key: why`, for a value kept with its span.
    pub fn error_at<V>(
        &self,
        key: &str,
        value: &toml::Spanned<V>,
        why: impl std::fmt::Display,
    ) -> String {
        let line = line_of(&self.text, value.span().start);
        format!("{} line {line}: {key}: {why}", self.path.display())
    }
}

/// The key of `key = value` on 1-based `line`, if that line assigns one.
fn key_on(text: &str, line: usize) -> Option<&str> {
    let (key, _) = text.lines().nth(line - 1)?.split_once('=')?;
    let key = key.trim();
    let bare = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    bare.then_some(key)
}

#[cfg(test)]
mod tests {
    #[test]
    fn lines_count_from_one() {
        assert_eq!(super::line_of("a\nb\nc", 0), 1);
        assert_eq!(super::line_of("a\nb\nc", 2), 2);
        assert_eq!(super::line_of("a\nb\nc", 99), 3);
    }

    #[test]
    fn errors_name_the_key_of_their_line() {
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct F {
            n: Option<u8>,
        }
        let p = std::path::Path::new("f.toml");
        let e = super::parse::<F>(p, "\nn = 300\n").unwrap_err();
        assert!(e.starts_with("f.toml line 2: n: "), "{e}");
        assert_eq!(super::key_on("[t]\n", 1), None);
    }
}
