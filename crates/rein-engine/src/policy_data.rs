//! The operator's policy data files (`[data]`): each file's strings and numbers are the set
//! `context.data.<name>`, and its values count as the operator's when provenance is traced. A
//! file is read again when it changes (its modification time or size), so an allowlist edited
//! while runs are going applies to their next decision; a change that is not valid JSON keeps
//! the last good content and is reported.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use rein_core::provenance::{self, Sources};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The policy data as last read.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Each set's values: every string as it is and lower-cased, every number.
    pub sets: Arc<BTreeMap<String, BTreeSet<String>>>,
    /// Every value, with origin `operator`, for provenance.
    pub sources: Sources,
    /// Each file's SHA-256, by set name.
    pub digests: BTreeMap<String, String>,
}

/// What changed since the last read: reloaded sets (name, new digest) and files that could not
/// be read (name, why).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Sets read again, with their new digests.
    pub reloaded: Vec<(String, String)>,
    /// Sets whose file is unreadable or not JSON now; the last good content stays.
    pub failed: Vec<(String, String)>,
}

type Stamp = Option<(SystemTime, u64)>;

/// An agent's policy data files, read again when they change.
#[derive(Debug)]
pub struct PolicyData {
    files: Vec<(String, PathBuf)>,
    state: Mutex<(Vec<Stamp>, Arc<Loaded>)>,
}

fn stamp(path: &PathBuf) -> Stamp {
    std::fs::metadata(path)
        .ok()
        .and_then(|m| Some((m.modified().ok()?, m.len())))
}

impl PolicyData {
    /// Reads the files once; an unreadable file is an error naming it.
    pub fn load(files: Vec<(String, PathBuf)>) -> Result<PolicyData, String> {
        let data = PolicyData {
            state: Mutex::new((vec![None; files.len()], Arc::new(Loaded::default()))),
            files,
        };
        let changes = data.refresh();
        if let Some((_, why)) = changes.failed.first() {
            return Err(why.clone());
        }
        Ok(data)
    }

    /// No data files.
    pub fn none() -> PolicyData {
        PolicyData {
            files: vec![],
            state: Mutex::new((vec![], Arc::new(Loaded::default()))),
        }
    }

    /// The data set names.
    pub fn names(&self) -> Vec<String> {
        self.files.iter().map(|(n, _)| n.clone()).collect()
    }

    /// The data as last read, without looking at the files.
    pub fn last(&self) -> Arc<Loaded> {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .1
            .clone()
    }

    /// The data as it is now, reading again any file that changed, and what changed.
    pub fn current(&self) -> (Arc<Loaded>, Changes) {
        if self.files.is_empty() {
            let guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
            return (guard.1.clone(), Changes::default());
        }
        let changes = self.refresh();
        let guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
        (guard.1.clone(), changes)
    }

    fn refresh(&self) -> Changes {
        let mut guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let stamps: Vec<Stamp> = self.files.iter().map(|(_, p)| stamp(p)).collect();
        if stamps == guard.0 && stamps.iter().all(Option::is_some) {
            return Changes::default();
        }
        let mut changes = Changes::default();
        let previous = guard.1.clone();
        let mut next = Loaded::default();
        let mut sets = BTreeMap::new();
        for (i, (name, path)) in self.files.iter().enumerate() {
            let unchanged = guard.0.get(i) == Some(&stamps[i]) && stamps[i].is_some();
            let read = if unchanged {
                None
            } else {
                Some(
                    std::fs::read(path)
                        .map_err(|e| format!("cannot read policy data {}: {e}", path.display()))
                        .and_then(|bytes| {
                            let value: Value = serde_json::from_slice(&bytes).map_err(|e| {
                                format!("policy data {} is not JSON: {e}", path.display())
                            })?;
                            Ok((bytes, value))
                        }),
                )
            };
            match read {
                Some(Ok((bytes, value))) => {
                    let digest = hex::encode(Sha256::digest(&bytes));
                    let mut set = BTreeSet::new();
                    provenance::data_values(&value, &mut set);
                    sets.insert(name.clone(), set);
                    next.digests.insert(name.clone(), digest.clone());
                    if previous.digests.get(name).is_some_and(|d| *d != digest) {
                        changes.reloaded.push((name.clone(), digest));
                    }
                }
                other => {
                    if let Some(Err(why)) = other {
                        changes.failed.push((name.clone(), why));
                    }
                    // Unchanged, or unreadable now: the last good content stays.
                    if let Some(set) = previous.sets.get(name) {
                        sets.insert(name.clone(), set.clone());
                    }
                    if let Some(d) = previous.digests.get(name) {
                        next.digests.insert(name.clone(), d.clone());
                    }
                }
            }
        }
        next.sets = Arc::new(sets);
        for set in next.sets.values() {
            for value in set {
                next.sources.add_text(value, &[provenance::OPERATOR]);
            }
        }
        guard.0 = stamps;
        guard.1 = Arc::new(next);
        changes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_is_read_again_when_its_file_changes_and_a_bad_edit_keeps_the_last_good_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("payees.json");
        std::fs::write(&path, r#"{"payees": [{"iban": "DE89370400440532013000"}]}"#).unwrap();
        let data = PolicyData::load(vec![("payees".into(), path.clone())]).unwrap();
        let (now, changes) = data.current();
        assert_eq!(changes, Changes::default());
        assert!(now.sets["payees"].contains("DE89370400440532013000"));
        assert_eq!(
            now.sources
                .origins(&Value::String("de89 3704 0044 0532 0130 00".into())),
            [provenance::OPERATOR.to_owned()].into()
        );
        // A different size is a different stamp, whatever the clock's resolution.
        std::fs::write(
            &path,
            r#"{"payees": [{"iban": "GB33BUKB20201555555555"}, {"iban": "x"}]}"#,
        )
        .unwrap();
        let (now, changes) = data.current();
        assert_eq!(changes.reloaded.len(), 1);
        assert!(now.sets["payees"].contains("GB33BUKB20201555555555"));
        assert!(!now.sets["payees"].contains("DE89370400440532013000"));
        std::fs::write(&path, "{not json").unwrap();
        let (now, changes) = data.current();
        assert_eq!(changes.failed.len(), 1, "{changes:?}");
        assert!(changes.failed[0].1.contains("payees.json"));
        assert!(now.sets["payees"].contains("GB33BUKB20201555555555"));
        assert!(PolicyData::load(vec![("x".into(), dir.path().join("missing.json"))]).is_err());
    }
}
