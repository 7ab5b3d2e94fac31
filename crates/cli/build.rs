//! Lays out the functions a serving `cloudio` runs together in its release binary.
//!
//! The kernel maps code 64 KiB at a time around each page first run, and a server's code is
//! spread across the whole `.text`: without an order, nearly all of it ends up in the
//! process's RSS. `hot-symbols.txt` (made by `scripts/hot-symbols.py`) lists the functions
//! that run, hottest first; LLD, rustc's linker on x86_64 Linux, places them first. A name
//! the binary no longer has is skipped without a warning: a stale list costs memory, never
//! the build (`scripts/hot-symbols.py --check` tells how stale it is).

use std::path::Path;

fn main() {
    let list = Path::new(env!("CARGO_MANIFEST_DIR")).join("hot-symbols.txt");
    println!("cargo::rerun-if-changed={}", list.display());
    println!("cargo::rerun-if-env-changed=CLOUDIO_NO_SYMBOL_ORDER");
    let release = std::env::var("PROFILE").is_ok_and(|p| p == "release");
    // Where rustc links with LLD by default; elsewhere (or with another linker chosen through
    // CLOUDIO_NO_SYMBOL_ORDER=1) the binary is only laid out as the linker pleases.
    let lld_target = std::env::var("TARGET").is_ok_and(|t| t == "x86_64-unknown-linux-gnu");
    let opted_out = std::env::var_os("CLOUDIO_NO_SYMBOL_ORDER").is_some();
    if release && lld_target && !opted_out && list.is_file() {
        println!(
            "cargo::rustc-link-arg-bin=cloudio=-Wl,--symbol-ordering-file={},--no-warn-symbol-ordering",
            list.display()
        );
    }
}
