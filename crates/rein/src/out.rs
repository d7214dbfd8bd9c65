//! Everything the CLI prints on stdout goes through here: a closed pipe (`rein runs list | head`)
//! ends the output quietly instead of panicking, and the command still finishes what it was
//! doing (a run keeps going when its live view's reader goes away).

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

static CLOSED: AtomicBool = AtomicBool::new(false);

/// Writes one line to stdout, unless stdout was closed.
pub(crate) fn line(args: std::fmt::Arguments<'_>) {
    write(|w| writeln!(w, "{args}"));
}

/// Writes text to stdout as it is, unless stdout was closed.
pub(crate) fn text(text: &str) {
    write(|w| w.write_all(text.as_bytes()));
}

/// Prints a value as one line of JSON.
pub(crate) fn json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    let text = serde_json::to_string(value)?;
    line(format_args!("{text}"));
    Ok(())
}

/// Runs a write against stdout; a broken pipe closes the output for good.
pub(crate) fn write(f: impl FnOnce(&mut dyn Write) -> std::io::Result<()>) {
    if CLOSED.load(Ordering::Relaxed) {
        return;
    }
    let mut stdout = std::io::stdout().lock();
    let result = f(&mut stdout).and_then(|()| stdout.flush());
    if let Err(e) = result
        && e.kind() == std::io::ErrorKind::BrokenPipe
    {
        CLOSED.store(true, Ordering::Relaxed);
    }
}

/// `outln!("...")`: a line on stdout through [`line`].
macro_rules! outln {
    () => {
        $crate::out::line(format_args!(""))
    };
    ($($arg:tt)*) => {
        $crate::out::line(format_args!($($arg)*))
    };
}
pub(crate) use outln;
