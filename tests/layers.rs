//! The layer rule of ARCHITECTURE.md, checked on the source: a top-level module of `src/` may use only
//! modules of its own layer or of layers below it. (`../shared/tools/modcycles.py` in CI catches cycles;
//! this catches an upward import before it grows into one.) Like modcycles.py it reads `crate::…` paths
//! as text, outside unit-test modules and comments.

use std::collections::BTreeMap;
use std::path::Path;

/// Bottom to top. Within a layer, modules may use each other as long as they do not form a cycle.
const LAYERS: &[(&str, &[&str])] = &[
    ("shared types", &["error", "body", "json", "fhir", "config", "request", "logging"]),
    ("mapping engine", &["mapping"]),
    ("upstream I/O", &["upstream"]),
    ("cassettes", &["cassette"]),
    ("state", &["state"]),
    ("front door", &["frontdoor"]),
    ("middleware", &["middleware"]),
    ("composition root", &["server"]),
    ("commands", &["commands"]),
];

/// The simulators stand apart: they use nothing of the gateway, and only the sandbox part of the
/// composition root and the `sim` command use them.
const SIMULATORS: &str = "sim";

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|(_, modules)| modules.contains(&module))
}

/// The code of a file without its unit-test module (unit tests may reach anywhere, as in modcycles.py).
fn without_unit_tests(text: &str) -> &str {
    let mut search = 0;
    while let Some(at) = text[search..].find("#[cfg(test)]") {
        let start = search + at;
        let rest = text[start + "#[cfg(test)]".len()..].trim_start();
        if rest.starts_with("mod tests {") {
            return &text[..start];
        }
        search = start + 1;
    }
    text
}

/// The top-level names a line takes from `crate::`: `crate::a::x` and `crate::{a, b::y}`.
fn crate_names(line: &str) -> Vec<String> {
    let ident = |s: &str| -> String { s.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect() };
    let mut names = Vec::new();
    for (i, _) in line.match_indices("crate::") {
        let rest = &line[i + "crate::".len()..];
        match rest.strip_prefix('{') {
            Some(group) => {
                let group = group.split('}').next().unwrap_or("");
                names.extend(group.split(',').map(|part| ident(part.trim())).filter(|n| !n.is_empty()));
            }
            None => names.push(ident(rest)),
        }
    }
    names
}

/// Top-level module -> the top-level names it uses, with one file that names each.
fn uses(src: &Path) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut edges: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().map(Result::unwrap) {
            let path = entry.path();
            if path.is_dir() {
                // A `tests` folder inside a module holds unit tests.
                if path.file_name().is_none_or(|n| n != "tests") {
                    stack.push(path);
                }
                continue;
            }
            let rel = path.strip_prefix(src).unwrap();
            let is_root = rel == Path::new("lib.rs") || rel == Path::new("main.rs");
            let is_unit_tests = path.file_name().is_some_and(|n| n == "tests.rs");
            if path.extension().is_none_or(|e| e != "rs") || is_root || is_unit_tests {
                continue;
            }
            let first = rel.components().next().unwrap().as_os_str().to_str().unwrap();
            let module = first.strip_suffix(".rs").unwrap_or(first).to_string();
            let text = std::fs::read_to_string(&path).unwrap();
            for line in without_unit_tests(&text).lines() {
                let code = line.split("//").next().unwrap_or("");
                for name in crate_names(code) {
                    if name != module {
                        edges
                            .entry(module.clone())
                            .or_default()
                            .entry(name)
                            .or_insert_with(|| rel.display().to_string());
                    }
                }
            }
        }
    }
    edges
}

fn is_module(src: &Path, name: &str) -> bool {
    src.join(format!("{name}.rs")).exists() || src.join(name).is_dir()
}

#[test]
fn no_module_imports_a_higher_layer() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let edges = uses(&src);
    let mut problems = Vec::new();
    for (from, targets) in &edges {
        for (to, file) in targets {
            if !is_module(&src, to) {
                problems.push(format!(
                    "{file}: `crate::{to}` is not a top-level module; name the module itself, so the layers can be checked"
                ));
                continue;
            }
            if from == SIMULATORS {
                problems.push(format!("{file}: the simulators must not use the gateway's `{to}`"));
                continue;
            }
            if to == SIMULATORS {
                let allowed = ["server", "commands"];
                if !allowed.contains(&from.as_str()) {
                    problems.push(format!("{file}: only the composition root and commands may start simulators"));
                }
                continue;
            }
            match (layer_of(from), layer_of(to)) {
                (Some(a), Some(b)) if b > a => problems.push(format!(
                    "{file}: `{from}` ({}) imports `{to}` ({}), a higher layer; move the shared piece down",
                    LAYERS[a].0, LAYERS[b].0
                )),
                (None, _) => problems.push(format!("`{from}` is in no layer: add it to LAYERS and ARCHITECTURE.md")),
                (_, None) => problems.push(format!("`{to}` is in no layer: add it to LAYERS and ARCHITECTURE.md")),
                _ => {}
            }
        }
    }
    assert!(problems.is_empty(), "layer rule broken:\n{}", problems.join("\n"));
    // The check saw the real structure (an empty scan would pass trivially).
    assert!(edges.get("server").is_some_and(|t| t.contains_key("frontdoor") && t.contains_key("middleware")));
    assert!(edges.get("frontdoor").is_some_and(|t| t.contains_key("mapping")));
}

#[test]
fn every_top_level_module_is_in_a_layer() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut missing = Vec::new();
    for entry in std::fs::read_dir(&src).unwrap().map(Result::unwrap) {
        let name = entry.file_name().to_str().unwrap().to_string();
        let module = name.strip_suffix(".rs").unwrap_or(&name);
        if ["lib", "main", SIMULATORS].contains(&module) {
            continue;
        }
        if layer_of(module).is_none() {
            missing.push(module.to_string());
        }
    }
    assert!(missing.is_empty(), "modules in no layer: {missing:?}");
}
