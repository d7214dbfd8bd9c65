//! Reading a log file's lines in bounded memory: a process that opens a log of millions of
//! records reads them a piece at a time, rather than the whole file into memory at once (which
//! made a server's memory at its first write as large as its audit log).

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use crate::AuditError;
use crate::log::io_err;

/// How much of the file is read at a time.
const READ_AT_ONCE: usize = 1 << 20;

/// Calls `each` with every whole, non-empty line (without its newline) of the `len` bytes of
/// `file` from `from`, one at a time, until it fails; returns how many bytes the whole lines took
/// (less than `len` when it ends in a line cut short, which is not passed on). Holds one piece of
/// the file and one line at a time, whatever the file's size.
pub(crate) fn each_line(
    file: &mut File,
    path: &Path,
    from: u64,
    len: u64,
    mut each: impl FnMut(&[u8]) -> Result<(), AuditError>,
) -> Result<u64, AuditError> {
    file.seek(SeekFrom::Start(from)).map_err(io_err(path))?;
    // (No more than there is to read: a process's first look at a small log keeps no buffer
    // of a megabyte about.)
    let capacity = usize::try_from(len).map_or(READ_AT_ONCE, |n| n.clamp(1, READ_AT_ONCE));
    let mut reader = BufReader::with_capacity(capacity, Read::by_ref(file).take(len));
    let mut line = Vec::new();
    let mut whole = 0u64;
    loop {
        line.clear();
        let n = reader.read_until(b'\n', &mut line).map_err(io_err(path))?;
        let Some(text) = line.strip_suffix(b"\n") else {
            // The end, or a last line cut short.
            return Ok(whole);
        };
        if !text.is_empty() {
            each(text)?;
        }
        whole += n as u64;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::io::Write;

    use super::*;

    fn lines_of(bytes: &[u8], from: u64, len: u64) -> (Vec<String>, u64) {
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(bytes).unwrap();
        let mut seen = Vec::new();
        let whole = each_line(&mut file, Path::new("f"), from, len, |l| {
            seen.push(String::from_utf8(l.to_vec()).unwrap());
            Ok(())
        })
        .unwrap();
        (seen, whole)
    }

    #[test]
    fn whole_lines_are_passed_on_and_a_last_line_cut_short_is_not() {
        assert_eq!(
            lines_of(b"a\nbb\n\nccc\n", 0, 10),
            (vec!["a".into(), "bb".into(), "ccc".into()], 10)
        );
        assert_eq!(
            lines_of(b"a\nbb\ncc", 0, 7),
            (vec!["a".into(), "bb".into()], 5)
        );
        // From an offset, and no further than asked though the file goes on.
        assert_eq!(lines_of(b"a\nbb\ncc\n", 2, 3), (vec!["bb".into()], 3));
        assert_eq!(lines_of(b"a\nbb\ncc\n", 2, 4), (vec!["bb".into()], 3));
        assert_eq!(lines_of(b"", 0, 0), (vec![], 0));
        // Lines longer than a piece of the file read at once.
        let long = "x".repeat(READ_AT_ONCE * 2 + 3);
        let text = format!("{long}\nshort\n{long}");
        let (seen, whole) = lines_of(text.as_bytes(), 0, text.len() as u64);
        assert_eq!(seen, vec![long.clone(), "short".into()]);
        assert_eq!(whole, long.len() as u64 + 7);
    }
}
