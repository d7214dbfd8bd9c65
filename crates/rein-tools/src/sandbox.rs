//! Sandboxes for command tools, so that a program the policies allow (a test runner, a build
//! tool) cannot carry out what a file the model just wrote tells it to.
//!
//! On Linux a sandboxed program runs under Landlock and seccomp, applied in the child between
//! `fork` and `exec` (everything is prepared in the parent, so the child only makes system
//! calls):
//! - **files**: it may read and execute the system's folders (`/usr`, `/bin`, `/lib`, `/etc`,
//!   ...), its own program and script files, and the declared `read_paths`; it may read and
//!   write the workspace, a private temporary folder (`TMPDIR`), `/dev` and the declared
//!   `write_paths`. Nothing else: not the agent's folder, not rein's state, not `/proc`, not the
//!   user's home.
//! - **network**: none, unless the manifest lists hosts. Then the program's only way out is
//!   rein's HTTP proxy (`HTTP_PROXY`/`HTTPS_PROXY` are set), which connects only to listed hosts:
//!   Landlock lets it connect to the proxy's TCP port and nowhere else, and seccomp refuses UDP
//!   and raw sockets. Without hosts, seccomp refuses every socket (Unix ones included).
//! - **escape hatches**: `ptrace`, `process_vm_readv`/`writev`, `io_uring`, `bpf`,
//!   `perf_event_open` and the kernel keyring are refused.
//!
//! [`availability`] says whether the kernel can do this (Landlock ABI 4, Linux 6.7, for TCP
//! rules); where it cannot, the operator chooses to refuse or to run tools unsandboxed.

#[cfg(target_os = "linux")]
mod linux;
mod proxy;

use std::path::PathBuf;

/// What a sandboxed command tool's program may reach.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Sandbox {
    /// Hosts it may connect to through rein's proxy (`host`, `host:port`, `*.domain`, `*`).
    pub allow_hosts: Vec<String>,
    /// Paths it may read besides the workspace, its own files and the system's.
    pub read_paths: Vec<PathBuf>,
    /// Paths it may write besides the workspace.
    pub write_paths: Vec<PathBuf>,
}

/// Whether command tools can be sandboxed here, and if not, why.
pub fn availability() -> Result<(), String> {
    #[cfg(target_os = "linux")]
    {
        linux::availability()
    }
    #[cfg(not(target_os = "linux"))]
    {
        Err("sandboxing command tools needs Linux (Landlock and seccomp)".into())
    }
}

#[cfg(target_os = "linux")]
pub(crate) use linux::Prepared;

/// Removes the private temporary folders that processes which died mid-call (killed, say) left
/// behind; those of live processes are kept. Runs once per process before its first sandboxed
/// call; returns how many folders it removed.
pub fn remove_stale_folders() -> usize {
    remove_stale_folders_in(&std::env::temp_dir())
}

/// The same, in `dir` (where the folders are made: the temporary folder).
pub fn remove_stale_folders_in(dir: &std::path::Path) -> usize {
    #[cfg(target_os = "linux")]
    {
        linux::remove_stale_folders(dir)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = dir;
        0
    }
}

/// A sandbox that cannot be prepared where sandboxes are not supported.
#[cfg(not(target_os = "linux"))]
pub(crate) struct Prepared;

#[cfg(not(target_os = "linux"))]
impl Prepared {
    pub(crate) async fn new(
        _sandbox: &Sandbox,
        _program: &std::path::Path,
        _args: &[String],
        _workspace: &std::path::Path,
    ) -> Result<Prepared, String> {
        Err(availability().err().unwrap_or_default())
    }

    pub(crate) fn apply(&self, _cmd: &mut tokio::process::Command) {}
}
