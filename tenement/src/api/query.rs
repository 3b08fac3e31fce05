//! URL pieces: percent-decoding of path segments and query parameters, and the encoding the
//! CLI uses to build them. Small enough not to need a crate.

use std::collections::HashMap;

use super::error::{ApiError, ApiResult};

/// Decodes `%XX` escapes (and `+` as a space when `plus_is_space`, as in query strings).
pub fn decode(text: &str, plus_is_space: bool) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        match bytes[index] {
            b'%' => {
                let hex = bytes.get(index + 1..index + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                index += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                index += 1;
            }
            byte => {
                out.push(byte);
                index += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// Encodes everything but unreserved characters (RFC 3986).
pub fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~' | b':') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// The query parameters of a request; each may appear once.
pub struct Query(HashMap<String, String>);

impl Query {
    pub fn parse(query: Option<&str>) -> ApiResult<Query> {
        let mut params = HashMap::new();
        for pair in query
            .unwrap_or("")
            .split('&')
            .filter(|pair| !pair.is_empty())
        {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let (Some(key), Some(value)) = (decode(key, true), decode(value, true)) else {
                return Err(ApiError::bad_request(format!(
                    "query parameter {pair:?} is not valid percent-encoded UTF-8"
                )));
            };
            if params.insert(key.clone(), value).is_some() {
                return Err(ApiError::bad_request(format!(
                    "query parameter {key:?} is given twice"
                )));
            }
        }
        Ok(Query(params))
    }

    /// Refuses parameters the endpoint does not know, so a typo is not silently ignored.
    pub fn allow(&self, known: &[&str]) -> ApiResult<()> {
        match self.0.keys().find(|key| !known.contains(&key.as_str())) {
            Some(key) => Err(ApiError::bad_request(format!(
                "unknown query parameter {key:?}; this endpoint takes: {}",
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            ))),
            None => Ok(()),
        }
    }

    pub fn text(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    pub fn number(&self, key: &str) -> ApiResult<Option<u64>> {
        self.text(key)
            .map(|value| {
                value.parse::<u64>().map_err(|_| {
                    ApiError::bad_request(format!(
                        "query parameter {key}={value:?} must be a non-negative integer"
                    ))
                })
            })
            .transpose()
    }

    pub fn flag(&self, key: &str) -> ApiResult<bool> {
        match self.text(key) {
            None | Some("false") | Some("0") => Ok(false),
            Some("") | Some("true") | Some("1") => Ok(true),
            Some(value) => Err(ApiError::bad_request(format!(
                "query parameter {key}={value:?} must be true or false"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        for text in ["plain", "a b+c", "../x", "ünï/%", "error: [0-9]+ (x)"] {
            assert_eq!(decode(&encode(text), true).unwrap(), text);
        }
        assert_eq!(decode("%zz", false), None);
    }

    #[test]
    fn parameters() {
        let query = Query::parse(Some("n=5&grep=a%20b&follow")).unwrap();
        assert_eq!(query.number("n").unwrap(), Some(5));
        assert_eq!(query.text("grep"), Some("a b"));
        assert!(query.flag("follow").unwrap());
        assert!(query.allow(&["n", "grep", "follow"]).is_ok());
        assert!(query.allow(&["n"]).is_err());
        assert!(Query::parse(Some("n=1&n=2")).is_err());
        assert!(Query::parse(Some("n=x")).unwrap().number("n").is_err());
    }
}
