//! `ehr-gateway mappings check|test|schema`: validate a mapping folder reporting every problem, run its
//! golden cases (or, with `--accept`, record what the mapping does now in the cases that differ), and
//! print the editor schema.

use std::path::Path;
use std::process::ExitCode;

use crate::mapping::{MappingSet, Severity, golden};

/// Loads and compiles every mapping file, printing every problem; exit 1 on any error.
pub fn check(dir: &Path) -> ExitCode {
    match MappingSet::load_dir(dir) {
        Ok(set) => {
            for w in &set.warnings {
                println!("{w}");
            }
            println!(
                "{}: {} mapping(s) OK, {} warning(s) (version {})",
                dir.display(),
                set.mappings.len(),
                set.warnings.len(),
                set.version
            );
            ExitCode::SUCCESS
        }
        Err(diagnostics) => {
            for d in &diagnostics {
                println!("{d}");
            }
            let errors = diagnostics.iter().filter(|d| d.severity == Severity::Error).count();
            println!("{}: {errors} error(s), {} warning(s)", dir.display(), diagnostics.len() - errors);
            ExitCode::FAILURE
        }
    }
}

/// Runs the golden cases in `dir/<mapping>/tests/*.toml`; exit 1 on any failure or coverage gap. With
/// `accept`, every failing case is first rewritten with what the mapping does now (see
/// `golden::accept_dir`) and the rewrites are listed; exit 1 if a case could not be rewritten.
pub fn test(dir: &Path, accept: bool) -> ExitCode {
    match MappingSet::load_dir(dir) {
        Ok(set) => {
            let (passed, reports) = if accept {
                let accepted = golden::accept_dir(&set, dir);
                print!("{}", golden::render_accept(&accepted, dir));
                // Coverage is what the cases on disk cover after the rewrites.
                (accepted.iter().all(|r| !matches!(r.action, golden::Action::Refused(..))), golden::run_dir(&set, dir))
            } else {
                let reports = golden::run_dir(&set, dir);
                print!("{}", golden::render(&reports, dir));
                (reports.iter().all(|r| r.passed()), reports)
            };
            let gaps = golden::coverage_gaps(&set, &reports);
            for gap in &gaps {
                println!("missing: {gap}");
            }
            if passed && gaps.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE }
        }
        Err(diagnostics) => {
            for d in &diagnostics {
                println!("{d}");
            }
            println!("the mappings do not load; fix them first (ehr-gateway mappings check)");
            ExitCode::FAILURE
        }
    }
}

pub fn schema() -> ExitCode {
    println!("{}", crate::mapping::editor_schema());
    ExitCode::SUCCESS
}
