//! The cancellation signal: `rein.db-cancels`, a file that grows by a byte after each
//! cancellation request any process commits, so drivers (which ask before and after every model
//! call) read the requests from the database only when one was made.
//!
//! A store keeps the file open and asks its handle for the size: no path to walk, and no failed
//! lookup of a file nobody has made yet, as each ask was before (the store makes the file when it
//! opens). A handle outlives the name it was opened by, so one whose file has no link left (an
//! operator removed it, or moved another over it) is dropped and the path opened again: requests
//! made after that land in the new file, and are seen.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The signal file of a store.
#[derive(Debug)]
pub(crate) struct CancelSignal {
    path: PathBuf,
    /// The file as last opened, while it is the one at `path`.
    open: Mutex<Option<File>>,
}

impl CancelSignal {
    /// The signal beside the database at `db`, made if it is not there yet (a store that cannot
    /// make it, on a read-only directory, looks it up at each ask instead).
    pub(crate) fn beside(db: &Path) -> CancelSignal {
        let path = db.with_extension("db-cancels");
        let open = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .ok();
        CancelSignal {
            path,
            open: Mutex::new(open),
        }
    }

    /// Tells every process's drivers to look. Best effort: should it fail, the lease's heartbeat
    /// still reads the request within its period.
    pub(crate) fn ring(&self) {
        let _ = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .and_then(|mut f| std::io::Write::write_all(&mut f, b"."));
    }

    /// The file's size now (0 while there is none): it changes whenever a request is made.
    pub(crate) fn size(&self) -> u64 {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(file) = open.as_ref() {
            match file.metadata() {
                Ok(m) if m.nlink() > 0 => return m.len(),
                // Removed or replaced: the name now leads elsewhere, if anywhere.
                _ => *open = None,
            }
        }
        match File::open(&self.path) {
            Ok(file) => {
                let size = file.metadata().map(|m| m.len()).unwrap_or(0);
                *open = Some(file);
                size
            }
            Err(_) => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_signal_removed_or_replaced_under_an_open_store_is_followed_to_its_new_file() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("rein.db");
        let (asking, other) = (CancelSignal::beside(&db), CancelSignal::beside(&db));
        assert!(
            dir.path().join("rein.db-cancels").exists(),
            "made when the store opens"
        );
        assert_eq!(asking.size(), 0, "and empty");
        other.ring();
        assert_eq!(asking.size(), 1);
        // Removed: another process's next request makes it again, and that is what counts.
        std::fs::remove_file(dir.path().join("rein.db-cancels")).unwrap();
        assert_eq!(asking.size(), 0, "no file, no requests since");
        other.ring();
        other.ring();
        assert_eq!(
            asking.size(),
            2,
            "the handle on the removed file was dropped"
        );
        // Replaced by a rename: the renamed file is the one asked.
        let new = dir.path().join("replacement");
        std::fs::write(&new, "....").unwrap();
        std::fs::rename(&new, dir.path().join("rein.db-cancels")).unwrap();
        assert_eq!(asking.size(), 4);
        other.ring();
        assert_eq!(asking.size(), 5);
    }
}
