//! Waiting until a published TXT record is visible at the servers the CA's resolver will
//! ask. Telling the CA too early costs a failed validation (and Let's Encrypt allows only
//! five of those per name and hour), so this waits, within a bound.

use std::{net::SocketAddr, time::Duration};

use hickory_proto::{
    op::{Message, Query, ResponseCode},
    rr::{Name, RData, RecordType},
};
use tokio::time::{sleep, Instant};

use super::{
    wire::{rcode_name, udp_exchange},
    Dns01Error, TxtRecord,
};

/// Pause between two rounds of queries.
const POLL_INTERVAL: Duration = Duration::from_millis(500);

/// Ok once every server in `servers` answers `record`'s value; `NotVisible` naming the
/// record, the servers still missing it and their last answer after `limit`.
pub(crate) async fn wait_until_visible(
    record: &TxtRecord,
    servers: &[SocketAddr],
    limit: Duration,
) -> Result<(), Dns01Error> {
    let deadline = Instant::now() + limit;
    let mut missing: Vec<SocketAddr> = servers.to_vec();
    let mut last = String::new();
    loop {
        let mut still_missing = Vec::new();
        for server in missing {
            match lookup_txt(server, &record.name).await {
                Ok(values) if values.contains(&record.value) => {}
                Ok(values) => {
                    last = format!("{server} answers {} other value(s)", values.len());
                    still_missing.push(server);
                }
                Err(err) => {
                    last = format!("{server}: {err}");
                    still_missing.push(server);
                }
            }
        }
        missing = still_missing;
        if missing.is_empty() {
            return Ok(());
        }
        if Instant::now() + POLL_INTERVAL > deadline {
            let servers: Vec<String> = missing.iter().map(ToString::to_string).collect();
            return Err(Dns01Error::NotVisible {
                record: record.name.clone(),
                servers: servers.join(", "),
                waited: limit,
                last,
            });
        }
        sleep(POLL_INTERVAL).await;
    }
}

/// The TXT values at `name`, asked of `server` without recursion (it is meant to be
/// authoritative). NXDOMAIN and NODATA are an empty list.
pub(super) async fn lookup_txt(server: SocketAddr, name: &str) -> Result<Vec<String>, String> {
    let name = Name::from_ascii(format!("{name}.")).map_err(|err| err.to_string())?;
    let mut query = Message::query();
    query.metadata.recursion_desired = false;
    query.add_query(Query::query(name, RecordType::TXT));
    let packet = query.to_vec().map_err(|err| err.to_string())?;
    let answer = udp_exchange(server, &packet)
        .await
        .map_err(|err| err.to_string())?;
    let answer = Message::from_vec(&answer).map_err(|err| format!("bad answer: {err}"))?;
    match answer.metadata.response_code {
        ResponseCode::NoError | ResponseCode::NXDomain => {}
        code => return Err(format!("answers {}", rcode_name(code))),
    }
    Ok(answer
        .answers
        .iter()
        .filter_map(|record| match &record.data {
            RData::TXT(txt) => Some(
                txt.txt_data
                    .iter()
                    .map(|part| String::from_utf8_lossy(part))
                    .collect::<String>(),
            ),
            _ => None,
        })
        .collect())
}
