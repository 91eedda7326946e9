//! The Python bindings, generated from the built library and driven by
//! real scenarios (`tests/python/scenarios.py`): two clients over an
//! embedded node and over a `kith-node` process, a wallet signing through
//! eth-account behind the `WalletSigner` callback interface, events
//! through the `EventListener` (a client's and one conversation's), typed
//! content and remote attachments, message pages and the conversation
//! list, token-gated groups answered by a Python `GatingVerifier`, and bad
//! calls raising the mapped exceptions. Also the README's Python example,
//! run as written.

#[path = "../../transport/tests/common/cluster.rs"]
mod cluster;
mod common;

use std::path::Path;

use common::{python, python_module, run_python};

fn scenarios() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/scenarios.py")
}

#[test]
fn python_scenarios_over_an_embedded_node() {
    let Some(python) = python() else { return };
    let module = tempfile::tempdir().expect("tempdir");
    python_module(module.path());
    let out = run_python(&python, module.path(), &scenarios(), &[]);
    assert!(
        out.contains("[embedded node] all scenarios passed"),
        "{out}"
    );
}

#[test]
fn python_scenarios_over_a_kith_node_process() {
    let Some(python) = python() else { return };
    let module = tempfile::tempdir().expect("tempdir");
    python_module(module.path());
    let data = tempfile::tempdir().expect("tempdir");
    let node = cluster::standalone(data.path());
    let out = run_python(
        &python,
        module.path(),
        &scenarios(),
        &[("KITH_NODE_URL", &node.url)],
    );
    assert!(
        out.contains(&format!("[kith-node at {}] all scenarios passed", node.url)),
        "{out}"
    );
}

/// The first `python` block under the README's "From Python, Kotlin and
/// Swift" heading.
fn readme_example() -> String {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
            .expect("read README.md");
    let section = readme
        .split_once("## From Python, Kotlin and Swift")
        .expect("the README has a \"From Python, Kotlin and Swift\" section")
        .1;
    let block = section
        .split_once("```python\n")
        .expect("the section has a python block")
        .1;
    block
        .split_once("```")
        .expect("the python block ends")
        .0
        .to_owned()
}

#[test]
fn the_readme_python_example_runs_as_written() {
    let Some(python) = python() else { return };
    let module = tempfile::tempdir().expect("tempdir");
    python_module(module.path());
    let script = module.path().join("readme_example.py");
    std::fs::write(&script, readme_example()).expect("write the example");
    let out = run_python(&python, module.path(), &script, &[]);
    assert_eq!(out.trim(), "Saturday, 9am?");
}
