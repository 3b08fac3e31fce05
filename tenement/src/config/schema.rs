//! Which keys each table of `tenement.toml` may have. The key names come from the serde
//! derives of the model themselves (the list serde checks `deny_unknown_fields` against), so
//! adding a field to a struct in `model.rs` makes it a known key here with nothing else to
//! update. Only the nesting (which keys are tables with their own keys) is written down here.

use serde::Deserialize;
use toml_edit::TableLike;

use super::model::{Config, DnsUpdate, Fleet, Routing, Service, Settings, Tls};

/// The keys a table may hold.
pub(super) enum Shape {
    /// A struct of the model: its serde field names, and the fields that are tables of
    /// their own. Other fields are values (or free-form tables such as `env`), left to
    /// deserialization and validation.
    Struct {
        fields: &'static [&'static str],
        nested: Vec<(&'static str, Shape)>,
    },
    /// A table keyed by names the user picks (`[service.NAME]`), each entry of one shape.
    Named(Box<Shape>),
}

impl Shape {
    fn of<'de, T: Deserialize<'de>>(nested: Vec<(&'static str, Shape)>) -> Shape {
        Shape::Struct {
            fields: serde_fields::<T>(),
            nested,
        }
    }

    /// The whole file.
    pub fn config() -> Shape {
        Shape::of::<Config>(vec![
            (
                "settings",
                Shape::of::<Settings>(vec![(
                    "tls",
                    Shape::of::<Tls>(vec![("dns_update", Shape::of::<DnsUpdate>(vec![]))]),
                )]),
            ),
            (
                "service",
                Shape::Named(Box::new(Shape::of::<Service>(vec![]))),
            ),
            ("routing", Shape::of::<Routing>(vec![])),
            ("fleet", Shape::of::<Fleet>(vec![])),
        ])
    }
}

/// serde aliases of the model, as (alias, field): both in one table is a mistake.
const ALIASES: [(&str, &str); 1] = [("cpu_shares", "cpu_weight")];

/// A key that cannot be deserialized as written, found before serde sees it.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct KeyProblem {
    pub path: Vec<String>,
    pub kind: Problem,
}

#[derive(Debug, PartialEq, Eq)]
pub(super) enum Problem {
    /// Not a key of its table; `suggestion` is a known key close to it.
    Unknown { suggestion: Option<&'static str> },
    /// Holds a value where a table belongs; `named`: a table of named tables
    /// (`[service.NAME]`).
    NotATable { named: bool },
    /// An alias set beside the field it stands for.
    AliasOf(&'static str),
}

/// Every key problem in `table`, in file order.
pub(super) fn key_problems(shape: &Shape, table: &dyn TableLike) -> Vec<KeyProblem> {
    let mut found = Vec::new();
    walk(shape, table, &mut Vec::new(), &mut found);
    found
}

fn walk(shape: &Shape, table: &dyn TableLike, path: &mut Vec<String>, found: &mut Vec<KeyProblem>) {
    for (key, item) in table.iter() {
        path.push(key.to_string());
        let (kind, inner) = match shape {
            Shape::Struct { fields, nested } => {
                let alias_of = ALIASES
                    .iter()
                    .find(|(alias, field)| *alias == key && table.contains_key(field));
                if !fields.contains(&key) {
                    let suggestion = closest(key, fields);
                    (Some(Problem::Unknown { suggestion }), None)
                } else if let Some((_, field)) = alias_of {
                    (Some(Problem::AliasOf(field)), None)
                } else {
                    (
                        None,
                        nested
                            .iter()
                            .find(|(name, _)| *name == key)
                            .map(|(_, inner)| inner),
                    )
                }
            }
            Shape::Named(entry) => (None, Some(&**entry)),
        };
        match (kind, inner.map(|inner| (inner, item.as_table_like()))) {
            (Some(kind), _) => found.push(KeyProblem {
                path: path.clone(),
                kind,
            }),
            (None, Some((inner, Some(inner_table)))) => walk(inner, inner_table, path, found),
            (None, Some((inner, None))) => found.push(KeyProblem {
                path: path.clone(),
                kind: Problem::NotATable {
                    named: matches!(inner, Shape::Named(_)),
                },
            }),
            (None, None) => {}
        }
        path.pop();
    }
}

/// The known key a typo most likely meant, if any is close enough.
fn closest(key: &str, fields: &[&'static str]) -> Option<&'static str> {
    fields
        .iter()
        .map(|field| (strsim::jaro_winkler(key, field), *field))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, field)| field)
}

/// The field names (aliases included) serde's derive gives `deserialize_struct` for `T`.
pub(super) fn serde_fields<'de, T: Deserialize<'de>>() -> &'static [&'static str] {
    let mut fields = None;
    let _ = T::deserialize(introspect::Recorder(&mut fields));
    fields.unwrap_or(&[])
}

/// A deserializer that deserializes nothing: it only records the names a derived
/// `Deserialize` announces, then stops.
mod introspect {
    use serde::de::{self, Visitor};

    pub struct Recorder<'a>(pub &'a mut Option<&'static [&'static str]>);

    type Error = de::value::Error;

    fn stop<T>() -> Result<T, Error> {
        Err(de::Error::custom("names recorded"))
    }

    impl<'de> de::Deserializer<'de> for Recorder<'_> {
        type Error = Error;

        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Error> {
            stop()
        }

        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _name: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Error> {
            *self.0 = Some(fields);
            stop()
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
            byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map
            enum identifier ignored_any
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_names_come_from_serde() {
        let fields = serde_fields::<Service>();
        assert!(fields.contains(&"idle_timeout"));
        // The alias is accepted as a key too.
        assert!(fields.contains(&"cpu_shares"));
        assert_eq!(
            serde_fields::<Config>(),
            ["settings", "service", "instances", "routing", "fleet"]
        );
    }

    #[test]
    fn nested_tables_are_fields_of_their_struct() {
        fn check(shape: &Shape) {
            match shape {
                Shape::Struct { fields, nested } => {
                    for (name, inner) in nested {
                        assert!(fields.contains(name), "{name} is not a field");
                        check(inner);
                    }
                }
                Shape::Named(entry) => check(entry),
            }
        }
        check(&Shape::config());
    }

    /// Every key the schema accepts is one serde accepts: a full example that uses all of
    /// them deserializes with `deny_unknown_fields`, and serializes back to the same keys.
    #[test]
    fn schema_matches_the_model() {
        let text = include_str!("../../../tests/fixtures/config/full.toml");
        let doc = toml_edit::Document::parse(text).unwrap();
        assert_eq!(key_problems(&Shape::config(), doc.as_table()), vec![]);
        let config: Config = toml::from_str(text).unwrap();
        let written = toml::to_string(&config).unwrap();
        let doc = toml_edit::Document::parse(written.as_str()).unwrap();
        assert_eq!(key_problems(&Shape::config(), doc.as_table()), vec![]);
    }

    #[test]
    fn typos_get_a_suggestion_and_nonsense_does_not() {
        let doc = toml_edit::Document::parse(
            "[settings]\nlisten = \"127.0.0.1:1\"\ndatadir = \"/x\"\n\
             [service.api]\nidel_timeout = 3\nzzz = 1\n[servce.x]\n",
        )
        .unwrap();
        let found: Vec<_> = key_problems(&Shape::config(), doc.as_table())
            .into_iter()
            .map(|problem| (problem.path.join("."), problem.kind))
            .collect();
        let unknown = |suggestion| Problem::Unknown { suggestion };
        assert_eq!(
            found,
            [
                ("settings.datadir".to_string(), unknown(Some("data_dir"))),
                (
                    "service.api.idel_timeout".to_string(),
                    unknown(Some("idle_timeout"))
                ),
                ("service.api.zzz".to_string(), unknown(None)),
                ("servce".to_string(), unknown(Some("service"))),
            ]
        );
    }

    #[test]
    fn tables_must_be_tables_and_aliases_alone() {
        let doc = toml_edit::Document::parse(
            "settings = []\nservice.a = 3\n[service.b]\ncpu_weight = 1\ncpu_shares = 2\n",
        )
        .unwrap();
        let found: Vec<_> = key_problems(&Shape::config(), doc.as_table())
            .into_iter()
            .map(|problem| (problem.path.join("."), problem.kind))
            .collect();
        assert_eq!(
            found,
            [
                ("settings".to_string(), Problem::NotATable { named: false }),
                ("service.a".to_string(), Problem::NotATable { named: false }),
                (
                    "service.b.cpu_shares".to_string(),
                    Problem::AliasOf("cpu_weight")
                ),
            ]
        );
    }

    /// docs/configuration.md documents every key and shows the full example verbatim, and
    /// that example (a test fixture) sets every key.
    #[test]
    fn docs_and_the_full_example_cover_every_key() {
        let docs = include_str!("../../../docs/configuration.md");
        let full = include_str!("../../../tests/fixtures/config/full.toml");
        let body: String = full
            .lines()
            .skip_while(|line| line.starts_with('#') || line.is_empty())
            .map(|line| format!("{line}\n"))
            .collect();
        assert!(docs.contains(&body), "docs show a different full example");
        let keys = [
            serde_fields::<Config>(),
            serde_fields::<Settings>(),
            serde_fields::<Tls>(),
            serde_fields::<DnsUpdate>(),
            serde_fields::<Service>(),
            serde_fields::<Routing>(),
            serde_fields::<Fleet>(),
        ]
        .concat();
        for key in keys {
            // A value as `key`, a table as `[key]`, `[parent.key]` or `[key.NAME]`.
            let documented = [
                format!("`{key}`"),
                format!("`[{key}]`"),
                format!(".{key}]`"),
                format!("`[{key}."),
            ]
            .iter()
            .any(|form| docs.contains(form.as_str()));
            assert!(documented, "docs miss `{key}`");
            let set = full.lines().any(|line| {
                let line = line.trim_start_matches("# ");
                line.starts_with(&format!("{key} = "))
                    || line.contains(&format!(".{key}]"))
                    || line == format!("[{key}]")
                    || line.starts_with(&format!("[{key}."))
            });
            assert!(set, "the full example does not set `{key}`");
        }
    }
}
