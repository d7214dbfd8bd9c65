//! A VFS over the platform's own that writes each transaction's frames to the write-ahead log in
//! one system call, not two a page.
//!
//! SQLite appends a frame to the log as two writes: its 24-byte header, then the page. A gateway
//! request's two commits write some eighteen pages, so thirty-odd `pwrite`s, each a pass through
//! the file system's write path; the same bytes in one call cost a fraction of that. This VFS
//! (registered as [`NAME`], used by the store's writer connection) keeps the frames a connection
//! appends to its log in memory and writes them at once when the transaction's commit frame is
//! complete, before SQLite publishes the commit to readers (it does so only after the commit
//! frame's write returns). Anything else that touches the log (a read, a sync, a truncation, its
//! size, a write anywhere but its end, such as a checksum rewritten after the commit frame) writes
//! what is kept first and goes to the file at once, so no reader, here or in another process,
//! ever looks for a frame still kept.
//!
//! Frames are kept only while their connection holds the log's write lock, so no other writer
//! can write where they go. A transaction that spilled frames to the log and was rolled back
//! leaves some kept: they are dropped, never written, when the connection lets go of the lock
//! (its index of the log is the database file's, so database files go through this VFS too, and
//! each knows its log). Once a commit frame is written nothing more is kept until then: what
//! follows it (padding frames to a sector's end, with `synchronous = FULL` on a device without
//! power-safe overwrites, the rest of one written after a sync) goes to the file at once, and is
//! never mistaken for a frame's header.
//!
//! A crash loses only what a crash at the same moment loses without it: frames of a transaction
//! whose commit frame was not yet written, which SQLite's recovery ignores. A failed write of
//! what is kept fails the call that needed it (the commit frame's, or a read or sync) with an
//! I/O error, drops what was kept, and fails every later write and sync of the log until the
//! transaction lets go of the write lock: it cannot commit over the frames it lost.
//!
//! With the command sandbox's `pre_exec`, this is where the workspace allows `unsafe`: SQLite's
//! VFS is a C interface, and rusqlite offers no safe way to wrap one.

#![allow(unsafe_code)]

use std::ffi::{CStr, c_int, c_void};
use std::sync::OnceLock;

use rusqlite::ffi;

/// The name the VFS is registered under.
pub(crate) const NAME: &CStr = c"rein-coalesce";

/// A log frame's header: the page's number, then (non-zero only in a commit frame) the
/// database's size in pages after the commit, then salts and checksums.
const FRAME_HEADER: usize = 24;

/// The most the platform's VFS writes in one call (it takes the size modulo 128 KiB).
const WRITE_AT_MOST: usize = 64 << 10;

/// What is kept before it is written regardless (a large transaction's spilled frames).
const KEEP_AT_MOST: usize = WRITE_AT_MOST;

/// The lock a writer of the log holds (the first of the log index's locks), and how SQLite
/// lets go of it.
const WRITE_LOCK: c_int = 0;
const TAKEN: c_int = ffi::SQLITE_SHM_LOCK | ffi::SQLITE_SHM_EXCLUSIVE;
const RELEASED: c_int = ffi::SQLITE_SHM_UNLOCK | ffi::SQLITE_SHM_EXCLUSIVE;

/// Registers the VFS (once a process); its name, or `None` if the default VFS is not the
/// platform's unix one this wraps (whose files have every method of a version-3 table, and whose
/// other methods ignore the VFS they are given but for `mxPathname`, copied here), or SQLite
/// refused it: the store then uses the default, writing frames as SQLite does.
pub(crate) fn registered() -> Option<&'static CStr> {
    static DONE: OnceLock<bool> = OnceLock::new();
    let ok = *DONE.get_or_init(|| {
        // SAFETY: `sqlite3_vfs_find(NULL)` returns the default VFS, which lives for the process,
        // as does its name; the VFS registered here is leaked, so lives for the process too, as
        // SQLite requires.
        unsafe {
            let real = ffi::sqlite3_vfs_find(std::ptr::null());
            if real.is_null() || (*real).zName.is_null() || CStr::from_ptr((*real).zName) != c"unix"
            {
                return false;
            }
            let mut vfs = *real;
            vfs.pNext = std::ptr::null_mut();
            vfs.zName = NAME.as_ptr();
            vfs.pAppData = real.cast();
            let ours = std::mem::size_of::<File>() as c_int + (*real).szOsFile;
            vfs.szOsFile = ours.max((*real).szOsFile);
            vfs.xOpen = Some(open);
            let leaked = Box::into_raw(Box::new(vfs));
            ffi::sqlite3_vfs_register(leaked, 0) == ffi::SQLITE_OK
        }
    });
    ok.then_some(NAME)
}

/// A file: the platform's right after this struct, in the space SQLite allocated (`szOsFile`).
#[repr(C)]
struct File {
    base: ffi::sqlite3_file,
    real: *mut ffi::sqlite3_file,
    /// A log's kept frames; null for any other file, or a log whose database is not known.
    kept: *mut Kept,
    /// A database's log while it is open, a log's database: each unlinks itself at its close.
    other: *mut File,
}

/// Frames appended to a log and not yet written.
#[derive(Default)]
struct Kept {
    /// Where `bytes` go in the file.
    at: i64,
    bytes: Vec<u8>,
    /// Where the last write to the file (written or kept) ended: a write there is an append.
    end: i64,
    /// The last write kept was a frame's header; `commit` if a commit frame's.
    header: Option<bool>,
    /// The connection holds the log's write lock (taken through the database file's log index
    /// lock): frames are kept only then. Never so in `locking_mode = EXCLUSIVE`, where SQLite
    /// takes no such lock: every write goes to the file.
    locked: bool,
    /// A commit frame was written while the write lock is held: nothing more is kept until it
    /// is let go.
    committed: bool,
    /// Writing what was kept failed while the write lock is held: the transaction lost frames
    /// SQLite counts as written, so every write and sync fails until the lock is let go (the
    /// transaction cannot commit over the hole).
    failed: bool,
    /// Writes made to the file (for tests).
    written: u64,
}

impl Kept {
    /// Writes what is kept to `real` in as few calls as its VFS takes (at most
    /// [`WRITE_AT_MOST`] bytes a call); the first error, if one fails (what was kept is dropped
    /// either way, and the log fails until the write lock is let go). The error is an I/O
    /// error, never `SQLITE_FULL`, which a statement could recover from alone.
    ///
    /// # Safety
    /// `real` is an open platform file whose methods are `m`.
    unsafe fn flush(&mut self, real: *mut ffi::sqlite3_file, m: &ffi::sqlite3_io_methods) -> c_int {
        self.header = None;
        if self.failed {
            return ffi::SQLITE_IOERR_WRITE;
        }
        if self.bytes.is_empty() {
            return ffi::SQLITE_OK;
        }
        let mut rc = ffi::SQLITE_IOERR_WRITE;
        if let Some(w) = m.xWrite {
            let mut at = self.at;
            for chunk in self.bytes.chunks(WRITE_AT_MOST) {
                self.written += 1;
                // SAFETY: the caller's.
                rc = unsafe { w(real, chunk.as_ptr().cast(), chunk.len() as c_int, at) };
                if rc != ffi::SQLITE_OK {
                    break;
                }
                at += chunk.len() as i64;
            }
        }
        self.bytes.clear();
        if rc != ffi::SQLITE_OK {
            self.failed = true;
            return ffi::SQLITE_IOERR_WRITE;
        }
        rc
    }

    /// Drops what is kept, unwritten: the write lock is let go, so it belongs to no commit.
    fn drop_kept(&mut self) {
        self.bytes.clear();
        self.header = None;
        self.locked = false;
        self.committed = false;
        self.failed = false;
    }
}

unsafe extern "C" fn open(
    vfs: *mut ffi::sqlite3_vfs,
    name: ffi::sqlite3_filename,
    file: *mut ffi::sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    // SAFETY: SQLite gives `szOsFile` bytes at `file`, enough for a `File` and the platform's
    // file after it; the platform's `xOpen` is called as SQLite would call it, with the
    // platform's VFS. A log's name is the one SQLite opens it with, which
    // `sqlite3_database_file_object` takes to find its database's file (opened first, by this
    // VFS, as a connection opens its log through its database's VFS).
    unsafe {
        let real_vfs: *mut ffi::sqlite3_vfs = (*vfs).pAppData.cast();
        let Some(real_open) = (*real_vfs).xOpen else {
            return ffi::SQLITE_ERROR;
        };
        let ours = file.cast::<File>();
        let inner = file
            .cast::<u8>()
            .add(std::mem::size_of::<File>())
            .cast::<ffi::sqlite3_file>();
        (*ours).base.pMethods = std::ptr::null();
        (*ours).real = inner;
        (*ours).kept = std::ptr::null_mut();
        (*ours).other = std::ptr::null_mut();
        let rc = real_open(real_vfs, name, inner, flags, out_flags);
        if rc != ffi::SQLITE_OK {
            return rc;
        }
        (*ours).base.pMethods = &METHODS;
        if flags & ffi::SQLITE_OPEN_WAL != 0 && !name.is_null() {
            let db = ffi::sqlite3_database_file_object(name);
            if !db.is_null() && std::ptr::eq((*db).pMethods, &METHODS) {
                let db = db.cast::<File>();
                (*db).other = ours;
                (*ours).other = db;
                (*ours).kept = Box::into_raw(Box::default());
            }
        }
        ffi::SQLITE_OK
    }
}

static METHODS: ffi::sqlite3_io_methods = ffi::sqlite3_io_methods {
    iVersion: 3,
    xClose: Some(close),
    xRead: Some(read),
    xWrite: Some(write),
    xTruncate: Some(truncate),
    xSync: Some(sync),
    xFileSize: Some(file_size),
    xLock: Some(lock),
    xUnlock: Some(unlock),
    xCheckReservedLock: Some(check_reserved_lock),
    xFileControl: Some(file_control),
    xSectorSize: Some(sector_size),
    xDeviceCharacteristics: Some(device_characteristics),
    xShmMap: Some(shm_map),
    xShmLock: Some(shm_lock),
    xShmBarrier: Some(shm_barrier),
    xShmUnmap: Some(shm_unmap),
    xFetch: Some(fetch),
    xUnfetch: Some(unfetch),
};

/// The platform's file, its methods (the platform's VFS gives every file all of a version-3
/// table's), and what is kept, if the file is a log.
///
/// # Safety
/// `file` is a `File` opened by `open`, not closed; SQLite calls a file's methods from one
/// thread at a time, and each method takes this once.
unsafe fn parts<'a>(
    file: *mut ffi::sqlite3_file,
) -> (
    *mut ffi::sqlite3_file,
    &'static ffi::sqlite3_io_methods,
    Option<&'a mut Kept>,
) {
    // SAFETY: the caller's.
    unsafe {
        let ours = file.cast::<File>();
        let real = (*ours).real;
        (real, &*(*real).pMethods, (*ours).kept.as_mut())
    }
}

/// Calls the platform file's method `$method` (as `$f`, on `$real`) once what is kept is
/// written; a failure to write it is the call's.
macro_rules! after_flush {
    ($file:expr, $method:ident, |$f:ident, $real:ident| $call:expr) => {{
        // SAFETY: `$file` is a `File` opened by `open`, and `$real` its open platform file.
        unsafe {
            let ($real, m, kept) = parts($file);
            if let Some(kept) = kept {
                let rc = kept.flush($real, m);
                if rc != ffi::SQLITE_OK {
                    return rc;
                }
            }
            match m.$method {
                Some($f) => $call,
                None => ffi::SQLITE_OK,
            }
        }
    }};
}

/// Calls the platform file's method `$method` as it is.
macro_rules! passed_on {
    ($file:expr, $method:ident, $none:expr, |$f:ident, $real:ident| $call:expr) => {{
        // SAFETY: `$file` is a `File` opened by `open`, and `$real` its open platform file.
        unsafe {
            let ($real, m, _) = parts($file);
            match m.$method {
                Some($f) => $call,
                None => $none,
            }
        }
    }};
}

unsafe extern "C" fn close(file: *mut ffi::sqlite3_file) -> c_int {
    // SAFETY: `file` is a `File` opened by `open`; SQLite closes it once. A log closes before
    // its database (and a database's log, if still linked, is unlinked here).
    unsafe {
        let ours = file.cast::<File>();
        let other = (*ours).other;
        if !other.is_null() && std::ptr::eq((*other).other, ours) {
            (*other).other = std::ptr::null_mut();
        }
        (*ours).other = std::ptr::null_mut();
        let (real, m, _) = parts(file);
        let closed = m.xClose.map_or(ffi::SQLITE_OK, |c| c(real));
        // Anything still kept belongs to no commit (each commit's frames are written with it).
        if !(*ours).kept.is_null() {
            drop(Box::from_raw((*ours).kept));
            (*ours).kept = std::ptr::null_mut();
        }
        closed
    }
}

unsafe extern "C" fn read(
    file: *mut ffi::sqlite3_file,
    buf: *mut c_void,
    amt: c_int,
    at: i64,
) -> c_int {
    after_flush!(file, xRead, |f, real| f(real, buf, amt, at))
}

unsafe extern "C" fn write(
    file: *mut ffi::sqlite3_file,
    buf: *const c_void,
    amt: c_int,
    at: i64,
) -> c_int {
    // SAFETY: `file` is a `File` opened by `open`; `buf` holds `amt` bytes.
    unsafe {
        let (real, m, kept) = parts(file);
        let Some(w) = m.xWrite else {
            return ffi::SQLITE_IOERR_WRITE;
        };
        let Some(k) = kept else {
            return w(real, buf, amt, at);
        };
        if k.failed {
            return ffi::SQLITE_IOERR_WRITE;
        }
        let len = amt.max(0) as usize;
        // Kept: a frame's header appended at the log's end, and the page that follows it.
        let appended = at == k.end && k.locked && !k.committed;
        let header = appended && len == FRAME_HEADER && k.header.is_none();
        let page = appended && k.header.is_some();
        let bytes = std::slice::from_raw_parts(buf.cast::<u8>(), len);
        if !(header || page) {
            let rc = k.flush(real, m);
            if rc != ffi::SQLITE_OK {
                return rc;
            }
            k.end = at + i64::from(amt);
            k.written += 1;
            // A commit frame's header written as it is (after a page rewritten in place): what
            // follows it is not kept either. A 24-byte write that only looks like one costs
            // nothing but the keeping.
            if len == FRAME_HEADER && bytes[4..8] != [0, 0, 0, 0] {
                k.committed = true;
            }
            return w(real, buf, amt, at);
        }
        if k.bytes.is_empty() {
            k.at = at;
        }
        k.bytes.extend_from_slice(bytes);
        k.end = at + i64::from(amt);
        if header {
            k.header = Some(bytes[4..8] != [0, 0, 0, 0]);
            return ffi::SQLITE_OK;
        }
        let commit = k.header == Some(true);
        k.header = None;
        k.committed = commit;
        if commit || k.bytes.len() >= KEEP_AT_MOST {
            return k.flush(real, m);
        }
        ffi::SQLITE_OK
    }
}

unsafe extern "C" fn truncate(file: *mut ffi::sqlite3_file, size: i64) -> c_int {
    after_flush!(file, xTruncate, |f, real| f(real, size))
}

unsafe extern "C" fn sync(file: *mut ffi::sqlite3_file, flags: c_int) -> c_int {
    after_flush!(file, xSync, |f, real| f(real, flags))
}

unsafe extern "C" fn file_size(file: *mut ffi::sqlite3_file, size: *mut i64) -> c_int {
    after_flush!(file, xFileSize, |f, real| f(real, size))
}

unsafe extern "C" fn lock(file: *mut ffi::sqlite3_file, level: c_int) -> c_int {
    passed_on!(file, xLock, ffi::SQLITE_OK, |f, real| f(real, level))
}

unsafe extern "C" fn unlock(file: *mut ffi::sqlite3_file, level: c_int) -> c_int {
    passed_on!(file, xUnlock, ffi::SQLITE_OK, |f, real| f(real, level))
}

unsafe extern "C" fn check_reserved_lock(file: *mut ffi::sqlite3_file, out: *mut c_int) -> c_int {
    passed_on!(file, xCheckReservedLock, ffi::SQLITE_OK, |f, real| f(
        real, out
    ))
}

unsafe extern "C" fn file_control(
    file: *mut ffi::sqlite3_file,
    op: c_int,
    arg: *mut c_void,
) -> c_int {
    after_flush!(file, xFileControl, |f, real| f(real, op, arg))
}

unsafe extern "C" fn sector_size(file: *mut ffi::sqlite3_file) -> c_int {
    passed_on!(file, xSectorSize, 4096, |f, real| f(real))
}

unsafe extern "C" fn device_characteristics(file: *mut ffi::sqlite3_file) -> c_int {
    passed_on!(file, xDeviceCharacteristics, 0, |f, real| f(real))
}

unsafe extern "C" fn shm_map(
    file: *mut ffi::sqlite3_file,
    page: c_int,
    size: c_int,
    extend: c_int,
    out: *mut *mut c_void,
) -> c_int {
    passed_on!(file, xShmMap, ffi::SQLITE_IOERR_SHMMAP, |f, real| f(
        real, page, size, extend, out
    ))
}

/// A database's log index lock: taking the log's write lock lets its log keep frames; letting
/// go of it drops what the log keeps (a commit's frames were written with its commit frame; the
/// rest belongs to no commit), before another writer can take the lock and write where they
/// would have gone.
unsafe extern "C" fn shm_lock(
    file: *mut ffi::sqlite3_file,
    offset: c_int,
    n: c_int,
    flags: c_int,
) -> c_int {
    // SAFETY: `file` is a `File` opened by `open`; its linked log, if any, is open (a log
    // unlinks itself at its close), and SQLite calls this from the connection's thread, never
    // while one of the log's methods runs.
    let kept = unsafe {
        let log = (*file.cast::<File>()).other;
        if offset == WRITE_LOCK && !log.is_null() {
            (*log).kept.as_mut()
        } else {
            None
        }
    };
    let pass = || {
        passed_on!(file, xShmLock, ffi::SQLITE_IOERR_SHMLOCK, |f, real| f(
            real, offset, n, flags
        ))
    };
    let Some(kept) = kept else {
        return pass();
    };
    if flags == RELEASED {
        kept.drop_kept();
    }
    let rc = pass();
    if flags == TAKEN && rc == ffi::SQLITE_OK {
        kept.drop_kept();
        kept.locked = true;
    }
    rc
}

unsafe extern "C" fn shm_barrier(file: *mut ffi::sqlite3_file) {
    passed_on!(file, xShmBarrier, (), |f, real| f(real))
}

unsafe extern "C" fn shm_unmap(file: *mut ffi::sqlite3_file, delete: c_int) -> c_int {
    passed_on!(file, xShmUnmap, ffi::SQLITE_OK, |f, real| f(real, delete))
}

unsafe extern "C" fn fetch(
    file: *mut ffi::sqlite3_file,
    at: i64,
    amt: c_int,
    out: *mut *mut c_void,
) -> c_int {
    // SAFETY: `out` is SQLite's: no mapping unless the platform's file gives one.
    unsafe {
        *out = std::ptr::null_mut();
    }
    after_flush!(file, xFetch, |f, real| f(real, at, amt, out))
}

unsafe extern "C" fn unfetch(file: *mut ffi::sqlite3_file, at: i64, p: *mut c_void) -> c_int {
    passed_on!(file, xUnfetch, ffi::SQLITE_OK, |f, real| f(real, at, p))
}

/// Writes made to the log of connection `conn`'s main database through this VFS, if it uses
/// it (one a commit, where SQLite makes two a page).
#[cfg(test)]
fn log_writes(conn: &rusqlite::Connection) -> Option<u64> {
    log_of(conn).map(|k| k.written)
}

/// Bytes the log of connection `conn`'s main database keeps, unwritten, if it uses this VFS.
#[cfg(test)]
fn log_kept(conn: &rusqlite::Connection) -> Option<usize> {
    log_of(conn).map(|k| k.bytes.len())
}

#[cfg(test)]
fn log_of(conn: &rusqlite::Connection) -> Option<&Kept> {
    let mut file: *mut ffi::sqlite3_file = std::ptr::null_mut();
    // SAFETY: `SQLITE_FCNTL_JOURNAL_POINTER` stores the journal's (here the log's) file handle,
    // owned by the connection, which outlives this call.
    unsafe {
        let rc = ffi::sqlite3_file_control(
            conn.handle(),
            c"main".as_ptr(),
            ffi::SQLITE_FCNTL_JOURNAL_POINTER,
            (&mut file as *mut *mut ffi::sqlite3_file).cast(),
        );
        if rc != ffi::SQLITE_OK || file.is_null() || !std::ptr::eq((*file).pMethods, &METHODS) {
            return None;
        }
        (*file.cast::<File>()).kept.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use rusqlite::{Connection, OpenFlags};

    use super::*;

    /// A new database in a directory of its own, and a connection to it through the VFS.
    fn fresh() -> (tempfile::TempDir, std::path::PathBuf, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let conn = through(&path);
        (dir, path, conn)
    }

    /// Inserts `n` rows of `body`, one statement each.
    fn insert(conn: &Connection, body: &str, n: usize) {
        for _ in 0..n {
            conn.execute("INSERT INTO t (body) VALUES (?1)", [body])
                .unwrap();
        }
    }

    fn through(path: &Path) -> Connection {
        let vfs = registered().expect("the VFS registers");
        let conn = Connection::open_with_flags_and_vfs(path, OpenFlags::default(), vfs).unwrap();
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        conn.pragma_update(None, "synchronous", "NORMAL").unwrap();
        conn.pragma_update(None, "wal_autocheckpoint", 0).unwrap();
        conn.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, body TEXT NOT NULL)")
            .unwrap();
        conn
    }

    fn rows(path: &Path) -> (i64, i64) {
        let conn = Connection::open(path).unwrap();
        conn.query_row(
            "SELECT COUNT(*), COALESCE(SUM(length(body)), 0) FROM t",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap()
    }

    /// What a process killed now leaves on disk (the files as written so far), opened
    /// elsewhere: SQLite recovers the log from it, checking every frame's checksum.
    fn after_a_crash(dir: &Path) -> (i64, i64) {
        let copy = dir.join("copy");
        std::fs::create_dir_all(&copy).unwrap();
        for name in ["db", "db-wal"] {
            std::fs::copy(dir.join(name), copy.join(name)).unwrap();
        }
        rows(&copy.join("db"))
    }

    /// The database is whole, as `conn` reads it, as a new connection reads it (`want`: its rows
    /// and the length of their bodies), and as a recovery from its files alone finds it.
    fn intact(conn: &Connection, dir: &Path, want: (i64, i64)) {
        let check: String = conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(check, "ok");
        assert_eq!(rows(&dir.join("db")), want);
        assert_eq!(after_a_crash(dir), want);
    }

    /// A transaction of many pages is one write to the log, and every commit is there, for a
    /// reader on another connection at once and for a recovery from the files alone.
    #[test]
    fn a_commit_is_one_write_seen_at_once_and_recovered_from_the_files() {
        let (dir, path, conn) = fresh();
        let before = log_writes(&conn).expect("the log is written through the VFS");
        let body = "x".repeat(1000);
        for round in 1..=3_i64 {
            let tx = conn.unchecked_transaction().unwrap();
            insert(&tx, &body, 40);
            tx.commit().unwrap();
            assert_eq!(rows(&path), (round * 40, round * 40_000));
        }
        // Three commits of a dozen pages each: three writes, where SQLite alone makes two a page.
        assert_eq!(log_writes(&conn).unwrap() - before, 3);
        intact(&conn, dir.path(), (120, 120_000));
    }

    /// A transaction larger than the page cache spills frames to the log before its commit, then
    /// changes pages it spilled: SQLite rewrites them in place, and after the commit frame
    /// rewrites their checksums. Every write after the commit frame goes to the file at once: a
    /// recovery from the files finds the commit whole.
    #[test]
    fn a_spilled_transaction_that_rewrites_its_frames_is_recovered_whole() {
        let (dir, _, conn) = fresh();
        conn.pragma_update(None, "cache_size", 8).unwrap();
        let body = "y".repeat(1500);
        let tx = conn.unchecked_transaction().unwrap();
        insert(&tx, &body, 200);
        // The first pages, spilled long ago, changed again.
        tx.execute("UPDATE t SET body = body || 'z' WHERE id <= 5", [])
            .unwrap();
        tx.commit().unwrap();
        let want = (200, 200 * 1500 + 5);
        intact(&conn, dir.path(), want);
        // And a transaction rolled back after spilling leaves nothing behind.
        let tx = conn.unchecked_transaction().unwrap();
        insert(&tx, &body, 200);
        tx.rollback().unwrap();
        conn.execute("INSERT INTO t (body) VALUES ('last')", [])
            .unwrap();
        let want = (201, 200 * 1500 + 5 + 4);
        intact(&conn, dir.path(), want);
    }

    /// A small transaction spills frames that are still kept and then changes a page it
    /// spilled (SQLite rewrites that frame in place, and its checksums after the commit frame);
    /// another rolls back to a savepoint after spilling, then commits: both are read at once,
    /// intact, and recovered from the files.
    #[test]
    fn frames_rewritten_while_kept_and_a_savepoint_rolled_back_after_a_spill_are_recovered() {
        let (dir, _, conn) = fresh();
        conn.pragma_update(None, "cache_size", 2).unwrap();
        let body = "k".repeat(1500);
        let tx = conn.unchecked_transaction().unwrap();
        insert(&tx, &body, 8);
        assert!(log_kept(&tx).unwrap() > 0, "the spill keeps frames");
        tx.execute("UPDATE t SET body = body || 'z' WHERE id = 1", [])
            .unwrap();
        tx.commit().unwrap();
        let want = (8, 8 * 1500 + 1);
        intact(&conn, dir.path(), want);
        conn.execute_batch("BEGIN; SAVEPOINT s;").unwrap();
        insert(&conn, &body, 40);
        conn.execute_batch("ROLLBACK TO s; RELEASE s;").unwrap();
        conn.execute("INSERT INTO t (body) VALUES ('after')", [])
            .unwrap();
        conn.execute_batch("COMMIT").unwrap();
        let want = (9, 8 * 1500 + 1 + 5);
        intact(&conn, dir.path(), want);
    }

    /// Two writers on one database, each through the VFS with its own handle on the log (as two
    /// processes are), taking turns: each appends after the other's frames, never over them.
    #[test]
    fn two_writers_taking_turns_append_after_each_other() {
        let (dir, path, first) = fresh();
        let vfs = registered().unwrap();
        let second = Connection::open_with_flags_and_vfs(&path, OpenFlags::default(), vfs).unwrap();
        let body = "v".repeat(700);
        for round in 0..50 {
            let conn = if round % 2 == 0 { &first } else { &second };
            let tx = conn.unchecked_transaction().unwrap();
            insert(&tx, &body, 20);
            tx.commit().unwrap();
        }
        intact(&second, dir.path(), (1000, 700_000));
    }

    /// A transaction that spilled frames to the log and was rolled back leaves nothing kept
    /// once it lets go of the log: another writer (here a connection without the VFS) then
    /// appends at the same place, and what the first one reads or writes next finds that
    /// writer's frames intact, in the file and after a recovery.
    #[test]
    fn frames_of_a_rolled_back_transaction_are_never_written_over_another_writers() {
        let (dir, path, wrapped) = fresh();
        wrapped.pragma_update(None, "cache_size", 8).unwrap();
        let plain = Connection::open(&path).unwrap();
        let body = "r".repeat(1500);
        wrapped
            .execute("INSERT INTO t (body) VALUES ('first')", [])
            .unwrap();
        // With the log emptied, the rollback reloads the pages it changed from the database
        // file: it reads nothing from the log that would write what is kept first.
        wrapped
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .unwrap();
        let tx = wrapped.unchecked_transaction().unwrap();
        insert(&tx, &body, 100);
        assert!(log_kept(&tx).unwrap() > 0, "the spill keeps frames");
        tx.rollback().unwrap();
        assert_eq!(log_kept(&wrapped), Some(0));
        insert(&plain, &body, 30);
        let want = (31, 5 + 30 * 1500);
        // The wrapped connection reads, then writes.
        let seen: (i64, i64) = wrapped
            .query_row("SELECT COUNT(*), SUM(length(body)) FROM t", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        assert_eq!(seen, want);
        wrapped
            .execute("INSERT INTO t (body) VALUES ('last')", [])
            .unwrap();
        let want = (32, 5 + 30 * 1500 + 4);
        intact(&plain, dir.path(), want);
    }

    /// With `synchronous = FULL` on a device without power-safe overwrites, SQLite pads each
    /// commit to a sector's end with copies of its commit frame, syncing in the middle of one
    /// and writing its rest after: all of that goes to the file before the commit is published.
    #[test]
    fn commits_padded_to_a_sector_with_a_sync_inside_a_frame_are_recovered() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let uri = format!("file:{}?psow=0", path.display());
        let vfs = registered().unwrap();
        let conn = Connection::open_with_flags_and_vfs(&uri, OpenFlags::default(), vfs).unwrap();
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        conn.pragma_update(None, "synchronous", "FULL").unwrap();
        conn.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, body TEXT NOT NULL)")
            .unwrap();
        let body = "p".repeat(900);
        for _ in 0..25 {
            conn.execute("INSERT INTO t (body) VALUES (?1)", [&body])
                .unwrap();
            let seen: i64 = Connection::open(&path)
                .unwrap()
                .query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0))
                .unwrap();
            assert!(seen > 0);
        }
        intact(&conn, dir.path(), (25, 25 * 900));
    }

    /// In `locking_mode = EXCLUSIVE` SQLite takes no log index locks, so nothing says when a
    /// transaction lets go of the log: nothing is kept, every frame is written as SQLite writes
    /// it, and a transaction that spills and rolls back after leaving that mode leaves nothing to
    /// write over another writer's frames.
    #[test]
    fn in_exclusive_locking_mode_nothing_is_kept() {
        let (dir, path, wrapped) = fresh();
        wrapped.pragma_update(None, "cache_size", 8).unwrap();
        wrapped
            .pragma_update(None, "locking_mode", "EXCLUSIVE")
            .unwrap();
        let body = "e".repeat(1500);
        let before = log_writes(&wrapped).unwrap();
        wrapped
            .execute("INSERT INTO t (body) VALUES (?1)", [&body])
            .unwrap();
        // At least one page: its header and itself, two writes.
        assert!(log_writes(&wrapped).unwrap() - before >= 2);
        wrapped
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .unwrap();
        wrapped.execute_batch("BEGIN").unwrap();
        insert(&wrapped, &body, 100);
        wrapped
            .pragma_update(None, "locking_mode", "NORMAL")
            .unwrap();
        wrapped.execute_batch("ROLLBACK").unwrap();
        let plain = Connection::open(&path).unwrap();
        insert(&plain, &body, 30);
        let seen: i64 = wrapped
            .query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(seen, 31);
        intact(&plain, dir.path(), (31, 31 * 1500));
    }

    /// A platform file whose writes fail (a full disk), for what is kept when writing it fails.
    mod failing {
        use super::super::*;

        pub(super) static WRITES: std::sync::atomic::AtomicU32 =
            std::sync::atomic::AtomicU32::new(0);

        unsafe extern "C" fn write(
            _: *mut ffi::sqlite3_file,
            _: *const c_void,
            _: c_int,
            _: i64,
        ) -> c_int {
            WRITES.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            ffi::SQLITE_FULL
        }
        unsafe extern "C" fn ok_rw(
            _: *mut ffi::sqlite3_file,
            _: *mut c_void,
            _: c_int,
            _: i64,
        ) -> c_int {
            ffi::SQLITE_OK
        }
        unsafe extern "C" fn ok_sync(_: *mut ffi::sqlite3_file, _: c_int) -> c_int {
            ffi::SQLITE_OK
        }
        unsafe extern "C" fn ok_lock(
            _: *mut ffi::sqlite3_file,
            _: c_int,
            _: c_int,
            _: c_int,
        ) -> c_int {
            ffi::SQLITE_OK
        }

        pub(super) static METHODS: ffi::sqlite3_io_methods = ffi::sqlite3_io_methods {
            iVersion: 2,
            xClose: None,
            xRead: Some(ok_rw),
            xWrite: Some(write),
            xTruncate: None,
            xSync: Some(ok_sync),
            xFileSize: None,
            xLock: None,
            xUnlock: None,
            xCheckReservedLock: None,
            xFileControl: None,
            xSectorSize: None,
            xDeviceCharacteristics: None,
            xShmMap: None,
            xShmLock: Some(ok_lock),
            xShmBarrier: None,
            xShmUnmap: None,
            xFetch: None,
            xUnfetch: None,
        };
    }

    /// Frames a transaction spilled are kept, and writing them fails when a read of the log
    /// needs them (a full disk): the read fails with an I/O error (not `SQLITE_FULL`, which a
    /// statement could recover from alone), and so does every later write and sync of the log,
    /// so the transaction cannot commit over the frames it lost, until it lets go of the log.
    #[test]
    fn a_failed_write_of_what_is_kept_fails_the_log_until_its_lock_is_let_go() {
        use std::sync::atomic::Ordering;
        let mut real_log = ffi::sqlite3_file {
            pMethods: &failing::METHODS,
        };
        let mut real_db = ffi::sqlite3_file {
            pMethods: &failing::METHODS,
        };
        let mut log = File {
            base: ffi::sqlite3_file { pMethods: &METHODS },
            real: &mut real_log,
            kept: Box::into_raw(Box::default()),
            other: std::ptr::null_mut(),
        };
        let mut db = File {
            base: ffi::sqlite3_file { pMethods: &METHODS },
            real: &mut real_db,
            kept: std::ptr::null_mut(),
            other: &mut log,
        };
        log.other = &mut db;
        let log_file: *mut ffi::sqlite3_file = (&mut log as *mut File).cast();
        let db_file: *mut ffi::sqlite3_file = (&mut db as *mut File).cast();
        let header = [0_u8; 24];
        let page = [7_u8; 4096];
        let mut buf = [0_u8; 4096];
        // SAFETY: the files are the `File`s above, alive for the test, used from this thread.
        unsafe {
            assert_eq!(shm_lock(db_file, WRITE_LOCK, 1, TAKEN), ffi::SQLITE_OK);
            (*log.kept).end = 32;
            // A frame kept (not a commit frame): nothing written yet.
            assert_eq!(
                write(log_file, header.as_ptr().cast(), 24, 32),
                ffi::SQLITE_OK
            );
            assert_eq!(
                write(log_file, page.as_ptr().cast(), 4096, 56),
                ffi::SQLITE_OK
            );
            assert_eq!(failing::WRITES.load(Ordering::SeqCst), 0);
            // Another lock let go (a checkpointer's, a reader's) leaves them kept.
            assert_eq!(shm_lock(db_file, 1, 1, RELEASED), ffi::SQLITE_OK);
            assert_eq!((*log.kept).bytes.len(), 24 + 4096);
            // A read of the log writes it first, and fails.
            assert_eq!(
                read(log_file, buf.as_mut_ptr().cast(), 4096, 56),
                ffi::SQLITE_IOERR_WRITE
            );
            assert_eq!(failing::WRITES.load(Ordering::SeqCst), 1);
            // Then every write and sync fails, without reaching the file.
            assert_eq!(
                write(log_file, header.as_ptr().cast(), 24, 4152),
                ffi::SQLITE_IOERR_WRITE
            );
            assert_eq!(sync(log_file, 0), ffi::SQLITE_IOERR_WRITE);
            assert_eq!(failing::WRITES.load(Ordering::SeqCst), 1);
            // Letting go of the write lock ends it: the next transaction's frames are kept.
            assert_eq!(shm_lock(db_file, WRITE_LOCK, 1, RELEASED), ffi::SQLITE_OK);
            assert_eq!(shm_lock(db_file, WRITE_LOCK, 1, TAKEN), ffi::SQLITE_OK);
            let end = (*log.kept).end;
            assert_eq!(
                write(log_file, header.as_ptr().cast(), 24, end),
                ffi::SQLITE_OK
            );
            assert_eq!((*log.kept).bytes.len(), 24);
            assert_eq!(failing::WRITES.load(Ordering::SeqCst), 1);
            drop(Box::from_raw(log.kept));
        }
    }

    /// Once the log is copied into the database and begins again from its start, the frames of
    /// the next commits are still one write each, and recovered.
    #[test]
    fn a_log_that_restarts_after_a_checkpoint_keeps_one_write_a_commit() {
        let (dir, _, conn) = fresh();
        let body = "w".repeat(3000);
        insert(&conn, &body, 3);
        let (busy, _, _): (i64, i64, i64) = conn
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .unwrap();
        assert_eq!(busy, 0);
        let before = log_writes(&conn).unwrap();
        insert(&conn, &body, 3);
        // The log's new header is a write of its own; then one a commit.
        assert_eq!(log_writes(&conn).unwrap() - before, 4);
        intact(&conn, dir.path(), (6, 18_000));
    }
}
