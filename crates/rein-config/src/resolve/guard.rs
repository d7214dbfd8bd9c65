//! The sections that hold a compromised model: policy data files, the grants planner and the
//! answer as a sink.

use std::collections::BTreeMap;

use super::{Resolver, check_name};
use crate::raw::{AnswerSection, GrantsSection, StripLinksName};
use crate::{AnswerSpec, ConfigError, DataSpec, StripLinks};

impl Resolver {
    /// `[data]`: each file must be JSON; its name must be a valid set name; its content joins
    /// the agent's digest.
    pub(super) fn data_files(
        &mut self,
        data: Option<BTreeMap<String, String>>,
    ) -> Result<Vec<DataSpec>, ConfigError> {
        let mut out = Vec::new();
        for (name, relative) in data.unwrap_or_default() {
            let field = format!("data.{name}");
            check_name(&name).map_err(|m| self.err(None, field.clone(), m))?;
            if name.contains('.') || name.contains('-') {
                return Err(self.err(
                    None,
                    field,
                    format!("`{name}` is used as `context.data.{name}` in policies: use letters, digits and `_`"),
                ));
            }
            let (path, text) = self.read_ref(None, &field, &relative)?;
            if let Err(e) = serde_json::from_str::<serde_json::Value>(&text) {
                return Err(self.err(
                    None,
                    field,
                    format!(
                        "`{relative}` is not JSON (line {}, column {}): {e}",
                        e.line(),
                        e.column()
                    ),
                ));
            }
            out.push(DataSpec { name, path });
        }
        Ok(out)
    }

    /// `[grants] planner`: a model id.
    pub(super) fn planner(
        &self,
        grants: Option<GrantsSection>,
        known: &[String],
    ) -> Result<Option<String>, ConfigError> {
        let Some(planner) = grants.and_then(|g| g.planner) else {
            return Ok(None);
        };
        if !known.contains(&planner) {
            return Err(self.err(
                None,
                "grants.planner",
                format!("`{planner}` is not `primary` or the id of a `[[models]]` entry"),
            ));
        }
        Ok(Some(planner))
    }

    /// `[answer]`.
    pub(super) fn answer(&self, answer: Option<AnswerSection>) -> Result<AnswerSpec, ConfigError> {
        let answer = answer.unwrap_or_default();
        let strip_links = match answer.strip_links {
            None | Some(StripLinksName::CarryingData) => StripLinks::CarryingData,
            Some(StripLinksName::None) => StripLinks::None,
            Some(StripLinksName::OutsideAllowlist) => StripLinks::OutsideAllowlist,
            Some(StripLinksName::All) => StripLinks::All,
        };
        let allow_hosts: Vec<String> = answer
            .allow_hosts
            .unwrap_or_default()
            .into_iter()
            .map(|h| h.trim().to_ascii_lowercase())
            .collect();
        if allow_hosts.iter().any(String::is_empty) {
            return Err(self.err(None, "answer.allow_hosts", "a host must not be empty"));
        }
        if strip_links == StripLinks::OutsideAllowlist && allow_hosts.is_empty() {
            return Err(self.err(
                None,
                "answer.allow_hosts",
                "`strip_links = \"outside_allowlist\"` needs the hosts links may point to, for example `allow_hosts = [\"example.com\", \"*.example.com\"]`",
            ));
        }
        Ok(AnswerSpec {
            strip_links,
            allow_hosts,
        })
    }
}
