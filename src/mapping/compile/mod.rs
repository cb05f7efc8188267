//! Compiling mapping files into a [`MappingSet`], a file or a whole folder at a time, with every problem
//! found reported at once.

mod compiler;
mod files;
mod locate;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use http::StatusCode;
use regex::Regex;

use super::diagnostics::line_col;
use super::ids::IdTemplate;
use super::template::{Expression, suggest};
use super::{
    Auth, Category, ClientAuth, Diagnostic, Each, ErrorRule, INTERACTIONS, Mapping, MappingSet, Paging, Search,
    Severity, StatusMatch, StepResult, spec,
};
use compiler::{Compiler, Known, known};

impl MappingSet {
    /// Loads and compiles the mapping files directly in `dir` (see `files.rs` for which files are
    /// mappings; the others are reported as warnings); returns every problem found.
    pub fn load_dir(dir: &Path) -> Result<MappingSet, Vec<Diagnostic>> {
        let (files, mut warnings) = match files::mapping_files(dir) {
            Ok(found) => found,
            Err(unreadable) => return Err(vec![unreadable]),
        };
        // Unreadable files are errors; skipped ones stay warnings.
        let mut diagnostics: Vec<Diagnostic> =
            warnings.iter().filter(|d| d.severity == Severity::Error).cloned().collect();
        warnings.retain(|d| d.severity == Severity::Warning);
        if files.is_empty() {
            diagnostics.push(Diagnostic {
                severity: Severity::Error,
                file: dir.to_path_buf(),
                position: None,
                key: String::new(),
                message: "no mapping files (`<ehr>.toml` or `<ehr>.<variant>.toml`) found".into(),
            });
        }
        use sha2::{Digest, Sha256};
        // The version covers the files loaded, not the ones skipped: a stray backup changes nothing served.
        let mut hasher = Sha256::new();
        let mut mappings = BTreeMap::new();
        for file in files {
            hasher.update(file.name.as_bytes());
            hasher.update([0]);
            hasher.update(file.text.as_bytes());
            match compile_file(&file.name, &file.path, &file.text) {
                Ok((m, mut w)) => {
                    warnings.append(&mut w);
                    mappings.insert(file.name, Arc::new(m));
                }
                Err(mut d) => diagnostics.append(&mut d),
            }
        }
        if !diagnostics.is_empty() {
            diagnostics.append(&mut warnings);
            return Err(diagnostics);
        }
        let version = hex::encode(hasher.finalize())[..16].to_string();
        Ok(MappingSet { mappings, version, loaded_at: SystemTime::now(), dir: dir.to_path_buf(), warnings })
    }
}

/// The interactions an error rule can be limited to (a `$content` fetch's errors are translated by rules
/// that name no interaction).
const SCOPED_INTERACTIONS: &[&str] = &["create", "read", "update", "delete", "search"];

/// Deserializes the file. An unknown key on a one-line entry is reported and that line set aside, so
/// the rest of the file is still checked and every mistake shows in one run; other structural errors
/// (syntax, wrong types, missing keys) stop here.
fn parse_spec(file: &Path, text: &str) -> Result<(spec::MappingFile, Vec<Diagnostic>), Vec<Diagnostic>> {
    let mut diagnostics = Vec::new();
    let mut current = text.to_string();
    for _ in 0..50 {
        let e = match toml::from_str::<spec::MappingFile>(&current) {
            Ok(spec) => return Ok((spec, diagnostics)),
            Err(e) => e,
        };
        let position = e.span().map(|span| line_col(&current, span.start));
        diagnostics.push(Diagnostic {
            severity: Severity::Error,
            file: file.to_path_buf(),
            position,
            key: String::new(),
            message: e.message().trim().to_string(),
        });
        // Only unknown keys on single-line entries are safe to set aside and retry without.
        let Some((line, _)) = position.filter(|_| e.message().starts_with("unknown field")) else { break };
        let mut lines: Vec<String> = current.lines().map(str::to_string).collect();
        let Some(entry) = lines.get_mut(line - 1) else { break };
        let balanced = entry.matches(['[', '{']).count() == entry.matches([']', '}']).count();
        if !entry.contains('=') || !balanced {
            break;
        }
        *entry = format!("# {entry}");
        current = lines.join("\n");
    }
    Err(diagnostics)
}

/// Parses and compiles one mapping file: the mapping and its warnings, or every problem found.
pub fn compile_file(name: &str, file: &Path, text: &str) -> Result<(Mapping, Vec<Diagnostic>), Vec<Diagnostic>> {
    let (spec, mut structural) = parse_spec(file, text)?;
    let mut c = Compiler {
        file,
        text,
        diagnostics: Vec::new(),
        tables: spec.code_tables.keys().cloned().collect(),
        used_tables: BTreeSet::new(),
    };
    if spec.auth.flow != "client_credentials" {
        c.error("auth.flow", format!("unknown auth flow `{}`; supported: client_credentials", spec.auth.flow));
    }
    let client_auth = match spec.auth.client_auth.as_str() {
        "form" => ClientAuth::Form,
        "basic" => ClientAuth::Basic,
        other => {
            c.error("auth.client_auth", format!("unknown client_auth `{other}`; use `form` or `basic`"));
            ClientAuth::Form
        }
    };
    for key in spec.unsupported.keys() {
        if !INTERACTIONS.contains(&key.as_str()) {
            let hint = suggest(key, INTERACTIONS.iter().copied());
            c.error(&format!("unsupported.{key}"), format!("unknown interaction `{key}`{hint}"));
        }
    }
    if let Some(h) = &spec.request_id_header
        && http::HeaderName::from_bytes(h.as_bytes()).is_err()
    {
        c.error("request_id_header", format!("`{h}` is not a header name"));
    }
    if !spec.categories.contains_key(&spec.default_category) {
        c.error("default_category", format!("`{}` is not one of the categories defined below", spec.default_category));
    }
    // A category with a `base` takes what it does not define from that category.
    let mut resolved: BTreeMap<String, spec::CategorySpec> = BTreeMap::new();
    for (cname, cs) in &spec.categories {
        let mut cs = cs.clone();
        if let Some(base_name) = &cs.base {
            match spec.categories.get(base_name) {
                Some(base) if base.base.is_none() => {
                    let base = base.clone();
                    cs.resource = cs.resource.or(base.resource);
                    cs.create = cs.create.or(base.create);
                    cs.read = cs.read.or(base.read);
                    cs.update = cs.update.or(base.update);
                    cs.delete = cs.delete.or(base.delete);
                    cs.search = cs.search.or(base.search);
                    cs.content = cs.content.or(base.content);
                    let mut vars = base.vars;
                    vars.extend(cs.vars);
                    cs.vars = vars;
                }
                Some(_) => c.error(
                    &format!("categories.{cname}.base"),
                    format!("`{base_name}` has a base of its own; a base must be a category without one"),
                ),
                None => {
                    let hint = suggest(base_name, spec.categories.keys().map(String::as_str));
                    c.error(&format!("categories.{cname}.base"), format!("no category `{base_name}`{hint}"));
                }
            }
        }
        resolved.insert(cname.clone(), cs);
    }
    let mut categories = BTreeMap::new();
    for (cname, cs) in &resolved {
        let at = format!("categories.{cname}");
        let Some(resource) = &cs.resource else {
            c.error(&at, "a category needs a `resource` (or a `base` that has one)");
            continue;
        };
        let id = match IdTemplate::compile(&cs.id) {
            Ok(t) => Some(t),
            Err(e) => {
                c.error(&format!("{at}.id"), e);
                None
            }
        };
        if let Some(id) = &id {
            for var in id.variables() {
                if !resource.bind.contains_key(var) {
                    c.error(
                        &format!("{at}.resource.bind"),
                        format!("the id template uses `{{{var}}}` but `bind` does not define `{var}`"),
                    );
                }
            }
        }
        let bind = resource
            .bind
            .iter()
            .filter_map(|(k, v)| {
                // May read the interaction's variables (which differ per interaction), so not checked here.
                Some((k.clone(), c.expression(&format!("{at}.resource.bind.{k}"), v, None)?))
            })
            .collect();
        let base: Known = spec.connection_params.iter().chain(cs.vars.keys()).cloned().collect();
        let resource_vars: Known = resource
            .bind
            .keys()
            .cloned()
            .chain(base.iter().cloned())
            .chain(["gateway_id".to_string(), "content_url".to_string()])
            .collect();
        let template = c.template(&format!("{at}.resource.template"), &resource.template, &resource_vars);
        // Reads, updates, deletes and content fetches start from the variables encoded in the gateway id.
        let id_vars: Known = id
            .as_ref()
            .map(|t| t.variables().map(str::to_string).chain(["gateway_id".to_string()]).collect())
            .unwrap_or_default();
        let id_vars: Known = id_vars.union(&base).cloned().collect();
        let interactions = [
            ("create", &cs.create),
            ("read", &cs.read),
            ("update", &cs.update),
            ("delete", &cs.delete),
            ("content", &cs.content),
        ];
        for (name, spec) in interactions {
            let Some(spec) = spec else { continue };
            if name != "update" && !spec.unchangeable.is_empty() {
                c.error(&format!("{at}.{name}.unchangeable"), "only an update has unchangeable elements");
            }
            if name != "update" && !(spec.changeable.is_empty() && spec.ignore_changes.is_empty()) {
                c.error(&format!("{at}.{name}"), "only an update has changeable or ignored elements");
            }
            if name != "update" && !spec.append_only.is_empty() {
                c.error(&format!("{at}.{name}.append_only"), "only an update has append-only elements");
            }
            if name != "content" && !spec.params.is_empty() {
                c.error(&format!("{at}.{name}.params"), "only a content fetch takes URL parameters");
            }
            if !matches!(name, "create" | "update") && !spec.bind.is_empty() {
                c.error(
                    &format!("{at}.{name}.bind"),
                    "only a create or an update has an inbound resource to bind from",
                );
            }
        }
        let create =
            cs.create.as_ref().map(|i| c.interaction(&format!("{at}.create"), i, StepResult::Resource, base.clone()));
        let read =
            cs.read.as_ref().map(|i| c.interaction(&format!("{at}.read"), i, StepResult::Resource, id_vars.clone()));
        let update = cs
            .update
            .as_ref()
            .map(|i| c.interaction(&format!("{at}.update"), i, StepResult::Resource, id_vars.clone()));
        let delete =
            cs.delete.as_ref().map(|i| c.interaction(&format!("{at}.delete"), i, StepResult::None, id_vars.clone()));
        let content =
            cs.content.as_ref().map(|i| c.interaction(&format!("{at}.content"), i, StepResult::Bytes, id_vars));
        let search = cs.search.as_ref().map(|s| {
            let sat = format!("{at}.search");
            let params = s
                .params
                .iter()
                .filter_map(|(k, v)| {
                    if k.is_empty() || !k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
                        c.error(&format!("{sat}.params.{k}"), format!("`{k}` is not a search parameter name"));
                    }
                    Some((k.clone(), c.expression(&format!("{sat}.params.{k}"), v, Some(&known([k.as_str()])))?))
                })
                .collect();
            for p in &s.require_one_of {
                if !s.params.contains_key(p) {
                    c.error(&format!("{sat}.require_one_of"), format!("`{p}` is not in `params`"));
                }
            }
            if s.count.default == 0 || s.count.default > s.count.max {
                c.error(&format!("{sat}.count"), "need 0 < default <= max");
            }
            let paging = match s.paging.as_deref() {
                None | Some("link") => Paging::Link,
                Some("offset") => Paging::Offset,
                Some(other) => {
                    c.error(&format!("{sat}.paging"), format!("unknown paging `{other}`; use `link` or `offset`"));
                    Paging::Link
                }
            };
            let search_vars: Known = s
                .params
                .keys()
                .cloned()
                .chain(["_count".to_string(), "_offset".to_string()])
                .chain(base.iter().cloned())
                .collect();
            let steps = c.steps(&format!("{sat}.steps"), &s.steps, Some(StepResult::Bundle), search_vars.clone());
            let entries = c.expression(&format!("{sat}.entries"), &s.entries, Some(&Known::new()));
            let total = s.total.as_ref().and_then(|t| c.expression(&format!("{sat}.total"), t, Some(&Known::new())));
            let next = s.next.as_ref().and_then(|t| c.expression(&format!("{sat}.next"), t, Some(&Known::new())));
            let each = s.each.as_ref().and_then(|e| {
                let mut vars = search_vars.clone();
                for spec in &s.steps {
                    vars.extend(spec.bind.keys().cloned());
                }
                vars.extend(resource.bind.keys().cloned());
                vars.insert("gateway_id".into());
                let step = c.step(&format!("{sat}.each.step"), &e.step, &vars)?;
                Some(Each { step, drop_on: e.drop_on.clone() })
            });
            Search {
                params,
                require_one_of: s.require_one_of.clone(),
                count_default: s.count.default,
                count_max: s.count.max,
                steps,
                entries: entries.unwrap_or_else(|| Expression::compile("$.none").expect("constant path compiles")),
                total,
                next,
                paging,
                each,
            }
        });
        if let Some(id) = id {
            categories.insert(
                cname.clone(),
                Category {
                    name: cname.clone(),
                    description: cs.description.clone(),
                    vars: cs.vars.clone(),
                    id,
                    bind,
                    template,
                    create,
                    read,
                    update,
                    delete,
                    search,
                    content,
                },
            );
        }
    }
    let mut errors = Vec::new();
    for (i, r) in spec.errors.iter().enumerate() {
        let at = format!("errors[{i}]");
        let status = match (r.status.parse::<u16>(), r.status.strip_suffix("xx").and_then(|c| c.parse::<u16>().ok())) {
            (Ok(s), _) if (100..=599).contains(&s) => Some(StatusMatch::Exact(s)),
            (_, Some(class)) if (1..=5).contains(&class) => Some(StatusMatch::Class(class)),
            _ => {
                c.error(&format!("{at}.status"), format!("`{}` is neither a status (404) nor a class (5xx)", r.status));
                None
            }
        };
        let gateway_status = StatusCode::from_u16(r.gateway_status).ok().filter(|s| s.as_u16() >= 400);
        if gateway_status.is_none() {
            c.error(&format!("{at}.gateway_status"), "must be an HTTP error status (400-599)");
        }
        let code = c.issue_code(&format!("{at}.code"), &r.code);
        let message = c.text_template(&format!("{at}.message"), &r.message, None);
        let when = r.when.as_ref().and_then(|w| c.expression(&format!("{at}.when"), w, None));
        let matches = r
            .matches
            .as_ref()
            .and_then(|p| Regex::new(p).map_err(|e| c.error(&format!("{at}.matches"), e.to_string())).ok());
        if r.matches.is_some() && r.when.is_none() {
            c.error(&format!("{at}.matches"), "`matches` tests the value of `when`; add `when`");
        }
        let expressions = r.expressions.as_ref().and_then(|e| c.expression(&format!("{at}.expressions"), e, None));
        for (j, interaction) in r.interactions.iter().enumerate() {
            if !SCOPED_INTERACTIONS.contains(&interaction.as_str()) {
                let hint = suggest(interaction, SCOPED_INTERACTIONS.iter().copied());
                c.error(
                    &format!("{at}.interactions[{j}]"),
                    format!("`{interaction}` is not one of {}{hint}", SCOPED_INTERACTIONS.join(", ")),
                );
            }
        }
        if let (Some(status), Some(gateway_status), Some(message)) = (status, gateway_status, message) {
            errors.push(ErrorRule {
                status,
                interactions: r.interactions.clone(),
                when,
                matches,
                expressions,
                gateway_status,
                code,
                retryable: r.retryable,
                message,
            });
        }
    }
    for (i, part) in spec.redact.id_parts.iter().enumerate() {
        if !categories.values().any(|cat: &Category| cat.id.variables().any(|v| v == part)) {
            c.error(
                &format!("redact.id_parts[{i}]"),
                format!("`{part}` is not a variable of any category's `id` template"),
            );
        }
    }
    for table in spec.code_tables.keys() {
        if !c.used_tables.contains(table) {
            c.warning(
                &format!("code_tables.{table}"),
                format!("code table `{table}` is never used by a `code({table})` transform"),
            );
        }
    }
    structural.append(&mut c.diagnostics);
    c.diagnostics = structural;
    if c.diagnostics.iter().any(|d| d.severity == Severity::Error) {
        return Err(c.diagnostics);
    }
    Ok((
        Mapping {
            name: name.to_string(),
            ehr: spec.ehr,
            display_name: spec.display_name,
            default_category: spec.default_category,
            auth: Auth {
                client_auth,
                scope: spec.auth.scope,
                refresh_before_expiry_secs: spec.auth.refresh_before_expiry_secs,
            },
            unsupported: spec.unsupported,
            categories,
            code_tables: spec.code_tables,
            errors,
            connection_params: spec.connection_params,
            request_id_header: spec.request_id_header,
            category_extension: spec.category_extension,
            max_upload_bytes: spec.max_upload_bytes,
            redact: spec.redact,
        },
        c.diagnostics,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_mappings_compile() {
        let set = MappingSet::load_dir(Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/mappings")))
            .unwrap_or_else(|d| panic!("{}", d.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("\n")));
        let canvas = set.get("canvas").expect("canvas mapping");
        assert_eq!(canvas.display_name, "Canvas Medical");
        assert!(canvas.category(&canvas.default_category).is_some());
        assert_eq!(set.version.len(), 16);
    }

    #[test]
    fn all_mistakes_are_reported_with_lines() {
        let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/mappings/canvas.toml")).unwrap();
        let broken = text
            .replacen("| location_id", "| location_idd", 1)
            .replacen("entries = \"$.entry[*].resource\"", "entries = \"$.entry[*.resource\"", 1)
            .replacen("code = \"not-found\"", "code = \"notfound\"", 1);
        let d = compile_file("canvas", Path::new("canvas.toml"), &broken).unwrap_err();
        let all = d.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("\n");
        assert!(all.contains("unknown transform `location_idd`; did you mean `location_id`?"), "{all}");
        assert!(all.contains("bad JSONPath"), "{all}");
        assert!(all.contains("unknown OperationOutcome code `notfound`; did you mean `not-found`?"), "{all}");
        assert_eq!(d.len(), 3, "{all}");
        for diag in &d {
            let (line, _) = diag.position.expect("position");
            let text_line = broken.lines().nth(line - 1).unwrap();
            assert!(
                ["location_idd", "$.entry[*.resource", "notfound"].iter().any(|n| text_line.contains(n)),
                "{diag} points at `{text_line}`"
            );
        }
    }

    #[test]
    fn redact_id_parts_must_be_id_template_variables() {
        let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/mappings/canvas.toml")).unwrap();
        let broken = text.replacen("id_parts = [\"media_id\"]", "id_parts = [\"media_id\", \"patient\"]", 1);
        assert_ne!(broken, text);
        let d = compile_file("canvas", Path::new("canvas.toml"), &broken).unwrap_err();
        let all = d.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("\n");
        assert!(all.contains("`patient` is not a variable of any category's `id` template"), "{all}");
        let (line, _) = d[0].position.expect("position");
        assert!(broken.lines().nth(line - 1).unwrap().contains("id_parts"), "{all}");
    }

    #[test]
    fn unknown_variables_and_code_tables_are_errors_unused_tables_and_dead_steps_warnings() {
        let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/mappings/canvas.toml")).unwrap();
        let broken = text
            .replacen("path = \"/Media/{media_id}/files/content\"", "path = \"/Media/{media_idd}/files/content\"", 1)
            .replacen("status = \"$.status\"", "status = \"$.status | code(statuses)\"", 1);
        let d = compile_file("canvas", Path::new("canvas.toml"), &broken).unwrap_err();
        let all = d.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("\n");
        assert!(all.contains("unknown variable `media_idd`; did you mean `media_id`?"), "{all}");
        assert!(all.contains("unknown code table `statuses`"), "{all}");

        let warned = format!("{text}\n[code_tables.unused]\na = \"b\"\n").replacen(
            "result = \"bytes\"",
            "result = \"bytes\"\n\n[[categories.visual-exam-finding.content.steps]]\nmethod = \"GET\"\npath = \"/x\"\nexpect = [200]\nresult = \"bytes\"",
            1,
        );
        let (_, warnings) = compile_file("canvas", Path::new("canvas.toml"), &warned).expect("warnings do not fail");
        let all = warnings.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("\n");
        assert!(warnings.iter().all(|w| w.severity == Severity::Warning));
        assert!(all.contains("code table `unused` is never used"), "{all}");
        assert!(all.contains("this step can never run"), "{all}");
    }

    #[test]
    fn template_fields_are_inspected_one_by_one_each_sources_included() {
        let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/mappings/canvas.toml")).unwrap();
        let header = "[categories.visual-exam-finding.resource.template]\n";
        let field = "pages = { \"$each\" = \"pagez | first\", \"$item\" = { title = \"{titel}\" } }\n";
        let broken = text.replacen(header, &format!("{header}{field}"), 1);
        let d = compile_file("canvas", Path::new("canvas.toml"), &broken).unwrap_err();
        let at = "categories.visual-exam-finding.resource.template.pages";
        let keys: Vec<&str> = d.iter().map(|d| d.key.as_str()).collect();
        assert_eq!(keys, [format!("{at}.$each"), format!("{at}.$item.title")], "{d:?}");
        assert!(d[0].message.contains("unknown variable `pagez`") && d[1].message.contains("unknown variable `titel`"));
        let line = broken.lines().position(|l| l.starts_with("pages =")).unwrap() + 1;
        assert!(d.iter().all(|d| d.position.map(|p| p.0) == Some(line)), "{d:?}");
    }

    #[test]
    fn unknown_keys_are_rejected_with_their_line_and_do_not_hide_other_mistakes() {
        let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/mappings/canvas.toml")).unwrap();
        let broken = text.replacen("default_category =", "colour = \"blue\"\ndefault_category =", 1).replacen(
            "| location_id",
            "| location_idd",
            1,
        );
        let d = compile_file("canvas", Path::new("canvas.toml"), &broken).unwrap_err();
        assert!(d[0].message.contains("unknown field `colour`"), "{:?}", d);
        let (line, _) = d[0].position.unwrap();
        assert!(broken.lines().nth(line - 1).unwrap().contains("colour"));
        assert!(d.iter().any(|d| d.message.contains("unknown transform `location_idd`")), "{d:?}");
    }
}
