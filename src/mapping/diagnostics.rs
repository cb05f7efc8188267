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

pub(super) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map(|l| l.chars().count()).unwrap_or(0) + 1;
    (line, col)
}
