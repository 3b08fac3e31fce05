//! `{name}`-style placeholders in environment values. `{{` and `}}` stand for literal braces.

/// The placeholders a value may use, filled per instance.
pub const PLACEHOLDERS: [&str; 4] = ["name", "id", "data_dir", "port"];

/// Replaces each `{key}` by its value from `values`. Unknown placeholders are kept as
/// written (validation rejects them before anything is rendered).
pub(super) fn render(text: &str, values: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(text.len());
    for piece in pieces(text) {
        match piece {
            Piece::Text(text) => out.push_str(text),
            Piece::Brace(brace) => out.push(brace),
            Piece::Placeholder(name) => match values.iter().find(|(key, _)| *key == name) {
                Some((_, value)) => out.push_str(value),
                None => {
                    out.push('{');
                    out.push_str(name);
                    out.push('}');
                }
            },
            Piece::Unclosed(rest) => out.push_str(rest),
        }
    }
    out
}

/// Checks that every placeholder is one of `PLACEHOLDERS` and every brace is paired.
pub(super) fn check(text: &str) -> Result<(), String> {
    let known = || {
        PLACEHOLDERS
            .iter()
            .map(|p| format!("{{{p}}}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    for piece in pieces(text) {
        match piece {
            Piece::Placeholder(name) if !PLACEHOLDERS.contains(&name) => {
                return Err(format!(
                    "unknown placeholder `{{{name}}}`; known: {}; write {{{{ and }}}} for literal braces",
                    known()
                ))
            }
            Piece::Unclosed(_) => {
                return Err("unclosed `{`; write {{ for a literal brace".to_string())
            }
            _ => {}
        }
    }
    if has_lone_closing_brace(text) {
        return Err("unmatched `}`; write }} for a literal brace".to_string());
    }
    Ok(())
}

enum Piece<'a> {
    Text(&'a str),
    Brace(char),
    Placeholder(&'a str),
    Unclosed(&'a str),
}

fn pieces(mut text: &str) -> Vec<Piece<'_>> {
    let mut pieces = Vec::new();
    while let Some(at) = text.find(['{', '}']) {
        if at > 0 {
            pieces.push(Piece::Text(&text[..at]));
        }
        let rest = &text[at..];
        if rest.starts_with("{{") || rest.starts_with("}}") {
            pieces.push(Piece::Brace(rest.as_bytes()[0] as char));
            text = &rest[2..];
        } else if let Some(after) = rest.strip_prefix('}') {
            // A lone `}`: kept literally by `render`, refused by `check`.
            pieces.push(Piece::Text("}"));
            text = after;
        } else if let Some(end) = rest.find('}') {
            pieces.push(Piece::Placeholder(&rest[1..end]));
            text = &rest[end + 1..];
        } else {
            pieces.push(Piece::Unclosed(rest));
            text = "";
        }
    }
    if !text.is_empty() {
        pieces.push(Piece::Text(text));
    }
    pieces
}

fn has_lone_closing_brace(text: &str) -> bool {
    pieces(text)
        .iter()
        .any(|piece| matches!(piece, Piece::Text("}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_placeholders_and_escapes() {
        let values = [("id", "alice"), ("port", "30001")];
        assert_eq!(
            render("http://{id}.local:{port}/", &values),
            "http://alice.local:30001/"
        );
        assert_eq!(
            render("{{\"id\": \"{id}\"}}", &values),
            "{\"id\": \"alice\"}"
        );
        assert_eq!(render("no braces", &values), "no braces");
        assert_eq!(render("{id}{id}", &values), "alicealice");
    }

    #[test]
    fn checks_placeholders() {
        assert!(check("{data_dir}/db.sqlite").is_ok());
        assert!(check("{{literal}}").is_ok());
        let err = check("{ID}").unwrap_err();
        assert!(err.contains("unknown placeholder `{ID}`"), "{err}");
        assert!(err.contains("{data_dir}"), "{err}");
        assert!(check("{id").unwrap_err().contains("unclosed"));
        assert!(check("a}b").unwrap_err().contains("unmatched"));
    }
}
