//! The Linux sandbox: a Landlock ruleset and a seccomp filter built in the parent, enforced in
//! the child just before `exec`.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use landlock::{
    ABI, Access, AccessFs, AccessNet, CompatLevel, Compatible, NetPort, PathBeneath, PathFd,
    Ruleset, RulesetAttr, RulesetCreated, RulesetCreatedAttr,
};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule,
};

use super::Sandbox;
use super::proxy::Proxy;

/// The Landlock ABI rein asks for: file system rights up to `truncate`, and TCP ports.
const TARGET: ABI = ABI::V4;

/// Folders every program may read and execute from.
const SYSTEM_DIRS: [&str; 9] = [
    "/usr",
    "/bin",
    "/sbin",
    "/lib",
    "/lib32",
    "/lib64",
    "/etc",
    "/opt",
    "/nix/store",
];

fn ruleset_base() -> Result<RulesetCreated, String> {
    Ruleset::default()
        .set_compatibility(CompatLevel::HardRequirement)
        .handle_access(AccessFs::from_all(TARGET))
        .and_then(|r| r.handle_access(AccessNet::from_all(TARGET)))
        .and_then(|r| r.create())
        .map_err(|e| {
            format!("the kernel cannot enforce Landlock ABI 4 (Linux 6.7 or later, with Landlock enabled): {e}")
        })
}

pub(crate) fn availability() -> Result<(), String> {
    ruleset_base()?;
    filter(false).map(|_| ())
}

/// The seccomp filter: sockets (all of them, or all but TCP over IP when a proxy is the way
/// out) and the escape hatches are refused with `EACCES`.
fn filter(via_proxy: bool) -> Result<BpfProgram, String> {
    let cond = |arg, op, value| {
        SeccompCondition::new(arg, SeccompCmpArgLen::Dword, op, value)
            .map_err(|e| format!("seccomp condition: {e}"))
    };
    let mut rules: std::collections::BTreeMap<i64, Vec<SeccompRule>> = [
        libc::SYS_ptrace,
        libc::SYS_process_vm_readv,
        libc::SYS_process_vm_writev,
        libc::SYS_io_uring_setup,
        libc::SYS_io_uring_enter,
        libc::SYS_io_uring_register,
        libc::SYS_bpf,
        libc::SYS_perf_event_open,
        libc::SYS_keyctl,
        libc::SYS_add_key,
        libc::SYS_request_key,
    ]
    .into_iter()
    .map(|call| (call, vec![]))
    .collect();
    let socket = if via_proxy {
        let inet = libc::AF_INET as u64;
        let inet6 = libc::AF_INET6 as u64;
        let kind = |t: i32| cond(1, SeccompCmpOp::MaskedEq(0xf), t as u64);
        vec![
            SeccompRule::new(vec![
                cond(0, SeccompCmpOp::Ne, inet)?,
                cond(0, SeccompCmpOp::Ne, inet6)?,
            ])
            .map_err(|e| e.to_string())?,
            SeccompRule::new(vec![kind(libc::SOCK_DGRAM)?]).map_err(|e| e.to_string())?,
            SeccompRule::new(vec![kind(libc::SOCK_RAW)?]).map_err(|e| e.to_string())?,
        ]
    } else {
        vec![]
    };
    rules.insert(libc::SYS_socket, socket);
    let arch = std::env::consts::ARCH
        .try_into()
        .map_err(|e| format!("seccomp does not support this architecture: {e:?}"))?;
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EACCES as u32),
        arch,
    )
    .map_err(|e| format!("seccomp filter: {e}"))?;
    filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| format!("seccomp filter: {e}"))
}

/// A private temporary folder for one call, removed when the call ends. The folder itself is
/// locked (`flock`) while the call lives, so a sweep by another process, even one that cannot
/// see this process's pid (another pid namespace sharing the temporary folder), leaves it alone.
struct TempDir {
    path: PathBuf,
    /// Held while the call lives.
    _lock: std::fs::File,
}

/// The prefix of a call's temporary folder: `rein-sandbox-<pid>-<nanos>-<n>`.
const TEMP_PREFIX: &str = "rein-sandbox-";

/// See [`super::remove_stale_folders`]. A folder is stale when its process is gone (no
/// `/proc/<pid>`; without `/proc` nothing is removed) and nobody holds its lock.
pub(super) fn remove_stale_folders(dir: &Path) -> usize {
    if !Path::new("/proc/self").exists() {
        return 0;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(TEMP_PREFIX))
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        let unlocked =
            || std::fs::File::open(entry.path()).is_ok_and(|folder| folder.try_lock().is_ok());
        if pid != std::process::id()
            && !Path::new(&format!("/proc/{pid}")).exists()
            && unlocked()
            && std::fs::remove_dir_all(entry.path()).is_ok()
        {
            removed += 1;
        }
    }
    removed
}

impl TempDir {
    fn new() -> Result<TempDir, String> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        static SWEPT: std::sync::Once = std::sync::Once::new();
        SWEPT.call_once(|| {
            remove_stale_folders(&std::env::temp_dir());
        });
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let path = std::env::temp_dir().join(format!(
            "{TEMP_PREFIX}{}-{nanos}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir(&path).map_err(|e| format!("cannot create {}: {e}", path.display()))?;
        let lock = std::fs::File::open(&path)
            .and_then(|folder| folder.lock().map(|()| folder))
            .map_err(|e| format!("cannot lock {}: {e}", path.display()))?;
        Ok(TempDir { path, _lock: lock })
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// `program` as the child will execute it: itself when it has a `/`, else found on `PATH`.
fn resolve(program: &Path) -> Option<PathBuf> {
    if program.components().count() > 1 {
        return Some(program.to_owned());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// Everything a sandboxed call needs, ready before the child is forked.
pub(crate) struct Prepared {
    ruleset: OwnedFd,
    filter: BpfProgram,
    tmp: TempDir,
    proxy: Option<Proxy>,
}

impl Prepared {
    pub(crate) async fn new(
        sandbox: &Sandbox,
        program: &Path,
        args: &[String],
        workspace: &Path,
    ) -> Result<Prepared, String> {
        let proxy = if sandbox.allow_hosts.is_empty() {
            None
        } else {
            Some(Proxy::start(sandbox.allow_hosts.clone()).await?)
        };
        let tmp = TempDir::new()?;
        let read = AccessFs::from_read(TARGET);
        let all = AccessFs::from_all(TARGET);
        let mut grants: Vec<(PathBuf, landlock::BitFlags<AccessFs>)> = SYSTEM_DIRS
            .iter()
            .map(|d| (PathBuf::from(d), read))
            .collect();
        // The program and its installation (the folder above its own: `/opt/venv` for
        // `/opt/venv/bin/python3`, `~/.pyenv` for a pyenv shim), whose libraries and helpers it
        // loads; never `/` or the home folder itself.
        let home = std::env::var_os("HOME").map(PathBuf::from);
        if let Some(resolved) = resolve(program) {
            for path in [Some(resolved.clone()), resolved.canonicalize().ok()]
                .into_iter()
                .flatten()
            {
                let dir = path.parent();
                let install = dir
                    .and_then(Path::parent)
                    .filter(|p| *p != Path::new("/") && Some(*p) != home.as_deref());
                for p in [dir, install].into_iter().flatten() {
                    grants.push((p.to_owned(), read));
                }
                grants.push((path, read));
            }
        }
        // Script files named in its arguments (the resolver made them absolute).
        for arg in args {
            let path = Path::new(arg);
            if path.is_absolute() && path.exists() {
                grants.push((path.to_owned(), read));
            }
        }
        grants.extend(sandbox.read_paths.iter().map(|p| (p.clone(), read)));
        grants.push((workspace.to_owned(), all));
        grants.push((tmp.path.clone(), all));
        grants.extend(sandbox.write_paths.iter().map(|p| (p.clone(), all)));
        grants.push((
            PathBuf::from("/dev"),
            AccessFs::ReadFile | AccessFs::WriteFile | AccessFs::ReadDir,
        ));
        let mut ruleset = ruleset_base()?;
        for (path, access) in grants {
            // A system folder this machine lacks is skipped; a declared path that is gone is
            // simply not reachable.
            let Ok(fd) = PathFd::new(&path) else { continue };
            // A file takes only the rights that apply to files.
            let access = if path.is_dir() {
                access
            } else {
                access & AccessFs::from_file(TARGET)
            };
            ruleset = ruleset
                .add_rule(PathBeneath::new(fd, access))
                .map_err(|e| format!("Landlock rule for {}: {e}", path.display()))?;
        }
        if let Some(proxy) = &proxy {
            ruleset = ruleset
                .add_rule(NetPort::new(proxy.port(), AccessNet::ConnectTcp))
                .map_err(|e| format!("Landlock rule for the proxy's port: {e}"))?;
        }
        let ruleset: Option<OwnedFd> = ruleset.into();
        Ok(Prepared {
            ruleset: ruleset.ok_or("the kernel gave no Landlock ruleset")?,
            filter: filter(proxy.is_some())?,
            tmp,
            proxy,
        })
    }

    /// Sets the child up to enter the sandbox just before it executes the program.
    #[allow(unsafe_code)]
    pub(crate) fn apply(&self, cmd: &mut tokio::process::Command) {
        let fd = self.ruleset.as_raw_fd();
        let filter = self.filter.clone();
        cmd.env("TMPDIR", &self.tmp.path);
        if let Some(proxy) = &self.proxy {
            let url = format!("http://127.0.0.1:{}", proxy.port());
            for key in [
                "HTTP_PROXY",
                "HTTPS_PROXY",
                "ALL_PROXY",
                "http_proxy",
                "https_proxy",
                "all_proxy",
            ] {
                cmd.env(key, &url);
            }
            cmd.env("NO_PROXY", "").env("no_proxy", "");
        }
        // SAFETY: the closure runs in the forked child before `exec`; it makes system calls on
        // memory prepared in the parent and allocates nothing.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::syscall(libc::SYS_landlock_restrict_self, fd, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                seccompiler::apply_filter(&filter)
                    .map_err(|_| std::io::Error::from_raw_os_error(libc::EPERM))
            });
        }
    }
}
