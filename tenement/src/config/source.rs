//! The configuration text as written: where each key sits in it, so every error can point
//! at `file:line:column`.

use std::ops::Range;

use toml_edit::{Document, TableLike};

use super::errors::ConfigError;

pub(super) struct Source<'a> {
    origin: &'a str,
    text: &'a str,
    document: Document<&'a str>,
}

impl<'a> Source<'a> {
    /// Parses the TOML syntax; a syntax error is reported where the parser stopped.
    pub fn parse(text: &'a str, origin: &'a str) -> Result<Source<'a>, ConfigError> {
        match Document::parse(text) {
            Ok(document) => Ok(Source {
                origin,
                text,
                document,
            }),
            Err(err) => {
                let (line, column) = line_column(text, err.span().map_or(0, |span| span.start));
                Err(ConfigError {
                    file: origin.to_string(),
                    line,
                    column,
                    key: String::new(),
                    message: format!("TOML syntax: {}", err.message().trim_end()),
                })
            }
        }
    }

    pub fn root(&self) -> &toml_edit::Table {
        self.document.as_table()
    }

    /// An error at `span` (the start of the file when unknown) about the key at `path`.
    pub fn error(&self, span: Option<Range<usize>>, path: &[&str], message: String) -> ConfigError {
        let (line, column) = line_column(self.text, span.map_or(0, |span| span.start));
        ConfigError {
            file: self.origin.to_string(),
            line,
            column,
            key: path.join("."),
            message,
        }
    }

    /// Where the key at `path` is written. For a key that is not in the file (a default is
    /// wrong or a required key is missing), where its nearest enclosing table is.
    pub fn key_span(&self, path: &[&str]) -> Option<Range<usize>> {
        let mut table: &dyn TableLike = self.root();
        let mut found = None;
        for key in path {
            let Some((key, item)) = table.get_key_value(key) else {
                break;
            };
            found = key.span().or_else(|| item.span()).or(found);
            match item.as_table_like() {
                Some(inner) => table = inner,
                None => break,
            }
        }
        found
    }

    /// Whether the key at `path` is written in the file.
    pub fn has_key(&self, path: &[&str]) -> bool {
        let mut item = self.document.as_item();
        for key in path {
            match item.as_table_like().and_then(|table| table.get(key)) {
                Some(inner) => item = inner,
                None => return false,
            }
        }
        true
    }

    /// Where element `index` of the array at `path` is written, else where the key is.
    pub fn element_span(&self, path: &[&str], index: usize) -> Option<Range<usize>> {
        let (parents, last) = path.split_last().map(|(l, p)| (p, *l)).unwrap_or((&[], ""));
        let mut table: &dyn TableLike = self.root();
        for key in parents {
            match table.get(key).and_then(|item| item.as_table_like()) {
                Some(inner) => table = inner,
                None => return self.key_span(path),
            }
        }
        table
            .get(last)
            .and_then(|item| item.as_array())
            .and_then(|array| array.get(index))
            .and_then(|value| value.span())
            .or_else(|| self.key_span(path))
    }
}

/// 1-based line and column (in characters) of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |newline| newline + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

/// How messages name the table a key is in: `[service.api]`, or `the top-level table`.
pub(super) fn section(table_path: &[&str]) -> String {
    if table_path.is_empty() {
        "the top-level table".to_string()
    } else {
        format!("[{}]", table_path.join("."))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_become_lines_and_columns() {
        let text = "a = 1\n\nbé = 2\n";
        assert_eq!(line_column(text, 0), (1, 1));
        assert_eq!(line_column(text, 4), (1, 5));
        assert_eq!(line_column(text, 7), (3, 1));
        // Columns count characters, not bytes: `=` is the 4th character of line 3.
        assert_eq!(line_column(text, text.find("= 2").unwrap()), (3, 4));
    }

    #[test]
    fn keys_are_found_in_headers_dotted_keys_and_inline_tables() {
        let text = "[service.api]\ncommand = \"x\"\n\n[settings]\ntls = { enabled = true }\n";
        let source = Source::parse(text, "t.toml").unwrap();
        let at = |path: &[&str]| {
            let span = source.key_span(path).expect("found");
            line_column(text, span.start)
        };
        assert_eq!(at(&["service", "api", "command"]), (2, 1));
        // A missing key points at its table.
        assert_eq!(at(&["service", "api", "workdir"]), (1, 10));
        assert_eq!(at(&["settings", "tls", "enabled"]), (5, 9));
    }

    #[test]
    fn syntax_errors_have_a_position() {
        let err = Source::parse("a = 1\nb = \n", "t.toml").err().unwrap();
        assert_eq!((err.file.as_str(), err.line), ("t.toml", 2));
        assert!(err.message.starts_with("TOML syntax"), "{}", err.message);
    }
}
