//! Talking to the ACME server (instant-acme): the account, created once and stored, and one
//! order per certificate, answered by HTTP-01, TLS-ALPN-01 or DNS-01.

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
    dns01::{wait_until_visible, Published, TxtPublisher, TxtRecord},
    names::order_identifiers,
    retry_after::NotingClient,
    shared::{http01_key, tls_alpn01_key, SharedCertificates},
};
use crate::config::Challenge;

pub(crate) struct Acme {
    pub directory: String,
    email: Option<String>,
    root: Option<PathBuf>,
    challenges: Vec<Challenge>,
    dns: Option<DnsChallenge>,
    disk: Disk,
    /// In a fleet: where challenge answers are published for the other servers, which the
    /// CA's validation request may reach instead of this one.
    shared: Option<Arc<dyn SharedCertificates>>,
    /// Loaded (or created) at the first order, not at start: starting must never wait for
    /// the ACME server.
    account: tokio::sync::Mutex<Option<Account>>,
}

/// How DNS-01 answers are published, and how long they may take to become visible.
pub(crate) struct DnsChallenge {
    pub publisher: Arc<dyn TxtPublisher>,
    pub propagation_timeout: Duration,
}

/// The answers of one order, removed when it ends.
#[derive(Default)]
struct Answers {
    /// HTTP-01 and TLS-ALPN-01: removed when dropped.
    _in_memory: Vec<ChallengeGuard>,
    /// DNS-01 records: removed by `Answers::remove` (or in the background when dropped).
    published: Vec<Published>,
    /// Answers published for the fleet: withdrawn by `Answers::remove` (and in any case
    /// gone with this server's lease).
    shared_keys: Vec<String>,
}

impl Answers {
    async fn remove(self, shared: Option<&Arc<dyn SharedCertificates>>) {
        for record in self.published {
            record.remove().await;
        }
        if let Some(shared) = shared {
            for key in &self.shared_keys {
                shared.withdraw_challenge(key).await;
            }
        }
    }
}

impl Acme {
    pub fn new(
        directory: String,
        email: Option<String>,
        root: Option<PathBuf>,
        challenges: Vec<Challenge>,
        dns: Option<DnsChallenge>,
        disk: Disk,
        shared: Option<Arc<dyn SharedCertificates>>,
    ) -> Acme {
        Acme {
            directory,
            email,
            root,
            challenges,
            dns,
            disk,
            shared,
            account: tokio::sync::Mutex::new(None),
        }
    }

    /// Keeps a certificate obtained from the fleet on disk, as if ordered here.
    pub fn keep(&self, name: &str, bundle: &str) -> Result<()> {
        self.disk.write_bundle(name, bundle)
    }

    /// Orders a certificate for `name` (`*.{base}` orders the wildcard and its base name),
    /// stores it and returns it with its PEM bundle (key, then chain). After failures the preferred challenge rotates
    /// (`failed_before`), so that a closed port 80 makes the next attempt use TLS-ALPN-01
    /// on 443, and the other way round. DNS-01 records are removed when the order ends.
    pub async fn issue(
        &self,
        name: &str,
        pending: &Arc<Challenges>,
        failed_before: u32,
    ) -> Result<(Certificate, String)> {
        let mut answers = Answers::default();
        let issued = self
            .issue_answering(name, pending, failed_before, &mut answers)
            .await;
        answers.remove(self.shared.as_ref()).await;
        issued
    }

    async fn issue_answering(
        &self,
        name: &str,
        pending: &Arc<Challenges>,
        failed_before: u32,
        answers: &mut Answers,
    ) -> Result<(Certificate, String)> {
        let identifiers: Vec<Identifier> = order_identifiers(name)
            .into_iter()
            .map(Identifier::Dns)
            .collect();
        let account = self.account().await?;
        let order = match account.new_order(&NewOrder::new(&identifiers)).await {
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
                account.new_order(&NewOrder::new(&identifiers)).await
            }
            other => other,
        };
        let mut order = order.context("creating the order")?;
        let mut preference = self.challenges.clone();
        let shift = failed_before as usize % preference.len().max(1);
        preference.rotate_left(shift);
        self.answer_challenges(name, &mut order, pending, &preference, answers)
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
        let mut params = CertificateParams::new(order_identifiers(name))?;
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
        let missing = order_identifiers(name)
            .into_iter()
            .find(|wanted| !certificate.names.contains(wanted));
        if let Some(missing) = missing {
            bail!(
                "the server sent a certificate for {:?}, without {missing}",
                certificate.names
            );
        }
        let bundle = format!("{key_pem}{chain}");
        self.disk.write_bundle(name, &bundle)?;
        Ok((certificate, bundle))
    }

    /// Sets up an answer for each pending authorization, with the first challenge of
    /// `preference` the server offers, and tells the server to validate it. A DNS-01
    /// record is first waited for until the configured servers show it.
    async fn answer_challenges(
        &self,
        name: &str,
        order: &mut Order,
        pending: &Arc<Challenges>,
        preference: &[Challenge],
        answers: &mut Answers,
    ) -> Result<()> {
        let mut authorizations = order.authorizations();
        while let Some(authorization) = authorizations.next().await {
            let mut authorization = authorization.context("fetching the authorization")?;
            let identifier = match &authorization.identifier().identifier {
                Identifier::Dns(host) => host.clone(),
                other => bail!("the server asks to validate {other:?}, not a DNS name"),
            };
            match authorization.status {
                AuthorizationStatus::Pending => {}
                AuthorizationStatus::Valid => continue,
                status => bail!("the server's authorization for {identifier} is {status:?}"),
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
                    "the server offers {offered:?} for {identifier} (order {name}), none of \
                     the configured challenges ({preference:?})"
                );
            };
            let mut challenge = authorization
                .challenge(kind.clone())
                .context("challenge vanished")?;
            let key_authorization = challenge.key_authorization();
            match kind {
                ChallengeType::TlsAlpn01 => {
                    let digest = key_authorization.digest();
                    answers
                        ._in_memory
                        .push(pending.add_tls_alpn01(&identifier, digest.as_ref())?);
                    self.share_answer(
                        answers,
                        tls_alpn01_key(&identifier),
                        &hex::encode(digest.as_ref()),
                    )
                    .await?;
                }
                ChallengeType::Dns01 => {
                    let dns = self
                        .dns
                        .as_ref()
                        .context("DNS-01 has no dns_listen or dns_update to publish with")?;
                    let record =
                        TxtRecord::for_identifier(&identifier, key_authorization.dns_value());
                    let published = Published::publish(&dns.publisher, record).await?;
                    let record = published.record().clone();
                    answers.published.push(published);
                    tracing::info!("tls: published the TXT record {}", record.name);
                    wait_until_visible(
                        &record,
                        dns.publisher.check_servers(),
                        dns.propagation_timeout,
                    )
                    .await?;
                }
                _ => {
                    answers
                        ._in_memory
                        .push(pending.add_http01(&challenge.token, key_authorization.as_str()));
                    self.share_answer(
                        answers,
                        http01_key(&challenge.token),
                        key_authorization.as_str(),
                    )
                    .await?;
                }
            }
            tracing::debug!("tls: answering {kind:?} for {identifier}");
            challenge
                .set_ready()
                .await
                .with_context(|| format!("starting the {kind:?} validation"))?;
        }
        Ok(())
    }

    /// In a fleet: publishes a challenge answer for every server, since the CA may ask any
    /// of them. Withdrawn when the order ends (`Answers::remove`).
    async fn share_answer(&self, answers: &mut Answers, key: String, answer: &str) -> Result<()> {
        let Some(shared) = &self.shared else {
            return Ok(());
        };
        answers.shared_keys.push(key.clone());
        shared
            .publish_challenge(&key, answer)
            .await
            .map_err(|error| anyhow::anyhow!("publishing the challenge answer in etcd: {error}"))
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
        let http = NotingClient::new(self.root.as_deref())?;
        Ok(Account::builder_with_http(Box::new(http)))
    }
}

fn challenge_type(challenge: Challenge) -> ChallengeType {
    match challenge {
        Challenge::Http01 => ChallengeType::Http01,
        Challenge::TlsAlpn01 => ChallengeType::TlsAlpn01,
        Challenge::Dns01 => ChallengeType::Dns01,
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
