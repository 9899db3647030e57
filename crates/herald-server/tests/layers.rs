//! The layers of herald-server, checked: every `crate::` path in a module's
//! code (comments aside) must name its own top-level module or one of a
//! lower layer. An upward import (a circle in the making) fails here, with
//! the file and the line.
//!
//! The order, bottom to top, is the one docs/architecture.md gives.

use std::path::{Path, PathBuf};

/// Top-level modules by layer, bottom first. Modules of one layer may not
/// import each other.
const LAYERS: &[&[&str]] = &[
    &["edge", "error", "metrics"],
    &["ws"],
    &["access"],
    &["config"],
    &["state"],
    &["protocol"],
    &["transport"],
    &["http"],
    &["lib"],
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&module))
}

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).expect("src is readable");
    for entry in entries {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a source file belongs to.
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).expect("under src");
    let first = rel
        .components()
        .next()
        .expect("a component")
        .as_os_str()
        .to_string_lossy()
        .into_owned();
    first.trim_end_matches(".rs").to_string()
}

/// Every `crate::NAME` in the code of `text` (comments left out), with its line.
fn crate_paths(text: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let code = match line.find("//") {
            Some(i) => &line[..i],
            None => line,
        };
        let mut rest = code;
        while let Some(i) = rest.find("crate::") {
            let after = &rest[i + "crate::".len()..];
            let name: String = after
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            // `crate::{a, b}` groups are not used in this crate; a name is
            // always spelled out.
            if !name.is_empty() {
                found.push((n + 1, name));
            }
            rest = after;
        }
    }
    found
}

#[test]
fn imports_only_go_down() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    assert!(files.len() > 20, "found the sources: {files:?}");
    let mut upward = Vec::new();
    let mut seen_modules = std::collections::BTreeSet::new();
    for file in &files {
        let module = module_of(&src, file);
        let Some(own) = layer_of(&module) else {
            upward.push(format!(
                "{}: module `{module}` has no layer in LAYERS",
                file.display()
            ));
            continue;
        };
        seen_modules.insert(module.clone());
        let text = std::fs::read_to_string(file).expect("readable");
        for (line, target) in crate_paths(&text) {
            if target == module {
                continue;
            }
            match layer_of(&target) {
                Some(layer) if layer < own => {}
                Some(_) => upward.push(format!(
                    "{}:{line}: `{module}` imports `crate::{target}`, which is not below it",
                    file.display()
                )),
                // Items of lib.rs itself (`crate::memory_node`, `crate::Config`).
                None if own == layer_of("lib").expect("lib has a layer") => {}
                None => upward.push(format!(
                    "{}:{line}: `{module}` uses `crate::{target}` from lib.rs, the top",
                    file.display()
                )),
            }
        }
    }
    assert!(
        upward.is_empty(),
        "imports against the layers:\n{}",
        upward.join("\n")
    );
    for layer in LAYERS {
        for module in *layer {
            assert!(
                seen_modules.contains(*module),
                "LAYERS names `{module}`, which has no source file: update the list"
            );
        }
    }
}

#[test]
fn the_rules_know_no_http_framework() {
    let access = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/access");
    let mut files = Vec::new();
    sources(&access, &mut files);
    for file in files {
        let text = std::fs::read_to_string(&file).expect("readable");
        for (n, line) in text.lines().enumerate() {
            assert!(
                !line.trim_start().starts_with("use axum") && !line.contains("axum::"),
                "{}:{}: the rules use axum: {line}",
                file.display(),
                n + 1
            );
        }
    }
}
