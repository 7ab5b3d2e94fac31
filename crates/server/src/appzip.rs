//! An app directory's layout and its zip form, with nothing else: pure (std and `zip`), so the
//! fuzz target `patch_zip` includes this file as it is.
//!
//! Reading a zip trusts nothing in it: entries outside the app directory (`..`, absolute paths,
//! backslashes), links, more than [`MAX_ENTRIES`] entries or more than [`MAX_UNPACKED`] bytes
//! inflated (counted while inflating, not taken from headers) refuse the whole zip.

use std::collections::BTreeMap;
use std::io::{Cursor, Read, Write};

/// Whether `path` (relative, `/`-separated) is part of an app directory's layout; anything else
/// in a directory or a patch is ignored.
pub fn is_app_file(path: &str) -> bool {
    let parts: Vec<&str> = path.split('/').collect();
    let ext = |e: &[&str]| e.iter().any(|e| path.ends_with(e));
    match parts.as_slice() {
        ["app.json"] | ["roles.json"] => true,
        ["datasources", _] => ext(&[".json", ".js", ".ts"]),
        ["workflows", _] => ext(&[".json"]),
        ["migrations", _] => ext(&[".sql"]),
        ["migrations", d, _] => matches!(*d, "sqlite" | "postgres" | "mysql") && ext(&[".sql"]),
        ["functions", ..] => parts.len() > 1 && ext(&[".js", ".ts"]),
        _ => false,
    }
}

/// At most this many entries (files and folders) in a patch.
pub const MAX_ENTRIES: usize = 10_000;
/// At most this many bytes in all, inflated.
pub const MAX_UNPACKED: u64 = 100 * 1024 * 1024;

/// Whether a zip entry's name stays inside the app directory.
fn is_safe_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('/')
        && !name.contains('\\')
        && !name.contains('\0')
        && !name.contains(':')
        && name
            .trim_end_matches('/')
            .split('/')
            .all(|p| !p.is_empty() && p != "." && p != "..")
}

/// The files of a patch, by path in the app directory: the app directory at the zip's root or
/// in its one top folder. Files outside the app directory's layout are ignored; those inside
/// must be UTF-8 text. `Err` says why the zip is refused.
pub fn read_zip(bytes: &[u8]) -> Result<BTreeMap<String, String>, String> {
    let mut archive =
        zip::ZipArchive::new(Cursor::new(bytes)).map_err(|e| format!("not a zip archive: {e}"))?;
    if archive.len() > MAX_ENTRIES {
        return Err(format!(
            "the zip has {} entries; a patch may have at most {MAX_ENTRIES}",
            archive.len()
        ));
    }
    let mut total: u64 = 0;
    let mut entries = Vec::new();
    for i in 0..archive.len() {
        let mut file = archive
            .by_index(i)
            .map_err(|e| format!("entry {i}: cannot be read: {e}"))?;
        let name = file
            .name()
            .map_err(|e| format!("entry {i}: its name cannot be read: {e}"))?
            .to_string();
        if !is_safe_name(&name) || file.enclosed_name().is_none() {
            return Err(format!(
                "entry `{}` is outside the app directory",
                name.escape_debug()
            ));
        }
        if file.is_symlink() {
            return Err(format!(
                "entry `{}` is a link; a patch holds plain files",
                name.escape_debug()
            ));
        }
        if file.is_dir() {
            continue;
        }
        let room = MAX_UNPACKED - total;
        let mut buf = Vec::new();
        (&mut file)
            .take(room + 1)
            .read_to_end(&mut buf)
            .map_err(|e| format!("entry `{}`: cannot be inflated: {e}", name.escape_debug()))?;
        total += buf.len() as u64;
        if total > MAX_UNPACKED {
            return Err(format!(
                "the zip inflates to more than {} MiB",
                MAX_UNPACKED / (1024 * 1024)
            ));
        }
        entries.push((name, buf));
    }
    // One top folder holding `app.json` (as `create-patch` writes it, or an unzipped directory
    // zipped again): strip it.
    let top = match entries.iter().any(|(n, _)| n == "app.json") {
        true => None,
        false => entries
            .iter()
            .find_map(|(n, _)| n.strip_suffix("/app.json").filter(|t| !t.contains('/')))
            .map(|t| format!("{t}/")),
    };
    let mut files = BTreeMap::new();
    for (name, bytes) in entries {
        let path = match &top {
            Some(t) => match name.strip_prefix(t.as_str()) {
                Some(p) => p.to_string(),
                None => continue,
            },
            None => name,
        };
        if !is_app_file(&path) {
            continue;
        }
        let text = String::from_utf8(bytes).map_err(|_| format!("{path}: not UTF-8 text"))?;
        if files.insert(path.clone(), text).is_some() {
            return Err(format!("{path}: in the zip twice"));
        }
    }
    Ok(files)
}

/// A zip of `files` under the folder `top/` (deflated, plain files).
pub fn write_zip(top: &str, files: &BTreeMap<String, String>) -> Result<Vec<u8>, String> {
    use zip::write::SimpleFileOptions;
    let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let options = SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated)
        .unix_permissions(0o644);
    for (path, text) in files {
        w.start_file(format!("{top}/{path}"), options)
            .map_err(|e| e.to_string())?;
        w.write_all(text.as_bytes()).map_err(|e| e.to_string())?;
    }
    Ok(w.finish().map_err(|e| e.to_string())?.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_outside_the_directory_are_unsafe() {
        for bad in [
            "../x",
            "a/../../x",
            "/etc/passwd",
            "a\\..\\x",
            "C:/x",
            "",
            "a//b",
            "./a",
        ] {
            assert!(!is_safe_name(bad), "{bad:?}");
        }
        for good in ["app.json", "demo/app.json", "demo/datasources/", "a/b.c/d"] {
            assert!(is_safe_name(good), "{good:?}");
        }
    }

    #[test]
    fn a_written_zip_reads_back_with_its_top_folder_stripped() {
        let files: BTreeMap<String, String> = [
            ("app.json", "{}"),
            ("datasources/A.json", "{\"name\": \"A\"}"),
            ("migrations/postgres/io_20240101000000_a.sql", "SELECT 1;"),
        ]
        .into_iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
        let zip = write_zip("demo", &files).unwrap();
        assert_eq!(read_zip(&zip).unwrap(), files);
    }
}
