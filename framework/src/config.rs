//! TOML files: parsing with errors that name the file, line, column and key.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

/// A configuration file that could not be used.
#[derive(Debug, thiserror::Error)]
#[error("{}:{line}:{column}: {}{message}", file.display(), if key.is_empty() { String::new() } else { format!("key `{key}`: ") })]
pub struct ConfigError {
    /// The file.
    pub file: PathBuf,
    /// 1-based line (0 when the error is not in the text, e.g. the file is unreadable).
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// Dotted path of the key (`device[1].unit`), empty when unknown.
    pub key: String,
    /// What is wrong.
    pub message: String,
}

impl ConfigError {
    /// An error about `key` found at byte `offset` of `text` (or at the top when `None`).
    pub fn at(file: &Path, text: &str, offset: Option<usize>, key: &str, message: impl Into<String>) -> Self {
        let (line, column) = offset.map_or((0, 0), |o| line_col(text, o));
        Self { file: file.to_path_buf(), line, column, key: key.to_string(), message: message.into() }
    }
}

/// 1-based line and column of a byte offset.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let upto = &text[..offset.min(text.len())];
    let line = upto.matches('\n').count() + 1;
    let column = upto.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// Parses `text` (the contents of `file`) as a `T`.
pub fn parse<T: DeserializeOwned>(file: &Path, text: &str) -> Result<T, ConfigError> {
    let de = toml::de::Deserializer::parse(text)
        .map_err(|e| ConfigError::at(file, text, e.span().map(|s| s.start), "", e.message().trim().to_string()))?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        // `toml::Spanned` wraps values in a private field that is not a key of the file.
        let key = e.path().to_string().replace(".$__serde_spanned_private_value", "");
        let key = if key == "." { String::new() } else { key };
        let inner = e.inner();
        ConfigError::at(file, text, inner.span().map(|s| s.start), &key, inner.message().trim().to_string())
    })
}

/// Reads and parses a file.
pub fn load<T: DeserializeOwned>(file: &Path) -> Result<(T, String), ConfigError> {
    let text = std::fs::read_to_string(file).map_err(|e| ConfigError::at(file, "", None, "", e.to_string()))?;
    Ok((parse(file, &text)?, text))
}

/// Parses a size: a number of bytes, or a string with a K/M/G/T suffix (`"512M"`).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m = match c.to_ascii_uppercase() {
                'K' => 1u64 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                _ => return Err(format!("`{s}`: unknown size suffix `{c}` (use K, M, G or T)")),
            };
            (&s[..i], m)
        }
        _ => (s, 1),
    };
    let n: u64 = if let Some(hex) = num.strip_prefix("0x") {
        u64::from_str_radix(hex, 16).map_err(|_| format!("`{s}` is not a size"))?
    } else {
        num.parse().map_err(|_| format!("`{s}` is not a size"))?
    };
    n.checked_mul(mult).ok_or_else(|| format!("`{s}` does not fit in 64 bits"))
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Doc {
        device: Vec<Dev>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Dev {
        name: String,
        pasid_bits: u8,
    }

    #[test]
    fn errors_name_file_line_and_key() {
        let text = "[[device]]\nname = \"a\"\npasid_bits = 4\n\n[[device]]\nname = \"b\"\npasid_bits = 300\n";
        let e = parse::<Doc>(Path::new("s.toml"), text).unwrap_err();
        assert_eq!((e.line, e.key.as_str()), (7, "device[1].pasid_bits"), "{e}");
        assert!(e.to_string().starts_with("s.toml:7:"), "{e}");
        let e =
            parse::<Doc>(Path::new("s.toml"), "[[device]]\nname = \"a\"\npasid_bits = 1\ncolour = 2\n").unwrap_err();
        assert_eq!(e.line, 4, "{e}");
        assert!(e.message.contains("colour"), "{e}");
        let e = parse::<Doc>(Path::new("s.toml"), "[[device]\n").unwrap_err();
        assert_eq!(e.line, 1, "{e}");
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("0x1000"), Ok(4096));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("12Q").is_err());
        assert!(parse_size("99999999T").is_err());
    }
}
