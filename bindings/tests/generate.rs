//! Kotlin and Swift bindings generate from the built library (CI runs this
//! through `cargo test`, so a change that breaks generation fails CI).
//! Neither compiler is on the CI machine (see the README), so the checks
//! are on the generated sources: every exported call is there, in the
//! language's async form.

mod common;

use common::generate;

fn generated(language: &str, file: &str) -> String {
    let out = tempfile::tempdir().expect("tempdir");
    generate(language, out.path());
    let path = walk(out.path())
        .into_iter()
        .find(|p| p.file_name().is_some_and(|n| n == file))
        .unwrap_or_else(|| panic!("{language}: no {file} generated"));
    std::fs::read_to_string(path).expect("read the generated source")
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read dir").flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

#[test]
fn kotlin_bindings_generate() {
    let kotlin = generated("kotlin", "kith.kt");
    for expected in [
        "suspend fun `createClient`(",
        "suspend fun `register`()",
        "suspend fun `createGroup`(",
        "suspend fun `findOrCreateDm`(",
        "suspend fun `sendText`(",
        "suspend fun `updateName`(",
        "suspend fun `sendContent`(",
        "suspend fun `sendRaw`(",
        "suspend fun `findMessages`(",
        "suspend fun `listConversations`(",
        "suspend fun `streamEvents`(",
        "suspend fun `setGating`(",
        "fun `messageContent`(",
        "fun `remoteAttachmentEncrypt`(",
        "fun `remoteAttachmentDecrypt`(",
        "interface WalletSigner",
        "interface EventListener",
        "interface GatingVerifier",
        "sealed class Content",
        "sealed class KithException",
        "class UnknownConversation(",
        "class GatingRefused(",
    ] {
        assert!(
            kotlin.contains(expected),
            "kotlin bindings lack {expected:?}"
        );
    }
}

#[test]
fn swift_bindings_generate() {
    let swift = generated("swift", "kith.swift");
    for expected in [
        "func createClient(",
        "func register() async throws",
        "func createGroup(",
        "func findOrCreateDm(",
        "func sendText(",
        "func updateName(",
        "func sendContent(",
        "func sendRaw(",
        "func findMessages(",
        "func listConversations(",
        "func streamEvents(listener: EventListener) async throws",
        "func setGating(",
        "func messageContent(",
        "func remoteAttachmentEncrypt(",
        "func remoteAttachmentDecrypt(",
        "protocol WalletSigner",
        "protocol EventListener",
        "protocol GatingVerifier",
        "enum Content",
        "enum KithError",
        "case UnknownConversation(",
        "case GatingRefused(",
    ] {
        assert!(swift.contains(expected), "swift bindings lack {expected:?}");
    }
    let header = generated("swift", "kithFFI.h");
    assert!(
        header.contains("uniffi_kith_ffi_fn_func_create_client"),
        "the C header lacks create_client"
    );
}
