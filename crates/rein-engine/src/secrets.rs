//! Resolving the secrets an agent names, from the environment or a secrets file.
//!
//! A secret `crm_token` is read from the variable `REIN_SECRET_CRM_TOKEN`, or else from the
//! secrets file, a TOML table of `name = "value"` that must be readable by its owner only (mode
//! 0600). Every secret the agent names is resolved before the run starts, so a missing one is an
//! error up front rather than a failure halfway through.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use rein_core::secrets::Redactor;
use rein_tools::SecretSource;

use crate::EngineError;

/// The values of an agent's secrets, held only in memory.
#[derive(Default)]
pub struct SecretValues {
    values: BTreeMap<String, String>,
}

impl std::fmt::Debug for SecretValues {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.values.keys()).finish()
    }
}

impl SecretValues {
    /// A redactor for every value held.
    pub fn redactor(&self) -> Redactor {
        Redactor::new(self.values.iter().map(|(k, v)| (k.clone(), v.clone())))
    }
}

impl SecretSource for SecretValues {
    fn secret(&self, name: &str) -> Result<String, String> {
        self.values
            .get(name)
            .cloned()
            .ok_or_else(|| format!("secret `{name}` is not configured for this agent"))
    }
}

/// The environment variable a secret is read from.
pub fn secret_env_var(name: &str) -> String {
    let upper: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("REIN_SECRET_{upper}")
}

/// Resolves `names` from `env` or the secrets file. `file` is the secrets file, if one should be
/// read; `required` says whether its absence is an error (it was named explicitly).
pub fn resolve_secrets(
    names: &[String],
    env: &dyn Fn(&str) -> Option<String>,
    file: Option<&Path>,
    required: bool,
) -> Result<SecretValues, EngineError> {
    let mut from_file = BTreeMap::new();
    if let Some(file) = file {
        let fail = |message: String| {
            EngineError::Agent(format!("secrets file {}: {message}", file.display()))
        };
        match std::fs::metadata(file) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {}
            Err(e) => return Err(fail(format!("cannot read it: {e}"))),
            Ok(meta) => {
                let mode = meta.permissions().mode() & 0o777;
                if mode & 0o077 != 0 {
                    return Err(fail(format!(
                        "others can read it (mode {mode:o}); run `chmod 600 {}`",
                        file.display()
                    )));
                }
                let text = std::fs::read_to_string(file)
                    .map_err(|e| fail(format!("cannot read it: {e}")))?;
                // Errors from the parser could quote a value: report only where, never what.
                let table: toml::Table = toml::from_str(&text).map_err(|e| {
                    let at = e
                        .span()
                        .map(|s| rein_core::text::line_col(&text, s.start))
                        .map(|(l, c)| format!(" at line {l}, column {c}"))
                        .unwrap_or_default();
                    fail(format!("it is not a TOML table of `name = \"value\"`{at}"))
                })?;
                for (name, value) in table {
                    let value = value
                        .as_str()
                        .ok_or_else(|| fail(format!("`{name}` must be a string")))?
                        .to_owned();
                    from_file.insert(name, value);
                }
            }
        }
    }
    let mut values = BTreeMap::new();
    for name in names {
        let var = secret_env_var(name);
        let value = env(&var)
            .filter(|v| !v.is_empty())
            .or_else(|| from_file.get(name).cloned())
            .ok_or_else(|| {
                let where_file = file
                    .map(|f| format!(" or add `{name} = \"...\"` to {} (mode 600)", f.display()))
                    .unwrap_or_default();
                EngineError::Agent(format!(
                    "secret `{name}` is not set: export {var}=...{where_file}"
                ))
            })?;
        if value.len() < 4 {
            return Err(EngineError::Agent(format!(
                "secret `{name}` is shorter than 4 characters, too short to be kept out of logs"
            )));
        }
        values.insert(name.clone(), value);
    }
    Ok(SecretValues { values })
}

/// The event with every secret value replaced by its name. Fails closed: an event that cannot be
/// redacted (it cannot be encoded, or redacting it leaves something that is no longer an event)
/// is an error, never returned as it was.
pub(crate) fn redact_event(
    redactor: &Redactor,
    event: rein_core::Event,
) -> Result<rein_core::Event, EngineError> {
    if redactor.is_empty() {
        return Ok(event);
    }
    let kind = event.kind();
    let mut value = serde_json::to_value(&event).map_err(|e| {
        EngineError::Redaction(format!(
            "a {kind} event cannot be encoded for redaction: {e}"
        ))
    })?;
    redactor.json(&mut value);
    serde_json::from_value(value).map_err(|e| {
        EngineError::Redaction(format!(
            "a {kind} event is no longer readable once its secret values are replaced ({e}); \
             rein records nothing rather than record a secret: give the secret a value that \
             cannot be mistaken for one of rein's own field names"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_that_cannot_be_redacted_is_an_error_never_the_event_in_clear() {
        let event = rein_core::Event::Notice {
            kind: "tool_said".into(),
            subject: "x".into(),
            detail: "the key is hunter22".into(),
            call_id: None,
        };
        let plain = Redactor::new([("pw".to_string(), "hunter22".to_string())]);
        match redact_event(&plain, event.clone()).unwrap() {
            rein_core::Event::Notice { detail, .. } => {
                assert_eq!(detail, "the key is [secret:pw]")
            }
            other => panic!("{other:?}"),
        }
        // A secret whose value is the event's own tag: redacting it breaks the event.
        let clash = Redactor::new([("tag".to_string(), "notice".to_string())]);
        let err = redact_event(&clash, event).unwrap_err().to_string();
        assert!(
            err.contains("records nothing rather than record a secret"),
            "{err}"
        );
    }

    #[test]
    fn secrets_come_from_the_environment_or_a_private_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("secrets.toml");
        std::fs::write(
            &file,
            "crm_token = \"from-the-file\"\nother = \"x-other\"\n",
        )
        .unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let names = vec!["crm_token".to_string()];
        let none = |_: &str| None;
        let err = resolve_secrets(&names, &none, Some(&file), false)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("others can read it (mode 644); run `chmod 600"),
            "{err}"
        );
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let values = resolve_secrets(&names, &none, Some(&file), false).unwrap();
        assert_eq!(values.secret("crm_token").unwrap(), "from-the-file");
        assert!(
            values.secret("other").is_err(),
            "only the secrets the agent names are held"
        );
        let env = |var: &str| (var == "REIN_SECRET_CRM_TOKEN").then(|| "from-the-env".to_string());
        assert_eq!(
            resolve_secrets(&names, &env, Some(&file), false)
                .unwrap()
                .secret("crm_token")
                .unwrap(),
            "from-the-env"
        );
        let err = resolve_secrets(&["missing".into()], &none, Some(&file), false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("secret `missing` is not set: export REIN_SECRET_MISSING=... or add `missing = \"...\"`"), "{err}");
        let err = resolve_secrets(&names, &none, Some(&dir.path().join("nope.toml")), true)
            .unwrap_err()
            .to_string();
        assert!(err.contains("cannot read it"), "{err}");
        std::fs::write(&file, "crm_token = \"sup3r-s3cret\" broken").unwrap();
        let err = resolve_secrets(&names, &none, Some(&file), false)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("not a TOML table") && !err.contains("sup3r-s3cret"),
            "{err}"
        );
    }
}
