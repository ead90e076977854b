//! Settings written once, read from three places. Each binary declares its
//! settings in one struct that derives both `clap::Args` (flags and their
//! environment variables) and `serde::Deserialize` (the `--config` file),
//! every field optional; [`layered!`] also derives [`Layer`], which lays the
//! flags over the file. Defaults live in the binary's `Config::default`, so
//! "absent" stays distinguishable from "given the default".
//!
//! Why not `figment`: its TOML provider loses the line of a value, and the
//! project's rule is that a config error names the key and its line
//! (`toml_file::parse`). clap and serde are here anyway; the layering is
//! the 20 lines below.

/// One layer of settings over another: a value given here wins, an absent
/// one falls through to `lower`.
pub trait Layer {
    fn over(self, lower: Self) -> Self;
}

impl<T> Layer for Option<T> {
    fn over(self, lower: Self) -> Self {
        self.or(lower)
    }
}

/// A list given here replaces the lower one (flags never append to the
/// file's tokens: what the operator typed is what is used).
impl<T> Layer for Vec<T> {
    fn over(self, lower: Self) -> Self {
        if self.is_empty() {
            lower
        } else {
            self
        }
    }
}

/// A table given here replaces the lower one.
impl<K, V> Layer for std::collections::BTreeMap<K, V> {
    fn over(self, lower: Self) -> Self {
        if self.is_empty() {
            lower
        } else {
            self
        }
    }
}

/// A switch is on if any layer turns it on.
impl Layer for bool {
    fn over(self, lower: Self) -> Self {
        self || lower
    }
}

/// Declares a settings struct (attributes passed through) and derives
/// [`Layer`] for it field by field, so a new setting is one field.
#[macro_export]
macro_rules! layered {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident {
            $( $(#[$fmeta:meta])* $fvis:vis $field:ident : $ty:ty ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        $vis struct $name {
            $( $(#[$fmeta])* $fvis $field : $ty ),*
        }
        impl $crate::settings::Layer for $name {
            fn over(self, lower: Self) -> Self {
                $name {
                    $( $field: $crate::settings::Layer::over(self.$field, lower.$field) ),*
                }
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::Layer;

    crate::layered! {
        #[derive(Debug, Default, PartialEq)]
        struct S {
            a: Option<u32>,
            b: Vec<u8>,
            c: bool,
        }
    }

    #[test]
    fn the_upper_layer_wins_where_it_says_something() {
        let file = S {
            a: Some(1),
            b: vec![1],
            c: true,
        };
        let flags = S {
            a: Some(2),
            b: vec![],
            c: false,
        };
        assert_eq!(
            flags.over(file),
            S {
                a: Some(2),
                b: vec![1],
                c: true
            }
        );
        let flags = S {
            a: None,
            b: vec![2],
            c: false,
        };
        let file = S {
            a: Some(1),
            b: vec![1],
            c: false,
        };
        assert_eq!(
            flags.over(file),
            S {
                a: Some(1),
                b: vec![2],
                c: false
            }
        );
    }
}
