//! Problems found in a mapping file, and where they are: the file, and the line and column of the key
//! or parse error they are about.

use std::fmt;
use std::path::PathBuf;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// The mapping cannot be used.
    Error,
    /// Suspicious but usable (unused code tables, unreachable steps).
    Warning,
}

/// One problem in a mapping file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub severity: Severity,
    pub file: PathBuf,
    /// 1-based line and column when known.
    pub position: Option<(usize, usize)>,
    /// Key path inside the file, e.g. `categories.photo.create.steps[0].path`.
    pub key: String,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.severity {
            Severity::Error => "error: ",
            Severity::Warning => "warning: ",
        })?;
        match self.position {
            Some((line, col)) => write!(f, "{}:{line}:{col}", self.file.display())?,
            None => write!(f, "{}", self.file.display())?,
        }
        if !self.key.is_empty() {
            write!(f, ": {}", self.key)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Finds the 1-based line/column of a key path (`errors[3].code`, `categories.x.create.steps[0].path`) in
/// the TOML text, best effort: each key is looked for after the line where its parent was found, and
/// `name[i]` picks the i-th `[[…name]]` table of an array of tables.
pub(super) fn locate(text: &str, key: &str) -> Option<(usize, usize)> {
    let lines: Vec<&str> = text.lines().collect();
    let header_components = |line: &str| -> Option<(bool, Vec<String>)> {
        let t = line.trim();
        let (array, inner) = if let Some(i) = t.strip_prefix("[[") {
            (true, i.split("]]").next()?)
        } else {
            (false, t.strip_prefix('[')?.split(']').next()?)
        };
        Some((array, inner.split('.').map(|c| c.trim().trim_matches('"').to_string()).collect()))
    };
    let mut from = 0;
    let mut found = None;
    for segment in key.split('.') {
        let (name, index) = match segment.split_once('[') {
            Some((n, rest)) => (n, rest.trim_end_matches(']').split("][").next().and_then(|i| i.parse::<usize>().ok())),
            None => (segment, None),
        };
        let name = name.trim_matches('"');
        if name.is_empty() {
            continue;
        }
        let mut hit = None;
        if let Some(index) = index {
            let mut seen = 0;
            for (i, line) in lines.iter().enumerate().skip(from) {
                if let Some((true, comps)) = header_components(line)
                    && comps.last().map(String::as_str) == Some(name)
                {
                    if seen == index {
                        hit = Some(i);
                        break;
                    }
                    seen += 1;
                }
            }
        }
        if hit.is_none() {
            hit = lines.iter().enumerate().skip(from).find_map(|(i, line)| {
                let t = line.trim_start();
                if t.starts_with('#') {
                    return None;
                }
                if let Some((_, comps)) = header_components(line) {
                    return comps.iter().any(|c| c == name).then_some(i);
                }
                let defines = t.starts_with(&format!("{name} ="))
                    || t.starts_with(&format!("{name}="))
                    || t.starts_with(&format!("\"{name}\""));
                let inline = line.contains(&format!("{{ {name} =")) || line.contains(&format!(", {name} ="));
                (defines || inline).then_some(i)
            });
        }
        if let Some(i) = hit {
            let col = lines[i].find(name).map(|c| c + 1).unwrap_or(1);
            found = Some((i + 1, col));
            from = i;
        }
    }
    found
}

pub(super) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map(|l| l.chars().count()).unwrap_or(0) + 1;
    (line, col)
}
