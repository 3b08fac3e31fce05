//! `env_file`: secrets in a file of their own, read by tenement (root) each time an
//! instance starts, so they need not be in the shared configuration.
//!
//! The format is deliberately small: one `KEY=VALUE` per line; the value is everything
//! after the first `=`, verbatim (no quotes removed, no placeholders, no escapes), so a
//! secret is never altered. Empty lines and lines starting with `#` are skipped.

use std::path::{Path, PathBuf};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum EnvFileError {
    #[error("reading env_file {}: {source}", path.display())]
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("env_file {}:{line}: {problem}", path.display())]
    Malformed {
        path: PathBuf,
        line: usize,
        problem: String,
    },
}

/// The variables of the file at `path`, in file order (a later line wins when the
/// environment is built).
pub fn read(path: &Path) -> Result<Vec<(String, String)>, EnvFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| EnvFileError::Unreadable {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text).map_err(|(line, problem)| EnvFileError::Malformed {
        path: path.to_path_buf(),
        line,
        problem,
    })
}

/// Errors carry the 1-based line number and never the line itself (it may be a secret).
fn parse(text: &str) -> Result<Vec<(String, String)>, (usize, String)> {
    let mut variables = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let number = index + 1;
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            return Err((number, "expected KEY=VALUE".to_string()));
        };
        let key = key.trim();
        if !is_env_name(key) {
            return Err((
                number,
                format!("{key:?} is not a variable name ([A-Za-z_][A-Za-z0-9_]*)"),
            ));
        }
        if key == "PORT" || key == "SOCKET_PATH" {
            return Err((number, format!("{key} is set by tenement itself")));
        }
        variables.push((key.to_string(), value.to_string()));
    }
    Ok(variables)
}

fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_values_verbatim() {
        let text = "# secrets\n\nDB_PASSWORD=p=a ss\"{id}\"\n  TOKEN = x\nEMPTY=\n";
        assert_eq!(
            parse(text).unwrap(),
            vec![
                ("DB_PASSWORD".into(), "p=a ss\"{id}\"".into()),
                ("TOKEN".into(), " x".into()),
                ("EMPTY".into(), String::new()),
            ]
        );
    }

    #[test]
    fn names_the_line_not_the_secret() {
        let (line, problem) = parse("A=1\nhunter2\n").unwrap_err();
        assert_eq!(line, 2);
        assert!(!problem.contains("hunter2"), "{problem}");
        assert_eq!(parse("1A=x").unwrap_err().0, 1);
        assert!(parse("PORT=1").unwrap_err().1.contains("tenement"));
    }

    #[test]
    fn a_missing_file_names_its_path() {
        let err = read(Path::new("/nonexistent/notes.env")).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("reading env_file /nonexistent/notes.env: "),
            "{err}"
        );
    }
}
