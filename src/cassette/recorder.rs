//! Writes recorded cassettes to disk, one file per front-door exchange under `dir/<organization slug>/`,
//! numbered after those already there, and only after redaction succeeded.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use super::Cassette;
use super::redact::{MappingFields, Redactor};

/// Writes cassettes into `dir/<organization slug>/`.
pub struct Recorder {
    dir: PathBuf,
    redactor: Redactor,
    public_base: String,
    counter: AtomicU64,
}

impl Recorder {
    pub fn new(dir: PathBuf, redactor: Redactor, public_base: String) -> Self {
        // Continue numbering after existing cassettes so a second run adds rather than overwrites.
        let existing = std::fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok())
            .flat_map(|org| std::fs::read_dir(org.path()).into_iter().flatten().filter_map(|e| e.ok()))
            .filter_map(|f| f.file_name().to_str()?.split('-').next()?.parse::<u64>().ok())
            .max()
            .unwrap_or(0);
        Recorder { dir, redactor, public_base, counter: AtomicU64::new(existing) }
    }

    /// The gateway base URL cassettes are recorded under.
    pub fn public_base(&self) -> &str {
        &self.public_base
    }

    /// Redacts the cassette (with what the organization's mapping says about its EHR's fields) and writes
    /// it; a cassette that cannot be redacted is never written.
    pub fn write(&self, mut cassette: Cassette, fields: &MappingFields) {
        if let Err(e) = self.redactor.redact(&mut cassette, fields) {
            // Never write what could not be redacted.
            tracing::warn!(error = %e, "cassette not written: redaction failed");
            return;
        }
        let n = self.counter.fetch_add(1, Ordering::SeqCst) + 1;
        let dir = self.dir.join(&cassette.organization.slug);
        let file = dir.join(format!("{n:04}-{}.json", cassette.interaction));
        let result = std::fs::create_dir_all(&dir).and_then(|_| std::fs::write(&file, cassette.to_pretty_json()));
        match result {
            Ok(()) => tracing::debug!(cassette = %file.display(), "recorded"),
            Err(e) => tracing::warn!(error = %e, dir = %dir.display(), "cannot write cassette"),
        }
    }
}
