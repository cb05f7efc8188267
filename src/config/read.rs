//! Reading the merged configuration tree (file + `EHRGW_` environment) leniently, so one run shows every
//! problem. serde stops at the first error of a table; here a table that fails is read again one key at a
//! time, so each bad key is reported on its own. Keys that failed are remembered (`failed`), and the
//! checks that run afterwards stay quiet about them: one mistake is reported once, not again as the
//! "unknown connection" or "missing key" it leads to.
//!
//! To keep going after a failure the reader fills a failed or missing required key with a placeholder
//! (empty text, 0, false, an empty list or table), so the rest of the table still yields a value whose
//! other keys can be checked. Placeholders only ever sit under a failed path, and a configuration with
//! any problem is never served.

use figment::Figment;
use figment::error::{Actual, Error, Kind};
use figment::value::{Dict, Tag, Value};
use serde::de::DeserializeOwned;

use super::errors::{Key, KeyPath, Origin, allowed_words, describe};

pub(super) struct Reader {
    figment: Figment,
    root: Value,
    /// Metadata name of the environment provider, which tells its values apart from the file's.
    env_provider: Option<String>,
    env_prefix: &'static str,
    /// Where values not from the environment came from (the file, or a label for inline text).
    fallback: Origin,
    /// Each problem with the key it is about, for ordering by section.
    problems: Vec<(KeyPath, String)>,
    /// Keys that could not be read.
    failed: Vec<KeyPath>,
    /// Keys read whose value a check found wrong.
    flagged: Vec<KeyPath>,
}

impl Reader {
    pub fn new(
        figment: Figment,
        root: Value,
        env_provider: Option<String>,
        env_prefix: &'static str,
        fallback: Origin,
    ) -> Self {
        Reader {
            figment,
            root,
            env_provider,
            env_prefix,
            fallback,
            problems: Vec::new(),
            failed: Vec::new(),
            flagged: Vec::new(),
        }
    }

    pub fn value(&self, path: &KeyPath) -> Option<&Value> {
        path.0.iter().try_fold(&self.root, child)
    }

    /// Records a problem with the value at `path`, naming where that value (or the nearest table that
    /// holds it) came from.
    pub fn report(&mut self, path: &KeyPath, text: impl std::fmt::Display) {
        let line = format!("{}: {}", self.origin(path), text.to_string().trim_end());
        if !self.problems.iter().any(|(_, l)| *l == line) {
            self.problems.push((path.clone(), line));
        }
    }

    /// Every problem, grouped by section in the order of `sections` (others last), otherwise in the
    /// order found: what serde found in a section, then what the checks found.
    pub fn problems(&self, sections: &[&str]) -> Vec<String> {
        let rank = |path: &KeyPath| {
            let section = match path.0.first() {
                Some(Key::Name(name)) => sections.iter().position(|s| s == name).unwrap_or(sections.len()),
                _ => sections.len(),
            };
            // Then by list item or named table, so `organizations[0]` comes before `organizations[2]`.
            let item = match path.0.get(1) {
                Some(Key::Index(i)) => (*i, String::new()),
                Some(Key::Name(name)) => (0, name.clone()),
                None => (0, String::new()),
            };
            (section, item)
        };
        let mut problems: Vec<&(KeyPath, String)> = self.problems.iter().collect();
        problems.sort_by_cached_key(|(path, _)| rank(path));
        problems.into_iter().map(|(_, line)| line.clone()).collect()
    }

    pub fn fail(&mut self, path: &KeyPath) {
        if !self.failed.contains(path) {
            self.failed.push(path.clone());
        }
    }

    /// Whether `path`, a table holding it, or a key inside it failed to read: a check on `path` would
    /// then be a follow-on of a problem already reported.
    pub fn failed(&self, path: &KeyPath) -> bool {
        self.failed.iter().any(|f| path.starts_with(f) || f.starts_with(path))
    }

    /// Marks a key a check found wrong; see `flagged`.
    pub fn flag(&mut self, path: &KeyPath) {
        if !self.flagged.contains(path) {
            self.flagged.push(path.clone());
        }
    }

    /// Like `failed`, counting keys the checks found wrong too. Checks within the configuration ask
    /// `failed` (an invalid or duplicate id is still the name a client means); checks that use the values
    /// further (the mapping folder) ask this.
    pub fn failed_or_flagged(&self, path: &KeyPath) -> bool {
        self.failed(path) || self.flagged.iter().any(|f| path.starts_with(f) || f.starts_with(path))
    }

    /// Whether `path` or a table holding it failed to read (not counting keys inside it).
    pub fn failed_at(&self, path: &KeyPath) -> bool {
        self.failed.iter().any(|f| path.starts_with(f))
    }

    /// Where the value at `path` came from; for a key that is not there, the nearest table holding it.
    pub fn origin(&self, path: &KeyPath) -> Origin {
        let mut at = KeyPath::root();
        let mut value = &self.root;
        for key in &path.0 {
            match child(value, key) {
                Some(c) => {
                    value = c;
                    at.0.push(key.clone());
                }
                None => break,
            }
        }
        self.provenance(&at, value)
    }

    fn provenance(&self, path: &KeyPath, value: &Value) -> Origin {
        if !self.is_env(value.tag()) {
            return self.fallback.clone();
        }
        // figment's merge gives a table the tag of the last provider that added to it, so a table of the
        // file with one key from the environment carries the environment's tag: it is the file's when any
        // of its values are.
        let from_file = match value {
            Value::Dict(_, dict) => {
                dict.iter().any(|(k, v)| !matches!(self.provenance(&path.key(k), v), Origin::Env(_)))
            }
            Value::Array(_, items) => {
                items.iter().enumerate().any(|(i, v)| !matches!(self.provenance(&path.at(i), v), Origin::Env(_)))
            }
            _ => false,
        };
        if from_file { self.fallback.clone() } else { Origin::Env(self.env_vars(path)) }
    }

    fn is_env(&self, tag: Tag) -> bool {
        let name = self.figment.get_metadata(tag).map(|m| m.name.as_ref());
        self.env_provider.is_some() && name == self.env_provider.as_deref()
    }

    /// The environment variables that set `path` (or keys inside it), by their real names; figment does
    /// not keep them, so they are matched the way `Env::prefixed(..).split("__")` reads them.
    fn env_vars(&self, path: &KeyPath) -> Vec<String> {
        let wanted: Vec<String> = path
            .0
            .iter()
            .map(|k| match k {
                Key::Name(n) => n.clone(),
                Key::Index(i) => i.to_string(),
            })
            .collect();
        let prefix_len = self.env_prefix.len();
        let mut names: Vec<String> = std::env::vars_os()
            .filter_map(|(name, _)| name.into_string().ok())
            .filter(|name| {
                let name = name.trim();
                let prefixed = name.get(..prefix_len).is_some_and(|p| p.eq_ignore_ascii_case(self.env_prefix));
                let keys: Vec<String> = match name.get(prefix_len..) {
                    Some(rest) if prefixed => rest.to_ascii_lowercase().split("__").map(str::to_string).collect(),
                    _ => return false,
                };
                keys.starts_with(&wanted) || wanted.starts_with(&keys)
            })
            .collect();
        names.sort();
        if names.is_empty() {
            names.push(format!("{}{}", self.env_prefix, wanted.join("__").to_ascii_uppercase()));
        }
        names
    }

    /// Reads the value at `path` as `T`, reporting every problem in it. `None` when there is no value
    /// there or it could not be read at all (then `path` is failed).
    pub fn read<T: DeserializeOwned>(&mut self, path: &KeyPath) -> Option<T> {
        let value = self.value(path)?.clone();
        match T::deserialize(&value) {
            Ok(t) => Some(t),
            Err(e) => self.recover(path, &value, e),
        }
    }

    /// A table read as `T`, or `T::default()` when absent or unreadable.
    pub fn section<T: DeserializeOwned + Default>(&mut self, path: &KeyPath) -> T {
        self.read(path).unwrap_or_default()
    }

    /// A list of tables (`[[clients]]`). Items that cannot be read at all stay in the list as
    /// placeholders under a failed path, so every other item keeps the index the operator sees.
    pub fn list<T: DeserializeOwned>(&mut self, path: &KeyPath, what: &str) -> Vec<T> {
        let Some(value) = self.value(path).cloned() else { return Vec::new() };
        let Value::Array(_, items) = value else {
            let kind = Kind::InvalidType(actual(&value), what.to_string());
            self.report(path, describe(&kind, path));
            self.fail(path);
            return Vec::new();
        };
        let mut out = Vec::new();
        for i in 0..items.len() {
            let at = path.at(i);
            match self.read(&at) {
                Some(t) => out.push(t),
                None => out.extend(self.fill(&at, Tag::Default, Dict::new())),
            }
        }
        out
    }

    /// A table of named tables (`[connections.NAME]`); names that cannot be read are left out (failed).
    pub fn named<T: DeserializeOwned>(&mut self, path: &KeyPath, what: &str) -> Vec<(String, T)> {
        let Some(value) = self.value(path).cloned() else { return Vec::new() };
        let Value::Dict(_, dict) = value else {
            let kind = Kind::InvalidType(actual(&value), what.to_string());
            self.report(path, describe(&kind, path));
            self.fail(path);
            return Vec::new();
        };
        dict.keys().filter_map(|name| Some((name.clone(), self.read(&path.key(name))?))).collect()
    }

    /// After `T` failed on the whole table: each key alone, then the good keys together.
    fn recover<T: DeserializeOwned>(&mut self, path: &KeyPath, value: &Value, first: Error) -> Option<T> {
        let Value::Dict(tag, dict) = value else {
            self.report_error(path, value, first);
            self.fail(path);
            return None;
        };
        let fields = fields_of::<T>();
        let mut good = Dict::new();
        for (key, v) in dict {
            let at = path.key(key);
            if let Some(fields) = fields
                && !fields.contains(&key.as_str())
            {
                self.report(&at, format!("unknown key `{at}`{}", allowed_words(key, fields)));
                continue;
            }
            let alone = Value::Dict(*tag, Dict::from([(key.clone(), v.clone())]));
            match T::deserialize(&alone) {
                // A required key missing from this one-key table says nothing about `key` itself.
                Err(e) if !(e.missing() && e.path.is_empty()) => {
                    self.report_error(path, &alone, e);
                    self.fail(&at);
                }
                _ => {
                    good.insert(key.clone(), v.clone());
                }
            }
        }
        self.fill(path, *tag, good)
    }

    /// Reads the good keys of a table, reporting required keys that are missing (unless they failed
    /// already) and standing in placeholders for them.
    fn fill<T: DeserializeOwned>(&mut self, path: &KeyPath, tag: Tag, mut good: Dict) -> Option<T> {
        // Each round fills one missing key; a struct has fewer keys than this.
        for _ in 0..64 {
            let error = match T::deserialize(&Value::Dict(tag, good.clone())) {
                Ok(t) => return Some(t),
                Err(e) => e,
            };
            let Kind::MissingField(field) = &error.kind else {
                self.report_error(path, &Value::Dict(tag, good), error);
                self.fail(path);
                return None;
            };
            let at = path.key(field);
            if !self.failed(&at) {
                self.report(path, format!("{}missing required key `{field}`", prefix(path)));
                self.fail(&at);
            }
            let fits = placeholders().into_iter().find(|p| {
                let mut trial = good.clone();
                trial.insert(field.to_string(), p.clone());
                match T::deserialize(&Value::Dict(tag, trial)) {
                    Ok(_) => true,
                    Err(e) => e.path.first().map(String::as_str) != Some(field.as_ref()),
                }
            });
            match fits {
                Some(p) => {
                    good.insert(field.to_string(), p);
                }
                None => {
                    self.fail(path);
                    return None;
                }
            }
        }
        self.fail(path);
        None
    }

    /// Reports a deserialization error raised on `value` (found at `base`), in reading order.
    fn report_error(&mut self, base: &KeyPath, value: &Value, error: Error) {
        for e in error {
            let at = extend(base, value, &e.path);
            match &e.kind {
                Kind::UnknownField(field, allowed) => {
                    self.report(&at, format!("unknown key `{at}`{}", allowed_words(field, allowed)))
                }
                Kind::MissingField(field) => {
                    self.report(&at, format!("{}missing required key `{field}`", prefix(&at)));
                    self.fail(&at.key(field));
                }
                kind => self.report(&at, describe(kind, &at)),
            }
        }
    }
}

fn prefix(path: &KeyPath) -> String {
    if path.is_root() { String::new() } else { format!("{path}: ") }
}

fn child<'v>(value: &'v Value, key: &Key) -> Option<&'v Value> {
    match (key, value) {
        (Key::Name(n), Value::Dict(_, d)) => d.get(n),
        (Key::Index(i), Value::Array(_, a)) => a.get(*i),
        _ => None,
    }
}

/// figment's error path (text keys, list positions as digits) under `base`, read against `value` so a
/// position in a list becomes `[i]`.
fn extend(base: &KeyPath, value: &Value, rel: &[String]) -> KeyPath {
    let mut path = base.clone();
    let mut current = Some(value);
    for segment in rel {
        let key = match (current, segment.parse::<usize>()) {
            (Some(Value::Array(..)), Ok(i)) => Key::Index(i),
            _ => Key::Name(segment.clone()),
        };
        current = current.and_then(|v| child(v, &key));
        path.0.push(key);
    }
    path
}

/// The keys a struct accepts: a struct that denies unknown keys names them all in its error for one.
fn fields_of<T: DeserializeOwned>() -> Option<&'static [&'static str]> {
    let probe = Value::Dict(Tag::Default, Dict::from([("\u{0}".to_string(), Value::from(0u8))]));
    match T::deserialize(&probe) {
        Err(Error { kind: Kind::UnknownField(_, fields), .. }) => Some(fields),
        _ => None,
    }
}

fn placeholders() -> [Value; 5] {
    [
        Value::from(""),
        Value::from(0u8),
        Value::from(false),
        Value::Array(Tag::Default, Vec::new()),
        Value::Dict(Tag::Default, Dict::new()),
    ]
}

/// A value's kind, for "found …" in a type error about a whole section.
pub(super) fn actual(value: &Value) -> Actual {
    match value {
        Value::String(_, s) => Actual::Str(s.clone()),
        Value::Char(_, c) => Actual::Char(*c),
        Value::Bool(_, b) => Actual::Bool(*b),
        Value::Num(_, n) => match (n.to_u128(), n.to_i128(), n.to_f64()) {
            (Some(u), _, _) => Actual::Unsigned(u),
            (None, Some(i), _) => Actual::Signed(i),
            (_, _, f) => Actual::Float(f.unwrap_or_default()),
        },
        Value::Empty(..) => Actual::Unit,
        Value::Dict(..) => Actual::Map,
        Value::Array(..) => Actual::Seq,
    }
}
