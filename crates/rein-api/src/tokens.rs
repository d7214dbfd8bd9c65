//! API tokens: who a request to `rein serve` acts as. A token is `rein_<id>_<secret>`; only the
//! SHA-256 of its secret is stored, compared in constant time. It fixes the tenant and user that
//! runs it starts are judged and billed as, and the scopes of what it may do.

use rein_store::{TokenRow, TokenStore};
use sha2::{Digest, Sha256};

use crate::{Error, Rein, v1};

/// What a token may do. `admin` may do everything within its tenant, and read the audit log's
/// verification and the metrics.
/// `gateway` lets a token use every gateway served (`gateway:<agent>`: that one only).
pub const SCOPES: [&str; 6] = [
    "gateway",
    "runs:write",
    "approvals:decide",
    "audit:read",
    "metrics:read",
    "admin",
];

/// The caller a token stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The token's id.
    pub token_id: String,
    /// Its tenant: every run, approval and record the caller sees is this tenant's.
    pub tenant: String,
    /// Its user: runs it starts act for them; approvals it decides are decided by them.
    pub user: String,
    /// Its scopes.
    pub scopes: Vec<String>,
}

impl Caller {
    /// Whether the caller holds `scope` (or `admin`).
    pub fn may(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == scope || s == "admin")
    }

    /// Whether the caller may use the gateway agent `agent` (`gateway`, `gateway:<agent>` or
    /// `admin`).
    pub fn may_use_gateway(&self, agent: &str) -> bool {
        self.may("gateway")
            || self
                .scopes
                .iter()
                .any(|s| s.strip_prefix("gateway:") == Some(agent))
    }

    /// Refuses a caller without `scope`.
    pub fn require(&self, scope: &str) -> Result<(), Error> {
        if self.may(scope) {
            Ok(())
        } else {
            Err(Error::Forbidden(format!(
                "this token lacks the `{scope}` scope; create one with `rein tokens create --tenant {} --scope {scope}`",
                self.tenant
            )))
        }
    }
}

fn hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Equal, in time that does not depend on where they differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn wire(row: TokenRow) -> v1::Token {
    v1::Token {
        id: row.id,
        tenant: row.tenant,
        user: row.user,
        scopes: row.scopes,
        created_ms: row.created_ms,
        expires_ms: row.expires_ms,
        revoked_ms: row.revoked_ms,
    }
}

impl Rein {
    fn tokens(&self) -> Result<&TokenStore, Error> {
        if let Some(t) = self.tokens.get() {
            return Ok(t);
        }
        let opened = TokenStore::open(&self.dir.root)?;
        Ok(self.tokens.get_or_init(|| opened))
    }

    /// Creates a token; the token itself is returned once and never stored.
    pub fn create_token(
        &self,
        tenant: &str,
        user: &str,
        scopes: &[String],
        expires_ms: Option<u64>,
        now_ms: u64,
    ) -> Result<(String, v1::Token), Error> {
        let name_ok = |s: &str| {
            !s.is_empty()
                && s.len() <= 128
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'))
        };
        if !name_ok(tenant) || !name_ok(user) {
            return Err(Error::Invalid(
                "a tenant and a user are 1 to 128 letters, digits, `.`, `_`, `-` or `@`".into(),
            ));
        }
        if scopes.is_empty() {
            return Err(Error::Invalid(format!(
                "give at least one scope: {}",
                SCOPES.join(", ")
            )));
        }
        let known = |s: &str| {
            SCOPES.contains(&s)
                || s.strip_prefix("gateway:").is_some_and(|a| {
                    !a.is_empty()
                        && a.len() <= 128
                        && a.chars()
                            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
                })
        };
        if let Some(bad) = scopes.iter().find(|s| !known(s)) {
            return Err(Error::Invalid(format!(
                "`{bad}` is not a scope; the scopes are {} and gateway:<agent>",
                SCOPES.join(", ")
            )));
        }
        let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
        let secret = format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        let row = TokenRow {
            id: id.clone(),
            hash: hash(&secret),
            tenant: tenant.to_owned(),
            user: user.to_owned(),
            scopes: scopes.to_vec(),
            created_ms: now_ms,
            expires_ms,
            revoked_ms: None,
        };
        self.tokens()?.create(&row)?;
        Ok((format!("rein_{id}_{secret}"), wire(row)))
    }

    /// Tokens, of one tenant or all.
    pub fn list_tokens(&self, tenant: Option<&str>) -> Result<Vec<v1::Token>, Error> {
        Ok(self.tokens()?.list(tenant)?.into_iter().map(wire).collect())
    }

    /// Revokes a token by its id.
    pub fn revoke_token(&self, id: &str, now_ms: u64) -> Result<(), Error> {
        if self.tokens()?.revoke(id, now_ms)? {
            Ok(())
        } else {
            Err(Error::NotFound(format!(
                "no token `{id}` that is not revoked already: `rein tokens list` shows them"
            )))
        }
    }

    /// The caller a bearer token stands for; refused when it is malformed, unknown, revoked or
    /// expired (all alike, so a caller learns nothing about which).
    pub fn authenticate(&self, bearer: &str, now_ms: u64) -> Result<Caller, Error> {
        let refused = || Error::Unauthorized("the bearer token is not valid".into());
        let rest = bearer.strip_prefix("rein_").ok_or_else(refused)?;
        let (id, secret) = rest.split_once('_').ok_or_else(refused)?;
        let row = self.tokens()?.get(id)?.ok_or_else(refused)?;
        let valid = same(hash(secret).as_bytes(), row.hash.as_bytes())
            && row.revoked_ms.is_none()
            && row.expires_ms.is_none_or(|at| now_ms < at);
        if !valid {
            return Err(refused());
        }
        Ok(Caller {
            token_id: row.id,
            tenant: row.tenant,
            user: row.user,
            scopes: row.scopes,
        })
    }
}
