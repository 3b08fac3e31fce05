//! Who is calling, and what they may do.
//!
//! - On the unix socket, root (and the daemon's own user, who owns the data directory anyway)
//!   is recognised by the socket's peer credentials and needs no token.
//! - Everyone else presents `Authorization: Bearer <token>`. An `admin` token may do
//!   everything; a tenant token only reads its own instance: status, logs, events, stats.
//!
//! Tokens are checked by the store, which keeps only their SHA-256 and looks them up by it.

use hyper::header::HeaderValue;

use super::error::{ApiError, ApiResult};
use crate::{config::InstanceName, store::Store};

/// The connection a request came in on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Peer {
    /// A unix socket peer and its uid (SO_PEERCRED).
    Unix { uid: u32 },
    /// A TCP peer and its address (for the audit log and the limit on refused tokens).
    Tcp { address: std::net::SocketAddr },
}

/// What a token may do, as stored: `admin` or `tenant:service:id`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    Admin,
    Tenant(InstanceName),
}

impl Scope {
    pub fn parse(text: &str) -> Result<Scope, String> {
        if text == "admin" {
            return Ok(Scope::Admin);
        }
        match text.strip_prefix("tenant:") {
            Some(name) => InstanceName::parse(name).map(Scope::Tenant),
            None => Err(format!(
                "unknown token scope {text:?}: expected admin or tenant:SERVICE:ID"
            )),
        }
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scope::Admin => f.write_str("admin"),
            Scope::Tenant(name) => write!(f, "tenant:{name}"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    /// Root or the daemon's user on the unix socket.
    Operator {
        uid: u32,
    },
    Admin {
        token: i64,
    },
    Tenant {
        token: i64,
        instance: InstanceName,
    },
}

impl Caller {
    /// Who sent a request, from its connection and its `Authorization` header.
    /// A presented token always decides, even on the unix socket, so root can try a tenant's
    /// view; a bad one is refused rather than ignored.
    pub fn identify(
        peer: Peer,
        authorization: Option<&HeaderValue>,
        store: &Store,
    ) -> ApiResult<Caller> {
        let Some(header) = authorization else {
            return match peer {
                Peer::Unix { uid } if trusted_uid(uid) => Ok(Caller::Operator { uid }),
                _ => Err(ApiError::unauthorized(
                    "missing token: send `Authorization: Bearer TOKEN` (the CLI takes --token \
                     or TENEMENT_TOKEN); an admin creates one with `tenement token-gen`",
                )),
            };
        };
        let secret = bearer(header)?;
        let record = store
            .verify_token(secret)
            .map_err(|err| ApiError::internal(format!("checking the token: {err:#}")))?
            .ok_or_else(|| {
                ApiError::unauthorized(
                    "invalid token: it was never issued here or it was revoked \
                     (`tenement token-list` shows the live ones)",
                )
            })?;
        match Scope::parse(&record.scope) {
            Ok(Scope::Admin) => Ok(Caller::Admin { token: record.id }),
            Ok(Scope::Tenant(instance)) => Ok(Caller::Tenant {
                token: record.id,
                instance,
            }),
            Err(err) => Err(ApiError::forbidden(format!(
                "token {} has a scope this tenement does not understand: {err}",
                record.id
            ))),
        }
    }

    /// For changes and anything beyond one instance: admin tokens and operators only.
    pub fn require_admin(&self, action: &str) -> ApiResult<()> {
        match self {
            Caller::Operator { .. } | Caller::Admin { .. } => Ok(()),
            Caller::Tenant { token, instance } => Err(ApiError::forbidden(format!(
                "token {token} is scoped to {instance} and may only read it: {action} needs \
                 an admin token"
            ))),
        }
    }

    /// Reading one instance: admin, or a tenant token for exactly that instance.
    pub fn require_read(&self, name: &InstanceName) -> ApiResult<()> {
        match self {
            Caller::Tenant { token, instance } if instance != name => Err(ApiError::forbidden(
                format!("token {token} is scoped to {instance}: it cannot read {name}"),
            )),
            _ => Ok(()),
        }
    }

    /// Reading a whole service: a tenant token only for its own instance's service (and
    /// then only its own instance's part of it).
    pub fn require_read_service(&self, service: &str) -> ApiResult<()> {
        match self {
            Caller::Tenant { token, instance } if instance.service != service => {
                Err(ApiError::forbidden(format!(
                    "token {token} is scoped to {instance}: it cannot read service {service}"
                )))
            }
            _ => Ok(()),
        }
    }

    pub fn may_read(&self, name: &InstanceName) -> bool {
        self.require_read(name).is_ok()
    }
}

/// Root, or the user the daemon runs as: both can read the data directory, tokens included.
pub(crate) fn trusted_uid(uid: u32) -> bool {
    uid == 0 || uid == nix::unistd::geteuid().as_raw()
}

fn bearer(header: &HeaderValue) -> ApiResult<&str> {
    let malformed = || {
        ApiError::unauthorized(
            "malformed Authorization header: expected `Authorization: Bearer TOKEN`",
        )
    };
    let text = header.to_str().map_err(|_| malformed())?;
    let (scheme, secret) = text.trim().split_once(' ').ok_or_else(malformed)?;
    if !scheme.eq_ignore_ascii_case("bearer") || secret.trim().is_empty() {
        return Err(malformed());
    }
    Ok(secret.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_round_trip() {
        for text in ["admin", "tenant:api:alice"] {
            assert_eq!(Scope::parse(text).unwrap().to_string(), text);
        }
        assert!(Scope::parse("tenant:api").is_err());
        assert!(Scope::parse("root").is_err());
    }

    #[test]
    fn tenants_read_only_their_instance() {
        let alice = InstanceName::parse("api:alice").unwrap();
        let bob = InstanceName::parse("api:bob").unwrap();
        let tenant = Caller::Tenant {
            token: 7,
            instance: alice.clone(),
        };
        assert!(tenant.require_read(&alice).is_ok());
        let denied = tenant.require_read(&bob).unwrap_err();
        assert_eq!(denied.status, hyper::StatusCode::FORBIDDEN);
        assert!(denied.message.contains("api:alice"), "{}", denied.message);
        assert!(tenant.require_admin("spawning").is_err());
        assert!(Caller::Admin { token: 1 }.require_admin("spawning").is_ok());
    }

    #[test]
    fn bearer_header() {
        let ok = HeaderValue::from_static("Bearer tnm_abc");
        assert_eq!(bearer(&ok).unwrap(), "tnm_abc");
        for bad in ["tnm_abc", "Basic xyz", "Bearer "] {
            let header = HeaderValue::from_str(bad).unwrap();
            assert!(bearer(&header).is_err(), "{bad}");
        }
    }
}
