//! Repository rules that a test can check: every Rust file starts with a `//!` module doc,
//! imports inside `src/` follow the dependency direction written in `docs/ARCHITECTURE.md`, and
//! every tree has one owner, the one that page names.

use std::path::Path;

fn rust_files(dir: &Path, files: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, files);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            files.push(path);
        }
    }
}

#[test]
fn every_rust_file_starts_with_a_module_doc() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for dir in ["src", "tests", "benches"] {
        if root.join(dir).exists() {
            rust_files(&root.join(dir), &mut files);
        }
    }
    assert!(files.len() > 20, "found only {} files", files.len());
    let missing: Vec<_> = files
        .iter()
        .filter(|file| {
            !std::fs::read_to_string(file)
                .unwrap()
                .trim_start()
                .starts_with("//!")
        })
        .map(|file| file.strip_prefix(root).unwrap().display().to_string())
        .collect();
    assert!(
        missing.is_empty(),
        "files without a //! module doc: {missing:?}"
    );
}

/// The section of `docs/ARCHITECTURE.md` that the dependency test reads.
const DIRECTION_SECTION: &str = "## Dependency direction";

/// The layers (top first) and the known exceptions written in `docs/ARCHITECTURE.md`.
struct Direction {
    /// Each layer's units, as module paths without `crate::` (`crate` itself is the crate root).
    layers: Vec<Vec<String>>,
    /// `(importing module glob, imported path, reason)`.
    exceptions: Vec<(String, String, String)>,
}

impl Direction {
    fn read(root: &Path) -> Self {
        let text = std::fs::read_to_string(root.join("docs/ARCHITECTURE.md")).unwrap();
        let section = text
            .split_once(DIRECTION_SECTION)
            .expect("docs/ARCHITECTURE.md has a Dependency direction section")
            .1;
        let section = section.split("\n## ").next().unwrap();
        let blocks: Vec<&str> = section
            .split("```text\n")
            .skip(1)
            .map(|block| block.split("```").next().unwrap())
            .collect();
        assert_eq!(
            blocks.len(),
            2,
            "the section has a layer block and an exception block"
        );
        let layers = blocks[0]
            .lines()
            .filter(|line| !line.trim().is_empty())
            .map(|line| line.split_whitespace().map(str::to_owned).collect())
            .collect();
        let exceptions = blocks[1]
            .lines()
            .filter(|line| !line.trim().is_empty())
            .map(|line| {
                let (paths, reason) = line.split_once(": ").expect("`from -> to: reason`");
                let (from, to) = paths.split_once(" -> ").expect("`from -> to: reason`");
                assert!(
                    !reason.trim().is_empty(),
                    "exception without a reason: {line}"
                );
                (from.trim().into(), to.trim().into(), reason.trim().into())
            })
            .collect();
        Self { layers, exceptions }
    }

    /// The unit a module belongs to (the longest listed prefix of its path) and that unit's layer;
    /// `None` when the module falls under a unit that lists some of its submodules but not it.
    fn place(&self, module: &[String]) -> Option<(String, usize)> {
        let name = module_name(module);
        let mut best: Option<(String, usize)> = None;
        for (index, layer) in self.layers.iter().enumerate() {
            for unit in layer {
                let covers =
                    unit == "crate" || name == *unit || name.starts_with(&format!("{unit}::"));
                if covers
                    && best
                        .as_ref()
                        .is_none_or(|(found, _)| depth(unit) > depth(found))
                {
                    best = Some((unit.clone(), index));
                }
            }
        }
        let (unit, layer) = best?;
        let split = unit != name
            && self.layers.iter().flatten().any(|other| {
                other != &unit && (unit == "crate" || other.starts_with(&format!("{unit}::")))
            });
        (!split).then_some((unit, layer))
    }

    fn excepted(&self, module: &str, imported: &str) -> Option<usize> {
        self.exceptions.iter().position(|(from, to, _)| {
            let from_matches = match from.strip_suffix("::*") {
                Some(prefix) => module == prefix || module.starts_with(&format!("{prefix}::")),
                None => module == from,
            };
            from_matches && (imported == to || imported.starts_with(&format!("{to}::")))
        })
    }
}

/// How many path segments a unit has (`crate`, the root, has none).
fn depth(unit: &str) -> usize {
    if unit == "crate" {
        0
    } else {
        unit.split("::").count()
    }
}

fn module_name(module: &[String]) -> String {
    if module.is_empty() {
        "crate".into()
    } else {
        module.join("::")
    }
}

/// Blanks comments, string and character literals, `#[cfg(test)]` items and `pub(in …)`
/// restrictions, keeping line breaks so that positions still give line numbers.
fn code_only(text: &str) -> Vec<char> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = chars.clone();
    let blank = |out: &mut Vec<char>, from: usize, to: usize| {
        for c in &mut out[from..to] {
            if *c != '\n' {
                *c = ' ';
            }
        }
    };
    let at = |i: usize, pattern: &str| {
        chars[i..]
            .iter()
            .take(pattern.len())
            .copied()
            .eq(pattern.chars())
    };
    let mut i = 0;
    while i < chars.len() {
        let start = i;
        if at(i, "//") {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if at(i, "/*") {
            i = (i + 2..chars.len())
                .find(|&j| at(j, "*/"))
                .map_or(chars.len(), |j| j + 2);
        } else if chars[i] == 'r'
            && (at(i, "r\"") || at(i, "r#"))
            && (i == 0 || !chars[i - 1].is_alphanumeric())
        {
            let hashes = chars[i + 1..].iter().take_while(|&&c| c == '#').count();
            if chars.get(i + 1 + hashes) != Some(&'"') {
                i += 1;
                continue;
            }
            let close: String = std::iter::once('"')
                .chain(std::iter::repeat_n('#', hashes))
                .collect();
            i = (i + 2 + hashes..chars.len())
                .find(|&j| at(j, &close))
                .unwrap()
                + close.len();
        } else if chars[i] == '"' {
            i += 1;
            while chars[i] != '"' {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
        } else if chars[i] == '\'' {
            // A character literal ('a', '\n', '\u{..}'), not a lifetime.
            let end = if chars.get(i + 1) == Some(&'\\') {
                (i + 3..chars.len()).find(|&j| chars[j] == '\'')
            } else {
                (chars.get(i + 2) == Some(&'\'')).then_some(i + 2)
            };
            i = end.map_or(i + 1, |end| end + 1);
            if end.is_none() {
                continue;
            }
        } else {
            i += 1;
            continue;
        }
        blank(&mut out, start, i);
    }
    let text: String = out.iter().collect();
    let mut out: Vec<char> = text.chars().collect();
    for marker in ["#[cfg(test)]", "pub(in "] {
        let mut from = 0;
        while let Some(found) = out.iter().collect::<String>()[from..].find(marker) {
            let start = from + found;
            let mut end = start + marker.len();
            if marker == "pub(in " {
                end = (end..out.len()).find(|&j| out[j] == ')').unwrap() + 1;
            } else {
                // The item ends at its first `;` or at the brace closing its first `{`.
                while out[end] != ';' && out[end] != '{' {
                    end += 1;
                }
                if out[end] == '{' {
                    let mut depth = 0;
                    loop {
                        match out[end] {
                            '{' => depth += 1,
                            '}' => depth -= 1,
                            _ => {}
                        }
                        if depth == 0 {
                            break;
                        }
                        end += 1;
                    }
                }
                end += 1;
            }
            blank(&mut out, start, end);
            from = end;
        }
    }
    out
}

/// The paths a `use` tree names, e.g. `crate::{a::b, c::{d, e as f}}` → `crate::a::b`,
/// `crate::c::d`, `crate::c::e`.
fn expand_use(tree: &str, prefix: &str, paths: &mut Vec<String>) {
    let mut depth = 0;
    let mut part_start = 0;
    let mut parts = Vec::new();
    for (index, c) in tree.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&tree[part_start..index]);
                part_start = index + 1;
            }
            _ => {}
        }
    }
    parts.push(&tree[part_start..]);
    for part in parts
        .into_iter()
        .map(str::trim)
        .filter(|part| !part.is_empty())
    {
        if let Some(brace) = part.find('{') {
            let head = part[..brace].trim_end_matches("::");
            let inner = &part[brace + 1..part.rfind('}').unwrap()];
            expand_use(inner, &join(prefix, head), paths);
        } else {
            let path = part.split(" as ").next().unwrap().trim();
            paths.push(join(prefix, path));
        }
    }
}

fn join(prefix: &str, path: &str) -> String {
    match (prefix.is_empty(), path.is_empty()) {
        (true, _) => path.into(),
        (_, true) => prefix.into(),
        _ => format!("{prefix}::{path}"),
    }
}

/// Every `crate::`, `super::` and `self::` path in a file with its line, resolved to a path from
/// the crate root (`self` and `super` against `module`).
fn crate_paths(code: &[char], module: &[String]) -> Vec<(usize, Vec<String>)> {
    let text: String = code.iter().collect();
    let line_of = |offset: usize| text[..offset].matches('\n').count() + 1;
    let mut found = Vec::new();
    let mut use_spans = Vec::new();
    let is_ident = |c: char| c.is_alphanumeric() || c == '_';
    let mut search = 0;
    while let Some(index) = text[search..].find("use ") {
        let start = search + index;
        search = start + 4;
        if text[..start].chars().next_back().is_some_and(is_ident) {
            continue;
        }
        let end = start + text[start..].find(';').unwrap();
        use_spans.push(start..end);
        let tree: String = text[start + 4..end]
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        let mut paths = Vec::new();
        expand_use(
            &tree.replace(":: ", "::").replace(" ::", "::"),
            "",
            &mut paths,
        );
        found.extend(paths.into_iter().map(|path| (line_of(start), path)));
    }
    let bytes = text.as_bytes();
    for keyword in ["crate::", "super::", "self::"] {
        for (start, _) in text.match_indices(keyword) {
            let before = text[..start].chars().next_back();
            if use_spans.iter().any(|span| span.contains(&start))
                || before.is_some_and(|c| is_ident(c) || c == ':')
            {
                continue;
            }
            let mut end = start;
            while end < bytes.len() && (is_ident(bytes[end] as char) || bytes[end] == b':') {
                end += 1;
            }
            found.push((
                line_of(start),
                text[start..end].trim_end_matches(':').to_owned(),
            ));
        }
    }
    found
        .into_iter()
        .filter_map(|(line, path)| {
            let mut segments = path.split("::").filter(|s| !s.is_empty());
            let mut resolved: Vec<String> = match segments.next()? {
                "crate" => Vec::new(),
                "self" => module.to_vec(),
                "super" => module[..module.len().saturating_sub(1)].to_vec(),
                _ => return None,
            };
            for segment in segments {
                match segment {
                    "super" => {
                        resolved.pop();
                    }
                    "self" | "*" => {}
                    _ => resolved.push(segment.to_owned()),
                }
            }
            Some((line, resolved))
        })
        .collect()
}

/// The module a source file defines (`src/service/rooms/mod.rs` → `service::rooms`).
fn module_of(root: &Path, file: &Path) -> Vec<String> {
    let relative = file
        .strip_prefix(root.join("src"))
        .unwrap()
        .with_extension("");
    let mut segments: Vec<String> = relative
        .iter()
        .map(|segment| segment.to_string_lossy().into_owned())
        .collect();
    if segments
        .last()
        .is_some_and(|last| last == "mod" || last == "lib")
    {
        segments.pop();
    }
    segments
}

/// Every `use crate::…` (and `super::`, `self::`) import and `crate::` path in `src/` goes
/// downward in the layers of docs/ARCHITECTURE.md's "Dependency direction", or is one of the
/// exceptions listed there. Test code (`#[cfg(test)]`, `tests.rs`) and the binary (`main.rs`,
/// which uses the library's public API) are not checked.
#[test]
fn imports_follow_the_dependency_direction() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let direction = Direction::read(root);
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    files.retain(|file| {
        let name = file.file_name().unwrap();
        name != "main.rs" && name != "tests.rs"
    });
    let modules: std::collections::HashSet<Vec<String>> =
        files.iter().map(|file| module_of(root, file)).collect();
    let mut problems = Vec::new();
    let mut used = vec![false; direction.exceptions.len()];
    for file in &files {
        let module = module_of(root, file);
        let shown = file.strip_prefix(root).unwrap().display().to_string();
        let Some((unit, layer)) = direction.place(&module) else {
            problems.push(format!(
                "{shown}: module {} has no place in the layers",
                module_name(&module)
            ));
            continue;
        };
        let code = code_only(&std::fs::read_to_string(file).unwrap());
        for (line, path) in crate_paths(&code, &module) {
            let target = (0..=path.len())
                .rev()
                .map(|length| path[..length].to_vec())
                .find(|prefix| modules.contains(prefix))
                .unwrap_or_default();
            let Some((target_unit, target_layer)) = direction.place(&target) else {
                problems.push(format!(
                    "{shown}:{line}: {} has no place in the layers",
                    module_name(&target)
                ));
                continue;
            };
            if target_unit == unit || target_layer > layer {
                continue;
            }
            let name = module_name(&module);
            let imported = path.join("::");
            match direction.excepted(&name, &imported) {
                Some(index) => used[index] = true,
                None => problems.push(format!(
                    "{shown}:{line}: {name} ({unit}) imports {imported} ({target_unit}), which is not below it"
                )),
            }
        }
    }
    for (index, (from, to, _)) in direction.exceptions.iter().enumerate() {
        if !used[index] {
            problems.push(format!(
                "exception `{from} -> {to}` matches no import: remove it"
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "imports against the dependency direction:\n{}",
        problems.join("\n")
    );
}

/// The trees of `store::TREES`, each with the one file under `src/service/` that opens it
/// (`tree("name")`): every tree has exactly one owner, and docs/ARCHITECTURE.md's table of
/// trees says the same.
#[test]
fn every_tree_has_one_owner_and_the_architecture_page_names_it() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let store = std::fs::read_to_string(root.join("src/store/mod.rs")).unwrap();
    let list = &store[store.find("pub const TREES").unwrap()..];
    let list = &list[..list.find("];").unwrap()];
    let trees: Vec<&str> = list.split('"').skip(1).step_by(2).collect();
    assert!(trees.len() > 50, "found only {} trees", trees.len());
    let mut files = Vec::new();
    rust_files(&root.join("src/service"), &mut files);
    let mut owners: std::collections::BTreeMap<&str, std::collections::BTreeSet<String>> = trees
        .iter()
        .map(|tree| (*tree, Default::default()))
        .collect();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        for (tree, owner) in owners.iter_mut() {
            if text.contains(&format!("tree(\"{tree}\")")) {
                let path = file.strip_prefix(root).unwrap().display().to_string();
                owner.insert(path);
            }
        }
    }
    let doc = std::fs::read_to_string(root.join("docs/ARCHITECTURE.md")).unwrap();
    let mut problems = Vec::new();
    for (tree, owner) in &owners {
        match owner.len() {
            1 => {
                let path = owner.iter().next().unwrap();
                let row = format!("| `{tree}` | `{path}` |");
                if !doc.contains(&row) {
                    problems.push(format!("docs/ARCHITECTURE.md lacks the row {row}"));
                }
            }
            0 if *tree == "global" => {}
            _ => problems.push(format!("{tree} is opened by {owner:?}")),
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
}
