//! RFC 2136 dynamic updates, signed with TSIG (RFC 8945), to the operator's primary DNS
//! server: one update adds the TXT record, one deletes exactly that record afterwards.

use std::{
    net::SocketAddr,
    path::Path,
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::{bail, Context, Result};
use base64::Engine;
use futures_util::{future::BoxFuture, FutureExt};
use hickory_proto::{
    op::{update_message, Message, ResponseCode},
    rr::rdata::tsig::TsigAlgorithm,
    rr::{rdata::TXT, Name, RData, Record, RecordSet, RecordType, TSigner},
};

use super::{
    wire::{rcode_name, tcp_exchange},
    Dns01Error, TxtPublisher, TxtRecord,
};
use crate::config::DnsUpdate;

/// TTL of the published records: resolvers must not keep an old challenge for long.
const TXT_TTL: u32 = 60;
/// Allowed clock difference between tenement and the server (RFC 8945 recommends 300 s).
const TSIG_FUDGE: u16 = 300;

pub(super) struct Rfc2136 {
    server: SocketAddr,
    zone: Name,
    signer: TSigner,
    check_servers: Vec<SocketAddr>,
}

impl Rfc2136 {
    /// Reads the key's secret; errors name the file or the key.
    pub fn new(settings: &DnsUpdate) -> Result<Rfc2136> {
        let secret = read_secret(&settings.key_secret_file)?;
        let algorithm = match settings.algorithm.as_str() {
            "hmac-sha256" => TsigAlgorithm::HmacSha256,
            "hmac-sha384" => TsigAlgorithm::HmacSha384,
            "hmac-sha512" => TsigAlgorithm::HmacSha512,
            other => bail!("settings.tls.dns_update.algorithm {other:?} is not supported"),
        };
        let key_name = Name::from_ascii(&settings.key_name).with_context(|| {
            format!(
                "settings.tls.dns_update.key_name {:?} is not a DNS name",
                settings.key_name
            )
        })?;
        let signer = TSigner::new(secret, algorithm, key_name, TSIG_FUDGE)
            .map_err(|err| anyhow::anyhow!("settings.tls.dns_update: {err}"))?;
        let zone = Name::from_ascii(format!("{}.", settings.zone.trim_end_matches('.')))
            .with_context(|| format!("settings.tls.dns_update.zone {:?}", settings.zone))?;
        let check_servers = if settings.check_servers.is_empty() {
            vec![settings.server]
        } else {
            settings.check_servers.clone()
        };
        Ok(Rfc2136 {
            server: settings.server,
            zone,
            signer,
            check_servers,
        })
    }

    fn rrset(&self, record: &TxtRecord) -> Result<RecordSet, Dns01Error> {
        let outside = || Dns01Error::OutsideZone {
            record: record.name.clone(),
            zone: self.zone.to_ascii(),
        };
        let name = Name::from_ascii(format!("{}.", record.name)).map_err(|_| outside())?;
        if !self.zone.zone_of(&name) {
            return Err(outside());
        }
        let mut rrset = RecordSet::with_ttl(name.clone(), RecordType::TXT, TXT_TTL);
        rrset.insert(
            Record::from_rdata(
                name,
                TXT_TTL,
                RData::TXT(TXT::new(vec![record.value.clone()])),
            ),
            0,
        );
        Ok(rrset)
    }

    /// Signs `message`, sends it and checks the server's answer and its signature.
    async fn send(&self, record: &TxtRecord, mut message: Message) -> Result<(), Dns01Error> {
        let failed = |reason: String| Dns01Error::UpdateFailed {
            record: record.name.clone(),
            server: self.server,
            reason,
        };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let verifier = message
            .finalize(&self.signer, now)
            .map_err(|err| failed(format!("signing the update: {err}")))?;
        let packet = message
            .to_vec()
            .map_err(|err| failed(format!("encoding the update: {err}")))?;
        let answer = tcp_exchange(self.server, &packet)
            .await
            .map_err(|err| failed(err.to_string()))?;
        let parsed =
            Message::from_vec(&answer).map_err(|err| failed(format!("bad answer: {err}")))?;
        let rcode = parsed.metadata.response_code;
        if rcode != ResponseCode::NoError {
            let tsig_error = parsed
                .signature
                .as_ref()
                .and_then(|signature| signature.data.error.as_ref())
                .map(|error| format!(" (TSIG {error:?})").to_ascii_uppercase())
                .unwrap_or_default();
            return Err(Dns01Error::UpdateRefused {
                record: record.name.clone(),
                server: self.server,
                rcode: rcode_name(rcode),
                detail: tsig_error,
            });
        }
        // An unsigned or wrongly signed "success" is not the server holding our key.
        let mut verifier = verifier.ok_or_else(|| failed("the update was not signed".into()))?;
        verifier.verify(&answer).map_err(|err| {
            failed(format!(
                "the answer's TSIG signature does not verify: {err}"
            ))
        })?;
        Ok(())
    }
}

impl TxtPublisher for Rfc2136 {
    fn publish<'a>(&'a self, record: &'a TxtRecord) -> BoxFuture<'a, Result<(), Dns01Error>> {
        async move {
            let rrset = self.rrset(record)?;
            // Appended, never replacing: a wildcard and its base name share the name.
            let message = update_message::append(rrset, self.zone.clone(), false, false);
            self.send(record, message).await
        }
        .boxed()
    }

    fn remove<'a>(&'a self, record: &'a TxtRecord) -> BoxFuture<'a, Result<(), Dns01Error>> {
        async move {
            let rrset = self.rrset(record)?;
            let message = update_message::delete_by_rdata(rrset, self.zone.clone(), false);
            self.send(record, message).await
        }
        .boxed()
    }

    fn check_servers(&self) -> &[SocketAddr] {
        &self.check_servers
    }
}

/// The base64 secret alone, or the `key "name" { algorithm ...; secret "..."; };` block
/// that `tsig-keygen` prints and BIND includes.
fn read_secret(path: &Path) -> Result<Vec<u8>> {
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "reading settings.tls.dns_update.key_secret_file {}",
            path.display()
        )
    })?;
    let secret = match text.split_once("secret") {
        Some((_, rest)) => rest
            .split('"')
            .nth(1)
            .with_context(|| format!("{}: no quoted value after `secret`", path.display()))?,
        None => text.trim(),
    };
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(secret.trim())
        .with_context(|| format!("{}: the TSIG secret is not base64", path.display()))?;
    if bytes.is_empty() {
        bail!("{}: the TSIG secret is empty", path.display());
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_read_alone_or_from_a_key_block() {
        let dir = std::env::temp_dir().join(format!("tenement-tsig-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let alone = dir.join("alone");
        std::fs::write(&alone, "c2VjcmV0\n").unwrap();
        assert_eq!(read_secret(&alone).unwrap(), b"secret");
        let block = dir.join("block");
        std::fs::write(
            &block,
            "key \"tenement\" {\n\talgorithm hmac-sha256;\n\tsecret \"c2VjcmV0\";\n};\n",
        )
        .unwrap();
        assert_eq!(read_secret(&block).unwrap(), b"secret");
        let bad = dir.join("bad");
        std::fs::write(&bad, "not base64!").unwrap();
        let err = format!("{:#}", read_secret(&bad).unwrap_err());
        assert!(err.contains("not base64"), "{err}");
        let err = format!("{:#}", read_secret(&dir.join("missing")).unwrap_err());
        assert!(err.contains("key_secret_file"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
