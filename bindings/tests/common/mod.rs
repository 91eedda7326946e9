//! What the binding tests share: the built library, the in-tree generator,
//! and a Python virtual environment with eth-account.

#![allow(dead_code, unreachable_pub)]

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
};

/// The directory cargo put this package's binaries and libraries in.
fn target_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_uniffi-bindgen"))
        .parent()
        .expect("the generator's directory")
        .to_path_buf()
}

/// The `kith-ffi` shared library, built beside the generator.
///
/// `cargo test` builds the library only as an rlib for the tests to link,
/// so the cdylib that foreign code loads is built here (once per test
/// binary; a no-op when it is up to date), as the README's generate
/// command expects it to be.
pub fn library() -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let mut cargo = Command::new(env!("CARGO"));
        cargo.args(["build", "--quiet", "-p", "kith-ffi", "--lib"]);
        if target_dir().ends_with("release") {
            cargo.arg("--release");
        }
        run(&mut cargo);
    });
    let name = if cfg!(target_os = "macos") {
        "libkith_ffi.dylib"
    } else if cfg!(windows) {
        "kith_ffi.dll"
    } else {
        "libkith_ffi.so"
    };
    let path = target_dir().join(name);
    assert!(
        path.exists(),
        "{} is missing: build it with `cargo build -p kith-ffi`",
        path.display()
    );
    path
}

/// Generate `language` bindings from the built library into `out`, with
/// the in-tree generator, exactly as the README says.
pub fn generate(language: &str, out: &Path) {
    let output = Command::new(env!("CARGO_BIN_EXE_uniffi-bindgen"))
        .args([
            "generate",
            "--no-format",
            "--language",
            language,
            "--out-dir",
        ])
        .arg(out)
        .arg(library())
        .output()
        .expect("run uniffi-bindgen");
    assert!(
        output.status.success(),
        "generating {language} bindings failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Python bindings in `out`, with the library beside the module (where
/// the generated `kith.py` loads it from).
pub fn python_module(out: &Path) {
    generate("python", out);
    let library = library();
    std::fs::copy(
        &library,
        out.join(library.file_name().expect("a file name")),
    )
    .expect("copy the library beside the module");
}

/// The Python of a virtual environment with the test requirements
/// (eth-account), made once under the target directory and reused. None,
/// after one line saying why, when there is no `python3` and
/// `KITH_SKIP_PYTHON=1` is set; without that variable a missing Python
/// fails the test, so that a broken machine cannot pass silently.
pub fn python() -> Option<PathBuf> {
    static PYTHON: OnceLock<Option<PathBuf>> = OnceLock::new();
    PYTHON
        .get_or_init(|| {
            let found = Command::new("python3")
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success());
            if !found {
                let why =
                    "python3 is not on PATH; the Python binding tests need Python 3.9 or later";
                if std::env::var_os("KITH_SKIP_PYTHON").is_some() {
                    println!("skipped: {why} (KITH_SKIP_PYTHON is set)");
                    return None;
                }
                panic!("{why}; set KITH_SKIP_PYTHON=1 to skip them");
            }
            let venv = target_dir()
                .parent()
                .expect("the target directory")
                .join("kith-ffi-venv");
            let python = venv.join("bin").join("python");
            let marker = venv.join("requirements.installed");
            let requirements =
                Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/requirements.txt");
            let wanted = std::fs::read_to_string(&requirements).expect("read requirements.txt");
            if std::fs::read_to_string(&marker).ok().as_deref() != Some(wanted.as_str()) {
                run(Command::new("python3").args(["-m", "venv"]).arg(&venv));
                run(Command::new(&python)
                    .args([
                        "-m",
                        "pip",
                        "install",
                        "--quiet",
                        "--disable-pip-version-check",
                        "-r",
                    ])
                    .arg(&requirements));
                std::fs::write(&marker, wanted).expect("mark the environment ready");
            }
            Some(python)
        })
        .clone()
}

fn run(command: &mut Command) {
    let output = command.output().expect("run a setup command");
    assert!(
        output.status.success(),
        "{command:?} failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Run a Python script with the generated module importable; returns its
/// standard output, and fails the test with its output if it fails.
pub fn run_python(python: &Path, module_dir: &Path, script: &Path, env: &[(&str, &str)]) -> String {
    let output = Command::new(python)
        .arg(script)
        .env("PYTHONPATH", module_dir)
        .envs(env.iter().copied())
        .output()
        .expect("run python");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    print!("{stdout}");
    eprint!("{stderr}");
    assert!(
        output.status.success(),
        "{} failed ({}):\n{stdout}{stderr}",
        script.display(),
        output.status
    );
    stdout
}
