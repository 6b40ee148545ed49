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

/// 1-based line and column of a byte offset. For many offsets into one text, build a
/// [`LineIndex`] once.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    LineIndex::new(text).line_col(offset)
}

/// Where each line of a text starts, for line and column lookups in logarithmic time (a
/// scenario with tens of thousands of steps looks up each one).
pub struct LineIndex<'t> {
    text: &'t str,
    starts: Vec<usize>,
}

impl<'t> LineIndex<'t> {
    /// Indexes `text`'s lines.
    pub fn new(text: &'t str) -> Self {
        let starts = std::iter::once(0).chain(text.match_indices('\n').map(|(i, _)| i + 1)).collect();
        Self { text, starts }
    }

    /// 1-based line and column (in characters) of byte `offset` (clamped to the text).
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        let mut offset = offset.min(self.text.len());
        while !self.text.is_char_boundary(offset) {
            offset -= 1;
        }
        // `starts[0]` is 0, so at least one start is at or before `offset`.
        let line = self.starts.partition_point(|&s| s <= offset);
        let start = self.starts[line - 1];
        (line, self.text[start..offset].chars().count() + 1)
    }
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

/// Largest configuration file read: 16 MiB (a platform, a scenario of some 100,000 steps).
pub const MAX_CONFIG_BYTES: u64 = 16 << 20;

/// Reads and parses a file: a regular file of at most [`MAX_CONFIG_BYTES`].
pub fn load<T: DeserializeOwned>(file: &Path) -> Result<(T, String), ConfigError> {
    let text = read_text(file, MAX_CONFIG_BYTES).map_err(|e| ConfigError::at(file, "", None, "", e))?;
    Ok((parse(file, &text)?, text))
}

/// Reads a UTF-8 text file of at most `max` bytes. Refuses what is not a regular file (a FIFO
/// or a device would block or never end) before opening it, and stops reading at `max + 1`
/// bytes, so a file that grows meanwhile cannot exceed it either.
pub fn read_text(file: &Path, max: u64) -> Result<String, String> {
    use std::io::Read;
    let meta = std::fs::metadata(file).map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    if meta.len() > max {
        return Err(format!("{} bytes is larger than the limit of {max}", meta.len()));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    std::fs::File::open(file).and_then(|f| f.take(max + 1).read_to_end(&mut bytes)).map_err(|e| e.to_string())?;
    if bytes.len() as u64 > max {
        return Err(format!("larger than the limit of {max} bytes"));
    }
    String::from_utf8(bytes).map_err(|e| format!("not UTF-8 text: {e}"))
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

    #[test]
    fn line_index_agrees_with_a_plain_count() {
        let text = "a\nbé\n\nxyz\n";
        let idx = LineIndex::new(text);
        for off in 0..=text.len() + 2 {
            let mut end = off.min(text.len());
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            let upto = &text[..end];
            let want = (upto.matches('\n').count() + 1, upto.rsplit('\n').next().unwrap().chars().count() + 1);
            assert_eq!(idx.line_col(off), want, "offset {off}");
        }
        assert_eq!(idx.line_col(4), (2, 2), "inside `é` counts as where it starts");
    }

    #[test]
    fn files_that_are_not_small_regular_text_are_refused() {
        let dir = std::env::temp_dir().join(format!("ioasis-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let big = dir.join("big.toml");
        std::fs::write(&big, vec![b'#'; 100]).unwrap();
        assert!(read_text(&big, 99).unwrap_err().contains("limit"));
        assert_eq!(read_text(&big, 100).unwrap().len(), 100);
        let e = load::<Doc>(&dir).unwrap_err();
        assert!(e.message.contains("not a regular file"), "{e}");
        std::fs::write(&big, [0xff, 0xfe]).unwrap();
        assert!(read_text(&big, 100).unwrap_err().contains("UTF-8"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
