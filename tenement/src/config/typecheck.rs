//! Values of the wrong type (`idle_timeout = "x"`, `isolation = "vm"`). serde stops at the
//! first one, so each is pinned to its key, the key dropped, and deserialization tried again:
//! every bad value gets reported, with the types and messages serde itself knows.

use serde::Deserialize;
use toml_edit::{DocumentMut, Table};

use super::{errors::ConfigError, model::Config, source, source::Source, tree};

/// The config from `table` (unknown keys already removed), with every rejected value left
/// at its default. Also returns the paths of the rejected keys, so validation does not
/// report them a second time.
pub(super) fn deserialize(
    mut table: Table,
    source: &Source,
    errors: &mut Vec<ConfigError>,
) -> (Option<Config>, Vec<Vec<String>>) {
    let mut rejected = Vec::new();
    loop {
        let attempt = Config::deserialize(toml_edit::de::Deserializer::from(DocumentMut::from(
            table.clone(),
        )));
        let err = match attempt {
            Ok(config) => return (Some(config), rejected),
            Err(err) => err,
        };
        let message = err.message().trim_end().to_string();
        let path = err
            .span()
            .and_then(|span| tree::path_at(&table, span.start))
            .filter(|path| tree::remove(&mut table, path));
        let Some(path) = path else {
            // Not attributable to one key: report it and stop, nothing more can be learned.
            errors.push(source.error(err.span(), &[], message));
            return (None, rejected);
        };
        if !blames_a_rejected_key(&message, &path, &rejected) {
            let keys: Vec<&str> = path.iter().map(String::as_str).collect();
            let (key, table_path) = keys.split_last().expect("path is not empty");
            errors.push(source.error(
                err.span(),
                &keys,
                format!("`{key}` in {}: {message}", source::section(table_path)),
            ));
        }
        rejected.push(path);
    }
}

/// A required key rejected above is missing from the next attempt, and serde then blames
/// its table ("missing field `advertise`"): the same mistake, already reported.
fn blames_a_rejected_key(message: &str, table: &[String], rejected: &[Vec<String>]) -> bool {
    let Some(field) = message
        .strip_prefix("missing field `")
        .and_then(|rest| rest.strip_suffix('`'))
    else {
        return false;
    };
    rejected.iter().any(|path| {
        path.split_last()
            .is_some_and(|(key, parent)| key == field && parent == table)
    })
}
