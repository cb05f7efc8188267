//! Where a key path (`categories.x.content.steps[1].path`, `errors[3].code`) is written in a mapping
//! file. The file is scanned once into an index of every table, key, inline-table member and array
//! element with its line and column, resolving `[[…steps]]` to the element it opens and `[….steps.body]`
//! to the last such element, so a diagnostic points at the key it is about and not at the first key of
//! the same name elsewhere in the file (the content step's `path` is not the create step's).

use std::collections::HashMap;

/// One component of a key path.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) enum Seg {
    Key(String),
    Index(usize),
}

/// Finds the 1-based line and column of `key` in `text`. A key the file does not spell out (an
/// interaction a category takes from its `base`, a defaulted value) is looked for under the base
/// category, then falls back to the nearest enclosing key that is written.
pub(super) fn locate(text: &str, key: &str) -> Option<(usize, usize)> {
    let index = Index::scan(text);
    let path = parse_key(key);
    if let Some(at) = index.entries.get(&path) {
        return Some(*at);
    }
    // `categories.<child>.…` written under `categories.<base>.…`.
    if let [Seg::Key(categories), Seg::Key(child), rest @ ..] = path.as_slice()
        && categories == "categories"
        && !rest.is_empty()
    {
        let base_key = vec![Seg::Key(categories.clone()), Seg::Key(child.clone()), Seg::Key("base".into())];
        if let Some(base) = index.strings.get(&base_key) {
            let mut in_base = vec![Seg::Key(categories.clone()), Seg::Key(base.clone())];
            in_base.extend(rest.iter().cloned());
            if let Some(at) = index.entries.get(&in_base) {
                return Some(*at);
            }
        }
    }
    (1..path.len()).rev().find_map(|n| index.entries.get(&path[..n]).copied())
}

/// Splits `a.b[2].c` (and `"quoted.key"`) into segments.
pub(super) fn parse_key(key: &str) -> Vec<Seg> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut chars = key.chars().peekable();
    let mut quoted = false;
    let flush = |current: &mut String, out: &mut Vec<Seg>| {
        if !current.is_empty() {
            out.push(Seg::Key(std::mem::take(current)));
        }
    };
    while let Some(c) = chars.next() {
        match c {
            '"' => quoted = !quoted,
            '.' if !quoted => flush(&mut current, &mut out),
            '[' if !quoted => {
                flush(&mut current, &mut out);
                let digits: String = chars.by_ref().take_while(|c| *c != ']').collect();
                match digits.parse() {
                    Ok(i) => out.push(Seg::Index(i)),
                    Err(_) => out.push(Seg::Key(digits)),
                }
            }
            c => current.push(c),
        }
    }
    flush(&mut current, &mut out);
    out
}

/// Every key path written in a file, with the position of its first appearance.
#[derive(Debug, Default)]
pub(super) struct Index {
    pub(super) entries: HashMap<Vec<Seg>, (usize, usize)>,
    /// Values of keys written as plain strings (to follow a category's `base`).
    pub(super) strings: HashMap<Vec<Seg>, String>,
}

impl Index {
    pub(super) fn scan(text: &str) -> Index {
        let mut s = Scanner { text, bytes: text.as_bytes(), i: 0, index: Index::default() };
        s.document();
        s.index
    }
}

struct Scanner<'a> {
    text: &'a str,
    bytes: &'a [u8],
    i: usize,
    index: Index,
}

impl Scanner<'_> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.i).copied()
    }

    fn starts_with(&self, s: &str) -> bool {
        self.bytes[self.i.min(self.bytes.len())..].starts_with(s.as_bytes())
    }

    fn position(&self, at: usize) -> (usize, usize) {
        let before = &self.text[..at.min(self.text.len())];
        let line = before.matches('\n').count() + 1;
        let col = before.rsplit('\n').next().map(|l| l.chars().count()).unwrap_or(0) + 1;
        (line, col)
    }

    fn record(&mut self, path: &[Seg], at: usize) {
        let position = self.position(at);
        // Enclosing paths first seen here start here too (`[a.b.c]` opens `a` and `a.b`).
        for n in 1..=path.len() {
            self.index.entries.entry(path[..n].to_vec()).or_insert(position);
        }
    }

    /// Spaces and tabs; with `newlines`, also line ends and comments.
    fn skip_blank(&mut self, newlines: bool) {
        while let Some(c) = self.peek() {
            match c {
                b' ' | b'\t' | b'\r' => self.i += 1,
                b'\n' if newlines => self.i += 1,
                b'#' if newlines => self.skip_line(),
                _ => break,
            }
        }
    }

    fn skip_line(&mut self) {
        while let Some(c) = self.peek() {
            if c == b'\n' {
                break;
            }
            self.i += 1;
        }
    }

    fn document(&mut self) {
        let mut table: Vec<Seg> = Vec::new();
        // Arrays of tables by their resolved path: how many elements they have so far.
        let mut arrays: HashMap<Vec<Seg>, usize> = HashMap::new();
        loop {
            self.skip_blank(true);
            let Some(c) = self.peek() else { break };
            let start = self.i;
            if c == b'[' {
                let array = self.starts_with("[[");
                self.i += if array { 2 } else { 1 };
                let keys = self.keys();
                // A header's components pass through the arrays of tables opened so far: the latest
                // element of each is the one `[a.steps.body]` continues.
                let resolve = |keys: &[(String, usize)]| {
                    let mut path = Vec::new();
                    for (k, _) in keys {
                        path.push(Seg::Key(k.clone()));
                        if let Some(n) = arrays.get(&path) {
                            path.push(Seg::Index(n.saturating_sub(1)));
                        }
                    }
                    path
                };
                let at = keys.last().map(|(_, at)| *at).unwrap_or(start);
                if array && !keys.is_empty() {
                    let mut path = resolve(&keys[..keys.len() - 1]);
                    path.push(Seg::Key(keys[keys.len() - 1].0.clone()));
                    let n = arrays.entry(path.clone()).or_insert(0);
                    path.push(Seg::Index(*n));
                    *n += 1;
                    table = path;
                } else {
                    table = resolve(&keys);
                }
                self.record(&table, at);
                self.skip_line();
            } else if c == b'\n' || c == b'#' {
                self.skip_line();
            } else {
                self.key_value(&table);
                self.skip_blank(false);
                if self.peek() == Some(b'#') {
                    self.skip_line();
                }
                if !matches!(self.peek(), Some(b'\n') | None) {
                    // Not something this scanner understands: skip the rest of the line.
                    self.skip_line();
                }
            }
            if self.i == start {
                self.i += 1;
            }
        }
    }

    /// A dotted key: each component with the byte offset where it starts.
    fn keys(&mut self) -> Vec<(String, usize)> {
        let mut keys = Vec::new();
        loop {
            self.skip_blank(false);
            let at = self.i;
            let key = match self.peek() {
                Some(b'"') => self.basic_string(),
                Some(b'\'') => self.literal_string(),
                _ => {
                    let from = self.i;
                    while self.peek().is_some_and(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-') {
                        self.i += 1;
                    }
                    self.text[from..self.i].to_string()
                }
            };
            if self.i == at {
                break;
            }
            keys.push((key, at));
            self.skip_blank(false);
            if self.peek() == Some(b'.') {
                self.i += 1;
            } else {
                break;
            }
        }
        keys
    }

    fn key_value(&mut self, table: &[Seg]) {
        let keys = self.keys();
        if keys.is_empty() {
            return;
        }
        let mut path = table.to_vec();
        path.extend(keys.iter().map(|(k, _)| Seg::Key(k.clone())));
        self.record(&path, keys[keys.len() - 1].1);
        self.skip_blank(false);
        if self.peek() != Some(b'=') {
            return;
        }
        self.i += 1;
        self.skip_blank(false);
        self.value(&path);
    }

    fn value(&mut self, path: &[Seg]) {
        match self.peek() {
            Some(b'"') => {
                let s = self.basic_string();
                self.index.strings.insert(path.to_vec(), s);
            }
            Some(b'\'') => {
                let s = self.literal_string();
                self.index.strings.insert(path.to_vec(), s);
            }
            Some(b'{') => {
                self.i += 1;
                loop {
                    self.skip_blank(true);
                    match self.peek() {
                        None => break,
                        Some(b'}') => {
                            self.i += 1;
                            break;
                        }
                        Some(b',') => self.i += 1,
                        _ => {
                            let before = self.i;
                            self.key_value(path);
                            if self.i == before {
                                self.i += 1;
                            }
                        }
                    }
                }
            }
            Some(b'[') => {
                self.i += 1;
                let mut n = 0;
                loop {
                    self.skip_blank(true);
                    match self.peek() {
                        None => break,
                        Some(b']') => {
                            self.i += 1;
                            break;
                        }
                        Some(b',') => self.i += 1,
                        _ => {
                            let mut item = path.to_vec();
                            item.push(Seg::Index(n));
                            let before = self.i;
                            self.record(&item, before);
                            self.value(&item);
                            if self.i == before {
                                self.i += 1;
                            }
                            n += 1;
                        }
                    }
                }
            }
            _ => {
                // Numbers, booleans, dates: up to the next separator.
                while self.peek().is_some_and(|c| !matches!(c, b',' | b']' | b'}' | b'\n' | b'#')) {
                    self.i += 1;
                }
            }
        }
    }

    /// A `"…"` or `"""…"""` string; the value with escapes kept as written (only used to compare names).
    fn basic_string(&mut self) -> String {
        let multi = self.starts_with("\"\"\"");
        let quote = if multi { "\"\"\"" } else { "\"" };
        self.i += quote.len();
        let from = self.i;
        while self.i < self.bytes.len() && !self.starts_with(quote) {
            if !multi && self.bytes[self.i] == b'\n' {
                break;
            }
            self.i += if self.bytes[self.i] == b'\\' { 2 } else { 1 };
        }
        let value = self.text.get(from..self.i.min(self.bytes.len())).unwrap_or_default().to_string();
        self.i = (self.i + quote.len()).min(self.bytes.len());
        value
    }

    fn literal_string(&mut self) -> String {
        let quote = if self.starts_with("'''") { "'''" } else { "'" };
        self.i += quote.len();
        let from = self.i;
        while self.i < self.bytes.len() && !self.starts_with(quote) {
            self.i += 1;
        }
        let value = self.text.get(from..self.i).unwrap_or_default().to_string();
        self.i = (self.i + quote.len()).min(self.bytes.len());
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# a comment with path = "/no"
ehr = "x"
[categories.a]
id = "a.{id}"
[categories.a.resource.template]
content = { contentType = "$.mime", title = "$.t" }
[categories.a.create]
serialize_writes_by = [
  "$.one",
  "$.two", # a comment
]
[[categories.a.create.steps]]
path = "/create-0"
[categories.a.create.steps.body]
"quoted key" = '$.q'
[[categories.a.create.steps]]
path = "/create-1"
[categories.a.create.steps.body]
field = """
multi = "line"
"""
other = "after"
[categories.a.content]
[[categories.a.content.steps]]
path = "/content-0"
[[categories.a.content.steps]]
path = "/content-1"
[categories.b]
base = "a"
[[errors]]
code = "e0"
[[errors]]
code = "e1"
"#;

    fn line(key: &str) -> usize {
        locate(TEXT, key).unwrap_or_else(|| panic!("{key} not found")).0
    }

    fn line_of(needle: &str) -> usize {
        TEXT.lines().position(|l| l.contains(needle)).unwrap() + 1
    }

    #[test]
    fn keys_are_found_in_their_own_table_and_array_element() {
        assert_eq!(line("categories.a.content.steps[1].path"), line_of("/content-1"));
        assert_eq!(line("categories.a.content.steps[0].path"), line_of("/content-0"));
        assert_eq!(line("categories.a.create.steps[1].path"), line_of("/create-1"));
        assert_eq!(line("categories.a.create.steps[0].body.\"quoted key\""), line_of("quoted key"));
        assert_eq!(line("categories.a.create.steps[1].body.other"), line_of("after"));
        assert_eq!(line("categories.a.create.steps[1]"), line_of("/create-1") - 1);
        assert_eq!(line("categories.a.create.serialize_writes_by[1]"), line_of("$.two"));
        assert_eq!(line("categories.a.resource.template.content.title"), line_of("title ="));
        let title = TEXT.lines().nth(line_of("title =") - 1).unwrap().find("title").unwrap() + 1;
        assert_eq!(locate(TEXT, "categories.a.resource.template.content.title").unwrap().1, title);
        assert_eq!(line("errors[1].code"), line_of("\"e1\""));
        assert_eq!(line("ehr"), 2, "comments are not keys");
    }

    #[test]
    fn unwritten_keys_fall_back_to_the_base_category_then_the_nearest_written_key() {
        assert_eq!(line("categories.b.content.steps[1].path"), line_of("/content-1"));
        assert_eq!(line("categories.a.read.steps"), line_of("[categories.a]"));
        assert_eq!(line("categories.a.content.steps[0].query.x"), line_of("/content-0") - 1);
    }

    #[test]
    fn key_paths_parse_with_indexes_and_quotes() {
        assert_eq!(
            parse_key("a.b[2].\"c.d\""),
            vec![Seg::Key("a".into()), Seg::Key("b".into()), Seg::Index(2), Seg::Key("c.d".into())]
        );
    }
}
