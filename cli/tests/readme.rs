//! The README's plugin snippet is real: every code line of the ```rust,ignore block in
//! "Writing a backend plugin" is a line of the plugin template (`examples/plugin-template`),
//! which CI builds and runs the conformance suite on.

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

/// The lines of the first ```rust,ignore block after `## Writing a backend plugin`.
fn snippet(readme: &str) -> Vec<&str> {
    let section = readme.split("\n## Writing a backend plugin\n").nth(1).expect("README has the section");
    let section = section.split("\n## ").next().unwrap_or(section);
    let block = section.split("```rust,ignore\n").nth(1).expect("the section has a ```rust,ignore block");
    block.split("\n```").next().unwrap_or(block).lines().collect()
}

#[test]
fn readme_plugin_snippet_is_in_the_template() {
    let readme = std::fs::read_to_string(root().join("README.md")).expect("README.md");
    let src = root().join("examples/plugin-template/src");
    let mut template = Vec::new();
    for entry in std::fs::read_dir(&src).expect("examples/plugin-template/src") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "rs") {
            template.push(std::fs::read_to_string(&path).expect("template source"));
        }
    }
    let lines: Vec<&str> = template.iter().flat_map(|t| t.lines()).map(str::trim).collect();
    let code: Vec<&str> =
        snippet(&readme).into_iter().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with("//")).collect();
    assert!(code.len() >= 10, "the README's plugin snippet has only {} code lines", code.len());
    assert!(code.iter().any(|l| l.starts_with("ioasis::export_plugin!(")), "the snippet shows no export");
    let missing: Vec<&&str> = code.iter().filter(|l| !lines.contains(l)).collect();
    assert!(missing.is_empty(), "README lines not in examples/plugin-template/src/*.rs: {missing:#?}");
}
