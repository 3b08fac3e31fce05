//! A small etcd v3 client over etcd's JSON gateway (`/v3/kv/...`, `/v3/lease/...`), spoken
//! with the hyper client tenement already has: no gRPC stack, no `protoc` at build time, so a
//! fresh clone builds with `cargo build` alone. Only the calls the fleet needs are here.
//!
//! Every call goes to the endpoint that answered last and, when that one fails, to the next
//! ones in turn, each within [`ATTEMPT`]: one member down costs one attempt, not the call.

use std::{
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

use base64::{engine::general_purpose::STANDARD as B64, Engine};
use bytes::Bytes;
use http::{Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::TokioExecutor,
};
use serde_json::{json, Value};

/// How long one endpoint may take to answer one call before the next endpoint is asked.
const ATTEMPT: Duration = Duration::from_millis(1500);
/// Pauses before asking again when members answered without a leader: an election after a
/// lost member takes about a second with etcd's defaults.
const ELECTION_PAUSES: [Duration; 3] = [
    Duration::from_millis(250),
    Duration::from_millis(500),
    Duration::from_millis(1000),
];

/// How one pass over the endpoints ended.
enum Round {
    Answered(Result<Value, EtcdError>),
    NoLeader,
    Unreachable,
}

#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    /// No endpoint answered (all down, or cut off from their quorum).
    #[error("no etcd endpoint answered ({0})")]
    Unreachable(String),
    /// An endpoint answered with an error of its own (e.g. an unknown lease).
    #[error("etcd refused {call}: {message}")]
    Refused { call: &'static str, message: String },
}

/// One key as etcd holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Vec<u8>,
    pub lease: i64,
    pub mod_revision: i64,
}

/// The result of a create-if-absent.
#[derive(Debug)]
pub enum Created {
    /// The key is ours now.
    Won,
    /// Someone had it already: what it holds.
    Taken(KeyValue),
    /// Someone had it, but it was gone again when read (its lease expired): try again.
    Vanished,
}

/// `http://host:port`, the only form the gateway client speaks.
pub fn check_endpoint(endpoint: &str) -> Result<(), String> {
    let uri: Uri = endpoint
        .parse()
        .map_err(|err| format!("{endpoint:?} is not a URL: {err}"))?;
    if uri.scheme_str() != Some("http") || uri.authority().is_none() {
        return Err(format!(
            "{endpoint:?} must be http://host:port (TLS to etcd is not supported yet)"
        ));
    }
    if uri.path() != "/" && !uri.path().is_empty() {
        return Err(format!("{endpoint:?} must have no path"));
    }
    Ok(())
}

pub struct Etcd {
    endpoints: Vec<String>,
    /// The endpoint that answered last, asked first.
    preferred: AtomicUsize,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Etcd {
    pub fn new(endpoints: &[String]) -> Etcd {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(ATTEMPT));
        Etcd {
            endpoints: endpoints
                .iter()
                .map(|e| e.trim_end_matches('/').to_string())
                .collect(),
            preferred: AtomicUsize::new(0),
            client: Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .build(connector),
        }
    }

    async fn call(&self, call: &'static str, path: &str, body: Value) -> Result<Value, EtcdError> {
        let body = Bytes::from(body.to_string());
        let mut failures = Vec::new();
        for pause in std::iter::once(Duration::ZERO).chain(ELECTION_PAUSES) {
            tokio::time::sleep(pause).await;
            failures.clear();
            match self.round(call, path, &body, &mut failures).await {
                Round::Answered(answer) => return answer,
                // Members answered but had no leader (one was lost and they are electing
                // another): worth asking again shortly.
                Round::NoLeader => continue,
                Round::Unreachable => break,
            }
        }
        Err(EtcdError::Unreachable(failures.join("; ")))
    }

    /// Asks each endpoint in turn, the last one that answered first.
    async fn round(
        &self,
        call: &'static str,
        path: &str,
        body: &Bytes,
        failures: &mut Vec<String>,
    ) -> Round {
        let first = self.preferred.load(Ordering::Relaxed);
        let mut no_leader = false;
        for step in 0..self.endpoints.len() {
            let index = (first + step) % self.endpoints.len();
            let endpoint = &self.endpoints[index];
            match tokio::time::timeout(ATTEMPT, self.post(endpoint, path, body.clone())).await {
                Ok(Ok(answer)) => {
                    self.preferred.store(index, Ordering::Relaxed);
                    if let Some(message) = answer.get("message").and_then(Value::as_str) {
                        if answer.get("code").is_some() {
                            if is_unavailable(message) {
                                no_leader = true;
                                failures.push(format!("{endpoint}: {message}"));
                                continue;
                            }
                            return Round::Answered(Err(EtcdError::Refused {
                                call,
                                message: message.to_string(),
                            }));
                        }
                    }
                    return Round::Answered(Ok(answer));
                }
                Ok(Err(error)) => failures.push(format!("{endpoint}: {error}")),
                Err(_) => failures.push(format!("{endpoint}: no answer within {ATTEMPT:?}")),
            }
        }
        if no_leader {
            Round::NoLeader
        } else {
            Round::Unreachable
        }
    }

    async fn post(&self, endpoint: &str, path: &str, body: Bytes) -> Result<Value, String> {
        let request = Request::post(format!("{endpoint}{path}"))
            .header("content-type", "application/json")
            .body(Full::new(body))
            .map_err(|e| e.to_string())?;
        let response = self
            .client
            .request(request)
            .await
            .map_err(|e| format!("{e}"))?;
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        let value: Value = serde_json::from_slice(&bytes).map_err(|e| {
            format!(
                "not JSON ({e}): {}",
                String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
            )
        })?;
        // Streaming calls (lease keep-alive) wrap their one answer in `result`.
        Ok(match value {
            Value::Object(mut map) if map.contains_key("result") => {
                map.remove("result").unwrap_or_default()
            }
            other => other,
        })
    }

    /// A new lease of `ttl` seconds: its id.
    pub async fn grant(&self, ttl: u64) -> Result<i64, EtcdError> {
        let answer = self
            .call("a lease", "/v3/lease/grant", json!({ "TTL": ttl }))
            .await?;
        Ok(int(&answer["ID"]))
    }

    /// Renews `lease`: the seconds it has left, 0 when it is gone (expired or revoked).
    pub async fn keep_alive(&self, lease: i64) -> Result<i64, EtcdError> {
        let answer = self
            .call(
                "a lease renewal",
                "/v3/lease/keepalive",
                json!({ "ID": lease.to_string() }),
            )
            .await?;
        Ok(int(&answer["TTL"]))
    }

    pub async fn revoke(&self, lease: i64) -> Result<(), EtcdError> {
        self.call(
            "a lease revocation",
            "/v3/lease/revoke",
            json!({ "ID": lease.to_string() }),
        )
        .await
        .map(drop)
    }

    pub async fn get(&self, key: &str) -> Result<Option<KeyValue>, EtcdError> {
        let answer = self
            .call("a read", "/v3/kv/range", json!({ "key": B64.encode(key) }))
            .await?;
        Ok(kvs(&answer).into_iter().next())
    }

    /// Every key under `prefix`, and the revision they were read at.
    pub async fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, i64), EtcdError> {
        let answer = self
            .call(
                "a listing",
                "/v3/kv/range",
                json!({ "key": B64.encode(prefix), "range_end": B64.encode(prefix_end(prefix)) }),
            )
            .await?;
        Ok((kvs(&answer), int(&answer["header"]["revision"])))
    }

    /// Writes `key`; with a lease (not 0) it vanishes with the lease. Returns the revision
    /// of the write.
    pub async fn put(&self, key: &str, value: &[u8], lease: i64) -> Result<i64, EtcdError> {
        let answer = self
            .call(
                "a write",
                "/v3/kv/put",
                json!({ "key": B64.encode(key), "value": B64.encode(value), "lease": lease.to_string() }),
            )
            .await?;
        Ok(int(&answer["header"]["revision"]))
    }

    /// Creates `key` only if it does not exist, in one transaction: of concurrent callers
    /// exactly one wins, the others learn what it holds.
    pub async fn create(&self, key: &str, value: &[u8], lease: i64) -> Result<Created, EtcdError> {
        let encoded = B64.encode(key);
        let answer = self
            .call(
                "a create-if-absent",
                "/v3/kv/txn",
                json!({
                    "compare": [{ "key": encoded, "target": "CREATE", "create_revision": "0", "result": "EQUAL" }],
                    "success": [{ "request_put": { "key": encoded, "value": B64.encode(value), "lease": lease.to_string() } }],
                    "failure": [{ "request_range": { "key": encoded } }],
                }),
            )
            .await?;
        if answer["succeeded"].as_bool() == Some(true) {
            return Ok(Created::Won);
        }
        let held = kvs(&answer["responses"][0]["response_range"])
            .into_iter()
            .next();
        Ok(held.map_or(Created::Vanished, Created::Taken))
    }

    /// Deletes `key` (whatever it holds; nothing when it is absent).
    pub async fn delete(&self, key: &str) -> Result<(), EtcdError> {
        self.call(
            "a delete",
            "/v3/kv/deleterange",
            json!({ "key": B64.encode(key) }),
        )
        .await
        .map(drop)
    }

    /// Watches every key under `prefix` from `revision` on (the first endpoint that answers,
    /// each asked within [`ATTEMPT`]). The stream has no time limit.
    pub async fn watch(&self, prefix: &str, revision: i64) -> Result<Watch, EtcdError> {
        let body = Bytes::from(
            json!({ "create_request": {
                "key": B64.encode(prefix),
                "range_end": B64.encode(prefix_end(prefix)),
                "start_revision": revision.to_string(),
            }})
            .to_string(),
        );
        let first = self.preferred.load(Ordering::Relaxed);
        let mut failures = Vec::new();
        for step in 0..self.endpoints.len() {
            let endpoint = &self.endpoints[(first + step) % self.endpoints.len()];
            let request = Request::post(format!("{endpoint}/v3/watch"))
                .header("content-type", "application/json")
                .body(Full::new(body.clone()))
                .map_err(|e| EtcdError::Unreachable(e.to_string()))?;
            match tokio::time::timeout(ATTEMPT, self.client.request(request)).await {
                Ok(Ok(response)) if response.status().is_success() => {
                    return Ok(Watch {
                        body: response.into_body(),
                        buffer: Vec::new(),
                    })
                }
                Ok(Ok(response)) => failures.push(format!("{endpoint}: {}", response.status())),
                Ok(Err(error)) => failures.push(format!("{endpoint}: {error}")),
                Err(_) => failures.push(format!("{endpoint}: no answer within {ATTEMPT:?}")),
            }
        }
        Err(EtcdError::Unreachable(failures.join("; ")))
    }

    /// Deletes `key` if it still holds `value` (releasing only what is ours).
    pub async fn delete_if(&self, key: &str, value: &[u8]) -> Result<bool, EtcdError> {
        let encoded = B64.encode(key);
        let answer = self
            .call(
                "a conditional delete",
                "/v3/kv/txn",
                json!({
                    "compare": [{ "key": encoded, "target": "VALUE", "value": B64.encode(value), "result": "EQUAL" }],
                    "success": [{ "request_delete_range": { "key": encoded } }],
                }),
            )
            .await?;
        Ok(answer["succeeded"].as_bool() == Some(true))
    }
}

/// One answer of a watch stream.
#[derive(Debug, PartialEq, Eq)]
pub enum WatchAnswer {
    /// The watch is set up.
    Created,
    /// Changes, in revision order.
    Events(Vec<Event>),
    /// etcd ended the watch; with the compaction revision when the watched revision had
    /// been compacted already.
    Canceled { compacted: Option<i64> },
}

/// A change of one key.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    Put(KeyValue),
    /// The key and the revision of the deletion.
    Delete {
        key: String,
        revision: i64,
    },
}

/// A watch stream: JSON objects, one per line, each wrapping one answer in `result`.
pub struct Watch {
    body: hyper::body::Incoming,
    buffer: Vec<u8>,
}

impl Watch {
    /// The next answer; `Err` when the stream failed or ended.
    pub async fn next(&mut self) -> Result<WatchAnswer, String> {
        loop {
            if let Some(end) = self.buffer.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buffer.drain(..=end).collect();
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                let value: Value = serde_json::from_slice(&line)
                    .map_err(|e| format!("a watch answer is not JSON ({e})"))?;
                return parse_watch_answer(&value);
            }
            match self.body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buffer.extend_from_slice(&data);
                    }
                }
                Some(Err(error)) => return Err(error.to_string()),
                None => return Err("the watch stream ended".to_string()),
            }
        }
    }
}

fn parse_watch_answer(value: &Value) -> Result<WatchAnswer, String> {
    if let Some(error) = value.get("error") {
        return Err(format!("the watch failed: {error}"));
    }
    let result = &value["result"];
    if result["canceled"].as_bool() == Some(true) {
        let compacted = int(&result["compact_revision"]);
        return Ok(WatchAnswer::Canceled {
            compacted: (compacted > 0).then_some(compacted),
        });
    }
    if result["created"].as_bool() == Some(true) {
        return Ok(WatchAnswer::Created);
    }
    let events = result["events"]
        .as_array()
        .map(|events| {
            events
                .iter()
                .filter_map(|event| {
                    let kv = kvs(&json!({ "kvs": [event["kv"].clone()] })).pop()?;
                    Some(if event["type"].as_str() == Some("DELETE") {
                        Event::Delete {
                            key: kv.key,
                            revision: kv.mod_revision,
                        }
                    } else {
                        Event::Put(kv)
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(WatchAnswer::Events(events))
}

/// A member that is up but has no quorum answers with these; another member may do better.
fn is_unavailable(message: &str) -> bool {
    [
        "request timed out",
        "no leader",
        "leader changed",
        "too many requests",
    ]
    .iter()
    .any(|m| message.contains(m))
}

/// The gateway writes 64-bit numbers as strings, and leaves zeros out.
fn int(value: &Value) -> i64 {
    match value {
        Value::String(text) => text.parse().unwrap_or(0),
        Value::Number(number) => number.as_i64().unwrap_or(0),
        _ => 0,
    }
}

fn kvs(answer: &Value) -> Vec<KeyValue> {
    let Some(list) = answer["kvs"].as_array() else {
        return Vec::new();
    };
    list.iter()
        .filter_map(|kv| {
            let key = B64.decode(kv["key"].as_str()?).ok()?;
            let value = match kv["value"].as_str() {
                Some(text) => B64.decode(text).ok()?,
                None => Vec::new(),
            };
            Some(KeyValue {
                key: String::from_utf8(key).ok()?,
                value,
                lease: int(&kv["lease"]),
                mod_revision: int(&kv["mod_revision"]),
            })
        })
        .collect()
}

/// The first key after every key that starts with `prefix`.
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_plain_http_urls() {
        assert!(check_endpoint("http://127.0.0.1:2379").is_ok());
        assert!(check_endpoint("https://etcd:2379").is_err());
        assert!(check_endpoint("127.0.0.1:2379").is_err());
        assert!(check_endpoint("http://etcd:2379/v3").is_err());
    }

    #[test]
    fn watch_answers_are_read_as_etcd_writes_them() {
        let created = json!({"result": {"header": {"revision": "1"}, "created": true}});
        assert_eq!(parse_watch_answer(&created), Ok(WatchAnswer::Created));
        let events = json!({"result": {"header": {"revision": "3"}, "events": [
            {"kv": {"key": "L2E=", "mod_revision": "2", "value": "MQ=="}},
            {"type": "DELETE", "kv": {"key": "L2E=", "mod_revision": "3"}},
        ]}});
        let Ok(WatchAnswer::Events(events)) = parse_watch_answer(&events) else {
            panic!("events expected");
        };
        assert!(matches!(&events[0], Event::Put(kv) if kv.key == "/a" && kv.value == b"1"));
        assert_eq!(
            events[1],
            Event::Delete {
                key: "/a".into(),
                revision: 3
            }
        );
        let compacted =
            json!({"result": {"header": {}, "canceled": true, "compact_revision": "3"}});
        assert_eq!(
            parse_watch_answer(&compacted),
            Ok(WatchAnswer::Canceled { compacted: Some(3) })
        );
    }

    #[test]
    fn a_prefix_ends_after_its_last_byte() {
        assert_eq!(prefix_end("/a/"), b"/a0".to_vec());
    }
}
