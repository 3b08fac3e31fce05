//! Talking to the ACME server (instant-acme): the account, created once and stored, and one
//! order per certificate, answered by HTTP-01 or TLS-ALPN-01.

use std::{path::PathBuf, sync::Arc, time::Duration};

use anyhow::{bail, Context, Result};
use instant_acme::{
    Account, AccountBuilder, AuthorizationStatus, ChallengeType, Identifier, NewAccount, NewOrder,
    Order, OrderStatus, RetryPolicy,
};
use rcgen::{CertificateParams, DistinguishedName, KeyPair};

use super::{
    certificate::Certificate,
    challenges::{ChallengeGuard, Challenges},
    disk::Disk,
};
use crate::config::Challenge;

pub(crate) struct Acme {
    pub directory: String,
    email: Option<String>,
    root: Option<PathBuf>,
    challenges: Vec<Challenge>,
    disk: Disk,
    /// Loaded (or created) at the first order, not at start: starting must never wait for
    /// the ACME server.
    account: tokio::sync::Mutex<Option<Account>>,
}

impl Acme {
    pub fn new(
        directory: String,
        email: Option<String>,
        root: Option<PathBuf>,
        challenges: Vec<Challenge>,
        disk: Disk,
    ) -> Acme {
        Acme {
            directory,
            email,
            root,
            challenges,
            disk,
            account: tokio::sync::Mutex::new(None),
        }
    }

    /// Orders a certificate for `name`, stores it and returns it. After failures the
    /// preferred challenge rotates (`failed_before`), so that a closed port 80 makes the
    /// next attempt use TLS-ALPN-01 on 443, and the other way round.
    pub async fn issue(
        &self,
        name: &str,
        pending: &Arc<Challenges>,
        failed_before: u32,
    ) -> Result<Certificate> {
        let account = self.account().await?;
        let order = match account.new_order(&NewOrder::new(&[dns(name)])).await {
            Err(instant_acme::Error::Api(problem))
                if problem.r#type.as_deref()
                    == Some("urn:ietf:params:acme:error:accountDoesNotExist") =>
            {
                // The server forgot the stored account (a test server restarted, or the
                // account was deactivated): make a new one once.
                tracing::warn!(
                    "tls: {} does not know the stored ACME account {}; creating a new one",
                    self.directory,
                    self.disk.account_path().display()
                );
                let account = self.create_account().await?;
                account.new_order(&NewOrder::new(&[dns(name)])).await
            }
            other => other,
        };
        let mut order = order.context("creating the order")?;
        let mut preference = self.challenges.clone();
        let shift = failed_before as usize % preference.len().max(1);
        preference.rotate_left(shift);
        let _answers = self
            .answer_challenges(name, &mut order, pending, &preference)
            .await?;

        let status = order
            .poll_ready(&patient())
            .await
            .context("waiting for the server to validate the challenge")?;
        if status != OrderStatus::Ready {
            bail!(
                "validation failed: {}",
                challenge_errors(&mut order)
                    .await
                    .unwrap_or_else(|| format!("order is {status:?}"))
            );
        }

        let key = KeyPair::generate().context("generating the certificate key")?;
        let mut params = CertificateParams::new(vec![name.to_string()])?;
        params.distinguished_name = DistinguishedName::new();
        let csr = params.serialize_request(&key)?;
        order
            .finalize_csr(csr.der())
            .await
            .context("finalizing the order")?;
        let chain = order
            .poll_certificate(&patient())
            .await
            .context("downloading the certificate")?;

        let key_pem = key.serialize_pem();
        let certificate = Certificate::from_pem(chain.as_bytes(), key_pem.as_bytes())
            .context("the server sent an unusable certificate")?;
        if !certificate.covers(name) {
            bail!(
                "the server sent a certificate for {:?}, not for {name}",
                certificate.names
            );
        }
        self.disk.write_certificate(name, &key_pem, &chain)?;
        Ok(certificate)
    }

    /// Sets up an answer for each pending authorization, with the first challenge of
    /// `preference` the server offers, and tells the server to validate it.
    async fn answer_challenges(
        &self,
        name: &str,
        order: &mut Order,
        pending: &Arc<Challenges>,
        preference: &[Challenge],
    ) -> Result<Vec<ChallengeGuard>> {
        let mut answers = Vec::new();
        let mut authorizations = order.authorizations();
        while let Some(authorization) = authorizations.next().await {
            let mut authorization = authorization.context("fetching the authorization")?;
            match authorization.status {
                AuthorizationStatus::Pending => {}
                AuthorizationStatus::Valid => continue,
                status => bail!("the server's authorization for {name} is {status:?}"),
            }
            let offered: Vec<ChallengeType> = authorization
                .challenges
                .iter()
                .map(|c| c.r#type.clone())
                .collect();
            let Some(kind) = preference
                .iter()
                .map(|c| challenge_type(*c))
                .find(|kind| offered.contains(kind))
            else {
                bail!(
                    "the server offers {offered:?} for {name}, none of the configured \
                     challenges ({preference:?})"
                );
            };
            let mut challenge = authorization
                .challenge(kind.clone())
                .context("challenge vanished")?;
            let key_authorization = challenge.key_authorization();
            answers.push(match kind {
                ChallengeType::TlsAlpn01 => {
                    pending.add_tls_alpn01(name, key_authorization.digest().as_ref())?
                }
                _ => pending.add_http01(&challenge.token, key_authorization.as_str()),
            });
            tracing::debug!("tls: answering {kind:?} for {name}");
            challenge
                .set_ready()
                .await
                .with_context(|| format!("starting the {kind:?} validation"))?;
        }
        Ok(answers)
    }

    async fn account(&self) -> Result<Account> {
        let mut cached = self.account.lock().await;
        if let Some(account) = &*cached {
            return Ok(account.clone());
        }
        let account = match self.disk.read_account()? {
            Some(credentials) => self
                .builder()?
                .from_credentials(credentials)
                .await
                .context("loading the ACME directory")?,
            None => self.new_account().await?,
        };
        *cached = Some(account.clone());
        Ok(account)
    }

    async fn create_account(&self) -> Result<Account> {
        let account = self.new_account().await?;
        *self.account.lock().await = Some(account.clone());
        Ok(account)
    }

    async fn new_account(&self) -> Result<Account> {
        let contact = self.email.as_ref().map(|email| format!("mailto:{email}"));
        let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
        let (account, credentials) = self
            .builder()?
            .create(
                &NewAccount {
                    contact: &contacts,
                    terms_of_service_agreed: true,
                    only_return_existing: false,
                },
                self.directory.clone(),
                None,
            )
            .await
            .context("creating the ACME account")?;
        self.disk.write_account(&credentials)?;
        tracing::info!(
            "tls: created ACME account {} at {} (stored in {})",
            account.id(),
            self.directory,
            self.disk.account_path().display()
        );
        Ok(account)
    }

    fn builder(&self) -> Result<AccountBuilder> {
        match &self.root {
            Some(root) => Account::builder_with_root(root)
                .with_context(|| format!("settings.tls.acme_root {}", root.display())),
            None => Account::builder().context("loading the system's trusted roots"),
        }
    }
}

fn dns(name: &str) -> Identifier {
    Identifier::Dns(name.to_string())
}

fn challenge_type(challenge: Challenge) -> ChallengeType {
    match challenge {
        Challenge::Http01 => ChallengeType::Http01,
        Challenge::TlsAlpn01 => ChallengeType::TlsAlpn01,
    }
}

/// Validation and issuance usually take a second or two; a busy CA may take longer.
fn patient() -> RetryPolicy {
    RetryPolicy::new()
        .initial_delay(Duration::from_millis(250))
        .backoff(1.5)
        .timeout(Duration::from_secs(60))
}

/// The server's own words about why validation failed, e.g. "connection refused".
async fn challenge_errors(order: &mut Order) -> Option<String> {
    let mut errors = Vec::new();
    let mut authorizations = order.authorizations();
    while let Some(Ok(mut authorization)) = authorizations.next().await {
        let Ok(state) = authorization.refresh().await else {
            continue;
        };
        for challenge in &state.challenges {
            if let Some(problem) = &challenge.error {
                errors.push(format!("{:?}: {problem}", challenge.r#type));
            }
        }
    }
    (!errors.is_empty()).then(|| errors.join("; "))
}

/// Error text for logs and `CertificateInfo::last_error`: the whole cause chain.
pub(crate) fn describe(error: &anyhow::Error) -> String {
    format!("{error:#}")
}
