//! The README as a new user meets it.
//!
//! `quick_start_builds_and_runs_in_a_new_crate` writes the quick start into a fresh
//! crate whose dependencies are the install section's lines (with `eda`'s path
//! pointed at this repository), builds it with cargo and runs it: the quick start
//! must not need a crate the install section does not list. The crate and its own
//! target directory live under this workspace's target directory
//! (`CARGO_TARGET_TMPDIR`), so later runs are incremental, and a separate target
//! directory keeps the inner cargo clear of the lock the outer one holds. The first
//! build compiles eda's dependencies once more and takes minutes.
//!
//! The other tests read the README as a repository page shows it: no rustdoc-hidden
//! lines in its code blocks, and a definition for every reference-style link.

use std::env;
use std::ffi::OsString;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

const MANIFEST_DIR: &str = env!("CARGO_MANIFEST_DIR");

fn readme() -> String {
    let path = Path::new(MANIFEST_DIR).join("README.md");
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// Progress on the real stderr: the test harness captures `eprintln!`, and a slow
/// first build should not look like a hang.
fn progress(line: &str) {
    let _ = writeln!(std::io::stderr(), "readme: {line}");
}

/// The lines of the `## <title>` section, up to the next `## ` heading.
fn section<'a>(readme: &'a str, title: &str) -> Vec<&'a str> {
    let heading = format!("## {title}");
    let mut lines = readme.lines().skip_while(|l| l.trim_end() != heading);
    assert!(
        lines.next().is_some(),
        "README.md has no `{heading}` section"
    );
    lines.take_while(|l| !l.starts_with("## ")).collect()
}

/// The first fenced block whose info string is exactly `info`.
fn first_block(lines: &[&str], info: &str, section: &str) -> String {
    let start = lines
        .iter()
        .position(|l| l.trim_end() == format!("```{info}"))
        .unwrap_or_else(|| panic!("the {section} section has no ```{info} block"));
    let mut block = String::new();
    for line in &lines[start + 1..] {
        if line.starts_with("```") {
            return block;
        }
        block.push_str(line);
        block.push('\n');
    }
    panic!("the ```{info} block of the {section} section is not closed")
}

/// The install section's `[dependencies]` lines, `eda`'s path replaced by this
/// repository's root.
fn dependencies(readme: &str) -> String {
    let toml = first_block(&section(readme, "Install"), "toml", "Install");
    let mut lines = toml.lines();
    assert_eq!(
        lines.next().map(str::trim),
        Some("[dependencies]"),
        "the install section's toml block must start with `[dependencies]`:\n{toml}"
    );
    let root = Path::new(MANIFEST_DIR).display().to_string();
    assert!(
        !root.contains('\''),
        "the repository path contains a quote: {root}"
    );
    let mut found_eda = false;
    let mut out = String::new();
    for line in lines {
        if line.trim_start().starts_with('[') {
            panic!("the install section's toml block has another table: {line}");
        }
        let line = match line.split_once('=') {
            Some((key, value)) if key.trim() == "eda" => {
                found_eda = true;
                let start = value
                    .find("path = \"")
                    .unwrap_or_else(|| panic!("`eda` is not a path dependency: {line}"));
                let rest = &value[start + "path = \"".len()..];
                let end = rest.find('"').expect("unterminated path");
                format!(
                    "eda ={}path = '{root}'{}",
                    &value[..start],
                    &rest[end + 1..]
                )
            }
            _ => line.to_string(),
        };
        out.push_str(&line);
        out.push('\n');
    }
    assert!(
        found_eda,
        "the install section does not list `eda`:\n{toml}"
    );
    out
}

/// Writes `contents` unless the file already holds it, so an unchanged quick start
/// is not rebuilt.
fn write_if_changed(path: &Path, contents: &str) {
    if fs::read_to_string(path).ok().as_deref() != Some(contents) {
        fs::write(path, contents).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    }
}

/// Runs `command`, forwarding its stderr as progress; its stdout and stderr on failure.
fn run(mut command: Command, what: &str) -> String {
    let started = Instant::now();
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: could not start {command:?}: {e}"));
    let stdout = child.stdout.take().unwrap();
    let stdout = std::thread::spawn(move || std::io::read_to_string(stdout).unwrap_or_default());
    let mut stderr = String::new();
    for line in BufReader::new(child.stderr.take().unwrap()).lines() {
        let line = line.unwrap_or_default();
        progress(&format!("  {line}"));
        stderr.push_str(&line);
        stderr.push('\n');
    }
    let status = child.wait().expect("waiting for the child");
    let stdout = stdout.join().unwrap();
    progress(&format!(
        "{what}: {status} after {:.1} s",
        started.elapsed().as_secs_f64()
    ));
    assert!(
        status.success(),
        "{what} failed ({status}): {command:?}\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
    );
    stdout
}

#[test]
fn quick_start_builds_and_runs_in_a_new_crate() {
    let readme = readme();
    let code = first_block(&section(&readme, "Quick start"), "rust", "Quick start");
    let dependencies = dependencies(&readme);

    let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let dir = tmp.join("readme-quick-start");
    let target = tmp.join("readme-quick-start-target");
    fs::create_dir_all(dir.join("src")).unwrap();
    // Its own `[workspace]`: the crate lies under this workspace's directory but is
    // not a member. Edition 2024 is what `cargo new` writes.
    let manifest = format!(
        "[package]\nname = \"readme-quick-start\"\nversion = \"0.0.0\"\nedition = \"2024\"\n\
         publish = false\n\n[workspace]\n\n[dependencies]\n{dependencies}"
    );
    write_if_changed(&dir.join("Cargo.toml"), &manifest);
    write_if_changed(&dir.join("src/main.rs"), &code);
    // The workspace's versions, so the build needs nothing this repository's build
    // has not fetched already; cargo drops the entries the crate does not use.
    fs::copy(
        Path::new(MANIFEST_DIR).join("Cargo.lock"),
        dir.join("Cargo.lock"),
    )
    .unwrap();

    progress(&format!(
        "building the quick start in {} (target {}); the first build takes minutes",
        dir.display(),
        target.display()
    ));
    let cargo = env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    let mut build = Command::new(cargo);
    build
        .args(["build", "--color", "never", "--manifest-path"])
        .arg(dir.join("Cargo.toml"))
        .current_dir(&dir)
        .env("CARGO_TARGET_DIR", &target);
    run(build, "cargo build of the quick start");

    let binary = target
        .join("debug")
        .join(format!("readme-quick-start{}", env::consts::EXE_SUFFIX));
    progress(&format!("running {}", binary.display()));
    run(Command::new(&binary), "the quick start's binary");
}

#[test]
fn code_blocks_have_no_hidden_lines() {
    let readme = readme();
    let mut in_rust = false;
    let mut hidden = Vec::new();
    for (n, line) in readme.lines().enumerate() {
        if let Some(info) = line.strip_prefix("```") {
            in_rust = !in_rust && info.split(',').next() == Some("rust");
            continue;
        }
        let code = line.trim_start();
        if in_rust && (code == "#" || code.starts_with("# ")) {
            hidden.push(format!("{}: {line}", n + 1));
        }
    }
    assert!(
        hidden.is_empty(),
        "README.md has lines rustdoc hides but a repository page shows:\n{}",
        hidden.join("\n")
    );
}

#[test]
fn every_reference_link_has_a_definition() {
    let readme = readme();
    let mut in_code = false;
    let mut definitions = Vec::new();
    let mut references = Vec::new();
    for (n, line) in readme.lines().enumerate() {
        if line.starts_with("```") {
            in_code = !in_code;
            continue;
        }
        if in_code {
            continue;
        }
        let definition = line.strip_prefix('[').and_then(|l| l.split_once("]: "));
        if let Some((label, target)) = definition.filter(|(label, _)| !label.contains(']')) {
            assert!(
                target.starts_with("https://"),
                "line {}: the link `{label}` should have an absolute target, which works on a \
                 repository page and in rustdoc alike: {line}",
                n + 1
            );
            definitions.push(label.to_lowercase());
            continue;
        }
        let mut rest = line;
        while let Some(start) = rest.find("[`") {
            let after = &rest[start + 1..];
            let Some(end) = after.find("`]") else { break };
            let label = &after[..end + 1];
            let next = after[end + 2..].chars().next();
            if !matches!(next, Some('(' | '[')) {
                references.push((n + 1, label.to_string()));
            }
            rest = &after[end + 2..];
        }
    }
    let missing: Vec<String> = references
        .iter()
        .filter(|(_, label)| !definitions.contains(&label.to_lowercase()))
        .map(|(n, label)| format!("line {n}: [{label}]"))
        .collect();
    assert!(
        missing.is_empty(),
        "README.md links with no definition (add `[label]: https://docs.rs/eda/latest/eda/...` at \
         the end):\n{}",
        missing.join("\n")
    );
}
