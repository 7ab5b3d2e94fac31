//! `scripts/cc-hot-first`, the linker driver that resolves the hot-function list against the
//! objects being linked: exact names kept, a ThinLTO copy renamed since the list was made found
//! under its new `.llvm.<hash>`, a generic function whose instance hash changed placed by all
//! its instances, C names from static libraries passed on, everything else untouched.

use std::path::{Path, PathBuf};
use std::process::Command;

fn driver() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/cc-hot-first")
}

/// A fake `cc` that records its arguments and the ordering file it was given, then exits 3.
fn fake_cc(dir: &Path) -> PathBuf {
    let path = dir.join("fake-cc");
    std::fs::write(
        &path,
        "#!/bin/sh\nprintf '%s\\n' \"$@\" > \"$(dirname \"$0\")/args\"\n\
         for a in \"$@\"; do case $a in -Wl,--symbol-ordering-file=*)\n\
         f=${a#-Wl,--symbol-ordering-file=}; cp \"${f%%,*}\" \"$(dirname \"$0\")/order\";; esac; done\n\
         exit 3\n",
    )
    .unwrap();
    Command::new("chmod").arg("+x").arg(&path).status().unwrap();
    path
}

#[test]
fn the_hot_list_is_resolved_against_the_objects_linked() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("t.s"),
        ".text\n.globl b\nb: ret\na.llvm.42: ret\nc.llvm.7: ret\n\
         .globl _ZN3foo4poll17h0123456789abcdefE\n_ZN3foo4poll17h0123456789abcdefE: ret\n\
         _ZN3foo4poll17hfedcba9876543210E.llvm.5: ret\nunlisted: ret\n",
    )
    .unwrap();
    let ok = Command::new("cc")
        .args(["-c", "t.s", "-o", "t.o"])
        .current_dir(d)
        .status()
        .unwrap();
    assert!(ok.success());
    std::fs::write(
        d.join("list.txt"),
        "# a comment\nb\na.llvm.99\nc.llvm.7\n_ZN3foo4poll17h1111111111111111E\nsqlite3Step\n",
    )
    .unwrap();
    let cc = fake_cc(d);
    let out = Command::new(driver())
        .args([
            "t.o",
            "-Wl,--symbol-ordering-file=list.txt,--no-warn-symbol-ordering",
            "-o",
            "x",
        ])
        .env("CLOUDIO_LINKER_CC", &cc)
        .current_dir(d)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(3),
        "the linker's status is the driver's"
    );
    let order = std::fs::read_to_string(d.join("order")).unwrap();
    assert_eq!(
        order.lines().collect::<Vec<_>>(),
        [
            "b",
            "a.llvm.42",
            "c.llvm.7",
            "_ZN3foo4poll17h0123456789abcdefE",
            "_ZN3foo4poll17hfedcba9876543210E.llvm.5",
            "sqlite3Step",
        ]
    );
    let args = std::fs::read_to_string(d.join("args")).unwrap();
    let args: Vec<&str> = args.lines().collect();
    assert_eq!(args.len(), 4, "{args:?}");
    assert_eq!((args[0], args[2], args[3]), ("t.o", "-o", "x"));
    assert!(
        args[1].starts_with("-Wl,--symbol-ordering-file=/")
            && args[1].ends_with(",--no-warn-symbol-ordering")
            && !args[1].contains("list.txt"),
        "{}",
        args[1]
    );
}

#[test]
fn without_a_hot_list_the_arguments_pass_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let cc = fake_cc(dir.path());
    let out = Command::new(driver())
        .args(["a.o", "-Wl,--as-needed", "-o", "with space"])
        .env("CLOUDIO_LINKER_CC", &cc)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let args = std::fs::read_to_string(dir.path().join("args")).unwrap();
    assert_eq!(
        args.lines().collect::<Vec<_>>(),
        ["a.o", "-Wl,--as-needed", "-o", "with space"]
    );
}
