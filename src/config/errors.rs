//! Configuration problems in the operator's words: where a value came from (the file or an `EHRGW_`
//! environment variable), its key path in reading order (`connections.demo-canvas.client_secret`), and
//! what is wrong with it without Rust type names (`expected a whole number, found text "abc"`).

use std::fmt;
use std::path::PathBuf;

use figment::error::{Actual, Kind};

/// Every problem found while loading, each a full line naming where it was found.
#[derive(Debug)]
pub struct ConfigErrors(pub Vec<String>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "configuration has {}:", count(self.0.len(), "problem"))?;
        for e in &self.0 {
            // Multi-line messages (a TOML syntax error with its excerpt) stay inside their item.
            writeln!(f, "  - {}", e.replace('\n', "\n    "))?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// `1 problem`, `3 problems`.
pub fn count(n: usize, noun: &str) -> String {
    if n == 1 { format!("1 {noun}") } else { format!("{n} {noun}s") }
}

/// One step of a key path: a table key or a list position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key {
    Name(String),
    Index(usize),
}

/// A key path as the operator writes it: `server.listen`, `organizations[1].slug`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyPath(pub Vec<Key>);

impl KeyPath {
    pub fn root() -> Self {
        KeyPath(Vec::new())
    }
    /// `self.name`
    pub fn key(&self, name: &str) -> Self {
        let mut p = self.clone();
        p.0.push(Key::Name(name.to_string()));
        p
    }
    /// `self[index]`
    pub fn at(&self, index: usize) -> Self {
        let mut p = self.clone();
        p.0.push(Key::Index(index));
        p
    }
    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }
    pub fn starts_with(&self, prefix: &KeyPath) -> bool {
        self.0.starts_with(&prefix.0)
    }
}

/// Parses `server.listen`, `organizations[1].slug` (keys with dots are not expressible; config keys have
/// none).
impl From<&str> for KeyPath {
    fn from(text: &str) -> Self {
        let mut path = KeyPath::root();
        for part in text.split('.').filter(|p| !p.is_empty()) {
            let (name, indices) = part.split_once('[').map_or((part, ""), |(n, rest)| (n, rest));
            if !name.is_empty() {
                path.0.push(Key::Name(name.to_string()));
            }
            for index in indices.split('[').filter_map(|i| i.trim_end_matches(']').parse().ok()) {
                path.0.push(Key::Index(index));
            }
        }
        path
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, key) in self.0.iter().enumerate() {
            match key {
                Key::Index(n) => write!(f, "[{n}]")?,
                Key::Name(name) => {
                    if i > 0 {
                        f.write_str(".")?;
                    }
                    // TOML's own rule: bare keys are ASCII letters, digits, `_` and `-`; others are quoted.
                    let bare =
                        !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
                    if bare { f.write_str(name)? } else { write!(f, "{name:?}")? }
                }
            }
        }
        Ok(())
    }
}

/// Where a value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    File(PathBuf),
    /// One or more `EHRGW_` variables, by their real names.
    Env(Vec<String>),
    /// A label for text given in code (`Config::from_toml_str`).
    Text(String),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File(path) => write!(f, "{}", path.display()),
            Origin::Env(vars) if vars.len() == 1 => write!(f, "environment variable {}", vars[0]),
            Origin::Env(vars) => write!(f, "environment variables {}", vars.join(", ")),
            Origin::Text(label) => f.write_str(label),
        }
    }
}

/// What a serde/figment error says, in words, for the value at `path`. Unknown and missing keys are
/// phrased by the caller, which knows the table they belong to.
pub fn describe(kind: &Kind, path: &KeyPath) -> String {
    let at = if path.is_root() { String::new() } else { format!("{path}: ") };
    match kind {
        Kind::InvalidType(actual, expected) | Kind::InvalidValue(actual, expected) => {
            format!("{at}expected {}, found {}", expected_words(expected, actual), found_words(actual, expected))
        }
        Kind::InvalidLength(n, expected) => format!("{at}expected {expected}, found {}", count(*n, "item")),
        Kind::UnknownVariant(v, allowed) => format!("{at}unknown value `{v}`{}", allowed_words(v, allowed)),
        Kind::UnknownField(f, allowed) => format!("{at}unknown key `{f}`{}", allowed_words(f, allowed)),
        Kind::MissingField(f) => format!("{at}missing required key `{f}`"),
        Kind::DuplicateField(f) => format!("{at}key `{f}` is given more than once"),
        Kind::ISizeOutOfRange(n) => format!("{at}the number {n} is out of range"),
        Kind::USizeOutOfRange(n) => format!("{at}the number {n} is too large"),
        Kind::Unsupported(actual) => format!("{at}{} is not accepted here", found_words(actual, "")),
        Kind::UnsupportedKey(actual, _) => format!("{at}keys must be text, found {}", found_words(actual, "")),
        Kind::Message(m) => format!("{at}{m}"),
    }
}

/// `; did you mean `listen`?` when one allowed name is close, else `; allowed: a, b, c`.
pub fn allowed_words(given: &str, allowed: &[&str]) -> String {
    options_words(given, allowed, "allowed")
}

/// Like `allowed_words`, with the list introduced by `label` (`defined connections: a, b`).
pub fn options_words(given: &str, options: &[&str], label: &str) -> String {
    if options.is_empty() {
        return format!("; {label}: none");
    }
    match closest(given, options) {
        Some(near) => format!("; did you mean `{near}`?"),
        None => format!("; {label}: {}", options.join(", ")),
    }
}

/// The allowed name nearest to `given`, when near enough to be a typo.
fn closest<'a>(given: &str, allowed: &[&'a str]) -> Option<&'a str> {
    let given = given.to_ascii_lowercase();
    allowed
        .iter()
        .map(|a| (edit_distance(&given, a), *a))
        .filter(|(d, a)| *d <= (a.len() / 3).max(1))
        .min_by_key(|(d, _)| *d)
        .map(|(_, a)| a)
}

/// Levenshtein distance, for typo suggestions on short keys.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut previous = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous + usize::from(ca != *cb);
            previous = row[j + 1];
            row[j + 1] = substitution.min(row[j] + 1).min(previous + 1);
        }
    }
    row[b.len()]
}

/// serde's `Expected` text (often a Rust type) as the operator would say it.
fn expected_words(expected: &str, actual: &Actual) -> String {
    let negative = matches!(actual, Actual::Signed(n) if *n < 0);
    match expected {
        "u8" | "u16" | "u32" | "u64" | "u128" | "usize" if negative => "a whole number of 0 or more".into(),
        "u8" | "u16" | "u32" | "u64" | "u128" | "usize" | "i8" | "i16" | "i32" | "i64" | "i128" | "isize" => {
            "a whole number".into()
        }
        "f32" | "f64" => "a number".into(),
        "a boolean" => "true or false".into(),
        "a string" | "a borrowed string" | "path string" | "a character" | "a Duration" => "text".into(),
        "a sequence" => "a list".into(),
        "a map" => "a table".into(),
        "socket address" => "an address like 127.0.0.1:8080".into(),
        secret if secret.starts_with("struct SecretRef") => "a table with `env` or `file`".into(),
        other => match other.strip_prefix("struct ") {
            Some(_) => "a table".into(),
            None => other.to_string(),
        },
    }
}

/// What was found, in words. Where a secret was expected the value is not repeated: a secret written
/// into the file by mistake must not reach the terminal or a log.
fn found_words(actual: &Actual, expected: &str) -> String {
    let secret = expected.starts_with("struct SecretRef");
    match actual {
        Actual::Str(_) | Actual::Char(_) | Actual::Bytes(_) if secret => {
            "text (a secret is never written in the config file: give { env = \"VARIABLE\" } or { file = \"path\" })"
                .into()
        }
        Actual::Str(s) => format!("text {s:?}"),
        Actual::Char(c) => format!("text {:?}", c.to_string()),
        Actual::Bool(b) => b.to_string(),
        Actual::Unsigned(_) | Actual::Signed(_) | Actual::Float(_) if secret => "a number".into(),
        Actual::Unsigned(n) => n.to_string(),
        Actual::Signed(n) => n.to_string(),
        Actual::Float(n) => n.to_string(),
        Actual::Seq => "a list".into(),
        Actual::Map => "a table".into(),
        Actual::Unit | Actual::Option => "nothing".into(),
        Actual::Bytes(_) => "bytes".into(),
        Actual::Other(s) => s.clone(),
        _ => "a value of another kind".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_read_like_toml() {
        let p = KeyPath::root().key("organizations").at(1).key("slug");
        assert_eq!(p.to_string(), "organizations[1].slug");
        assert_eq!(KeyPath::from("organizations[1].slug"), p);
        assert_eq!(KeyPath::root().key("connections").key("a.b").to_string(), "connections.\"a.b\"");
    }

    #[test]
    fn errors_use_plain_words() {
        let path = KeyPath::from("server.body_limit_bytes");
        let kind = Kind::InvalidType(Actual::Str("abc".into()), "u64".into());
        assert_eq!(describe(&kind, &path), "server.body_limit_bytes: expected a whole number, found text \"abc\"");
        let secret = Kind::InvalidType(Actual::Str("hunter2".into()), "struct SecretRef".into());
        let text = describe(&secret, &KeyPath::from("connections.c.client_secret"));
        assert!(text.starts_with("connections.c.client_secret: expected a table with `env` or `file`, found text"));
        assert!(!text.contains("hunter2"), "{text}");
        assert_eq!(allowed_words("listn", &["listen", "log_format"]), "; did you mean `listen`?");
        assert_eq!(allowed_words("colour", &["listen", "log_format"]), "; allowed: listen, log_format");
    }
}
