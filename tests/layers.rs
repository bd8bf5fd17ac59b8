//! Tier: pure (reads the source tree; starts nothing).
//!
//! The layers of `src/` as the imports show them. Each top-level module (`status`, `store`,
//! `http`, …; `lib.rs` and `main.rs` are the top and wire everything) imports others through
//! `crate::<module>`; those references make a directed graph. The layers hold when:
//! - `base/` (the ground floor) imports nothing of ours, and `model/` nothing but `base/`;
//! - the graph has no cycle: then it has an order in which no module imports one above it.
//!
//! The cycles that are still there (issue 20 is breaking them up) are listed in
//! [`KNOWN_CYCLE_EDGES`]. An edge on a cycle that is not listed fails the test (no new cycle), and
//! so does a listed edge that is no longer on a cycle (the list only shrinks: remove it).
//! Test modules (`#[cfg(test)] mod tests` to the end of a file) are not counted.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Edges `from → to` that lie on an import cycle today: debt to pay, never to add to. Empty since
/// issue 20's first steps (the `config ↔ webhooks`, `events ↔ observe` and `status ↔ store` cycles,
/// 18 edges, are gone); it stays so that a cycle can only come back on purpose, with a reason.
const KNOWN_CYCLE_EDGES: &[(&str, &str)] = &[];

type Graph = BTreeMap<String, BTreeSet<String>>;

/// Every `crate::<module>` reference of each top-level module's files outside their tests.
fn import_graph(src: &Path) -> Graph {
    let mut graph = Graph::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read src") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path.strip_prefix(src).unwrap();
            let first = rel
                .components()
                .next()
                .unwrap()
                .as_os_str()
                .to_string_lossy();
            let module = first.trim_end_matches(".rs").to_string();
            if module == "lib" || module == "main" {
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("read source");
            let code = match text.find("#[cfg(test)]\nmod tests") {
                Some(i) => &text[..i],
                None => &text[..],
            };
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
