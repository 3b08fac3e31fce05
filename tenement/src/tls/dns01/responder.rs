//! The built-in authoritative DNS responder for `dns_listen`: it answers only for the
//! `_acme-challenge` names of orders in progress, and REFUSED for everything else, so that
//! it can never serve as an open resolver or an amplifier. Parsing and building packets is
//! hickory-proto's; the rules of what to answer are here.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use anyhow::{Context, Result};
use futures_util::{future::BoxFuture, FutureExt};
use hickory_proto::{
    op::{Edns, Message, MessageType, OpCode, ResponseCode},
    rr::{rdata::TXT, DNSClass, RData, Record, RecordType},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream, UdpSocket},
    sync::Semaphore,
    task::JoinHandle,
    time::timeout,
};

use super::{Dns01Error, TxtPublisher, TxtRecord};

/// TTL of the answers: a resolver must not keep a challenge longer than an order lasts.
const TTL: u32 = 60;
/// Plain DNS over UDP without EDNS allows 512 bytes; with EDNS we offer the DNS flag day
/// 2020 size, which never fragments.
const UDP_PLAIN: usize = 512;
const UDP_EDNS: u16 = 1232;
/// TCP connections served at once, and how long one may stay silent.
const TCP_CONNECTIONS: usize = 64;
const TCP_IDLE: Duration = Duration::from_secs(10);

/// The TXT values being published, by lower-case name without the final dot. One name may
/// hold several values at once (a wildcard and its base name).
#[derive(Debug, Default)]
pub(super) struct Records(Mutex<HashMap<String, Vec<String>>>);

impl Records {
    fn add(&self, record: &TxtRecord) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(record.name.clone())
            .or_default()
            .push(record.value.clone());
    }

    fn remove(&self, record: &TxtRecord) {
        let mut records = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(values) = records.get_mut(&record.name) {
            if let Some(index) = values.iter().position(|v| *v == record.value) {
                values.remove(index);
            }
            if values.is_empty() {
                records.remove(&record.name);
            }
        }
    }

    fn values(&self, name: &str) -> Option<Vec<String>> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .cloned()
    }
}

pub(super) struct Responder {
    records: Arc<Records>,
    tasks: Vec<JoinHandle<()>>,
}

impl Responder {
    /// Binds `address` for UDP and TCP and starts answering.
    pub async fn start(address: SocketAddr) -> Result<Responder> {
        let udp = UdpSocket::bind(address).await.with_context(|| {
            format!("settings.tls.dns_listen: binding the DNS-01 responder to {address} (udp)")
        })?;
        let tcp = TcpListener::bind(address).await.with_context(|| {
            format!("settings.tls.dns_listen: binding the DNS-01 responder to {address} (tcp)")
        })?;
        let records = Arc::new(Records::default());
        let tasks = vec![
            tokio::spawn(serve_udp(udp, records.clone())),
            tokio::spawn(serve_tcp(tcp, records.clone())),
        ];
        Ok(Responder { records, tasks })
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl TxtPublisher for Responder {
    fn publish<'a>(&'a self, record: &'a TxtRecord) -> BoxFuture<'a, Result<(), Dns01Error>> {
        self.records.add(record);
        async { Ok(()) }.boxed()
    }

    fn remove<'a>(&'a self, record: &'a TxtRecord) -> BoxFuture<'a, Result<(), Dns01Error>> {
        self.records.remove(record);
        async { Ok(()) }.boxed()
    }

    fn check_servers(&self) -> &[SocketAddr] {
        &[]
    }
}

async fn serve_udp(socket: UdpSocket, records: Arc<Records>) {
    let mut buffer = vec![0u8; 4096];
    loop {
        let Ok((length, peer)) = socket.recv_from(&mut buffer).await else {
            continue;
        };
        if let Some(reply) = answer(&records, &buffer[..length], Transport::Udp) {
            let _ = socket.send_to(&reply, peer).await;
        }
    }
}

async fn serve_tcp(listener: TcpListener, records: Arc<Records>) {
    let slots = Arc::new(Semaphore::new(TCP_CONNECTIONS));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        // Over the limit, the newest connection is closed at once.
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            continue;
        };
        let records = records.clone();
        tokio::spawn(async move {
            let _ = serve_connection(stream, &records).await;
            drop(slot);
        });
    }
}

async fn serve_connection(mut stream: TcpStream, records: &Records) -> std::io::Result<()> {
    loop {
        let length = match timeout(TCP_IDLE, stream.read_u16()).await {
            Ok(length) => length?,
            Err(_) => return Ok(()),
        };
        let mut packet = vec![0u8; usize::from(length)];
        timeout(TCP_IDLE, stream.read_exact(&mut packet))
            .await
            .map_err(|_| std::io::ErrorKind::TimedOut)??;
        let Some(reply) = answer(records, &packet, Transport::Tcp) else {
            return Ok(());
        };
        let mut framed = (reply.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(&reply);
        stream.write_all(&framed).await?;
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Transport {
    Udp,
    Tcp,
}

/// The reply to one packet, or `None` to stay silent (too short to hold a header, or not a
/// query at all: answering responses could make two servers talk forever).
///
/// Only a query for a name being published gets more than its question back: anything
/// else is a header (FORMERR, NOTIMP) or the question with REFUSED, never larger than the
/// packet that asked.
pub(super) fn answer(records: &Records, packet: &[u8], transport: Transport) -> Option<Vec<u8>> {
    const QR_BIT: u8 = 0x80;
    if packet.len() < 12 || packet[2] & QR_BIT != 0 {
        return None;
    }
    let id = u16::from_be_bytes([packet[0], packet[1]]);
    let Ok(query) = Message::from_vec(packet) else {
        return Message::error_msg(id, OpCode::Query, ResponseCode::FormErr)
            .to_vec()
            .ok();
    };
    if query.metadata.message_type != MessageType::Query {
        return None;
    }
    if query.metadata.op_code != OpCode::Query {
        return Message::error_msg(id, query.metadata.op_code, ResponseCode::NotImp)
            .to_vec()
            .ok();
    }
    let [question] = query.queries.as_slice() else {
        return Message::error_msg(id, OpCode::Query, ResponseCode::FormErr)
            .to_vec()
            .ok();
    };

    let mut reply = Message::response(id, OpCode::Query);
    reply.metadata.recursion_desired = query.metadata.recursion_desired;
    reply.metadata.recursion_available = false;
    reply.add_query(question.clone());
    let name = super::super::names::normalize_host(&question.name().to_ascii());
    let held = (question.query_class() == DNSClass::IN)
        .then(|| records.values(&name))
        .flatten();
    let Some(values) = held else {
        reply.metadata.response_code = ResponseCode::Refused;
        return reply.to_vec().ok();
    };
    reply.metadata.authoritative = true;
    if matches!(question.query_type(), RecordType::TXT | RecordType::ANY) {
        for value in values {
            reply.add_answer(Record::from_rdata(
                question.name().clone(),
                TTL,
                RData::TXT(TXT::new(vec![value])),
            ));
        }
    }
    // Other types at a published name: NOERROR without answers (NODATA).
    let limit = match (&query.edns, transport) {
        (_, Transport::Tcp) => usize::from(u16::MAX),
        (Some(edns), Transport::Udp) => usize::from(edns.max_payload().clamp(512, UDP_EDNS)),
        (None, Transport::Udp) => UDP_PLAIN,
    };
    if query.edns.is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(UDP_EDNS);
        reply.set_edns(edns);
    }
    let encoded = reply.to_vec().ok()?;
    if encoded.len() <= limit {
        return Some(encoded);
    }
    reply.answers.clear();
    reply.metadata.truncation = true;
    reply.to_vec().ok()
}

#[cfg(test)]
mod tests {
    use hickory_proto::{op::Query, rr::Name};

    use super::*;

    fn query(name: &str, kind: RecordType, recursion: bool) -> Vec<u8> {
        let mut message = Message::query();
        message.metadata.recursion_desired = recursion;
        message.add_query(Query::query(Name::from_ascii(name).unwrap(), kind));
        message.to_vec().unwrap()
    }

    fn published() -> Records {
        let records = Records::default();
        for value in ["first", "second"] {
            records.add(&TxtRecord {
                name: "_acme-challenge.notes.example.test".into(),
                value: value.into(),
            });
        }
        records
    }

    fn reply(records: &Records, packet: &[u8]) -> Message {
        Message::from_vec(&answer(records, packet, Transport::Udp).unwrap()).unwrap()
    }

    #[test]
    fn published_names_get_their_values_with_the_authority_bit() {
        let records = published();
        let packet = query("_ACME-Challenge.Notes.example.test.", RecordType::TXT, true);
        let message = reply(&records, &packet);
        assert_eq!(message.metadata.response_code, ResponseCode::NoError);
        assert!(message.metadata.authoritative);
        assert!(!message.metadata.recursion_available);
        assert_eq!(message.answers.len(), 2);
        // The question comes back as asked (resolvers randomize the case).
        assert_eq!(
            message.queries[0].name().to_ascii(),
            "_ACME-Challenge.Notes.example.test."
        );

        let nodata = reply(
            &records,
            &query("_acme-challenge.notes.example.test.", RecordType::A, false),
        );
        assert_eq!(nodata.metadata.response_code, ResponseCode::NoError);
        assert!(nodata.answers.is_empty());
    }

    #[test]
    fn everything_else_is_refused_and_no_larger_than_the_question() {
        let records = published();
        for (name, recursion) in [
            ("example.com.", true),
            ("_acme-challenge.other.example.test.", false),
            ("notes.example.test.", true),
        ] {
            let packet = query(name, RecordType::TXT, recursion);
            let bytes = answer(&records, &packet, Transport::Udp).unwrap();
            assert!(bytes.len() <= packet.len(), "{name}");
            let message = Message::from_vec(&bytes).unwrap();
            assert_eq!(message.metadata.response_code, ResponseCode::Refused);
            assert!(message.answers.is_empty() && !message.metadata.recursion_available);
        }
        // Removing the last value makes the name unknown again.
        for value in ["first", "second"] {
            records.remove(&TxtRecord {
                name: "_acme-challenge.notes.example.test".into(),
                value: value.into(),
            });
        }
        let packet = query(
            "_acme-challenge.notes.example.test.",
            RecordType::TXT,
            false,
        );
        assert_eq!(
            reply(&records, &packet).metadata.response_code,
            ResponseCode::Refused
        );
    }

    #[test]
    fn malformed_packets_get_at_most_a_header() {
        let records = published();
        assert!(answer(&records, b"", Transport::Udp).is_none());
        assert!(answer(&records, &[0u8; 11], Transport::Udp).is_none());
        // A header announcing one question, then bytes that are no name.
        let mut garbage = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        garbage.extend_from_slice(&[0xff; 40]);
        let bytes = answer(&records, &garbage, Transport::Udp).unwrap();
        assert_eq!(bytes.len(), 12);
        assert_eq!(
            Message::from_vec(&bytes).unwrap().metadata.response_code,
            ResponseCode::FormErr
        );
        // A response is never answered.
        let mut response = query("example.com.", RecordType::TXT, false);
        response[2] |= 0x80;
        assert!(answer(&records, &response, Transport::Udp).is_none());
        // Every prefix of a valid query: no panic, no reply larger than what came in.
        let packet = query("_acme-challenge.notes.example.test.", RecordType::TXT, true);
        for end in 12..packet.len() {
            if let Some(bytes) = answer(&records, &packet[..end], Transport::Udp) {
                assert!(bytes.len() <= end.max(12), "prefix of {end} bytes");
            }
        }
    }
}
