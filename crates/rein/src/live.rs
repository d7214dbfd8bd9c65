//! The live view of `rein run` and `rein runs resume`: each event, as it is recorded, rendered as
//! `rein runs show` renders it.

use std::io::IsTerminal;
use std::sync::Mutex;

use rein_api::v1::EventRecord;

use crate::render::Renderer;

/// Prints each event as it happens.
pub(crate) struct LiveView {
    renderer: Mutex<Renderer>,
    to_stderr: bool,
}

impl rein_api::Watch for LiveView {
    fn event(&self, run_id: &str, event: &EventRecord) {
        if let Ok(mut renderer) = self.renderer.lock() {
            if self.to_stderr {
                renderer.write(&mut std::io::stderr().lock(), run_id, event);
            } else {
                crate::out::write(|w| {
                    renderer.write(w, run_id, event);
                    Ok(())
                });
            }
        }
    }
}

/// Whether to colour output going to a terminal (or not: `NO_COLOR`).
pub(crate) fn color_for(terminal: bool) -> bool {
    terminal && std::env::var_os("NO_COLOR").is_none()
}

/// The live view: on stdout normally; with `--json` only on stderr, and only for a person at a
/// terminal, so that stdout carries exactly one JSON object.
pub(crate) fn live_view(json: bool) -> Option<LiveView> {
    if json {
        let terminal = std::io::stderr().is_terminal();
        terminal.then(|| LiveView {
            renderer: Mutex::new(Renderer::new(color_for(true), false)),
            to_stderr: true,
        })
    } else {
        Some(LiveView {
            renderer: Mutex::new(Renderer::new(
                color_for(std::io::stdout().is_terminal()),
                false,
            )),
            to_stderr: false,
        })
    }
}
