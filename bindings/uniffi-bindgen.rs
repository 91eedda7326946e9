//! The uniffi binding generator, built from the same uniffi as
//! `kith-ffi`: `cargo run -p kith-ffi --bin uniffi-bindgen -- generate
//! --library target/debug/libkith_ffi.so --language python --out-dir out`.

fn main() {
    uniffi::uniffi_bindgen_main()
}
