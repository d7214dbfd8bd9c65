//! Where a run's tools work: the agent's workspace, or (`isolate = true`) a copy of it made for
//! the run under the state directory.

use std::path::{Path, PathBuf};

use crate::{Agent, Engine, EngineError};

impl Engine {
    pub(crate) fn prepare_workspace(
        &self,
        agent: &Agent,
        run_id: &str,
    ) -> Result<PathBuf, EngineError> {
        if !agent.isolate_workspace {
            return Ok(agent.workspace.clone());
        }
        let target = self.state_dir().join("workspaces").join(run_id);
        let fail = |source| EngineError::Workspace {
            path: target.display().to_string(),
            source,
        };
        copy_tree(&agent.workspace, &target).map_err(fail)?;
        target.canonicalize().map_err(fail)
    }
}

/// Copies a folder recursively. Symbolic links are copied as links, never followed, so a copy
/// cannot pull in files from outside the folder.
fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        let dest = to.join(entry.file_name());
        if kind.is_dir() {
            copy_tree(&entry.path(), &dest)?;
        } else if kind.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(entry.path())?, &dest)?;
        } else {
            std::fs::copy(entry.path(), &dest)?;
        }
    }
    Ok(())
}
