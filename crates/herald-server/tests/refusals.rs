//! The table of refusals (`herald_core::refusal`) is the one source of the
//! error codes; what others list is checked against it here:
//! - the "## Errors" table of docs/protocol.md: every code with an HTTP
//!   status is there with that status (and its other status, where it has
//!   one), and the table lists no other code or status;
//! - the session protocol's list of codes in docs/session-protocol.md: the
//!   codes session replies can carry, no more, no less;
//! - the JavaScript client's `ErrorCodes` (clients/js/herald.js and its
//!   types in herald.d.ts): every code, as `UPPER_NAME: "code"`.

use std::collections::BTreeSet;
use std::path::PathBuf;

use herald_core::refusal::{Refusal, ALL};

fn repo_file(path: &str) -> String {
    let full = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("read {}: {e}", full.display()))
}

/// The text between `start` (included) and `end` (excluded).
fn section<'a>(text: &'a str, start: &str, end: &str) -> &'a str {
    let from = text
        .find(start)
        .unwrap_or_else(|| panic!("no {start:?} found"));
    let rest = &text[from..];
    let to = rest[start.len()..]
        .find(end)
        .unwrap_or_else(|| panic!("no {end:?} after {start:?}"));
    &rest[..start.len() + to]
}

/// Every `code` in backticks in `text`.
fn backticked(text: &str) -> Vec<&str> {
    text.split('`').skip(1).step_by(2).collect()
}

fn all_codes() -> BTreeSet<&'static str> {
    ALL.iter().map(|r| r.code()).collect()
}

/// `(status, code)` for every row of docs/protocol.md's error table.
fn docs_table() -> BTreeSet<(u16, String)> {
    let doc = repo_file("docs/protocol.md");
    // From "## Errors" to the next section, or to the end.
    let errors = doc
        .split_once("\n## Errors\n")
        .map(|(_, rest)| rest.split("\n## ").next().unwrap_or(rest))
        .expect("docs/protocol.md has a \"## Errors\" section");
    let mut rows = BTreeSet::new();
    for line in errors.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        // "| 400 | `a`, `b` | when |" splits into ["", "400", "`a`, `b`", "when", ""].
        let Some(status) = cells.get(1).and_then(|c| c.parse::<u16>().ok()) else {
            continue;
        };
        let codes = backticked(cells.get(2).copied().unwrap_or(""));
        assert!(!codes.is_empty(), "a row with no code: {line}");
        for code in codes {
            assert!(
                rows.insert((status, code.to_string())),
                "{status} {code} listed twice"
            );
        }
    }
    assert!(!rows.is_empty(), "no rows read from the error table");
    rows
}

#[test]
fn protocol_docs_table_matches_the_refusals() {
    let rows = docs_table();
    for (status, code) in &rows {
        let refusal = Refusal::from_code(code).unwrap_or_else(|| {
            panic!("docs/protocol.md lists {code}, which is not in herald_core::refusal::ALL")
        });
        assert!(
            refusal.status() == Some(*status) || refusal.also_status() == Some(*status),
            "docs/protocol.md says {status} {code}; the table says {:?} (also {:?})",
            refusal.status(),
            refusal.also_status()
        );
    }
    for &refusal in ALL {
        let code = refusal.code().to_string();
        for status in [refusal.status(), refusal.also_status()]
            .into_iter()
            .flatten()
        {
            assert!(
                rows.contains(&(status, code.clone())),
                "docs/protocol.md's error table lacks {status} {code}"
            );
        }
    }
}

#[test]
fn session_docs_list_matches_the_refusals() {
    let doc = repo_file("docs/session-protocol.md");
    let list = section(&doc, "Codes:\n", "\nA frame that is not valid JSON");
    let listed: BTreeSet<&str> = backticked(list).into_iter().collect();
    let session: BTreeSet<&str> = ALL
        .iter()
        .filter(|r| r.in_session())
        .map(|r| r.code())
        .collect();
    let unknown: Vec<_> = listed.difference(&session).collect();
    let missing: Vec<_> = session.difference(&listed).collect();
    assert!(
        unknown.is_empty() && missing.is_empty(),
        "docs/session-protocol.md's codes disagree with the refusals that session replies carry: \
         listed but not sent {unknown:?}, sent but not listed {missing:?}"
    );
}

/// `(NAME, code)` pairs of the `ErrorCodes` object in `text`, whose entry
/// lines look like `  NAME: "code",` (JS) or `  NAME: "code";` (types).
fn js_constants(text: &str, start: &str, end: &str) -> BTreeSet<(String, String)> {
    let block = section(text, start, end);
    let mut pairs = BTreeSet::new();
    for line in block.lines().skip(1) {
        let line = line.trim().trim_end_matches([',', ';']);
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        let code = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or_else(|| panic!("not a string constant: {line}"));
        assert!(
            pairs.insert((name.trim().to_string(), code.to_string())),
            "{line} twice"
        );
    }
    pairs
}

fn expected_constants() -> BTreeSet<(String, String)> {
    all_codes()
        .into_iter()
        .map(|c| (c.to_ascii_uppercase(), c.to_string()))
        .collect()
}

#[test]
fn js_client_constants_match_the_refusals() {
    let js = repo_file("clients/js/herald.js");
    let found = js_constants(&js, "export const ErrorCodes = Object.freeze({", "});");
    let expected = expected_constants();
    assert_eq!(
        found.difference(&expected).collect::<Vec<_>>(),
        Vec::<&(String, String)>::new(),
        "clients/js/herald.js ErrorCodes lists what the refusals do not have (or under another name)"
    );
    assert_eq!(
        expected.difference(&found).collect::<Vec<_>>(),
        Vec::<&(String, String)>::new(),
        "clients/js/herald.js ErrorCodes lacks these refusals"
    );
    let types = repo_file("clients/js/herald.d.ts");
    let typed = js_constants(&types, "export const ErrorCodes: Readonly<{", "}>;");
    assert_eq!(typed, expected, "clients/js/herald.d.ts ErrorCodes");
}

/// Every `.rs` file under `dir`.
fn rust_files(dir: &std::path::Path, out: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs")
            // `*_props.rs` are property-test modules (`#[cfg(test)] mod`).
            && !path.to_string_lossy().ends_with("_props.rs")
        {
            out.push(path);
        }
    }
}

/// The server names refusals by the enum, never by a string: a code spelled
/// out in the server's code (tests aside) would bypass the table.
#[test]
fn server_code_spells_no_code_string() {
    let mut files = Vec::new();
    rust_files(
        &PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src"),
        &mut files,
    );
    assert!(!files.is_empty());
    let mut found = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("read");
        // Unit tests (a trailing `#[cfg(test)]` module) may spell codes.
        let code_part = text.split("\n#[cfg(test)]").next().unwrap_or(&text);
        for &refusal in ALL {
            if code_part.contains(&format!("\"{}\"", refusal.code())) {
                found.push(format!("{}: \"{}\"", file.display(), refusal.code()));
            }
        }
    }
    assert!(
        found.is_empty(),
        "use herald_core::Refusal instead: {found:#?}"
    );
}

#[test]
fn api_errors_take_the_status_of_the_table() {
    for &refusal in ALL {
        let Some(status) = refusal.status() else {
            continue;
        };
        let e = herald_server::error::ApiError::new(refusal, refusal.message());
        assert_eq!(e.status.as_u16(), status, "{refusal}");
        assert_eq!(e.code, refusal);
    }
}
