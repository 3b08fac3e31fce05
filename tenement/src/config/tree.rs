//! Small operations on the parsed TOML tree: find the key at a position, drop a key.

use toml_edit::TableLike;

/// The path of the innermost key whose value contains byte `offset` of the text.
pub(super) fn path_at(table: &dyn TableLike, offset: usize) -> Option<Vec<String>> {
    let mut path = Vec::new();
    search(table, offset, &mut path).then_some(path)
}

fn search(table: &dyn TableLike, offset: usize, path: &mut Vec<String>) -> bool {
    for (key, item) in table.iter() {
        path.push(key.to_string());
        if let Some(inner) = item.as_table_like() {
            if search(inner, offset, path) {
                return true;
            }
        }
        let key_span = table.key(key).and_then(|key| key.span());
        let contains =
            |span: Option<std::ops::Range<usize>>| span.is_some_and(|s| s.contains(&offset));
        if contains(item.span()) || contains(key_span) {
            return true;
        }
        path.pop();
    }
    false
}

/// Removes the key at `path`; false if there is none.
pub(super) fn remove(table: &mut dyn TableLike, path: &[String]) -> bool {
    match path {
        [] => false,
        [last] => table.remove(last).is_some(),
        [first, rest @ ..] => match table
            .get_mut(first)
            .and_then(|item| item.as_table_like_mut())
        {
            Some(inner) => remove(inner, rest),
            None => false,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_and_removes_keys() {
        let text = "[service.api]\nidle_timeout = \"x\"\nenv = { A = 1 }\n";
        let doc = toml_edit::Document::parse(text).unwrap();
        let mut table = doc.as_table().clone();
        let at = |needle: &str| path_at(&table, text.find(needle).unwrap());
        assert_eq!(at("\"x\"").unwrap(), ["service", "api", "idle_timeout"]);
        assert_eq!(at("1 }").unwrap(), ["service", "api", "env", "A"]);
        let path: Vec<String> = ["service", "api", "idle_timeout"].map(String::from).into();
        assert!(remove(&mut table, &path));
        assert!(!remove(&mut table, &path));
        assert!(table["service"]["api"].get("env").is_some());
    }
}
