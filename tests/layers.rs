//! Tier: pure (reads the source tree; starts nothing).
//!
//! The layers of `src/` as the imports show them. Each top-level module (`status`, `store`,
//! `http`, …; `lib.rs` and `main.rs` are the top and wire everything) imports others through
//! `crate::<module>`; those references make a directed graph. The layers hold when:
//! - `base/` (the ground floor) imports nothing of ours, and `model/` nothing but `base/`;
//! - the graph has no cycle, and every import goes down at least one of the [`FLOORS`] (the
//!   layer order, written down: an upward or sideways import fails, as does a module not placed).
//!
//! The cycles that are still there (issue 20 is breaking them up) are listed in
//! [`KNOWN_CYCLE_EDGES`]. An edge on a cycle that is not listed fails the test (no new cycle), and
//! so does a listed edge that is no longer on a cycle (the list only shrinks: remove it).
//! Test modules (`#[cfg(test)] mod tests` to the end of a file) are not counted.
//!
//! Inside `http/` the same holds one level down, between its parts (`pipeline`, `auth`, `state`,
//! `router`, each dialect, …, a folder counting as one part): no cycle (the router ↔ dialects
//! cycle is what one request pipeline removed), no dialect imports another dialect (a dialect
//! only translates, over the shared parts), and nothing imports the router (the top).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Edges `from → to` that lie on an import cycle today: debt to pay, never to add to. Empty since
/// issue 20's first steps (the `config ↔ webhooks`, `events ↔ observe` and `status ↔ store` cycles,
/// 18 edges, are gone); it stays so that a cycle can only come back on purpose, with a reason.
const KNOWN_CYCLE_EDGES: &[(&str, &str)] = &[];

type Graph = BTreeMap<String, BTreeSet<String>>;

/// The `.rs` files under `dir` (recursively), each with its path relative to `dir` as components
/// and its code outside its test module (`#[cfg(test)] mod tests` to the end of the file).
fn sources(dir: &Path) -> Vec<(Vec<String>, String)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("read the source tree") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path
                .strip_prefix(dir)
                .unwrap()
                .components()
                .map(|c| c.as_os_str().to_string_lossy().to_string())
                .collect();
            let mut text = std::fs::read_to_string(&path).expect("read source");
            if let Some(i) = text.find("#[cfg(test)]\nmod tests") {
                text.truncate(i);
            }
            out.push((rel, text));
        }
    }
    out
}

/// Every `crate::<module>` reference of each top-level module's files outside their tests.
fn import_graph(src: &Path) -> Graph {
    let mut graph = Graph::new();
    for (rel, code) in sources(src) {
        let module = rel[0].trim_end_matches(".rs").to_string();
        if module == "lib" || module == "main" {
            continue;
        }
        let imports = graph.entry(module.clone()).or_default();
        for line in code.lines() {
            let line = line.split("//").next().unwrap_or("");
            for (i, _) in line.match_indices("crate::") {
                // Not `some_crate::`.
                if line[..i]
                    .chars()
                    .last()
                    .is_some_and(|c| c.is_alphanumeric() || c == '_')
                {
                    continue;
                }
                let name: String = line[i + "crate::".len()..]
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() && name != module && name != "VERSION" {
                    imports.insert(name);
                }
            }
        }
    }
    graph
}

/// The floors of `src/`, bottom first: a module may import only modules on floors below its own
/// (a new module must be given its floor here). `lib.rs` and `main.rs` are above them all.
const FLOORS: &[&[&str]] = &[
    &["base", "sdnotify"],
    &["model"],
    &["store"],
    &["access", "status"],
    &["observe"],
    &["events"],
    &["webhooks"],
    &["metrics"],
    &["xmpp"],
    &["agent"],
    &["delivery"],
    &["http"],
    &["config"],
    &["cli"],
    &["man"],
];

/// The dialects of `http/`: parts that only translate, and import no other dialect.
const DIALECTS: &[&str] = &["tigase", "v1", "matrix", "waher", "ui"];

/// The import graph between the parts of `http/` (a file, or a folder as one part), from
/// `crate::http::<part>` and `super::<part>` references (resolved from the file's place).
fn http_graph(src: &Path) -> Graph {
    let mut graph = Graph::new();
    for (parts, code) in sources(&src.join("http")) {
        if parts == ["mod.rs"] {
            continue; // http's root: it only declares the parts
        }
        let part = parts[0].trim_end_matches(".rs").to_string();
        // What `super::` names from this file: http itself (a file in http/, or a folder's
        // mod.rs), or the folder (a file inside one).
        let super_is_http = parts.len() == 1 || parts.last().unwrap() == "mod.rs";
        let imports = graph.entry(part.clone()).or_default();
        let name_after = |line: &str, at: usize| -> String {
            line[at..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect()
        };
        for line in code.lines() {
            let line = line.split("//").next().unwrap_or("");
            for (i, m) in line.match_indices("crate::http::") {
                imports.insert(name_after(line, i + m.len()));
            }
            // `super::x` from a file of http/ (or a folder's mod.rs), `super::super::x` from
            // a file inside a folder, name a part of http/.
            let prefix = if super_is_http {
                "super::"
            } else {
                "super::super::"
            };
            for (i, m) in line.match_indices(prefix) {
                let after = &line[i + m.len()..];
                let before = &line[..i];
                if after.starts_with("super::") || before.ends_with("super::") {
                    continue; // a longer chain: outside http/ or counted at its own length
                }
                imports.insert(name_after(line, i + m.len()));
            }
        }
        imports.retain(|m| !m.is_empty() && *m != part);
    }
    // Items re-exported by http's root (`AppState`) are not parts.
    for imports in graph.values_mut() {
        imports.retain(|m| m.chars().next().is_some_and(|c| c.is_lowercase()));
    }
    graph
}

/// Whether `to` reaches `from` (so `from → to` lies on a cycle).
fn reaches(graph: &Graph, start: &str, goal: &str) -> bool {
    let mut seen = BTreeSet::new();
    let mut todo = vec![start.to_string()];
    while let Some(m) = todo.pop() {
        if m == goal {
            return true;
        }
        if seen.insert(m.clone()) {
            todo.extend(graph.get(&m).into_iter().flatten().cloned());
        }
    }
    false
}

fn cycle_edges(graph: &Graph) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for (from, tos) in graph {
        for to in tos {
            if reaches(graph, to, from) {
                out.insert((from.clone(), to.clone()));
            }
        }
    }
    out
}

fn render(graph: &Graph) -> String {
    graph
        .iter()
        .map(|(m, tos)| {
            format!(
                "  {m} -> {}",
                tos.iter().cloned().collect::<Vec<_>>().join(", ")
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn layers_have_no_cycle_and_the_ground_floor_imports_nothing_above() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let graph = import_graph(&src);
    assert!(
        graph.contains_key("base") && graph.len() > 10,
        "the source tree was read:\n{}",
        render(&graph)
    );
    assert_eq!(
        graph["base"],
        BTreeSet::new(),
        "base/ is the ground floor: it imports nothing of ours"
    );
    assert!(
        graph["model"].iter().all(|m| m == "base"),
        "model/ imports only base/: {:?}",
        graph["model"]
    );
    let cycles = cycle_edges(&graph);
    let known: BTreeSet<(String, String)> = KNOWN_CYCLE_EDGES
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    let new: Vec<_> = cycles.difference(&known).collect();
    let gone: Vec<_> = known.difference(&cycles).collect();
    assert!(
        new.is_empty(),
        "imports that close a cycle (a module importing one above it): {new:?}\ngraph:\n{}",
        render(&graph)
    );
    assert!(
        gone.is_empty(),
        "no longer on a cycle, remove from KNOWN_CYCLE_EDGES: {gone:?}"
    );
}

#[test]
fn http_parts_have_no_cycle_and_dialects_import_no_dialect() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let graph = http_graph(&src);
    assert!(
        ["pipeline", "router", "state", "tigase", "v1", "matrix"]
            .iter()
            .all(|p| graph.contains_key(*p)),
        "the http/ tree was read:\n{}",
        render(&graph)
    );
    let cycles = cycle_edges(&graph);
    assert!(
        cycles.is_empty(),
        "http/ parts importing each other: {cycles:?}\ngraph:\n{}",
        render(&graph)
    );
    for d in DIALECTS {
        let other: Vec<_> = graph[*d]
            .iter()
            .filter(|m| DIALECTS.contains(&m.as_str()))
            .collect();
        assert!(
            other.is_empty(),
            "dialect {d} imports dialect(s) {other:?}: move what they share into a shared part"
        );
    }
    let into_router: Vec<_> = graph
        .iter()
        .filter(|(_, tos)| tos.contains("router"))
        .map(|(m, _)| m)
        .collect();
    assert!(
        into_router.is_empty(),
        "the router is the top of http/: {into_router:?} import it"
    );
}

#[test]
fn every_import_goes_down_a_floor() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let graph = import_graph(&src);
    let floor = |m: &str| FLOORS.iter().position(|f| f.contains(&m));
    let unplaced: Vec<_> = graph.keys().filter(|m| floor(m).is_none()).collect();
    assert!(
        unplaced.is_empty(),
        "modules without a floor in FLOORS: {unplaced:?}"
    );
    let mut upward = Vec::new();
    for (from, tos) in &graph {
        for to in tos {
            if floor(to).is_none_or(|t| t >= floor(from).unwrap()) {
                upward.push(format!("{from} -> {to}"));
            }
        }
    }
    assert!(
        upward.is_empty(),
        "imports that do not go down a floor: {upward:?}\ngraph:\n{}",
        render(&graph)
    );
}

/// The checker itself: it finds a cycle where there is one, and none in a chain.
#[test]
fn the_checker_finds_cycles() {
    let graph = |edges: &[(&str, &str)]| {
        let mut g = Graph::new();
        for (a, b) in edges {
            g.entry(a.to_string()).or_default().insert(b.to_string());
            g.entry(b.to_string()).or_default();
        }
        g
    };
    let chain = graph(&[("http", "status"), ("status", "base"), ("http", "base")]);
    assert!(cycle_edges(&chain).is_empty());
    let cyclic = graph(&[("http", "status"), ("status", "store"), ("store", "status")]);
    let found: Vec<_> = cycle_edges(&cyclic).into_iter().collect();
    assert_eq!(
        found,
        vec![
            ("status".to_string(), "store".to_string()),
            ("store".to_string(), "status".to_string())
        ]
    );
}
