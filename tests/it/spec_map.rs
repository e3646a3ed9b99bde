//! Checks that the router and the spec conformance map (`spec/endpoints.tsv`, `spec/extensions.tsv`) agree.
//!
//! The map says, for every endpoint in the Matrix spec, whether Plait serves it (`implemented`,
//! `partial`) or not (`missing`), and which test covers it.
//! `spec/extensions.tsv` lists the routes the router serves that the spec does not define.
//! Path parameters are compared with their names erased, because the router takes its names
//! from ruma (`{room_id}`) and the map takes them from the spec (`{roomId}`).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;

const ENDPOINT_COLUMNS: [&str; 6] = ["api", "method", "path", "status", "test", "note"];
const EXTENSION_COLUMNS: [&str; 3] = ["method", "path", "reason"];
const APIS: [&str; 3] = ["client-server", "federation", "application-service"];
/// Prefix of a `test` entry that names a Complement test rather than a Rust test function.
const COMPLEMENT_PREFIX: &str = "complement:";

#[test]
fn router_matches_spec_map() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let endpoints = read(&root.join("spec/endpoints.tsv"));
    let extensions = read(&root.join("spec/extensions.tsv"));
    let served: Vec<(String, String)> = plait::http::registered_endpoints()
        .into_iter()
        .map(|(method, path)| (method.as_str().to_owned(), path))
        .collect();

    let rows = parse_endpoints(&endpoints).unwrap_or_else(|errors| panic!("{}", errors.join("\n")));
    let extensions =
        parse_extensions(&extensions).unwrap_or_else(|errors| panic!("{}", errors.join("\n")));
    for line in coverage(&rows) {
        println!("{line}");
    }
    let mut problems = compare(&rows, &extensions, &served);
    problems.extend(check_named_tests(&rows, &test_function_names(root)));
    assert!(
        problems.is_empty(),
        "the spec map and the router disagree ({} problems); fix spec/endpoints.tsv, \
         spec/extensions.tsv or the router, then run `python3 spec/render.py`:\n  {}",
        problems.len(),
        problems.join("\n  ")
    );
}

/// How far Plait supports one spec endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Implemented,
    Partial,
    Missing,
}

impl Status {
    fn parse(text: &str) -> Option<Status> {
        match text {
            "implemented" => Some(Status::Implemented),
            "partial" => Some(Status::Partial),
            "missing" => Some(Status::Missing),
            _ => None,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Status::Implemented => "implemented",
            Status::Partial => "partial",
            Status::Missing => "missing",
        }
    }

    fn is_claimed(self) -> bool {
        self != Status::Missing
    }
}

/// One row of `spec/endpoints.tsv`.
#[derive(Debug, Clone)]
struct MapRow {
    line: usize,
    api: String,
    method: String,
    path: String,
    status: Status,
    test: String,
    note: String,
}

/// One row of `spec/extensions.tsv`: a route outside the spec that the router may serve.
/// `method` may be `*` for any method, and a `path` ending in `*` matches every path it prefixes.
#[derive(Debug, Clone)]
struct Extension {
    line: usize,
    method: String,
    path: String,
    reason: String,
}

impl Extension {
    fn matches(&self, method: &str, normalised_path: &str) -> bool {
        let method_matches = self.method == "*" || self.method == method;
        let pattern = normalise(&self.path);
        let path_matches = match pattern.strip_suffix('*') {
            Some(prefix) => normalised_path.starts_with(prefix),
            None => pattern == normalised_path,
        };
        method_matches && path_matches
    }
}

fn read(path: &Path) -> String {
    fs::read_to_string(path)
        .unwrap_or_else(|error| panic!("cannot read {}: {error}", path.display()))
}

/// Splits a TSV file into its data lines, checking the header.
/// Blank lines and lines starting with `#` are skipped; short lines are padded with empty fields.
fn tsv_lines<'a>(
    text: &'a str,
    file: &str,
    columns: &[&str],
) -> Result<Vec<(usize, Vec<&'a str>)>, Vec<String>> {
    let mut lines = text
        .lines()
        .enumerate()
        .map(|(index, line)| (index + 1, line))
        .filter(|(_, line)| !line.trim().is_empty() && !line.starts_with('#'));
    match lines.next() {
        Some((_, header)) if header.split('\t').eq(columns.iter().copied()) => {}
        _ => {
            return Err(vec![format!(
                "{file}: the first line must be the header `{}`",
                columns.join("\\t")
            )])
        }
    }
    let mut rows = Vec::new();
    let mut errors = Vec::new();
    for (line, text) in lines {
        let mut fields: Vec<&str> = text.split('\t').collect();
        if fields.len() > columns.len() {
            errors.push(format!(
                "{file}:{line}: {} columns, expected {}",
                fields.len(),
                columns.len()
            ));
            continue;
        }
        fields.resize(columns.len(), "");
        rows.push((line, fields));
    }
    if errors.is_empty() {
        Ok(rows)
    } else {
        Err(errors)
    }
}

fn parse_endpoints(text: &str) -> Result<Vec<MapRow>, Vec<String>> {
    const FILE: &str = "spec/endpoints.tsv";
    let mut rows = Vec::new();
    let mut errors = Vec::new();
    for (line, fields) in tsv_lines(text, FILE, &ENDPOINT_COLUMNS)? {
        let [api, method, path, status, test, note] = fields[..] else {
            unreachable!("tsv_lines pads every line to the column count");
        };
        if !APIS.contains(&api) {
            errors.push(format!("{FILE}:{line}: unknown api `{api}`"));
        }
        let Some(status) = Status::parse(status) else {
            errors.push(format!("{FILE}:{line}: unknown status `{status}`"));
            continue;
        };
        rows.push(MapRow {
            line,
            api: api.to_owned(),
            method: method.to_owned(),
            path: path.to_owned(),
            status,
            test: test.trim().to_owned(),
            note: note.trim().to_owned(),
        });
    }
    if errors.is_empty() {
        Ok(rows)
    } else {
        Err(errors)
    }
}

fn parse_extensions(text: &str) -> Result<Vec<Extension>, Vec<String>> {
    let rows = tsv_lines(text, "spec/extensions.tsv", &EXTENSION_COLUMNS)?;
    Ok(rows
        .into_iter()
        .map(|(line, fields)| Extension {
            line,
            method: fields[0].to_owned(),
            path: fields[1].to_owned(),
            reason: fields[2].trim().to_owned(),
        })
        .collect())
}

/// Replaces every `{name}` in a path template with `{}`.
fn normalise(path: &str) -> String {
    let mut normalised = String::with_capacity(path.len());
    let mut in_parameter = false;
    for character in path.chars() {
        match character {
            '{' => {
                in_parameter = true;
                normalised.push_str("{}");
            }
            '}' if in_parameter => in_parameter = false,
            _ if in_parameter => {}
            _ => normalised.push(character),
        }
    }
    normalised
}

/// A method and a path template with its parameter names erased.
type RouteKey = (String, String);

/// Lists every disagreement between the map, the extensions and the routes the router serves.
/// `served` holds (METHOD, path template) pairs.
fn compare(rows: &[MapRow], extensions: &[Extension], served: &[(String, String)]) -> Vec<String> {
    let mut problems = Vec::new();
    let mut map: BTreeMap<RouteKey, &MapRow> = BTreeMap::new();
    for row in rows {
        let key = (row.method.clone(), normalise(&row.path));
        if let Some(earlier) = map.insert(key, row) {
            problems.push(format!(
                "spec/endpoints.tsv:{}: {} {} repeats line {}",
                row.line, row.method, row.path, earlier.line
            ));
        }
    }
    let served: BTreeMap<RouteKey, &str> = served
        .iter()
        .map(|(method, path)| ((method.clone(), normalise(path)), path.as_str()))
        .collect();
    check_served(&map, extensions, &served, &mut problems);
    check_claimed(rows, &served, &mut problems);
    check_extensions(rows, extensions, &served, &mut problems);
    problems
}

/// Every served route must be a spec endpoint the map does not call missing, or an extension.
fn check_served(
    map: &BTreeMap<RouteKey, &MapRow>,
    extensions: &[Extension],
    served: &BTreeMap<RouteKey, &str>,
    problems: &mut Vec<String>,
) {
    for (key, path) in served {
        let (method, normalised_path) = key;
        match map.get(key) {
            Some(row) if row.status == Status::Missing => problems.push(format!(
                "spec/endpoints.tsv:{}: the router serves {method} {} but the map says missing",
                row.line, row.path
            )),
            Some(_) => {}
            None if extensions.iter().any(|extension| extension.matches(method, normalised_path)) => {}
            None => problems.push(format!(
                "the router serves {method} {path}, which is neither in the spec map nor in spec/extensions.tsv"
            )),
        }
    }
}

/// Every row marked implemented or partial must be served and name a test; partial rows must
/// also say what is missing (a bare `deprecated` does not count).
fn check_claimed(rows: &[MapRow], served: &BTreeMap<RouteKey, &str>, problems: &mut Vec<String>) {
    for row in rows.iter().filter(|row| row.status.is_claimed()) {
        // A trailing space marks the spec's second form of an endpoint (same method and path,
        // another body, like the third-party `/invite`): the same route serves both.
        let key = (row.method.clone(), normalise(row.path.trim_end()));
        if !served.contains_key(&key) {
            problems.push(format!(
                "spec/endpoints.tsv:{}: {} {} is marked {} but the router does not serve it",
                row.line,
                row.method,
                row.path,
                row.status.as_str()
            ));
        }
        if row.test.is_empty() {
            problems.push(format!(
                "spec/endpoints.tsv:{}: {} {} is marked {} but names no test",
                row.line,
                row.method,
                row.path,
                row.status.as_str()
            ));
        }
        let explained = row
            .note
            .split(';')
            .map(str::trim)
            .any(|part| !part.is_empty() && part != "deprecated");
        if row.status == Status::Partial && !explained {
            problems.push(format!(
                "spec/endpoints.tsv:{}: {} {} is partial but its note does not say what is missing",
                row.line, row.method, row.path
            ));
        }
    }
}

/// Every extension must give a reason, stay clear of spec endpoints and match a served route,
/// so that the file cannot go stale.
fn check_extensions(
    rows: &[MapRow],
    extensions: &[Extension],
    served: &BTreeMap<RouteKey, &str>,
    problems: &mut Vec<String>,
) {
    for extension in extensions {
        let Extension {
            line,
            method,
            path,
            reason,
        } = extension;
        if reason.is_empty() {
            problems.push(format!(
                "spec/extensions.tsv:{line}: {method} {path} gives no reason"
            ));
        }
        if let Some(row) = rows
            .iter()
            .find(|row| extension.matches(&row.method, &normalise(&row.path)))
        {
            problems.push(format!(
                "spec/extensions.tsv:{line}: {method} {path} covers spec endpoint {} {} \
                 (spec/endpoints.tsv:{}); mark it there instead",
                row.method, row.path, row.line
            ));
        }
        if !served
            .keys()
            .any(|(served_method, served_path)| extension.matches(served_method, served_path))
        {
            problems.push(format!(
                "spec/extensions.tsv:{line}: {method} {path} matches no route the router serves; remove it"
            ));
        }
    }
}

/// Checks that every Rust test named in the `test` column exists as a function in `tests/` or `src/`.
/// Entries are separated by commas or spaces; `complement:TestName` entries are not checked here.
fn check_named_tests(rows: &[MapRow], functions: &BTreeSet<String>) -> Vec<String> {
    let mut problems = Vec::new();
    for row in rows {
        for entry in row.test.split([',', ' ']).filter(|entry| !entry.is_empty()) {
            if entry.starts_with(COMPLEMENT_PREFIX) {
                continue;
            }
            let name = entry.rsplit("::").next().unwrap_or(entry);
            if !functions.contains(name) {
                problems.push(format!(
                    "spec/endpoints.tsv:{}: {} {} names test `{entry}`, but no `fn {name}` exists in tests/ or src/",
                    row.line, row.method, row.path
                ));
            }
        }
    }
    problems
}

/// Collects the name of every `fn` in the `.rs` files under `tests/` and `src/`.
fn test_function_names(root: &Path) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut directories = vec![root.join("tests"), root.join("src")];
    while let Some(directory) = directories.pop() {
        let Ok(entries) = fs::read_dir(&directory) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                directories.push(path);
            } else if path.extension().is_some_and(|extension| extension == "rs") {
                names.extend(function_names(&read(&path)));
            }
        }
    }
    names
}

fn function_names(source: &str) -> Vec<String> {
    source
        .split("fn ")
        .skip(1)
        .map(|rest| {
            rest.chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect::<String>()
        })
        .filter(|name| !name.is_empty())
        .collect()
}

/// One `api: N of M endpoints` line per API, where N counts implemented and partial endpoints.
fn coverage(rows: &[MapRow]) -> Vec<String> {
    APIS.iter()
        .map(|api| {
            let api_rows = rows.iter().filter(|row| row.api == *api);
            let total = api_rows.clone().count();
            let served = api_rows.filter(|row| row.status.is_claimed()).count();
            format!("{api}: {served} of {total} endpoints")
        })
        .collect()
}

#[cfg(test)]
mod tests;
