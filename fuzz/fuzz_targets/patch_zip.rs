//! Bytes -> the patch zip reader (`crates/server/src/appzip.rs`, included as it is). Any panic
//! is a bug; so is an accepted zip with a file outside the app layout, and an accepted zip whose
//! files, written again and read back, are not the same files.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../crates/server/src/appzip.rs"]
#[allow(dead_code)]
mod appzip;

fuzz_target!(|data: &[u8]| {
    // The bytes as a zip.
    if let Ok(files) = appzip::read_zip(data) {
        let total: usize = files.values().map(String::len).sum();
        assert!(total as u64 <= appzip::MAX_UNPACKED);
        for path in files.keys() {
            assert!(appzip::is_app_file(path), "{path:?}");
            assert!(
                !path.split('/').any(|p| p == ".." || p.is_empty()),
                "{path:?}"
            );
        }
        let again = appzip::write_zip("app", &files).expect("write");
        assert_eq!(appzip::read_zip(&again).expect("read again"), files);
    }
    // Files named by the input: each either refused or round-tripped.
    let text = String::from_utf8_lossy(data);
    let mut files = std::collections::BTreeMap::new();
    for (i, line) in text.lines().take(16).enumerate() {
        let (name, body) = line.split_once('=').unwrap_or((line, ""));
        files.insert(name.to_string(), format!("{body}{i}"));
    }
    if let Ok(zip) = appzip::write_zip("top", &files) {
        if let Ok(read) = appzip::read_zip(&zip) {
            for (path, body) in &read {
                assert!(appzip::is_app_file(path), "{path:?}");
                assert_eq!(files.get(path), Some(body), "{path:?}");
            }
        }
    }
});
