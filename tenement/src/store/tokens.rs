//! API tokens. Only a SHA-256 of each secret is stored: a leaked database grants nothing.
//! What a scope means (admin, one service, one instance) is the API's business; the store
//! keeps it as text.

use anyhow::{Context, Result};
use rand::RngCore;
use rusqlite::{params, OptionalExtension};
use sha2::{Digest, Sha256};

use super::{events, Store};

/// A stored token, without its secret.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TokenRecord {
    pub id: i64,
    pub scope: String,
    /// What the token is for (`token-gen --description`), shown in lists and the audit log.
    pub description: String,
    /// Unix milliseconds.
    pub created_ms: i64,
}

const COLUMNS: &str = "id, scope, description, created_ms";

fn record(row: &rusqlite::Row<'_>) -> rusqlite::Result<TokenRecord> {
    Ok(TokenRecord {
        id: row.get(0)?,
        scope: row.get(1)?,
        description: row.get(2)?,
        created_ms: row.get(3)?,
    })
}

/// Prefix of every secret, so a leaked one is recognisable (e.g. by secret scanners).
const SECRET_PREFIX: &str = "tnm_";

fn digest(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.as_bytes()).to_vec()
}

impl Store {
    /// Creates a token for `scope`; returns its record and the secret, which is shown once
    /// and never stored.
    pub fn issue_token(&self, scope: &str, description: &str) -> Result<(TokenRecord, String)> {
        let mut random = [0u8; 32];
        rand::rng().fill_bytes(&mut random);
        let secret = format!("{SECRET_PREFIX}{}", hex::encode(random));
        let created_ms = events::now_ms();
        let id = self
            .write(|tx| {
                tx.execute(
                    "INSERT INTO tokens (scope, sha256, created_ms, description) \
                     VALUES (?1, ?2, ?3, ?4)",
                    params![scope, digest(&secret), created_ms, description],
                )?;
                Ok(tx.last_insert_rowid())
            })
            .with_context(|| format!("issuing a token for scope {scope:?}"))?;
        let record = TokenRecord {
            id,
            scope: scope.to_string(),
            description: description.to_string(),
            created_ms,
        };
        Ok((record, secret))
    }

    /// The token whose secret is `secret`, if any. The lookup goes by hash, so its timing
    /// reveals nothing usable about the secret.
    pub fn verify_token(&self, secret: &str) -> Result<Option<TokenRecord>> {
        let db = self.lock();
        Ok(db
            .query_row(
                &format!("SELECT {COLUMNS} FROM tokens WHERE sha256 = ?1"),
                [digest(secret)],
                record,
            )
            .optional()?)
    }

    /// Token `id`, if it is still live (sessions signed in with it end when it is revoked).
    pub fn token(&self, id: i64) -> Result<Option<TokenRecord>> {
        let db = self.lock();
        Ok(db
            .query_row(
                &format!("SELECT {COLUMNS} FROM tokens WHERE id = ?1"),
                [id],
                record,
            )
            .optional()?)
    }

    /// Every token, oldest first.
    pub fn tokens(&self) -> Result<Vec<TokenRecord>> {
        let db = self.lock();
        let mut query = db.prepare(&format!("SELECT {COLUMNS} FROM tokens ORDER BY id"))?;
        let rows = query
            .query_map([], record)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    /// Deletes token `id`; false when there was none.
    pub fn revoke_token(&self, id: i64) -> Result<bool> {
        self.write(|tx| Ok(tx.execute("DELETE FROM tokens WHERE id = ?1", [id])? > 0))
            .with_context(|| format!("revoking token {id}"))
    }
}

/// A token as the fleet shares it through etcd: its record and the SHA-256 of its secret
/// (hex), never the secret.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SharedToken {
    #[serde(flatten)]
    pub record: TokenRecord,
    pub sha256: String,
}

/// A new secret and the shared form of a token for it, with id `id`; nothing stored yet.
pub fn new_shared_token(id: i64, scope: &str, description: &str) -> (SharedToken, String) {
    let mut random = [0u8; 32];
    rand::rng().fill_bytes(&mut random);
    let secret = format!("{SECRET_PREFIX}{}", hex::encode(random));
    let token = SharedToken {
        record: TokenRecord {
            id,
            scope: scope.to_string(),
            description: description.to_string(),
            created_ms: events::now_ms(),
        },
        sha256: hex::encode(digest(&secret)),
    };
    (token, secret)
}

impl Store {
    /// The id the next token would get here: above every id this store has held.
    pub fn next_token_id(&self) -> Result<i64> {
        let db = self.lock();
        Ok(db.query_row(
            "SELECT MAX(COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'tokens'), 0), \
                        COALESCE((SELECT MAX(id) FROM tokens), 0)) + 1",
            [],
            |row| row.get(0),
        )?)
    }

    /// Every token with the hash of its secret, for the fleet to share.
    pub fn shared_tokens(&self) -> Result<Vec<SharedToken>> {
        let db = self.lock();
        let mut query = db.prepare(&format!("SELECT {COLUMNS}, sha256 FROM tokens ORDER BY id"))?;
        let rows = query
            .query_map([], |row| {
                Ok(SharedToken {
                    record: record(row)?,
                    sha256: hex::encode(row.get::<_, Vec<u8>>(4)?),
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    /// Adds (or replaces) one shared token.
    pub fn insert_shared_token(&self, token: &SharedToken) -> Result<()> {
        self.sync_tokens_inner(std::slice::from_ref(token), false)
    }

    /// Makes the tokens exactly `tokens` (the fleet's set): others are deleted.
    pub fn sync_tokens(&self, tokens: &[SharedToken]) -> Result<()> {
        self.sync_tokens_inner(tokens, true)
    }

    fn sync_tokens_inner(&self, tokens: &[SharedToken], exact: bool) -> Result<()> {
        let decoded = tokens
            .iter()
            .map(|token| Ok((token, hex::decode(&token.sha256)?)))
            .collect::<Result<Vec<_>>>()
            .context("a shared token's hash is not hex")?;
        self.write(|tx| {
            if exact {
                let ids: std::collections::HashSet<i64> =
                    tokens.iter().map(|token| token.record.id).collect();
                let local: Vec<i64> = tx
                    .prepare("SELECT id FROM tokens")?
                    .query_map([], |row| row.get(0))?
                    .collect::<rusqlite::Result<_>>()?;
                for id in local.into_iter().filter(|id| !ids.contains(id)) {
                    tx.execute("DELETE FROM tokens WHERE id = ?1", [id])?;
                }
            }
            for (token, sha256) in &decoded {
                let record = &token.record;
                tx.execute(
                    "INSERT OR REPLACE INTO tokens (id, scope, sha256, created_ms, description) \
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![
                        record.id,
                        record.scope,
                        sha256,
                        record.created_ms,
                        record.description
                    ],
                )?;
            }
            Ok(())
        })
        .context("copying the fleet's tokens")
    }
}
