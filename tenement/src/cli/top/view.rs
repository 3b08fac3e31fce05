//! The state of the live view and what each key does to it; no terminal here, so it can
//! be tested on its own.

use crate::api::types::StatsSnapshot;

use super::rows::{rows, Row, Sort, SortBy};

/// What the loop does after a key.
#[derive(Debug, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Quit,
}

/// A key press, reduced to what the view understands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Key {
    Char(char),
    Backspace,
    Enter,
    Esc,
    CtrlC,
}

pub struct TopView {
    /// Where the stats come from, for the header.
    pub daemon: String,
    pub snapshot: Option<StatsSnapshot>,
    /// Why the last update failed (the daemon stopped, a token was revoked...).
    pub error: Option<String>,
    pub sort: Sort,
    /// Only instances whose service contains this.
    pub filter: String,
    /// The filter being typed after `/` or `f`, until Enter or Esc.
    pub editing: Option<String>,
}

impl TopView {
    pub fn new(daemon: String, filter: String) -> TopView {
        TopView {
            daemon,
            snapshot: None,
            error: None,
            sort: Sort::default(),
            filter,
            editing: None,
        }
    }

    pub fn update(&mut self, update: Result<StatsSnapshot, String>) {
        match update {
            Ok(snapshot) => {
                self.snapshot = Some(snapshot);
                self.error = None;
            }
            // The last numbers stay on screen, marked stale by the error in the header.
            Err(error) => self.error = Some(error),
        }
    }

    pub fn rows(&self) -> Vec<Row> {
        let instances = self
            .snapshot
            .as_ref()
            .map(|s| s.instances.as_slice())
            .unwrap_or_default();
        rows(instances, self.sort, self.shown_filter())
    }

    /// The filter in effect: while one is typed, the rows follow it as it grows.
    pub fn shown_filter(&self) -> &str {
        self.editing.as_deref().unwrap_or(&self.filter)
    }

    pub fn key(&mut self, key: Key) -> Flow {
        if key == Key::CtrlC {
            return Flow::Quit;
        }
        if let Some(typed) = &mut self.editing {
            match key {
                Key::Char(c) => typed.push(c),
                Key::Backspace => {
                    typed.pop();
                }
                Key::Enter => self.filter = self.editing.take().unwrap_or_default(),
                Key::Esc => self.editing = None,
                Key::CtrlC => return Flow::Quit,
            }
            return Flow::Continue;
        }
        match key {
            Key::Char('q') | Key::Esc => return Flow::Quit,
            Key::Char('/' | 'f') => self.editing = Some(String::new()),
            Key::Char(c) => {
                if let Some(by) = SortBy::from_key(c) {
                    self.sort = self.sort.pick(by);
                }
            }
            Key::Backspace | Key::Enter | Key::CtrlC => {}
        }
        Flow::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sort_filter_and_quit() {
        let mut view = TopView::new("unix:/t.sock".into(), String::new());
        assert_eq!(view.sort.by, SortBy::Cpu);
        assert_eq!(view.key(Key::Char('n')), Flow::Continue);
        assert_eq!(view.sort.label(), "name ▲");
        view.key(Key::Char('n'));
        assert_eq!(view.sort.label(), "name ▼");
        view.key(Key::Char('m'));
        assert_eq!(view.sort.label(), "mem ▼");

        view.key(Key::Char('/'));
        for c in "apiq".chars() {
            assert_eq!(
                view.key(Key::Char(c)),
                Flow::Continue,
                "typing, not quitting"
            );
        }
        view.key(Key::Backspace);
        assert_eq!(view.shown_filter(), "api");
        view.key(Key::Enter);
        assert_eq!(view.filter, "api");
        view.key(Key::Char('f'));
        assert_eq!(view.shown_filter(), "");
        view.key(Key::Esc);
        assert_eq!(view.shown_filter(), "api", "Esc cancels the edit only");

        assert_eq!(view.key(Key::Char('q')), Flow::Quit);
        assert_eq!(view.key(Key::Esc), Flow::Quit);
        view.key(Key::Char('/'));
        assert_eq!(view.key(Key::CtrlC), Flow::Quit);
    }
}
