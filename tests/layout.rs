//! The layout rules of DESIGN.md §10, checked on every test run: no import
//! cycle between files or between top-level modules, and every top-level
//! module imports only those `src/lib.rs` lists after it (the request path's
//! order).

use std::process::Command;

#[test]
fn no_import_cycles_and_imports_point_down_the_request_path() {
    let root = env!("CARGO_MANIFEST_DIR");
    let out = Command::new("python3")
        .arg(format!("{root}/scripts/module-graph.py"))
        .arg("--check")
        .arg(format!("{root}/src"))
        .output()
        .expect("python3 runs scripts/module-graph.py");
    assert!(
        out.status.success(),
        "the layout rules are broken:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
