//! The set of tools an agent has, and the check every proposed call passes before it runs.

use std::collections::BTreeMap;
use std::sync::Arc;

use rein_core::ToolSpec;
use serde_json::Value;

use crate::Tool;

/// Why a tool cannot join a registry.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ToolRegistryError {
    /// Two tools share a name.
    #[error("tool `{0}` is declared twice")]
    Duplicate(String),
    /// The argument schema is not a valid JSON Schema, or not an object schema.
    #[error("tool `{name}`: its argument schema {problem}")]
    BadSchema {
        /// The tool.
        name: String,
        /// What is wrong.
        problem: String,
    },
    /// No tool has this name.
    #[error("there is no tool `{0}` to replace")]
    Unknown(String),
}

/// Why a proposed call was refused before anything ran.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Rejection {
    /// The model named a tool the agent does not have.
    #[error("unknown tool `{name}`; this agent's tools are: {known}")]
    UnknownTool {
        /// The name the model used.
        name: String,
        /// The tools there are.
        known: String,
    },
    /// The arguments are not JSON or do not match the schema.
    #[error("invalid arguments for `{name}`: {details}")]
    InvalidArguments {
        /// The tool.
        name: String,
        /// Every problem found, with its JSON pointer.
        details: String,
    },
}

struct Entry {
    tool: Arc<dyn Tool>,
    validator: jsonschema::Validator,
}

/// An agent's tools, each with its compiled argument schema.
#[derive(Default)]
pub struct ToolRegistry {
    entries: BTreeMap<String, Entry>,
}

impl std::fmt::Debug for ToolRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.entries.keys()).finish()
    }
}

impl ToolRegistry {
    /// An empty registry.
    pub fn new() -> ToolRegistry {
        ToolRegistry::default()
    }

    /// Adds a tool, compiling its argument schema.
    pub fn register(&mut self, tool: Arc<dyn Tool>) -> Result<(), ToolRegistryError> {
        let manifest = tool.manifest();
        let name = manifest.name.clone();
        if self.entries.contains_key(&name) {
            return Err(ToolRegistryError::Duplicate(name));
        }
        let bad = |problem: String| ToolRegistryError::BadSchema {
            name: name.clone(),
            problem,
        };
        if manifest.parameters.get("type").and_then(Value::as_str) != Some("object") {
            return Err(bad("must describe an object (`type = \"object\"`)".into()));
        }
        let validator = jsonschema::validator_for(&manifest.parameters)
            .map_err(|e| bad(format!("is not valid JSON Schema: {e}")))?;
        self.entries.insert(name, Entry { tool, validator });
        Ok(())
    }

    /// Puts `tool` in the place of the tool of the same name (keeping its compiled schema, which
    /// `tool`'s manifest must share): a recording stand-in for a red team, for example.
    pub fn replace(&mut self, tool: Arc<dyn Tool>) -> Result<(), ToolRegistryError> {
        let name = tool.manifest().name.clone();
        match self.entries.get_mut(&name) {
            Some(entry) if entry.tool.manifest().parameters == tool.manifest().parameters => {
                entry.tool = tool;
                Ok(())
            }
            Some(_) => Err(ToolRegistryError::BadSchema {
                name,
                problem: "a replacement must take the same arguments".into(),
            }),
            None => Err(ToolRegistryError::Unknown(name)),
        }
    }

    /// The tool with this name.
    pub fn get(&self, name: &str) -> Option<&Arc<dyn Tool>> {
        self.entries.get(name).map(|e| &e.tool)
    }

    /// Checks a proposed call: the tool exists and the arguments match its schema.
    pub fn check(
        &self,
        name: &str,
        args: &Value,
        invalid_arguments: Option<&str>,
    ) -> Result<&Arc<dyn Tool>, Rejection> {
        let entry = self
            .entries
            .get(name)
            .ok_or_else(|| Rejection::UnknownTool {
                name: name.to_owned(),
                known: self.entries.keys().cloned().collect::<Vec<_>>().join(", "),
            })?;
        if let Some(problem) = invalid_arguments {
            return Err(Rejection::InvalidArguments {
                name: name.to_owned(),
                details: problem.to_owned(),
            });
        }
        let problems: Vec<String> = entry
            .validator
            .iter_errors(args)
            .take(5)
            .map(|e| {
                let at = e.instance_path().to_string();
                format!("{}: {e}", if at.is_empty() { "/".to_owned() } else { at })
            })
            .collect();
        if !problems.is_empty() {
            return Err(Rejection::InvalidArguments {
                name: name.to_owned(),
                details: problems.join("; "),
            });
        }
        Ok(&entry.tool)
    }

    /// What the model is told about each tool, in name order.
    pub fn specs(&self) -> Vec<ToolSpec> {
        self.entries
            .values()
            .map(|e| {
                let m = e.tool.manifest();
                ToolSpec {
                    name: m.name.clone(),
                    description: m.description.clone(),
                    parameters: m.parameters.clone(),
                }
            })
            .collect()
    }

    /// The tools' names, in order.
    pub fn names(&self) -> Vec<String> {
        self.entries.keys().cloned().collect()
    }

    /// Whether the registry is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}
