//! `fs.read` and `fs.write`: file access confined to the run's workspace.
//!
//! A path is accepted only if it is relative, has no `..`, and still lies inside the workspace
//! once every symbolic link on the way is resolved. Files are opened without following a final
//! symbolic link, so a link swapped in after the check cannot lead outside either.

use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use rein_core::BoxFuture;
use serde_json::{Value, json};

use crate::{Tool, ToolContext, ToolError, ToolManifest};

/// The largest file `fs.read` returns.
const MAX_READ_BYTES: u64 = 1 << 20;

/// Resolves `requested` inside `workspace`, refusing anything that would leave it.
pub(crate) fn confine(workspace: &Path, requested: &str) -> Result<PathBuf, ToolError> {
    let refuse = |why: &str| {
        ToolError::Refused(format!(
            "path `{requested}` {why}; paths are relative to the workspace"
        ))
    };
    if requested.is_empty() {
        return Err(refuse("is empty"));
    }
    let mut relative = PathBuf::new();
    for component in Path::new(requested).components() {
        match component {
            Component::Normal(part) => relative.push(part),
            Component::CurDir => {}
            Component::ParentDir => return Err(refuse("contains `..`")),
            Component::RootDir | Component::Prefix(_) => return Err(refuse("is absolute")),
        }
    }
    if relative.as_os_str().is_empty() {
        return Err(refuse("names the workspace itself"));
    }
    let root = workspace.canonicalize().map_err(|e| {
        ToolError::Failed(format!(
            "the workspace {} is not usable: {e}",
            workspace.display()
        ))
    })?;
    let target = root.join(&relative);
    // The deepest part of the path that exists must resolve inside the workspace; what does not
    // exist yet will be created beneath it.
    let mut existing = target.as_path();
    while !existing.exists() && existing.symlink_metadata().is_err() {
        existing = match existing.parent() {
            Some(p) => p,
            None => break,
        };
    }
    let resolved = existing.canonicalize().map_err(|e| match e.kind() {
        // A dangling symbolic link: where it points cannot be checked.
        std::io::ErrorKind::NotFound => refuse("goes through a symbolic link that points nowhere"),
        _ => ToolError::Failed(format!("cannot resolve `{requested}`: {e}")),
    })?;
    if !resolved.starts_with(&root) {
        return Err(refuse(
            "leads outside the workspace through a symbolic link",
        ));
    }
    match target.strip_prefix(existing) {
        Ok(rest) if !rest.as_os_str().is_empty() => Ok(resolved.join(rest)),
        _ => Ok(resolved),
    }
}

fn path_arg(args: &Value) -> Result<&str, ToolError> {
    args.get("path")
        .and_then(Value::as_str)
        .ok_or_else(|| ToolError::Failed("`path` must be a string".into()))
}

/// Reads a UTF-8 text file from the workspace.
#[derive(Debug)]
pub struct FsRead {
    manifest: ToolManifest,
}

impl Default for FsRead {
    fn default() -> Self {
        FsRead {
            manifest: ToolManifest {
                name: "fs.read".into(),
                description: "Read a UTF-8 text file from the workspace. `path` is relative to the workspace.".into(),
                parameters: json!({
                    "type": "object",
                    "properties": {"path": {"type": "string", "description": "File path, relative to the workspace"}},
                    "required": ["path"],
                    "additionalProperties": false
                }),
                idempotent: true,
                timeout: Duration::from_secs(10),
            },
        }
    }
}

impl Tool for FsRead {
    fn manifest(&self) -> &ToolManifest {
        &self.manifest
    }

    fn call<'a>(
        &'a self,
        ctx: &'a ToolContext,
        args: Value,
    ) -> BoxFuture<'a, Result<Value, ToolError>> {
        Box::pin(async move {
            let requested = path_arg(&args)?.to_owned();
            let path = confine(&ctx.workspace, &requested)?;
            tokio::task::spawn_blocking(move || {
                let file = std::fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&path)
                    .map_err(|e| ToolError::Failed(format!("cannot read `{requested}`: {e}")))?;
                let mut bytes = Vec::new();
                file.take(MAX_READ_BYTES + 1)
                    .read_to_end(&mut bytes)
                    .map_err(|e| ToolError::Failed(format!("cannot read `{requested}`: {e}")))?;
                if bytes.len() as u64 > MAX_READ_BYTES {
                    return Err(ToolError::OutputTooLarge(MAX_READ_BYTES as usize));
                }
                let content = String::from_utf8(bytes)
                    .map_err(|_| ToolError::Failed(format!("`{requested}` is not UTF-8 text")))?;
                Ok(json!({"path": requested, "content": content}))
            })
            .await
            .map_err(|e| ToolError::Failed(format!("the read was interrupted: {e}")))?
        })
    }
}

/// Writes (or appends to) a text file in the workspace, creating directories as needed.
#[derive(Debug)]
pub struct FsWrite {
    manifest: ToolManifest,
}

impl Default for FsWrite {
    fn default() -> Self {
        FsWrite {
            manifest: ToolManifest {
                name: "fs.write".into(),
                description: "Write a text file in the workspace (replacing it, or appending with `append = true`). `path` is relative to the workspace.".into(),
                parameters: json!({
                    "type": "object",
                    "properties": {
                        "path": {"type": "string", "description": "File path, relative to the workspace"},
                        "content": {"type": "string"},
                        "append": {"type": "boolean", "default": false}
                    },
                    "required": ["path", "content"],
                    "additionalProperties": false
                }),
                idempotent: false,
                timeout: Duration::from_secs(10),
            },
        }
    }
}

impl Tool for FsWrite {
    fn manifest(&self) -> &ToolManifest {
        &self.manifest
    }

    fn call<'a>(
        &'a self,
        ctx: &'a ToolContext,
        args: Value,
    ) -> BoxFuture<'a, Result<Value, ToolError>> {
        Box::pin(async move {
            let requested = path_arg(&args)?.to_owned();
            let content = args
                .get("content")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            let append = args.get("append").and_then(Value::as_bool).unwrap_or(false);
            let path = confine(&ctx.workspace, &requested)?;
            tokio::task::spawn_blocking(move || {
                let fail = |e: std::io::Error| {
                    ToolError::Failed(format!("cannot write `{requested}`: {e}"))
                };
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent).map_err(fail)?;
                }
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .append(append)
                    .truncate(!append)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&path)
                    .map_err(fail)?;
                file.write_all(content.as_bytes()).map_err(fail)?;
                Ok(json!({"path": requested, "bytes_written": content.len(), "appended": append}))
            })
            .await
            .map_err(|e| ToolError::Failed(format!("the write was interrupted: {e}")))?
        })
    }
}
