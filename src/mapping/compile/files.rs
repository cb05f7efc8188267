//! Which files in the mapping folder are mappings. Only `<ehr>.toml` and `<ehr>.<variant>.toml` whose
//! `ehr` key is that `<ehr>` are loaded, so a backup or an editor's file left beside a mapping
//! (`canvas-backup.toml`, `canvas.toml~`, `.#canvas.toml`) is never served as a mapping of its own;
//! every file skipped is reported as a warning saying why, so nothing is left out silently.

use std::path::{Path, PathBuf};

use crate::mapping::{Diagnostic, Severity};

/// Variants that name copies rather than mappings (`canvas.orig.toml`, `canvas.bak.toml`).
const BACKUP_VARIANTS: &[&str] = &["bak", "backup", "copy", "old", "orig", "rej", "save", "swp", "tmp", "temp"];

/// A mapping file to load: its name (the file name without `.toml`, what organizations refer to),
/// path and text.
pub(super) struct FoundFile {
    pub(super) name: String,
    pub(super) path: PathBuf,
    pub(super) text: String,
}

/// The mapping files of `dir` in name order, and the files skipped (as warnings) or unreadable (as
/// errors). Folders (golden cases live in `<name>/tests/`) are not files and are passed over quietly.
pub(super) fn mapping_files(dir: &Path) -> Result<(Vec<FoundFile>, Vec<Diagnostic>), Diagnostic> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| problem(Severity::Error, dir, format!("cannot read mapping folder: {e}")))?;
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| !p.is_dir()).collect();
    paths.sort();
    let mut files = Vec::new();
    let mut problems = Vec::new();
    for path in paths {
        let file_name = path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
        let ehr = match name_shape(&file_name) {
            Ok(ehr) => ehr,
            Err(why) => {
                problems.push(skipped(&path, why));
                continue;
            }
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) => {
                problems.push(problem(Severity::Error, &path, format!("cannot read: {e}")));
                continue;
            }
        };
        // A file that does not parse, or has no `ehr`, is loaded so that its own errors are reported.
        let declared = toml::from_str::<toml::Table>(&text)
            .ok()
            .and_then(|t| t.get("ehr").and_then(|v| v.as_str()).map(str::to_string));
        if let Some(declared) = declared
            && declared != ehr
        {
            problems.push(skipped(
                &path,
                format!(
                    "its `ehr` is `{declared}`, so it is not a `{ehr}` mapping; name it `{declared}.toml` or \
                     `{declared}.<variant>.toml` to load it"
                ),
            ));
            continue;
        }
        let name = file_name.trim_end_matches(".toml").to_string();
        files.push(FoundFile { name, path, text });
    }
    Ok((files, problems))
}

/// The `<ehr>` a file name claims, or why the name is not a mapping's.
pub(super) fn name_shape(file_name: &str) -> Result<String, String> {
    const RULE: &str = "mapping files are named `<ehr>.toml` or `<ehr>.<variant>.toml` (lowercase letters, \
                        digits and `_`)";
    if file_name.starts_with('.') || (file_name.starts_with('#') && file_name.ends_with('#')) {
        return Err(format!("a hidden or editor's file (lock, swap or autosave); {RULE}"));
    }
    if file_name.ends_with('~') {
        return Err(format!("an editor's backup (`~`); {RULE}"));
    }
    let Some(stem) = file_name.strip_suffix(".toml") else {
        let extension = file_name.rsplit_once('.').map(|(_, e)| e).unwrap_or_default();
        return Err(if BACKUP_VARIANTS.contains(&extension) {
            format!("a backup or temporary file (`.{extension}`); {RULE}")
        } else {
            format!("not a `.toml` file; {RULE}")
        });
    };
    let parts: Vec<&str> = stem.split('.').collect();
    let well_formed =
        |p: &&str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if parts.len() > 2 || !parts.iter().all(well_formed) {
        return Err(format!("`{stem}` is not `<ehr>` or `<ehr>.<variant>`; {RULE}"));
    }
    if let Some(variant) = parts.get(1)
        && BACKUP_VARIANTS.contains(variant)
    {
        return Err(format!("the variant `{variant}` names a backup, not a mapping; {RULE}"));
    }
    Ok(parts[0].to_string())
}

fn skipped(path: &Path, why: String) -> Diagnostic {
    problem(Severity::Warning, path, format!("skipped, not loaded as a mapping: {why}"))
}

fn problem(severity: Severity, file: &Path, message: String) -> Diagnostic {
    Diagnostic { severity, file: file.to_path_buf(), position: None, key: String::new(), message }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapping_names_are_ehr_or_ehr_dot_variant_and_backups_are_not() {
        assert_eq!(name_shape("canvas.toml").as_deref(), Ok("canvas"));
        assert_eq!(name_shape("canvas.staging_2.toml").as_deref(), Ok("canvas"));
        for stray in [
            "canvas-backup.toml",
            "canvas.toml.bak",
            ".#canvas.toml",
            "#canvas.toml#",
            "canvas.toml~",
            "canvas.toml.orig",
            "canvas.orig.toml",
            "canvas.bak.toml",
            "Canvas.toml",
            "canvas.a.b.toml",
            ".canvas.toml.swp",
            "README.md",
        ] {
            let why = name_shape(stray).expect_err(stray);
            assert!(why.contains("`<ehr>.toml`"), "{stray}: {why}");
        }
    }
}
