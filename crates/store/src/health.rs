//! Whether the SQLite files this process opened are still the ones on disk.
//!
//! A deleted or replaced database file goes on working through the descriptors SQLite holds:
//! writes were acknowledged and then lost at the next start. A file overwritten in place
//! failed every query while `SELECT 1` still passed. So each file's identity (device, inode)
//! is noted at open (or when a patch attaches a new app's file) and compared before every
//! write (one `stat` per file), and its header is read on every status check; the first
//! difference marks the database failed for good: writes are refused
//! ([`StoreError::Unavailable`], a 503) until the server is restarted.

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{OnceLock, PoisonError, RwLock};

use crate::error::{Result, StoreError};

/// The first 16 bytes of every SQLite database file.
const SQLITE_HEADER: &[u8; 16] = b"SQLite format 3\0";

/// Device and inode, and the birth time where the file system keeps one: a file deleted and
/// made again often gets the inode number just freed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Identity {
    dev: u64,
    ino: u64,
    born: Option<std::time::SystemTime>,
}

impl Identity {
    fn of(meta: &std::fs::Metadata) -> Identity {
        Identity {
            dev: meta.dev(),
            ino: meta.ino(),
            born: meta.created().ok(),
        }
    }
}

#[derive(Debug)]
pub struct FileHealth {
    /// (path, identity) as opened; an app's file is added when a patch attaches it.
    files: RwLock<Vec<(PathBuf, Identity)>>,
    failed: OnceLock<String>,
}

impl FileHealth {
    /// Notes the identity of each file, as it is now (just opened).
    pub(crate) fn open(paths: &[PathBuf]) -> Result<FileHealth> {
        let mut files = Vec::with_capacity(paths.len());
        for path in paths {
            files.push((path.clone(), identify(path)?));
        }
        Ok(FileHealth {
            files: RwLock::new(files),
            failed: OnceLock::new(),
        })
    }

    /// Notes one more file (an app's, attached while the server runs), as it is now.
    pub(crate) fn add(&self, path: &Path) -> Result<()> {
        let identity = identify(path)?;
        let mut files = self.files.write().unwrap_or_else(PoisonError::into_inner);
        if !files.iter().any(|(p, _)| p == path) {
            files.push((path.to_path_buf(), identity));
        }
        Ok(())
    }

    /// The files watched, with their identity as opened.
    fn files(&self) -> Vec<(PathBuf, Identity)> {
        self.files
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Why the database was given up, if it was.
    pub fn failure(&self) -> Option<&str> {
        self.failed.get().map(String::as_str)
    }

    /// Gives the database up for good, logging why once.
    pub(crate) fn fail(&self, why: String) -> StoreError {
        if self.failed.set(why.clone()).is_ok() {
            tracing::error!(
                reason = %why,
                "the database files changed under the server: writes are refused until it is \
                 restarted"
            );
        }
        self.unavailable()
    }

    fn unavailable(&self) -> StoreError {
        StoreError::Unavailable(self.failure().unwrap_or("database failed").to_string())
    }

    /// Before a write: every file still there, and still the same file (one `stat` each).
    pub fn check_identity(&self) -> Result<()> {
        if self.failure().is_some() {
            return Err(self.unavailable());
        }
        let files = self.files.read().unwrap_or_else(PoisonError::into_inner);
        for (path, identity) in files.iter() {
            match std::fs::metadata(path) {
                Ok(m) if Identity::of(&m) == *identity => {}
                Ok(_) => return Err(self.fail(format!("{} was replaced", path.display()))),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(self.fail(format!("{} was deleted", path.display())));
                }
                Err(e) => {
                    return Err(self.fail(format!("{} cannot be read: {e}", path.display())));
                }
            }
        }
        Ok(())
    }

    /// For status and the periodic check: identity, then each file's header (a file overwritten
    /// in place keeps its inode).
    pub fn check_contents(&self) -> Result<()> {
        self.check_identity()?;
        for (path, _) in &self.files() {
            if let Err(why) = header_ok(path) {
                return Err(self.fail(why));
            }
        }
        Ok(())
    }
}

fn identify(path: &Path) -> Result<Identity> {
    let meta = std::fs::metadata(path)
        .map_err(|e| StoreError::Unavailable(format!("cannot read {}: {e}", path.display())))?;
    Ok(Identity::of(&meta))
}

/// An empty file is a database SQLite has not written yet; anything else starts with the
/// header.
fn header_ok(path: &Path) -> std::result::Result<(), String> {
    let mut head = Vec::with_capacity(16);
    std::fs::File::open(path)
        .and_then(|f| f.take(16).read_to_end(&mut head))
        .map_err(|e| format!("{} cannot be read: {e}", path.display()))?;
    if head.is_empty() || head == SQLITE_HEADER {
        Ok(())
    } else {
        Err(format!(
            "{} is no longer a SQLite database (its header was overwritten)",
            path.display()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deleted_replaced_and_overwritten_files_fail_for_good() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.db");
        let mut good = SQLITE_HEADER.to_vec();
        good.extend_from_slice(&[0; 100]);
        std::fs::write(&a, &good).unwrap();

        let h = FileHealth::open(std::slice::from_ref(&a)).unwrap();
        h.check_contents().unwrap();
        // Overwritten in place: same inode, another header.
        std::fs::write(&a, [0x5a; 116]).unwrap();
        h.check_identity().unwrap();
        assert!(h.check_contents().is_err());
        // And from then on, whatever the file becomes.
        std::fs::write(&a, &good).unwrap();
        assert!(h.check_identity().is_err());

        let h = FileHealth::open(std::slice::from_ref(&a)).unwrap();
        std::fs::remove_file(&a).unwrap();
        std::fs::write(&a, &good).unwrap();
        let e = h.check_identity().unwrap_err().to_string();
        assert!(e.contains("a.db was replaced"), "{e}");

        let h = FileHealth::open(std::slice::from_ref(&a)).unwrap();
        std::fs::remove_file(&a).unwrap();
        let e = h.check_identity().unwrap_err().to_string();
        assert!(e.contains("a.db was deleted"), "{e}");
    }
}
