//! The live view: the terminal (alternate screen, raw mode, restored on every way out, a
//! panic included), a thread that follows the daemon's stats stream, and the key loop.

use std::{
    sync::mpsc::{self, Receiver, Sender},
    time::Duration,
};

use anyhow::{Context, Result};
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};

use super::{
    draw::draw,
    view::{Flow, Key, TopView},
    STATS_STREAM,
};
use crate::{api::types::StatsSnapshot, cli::client::Client};

/// How long the loop waits for a key before looking for new stats.
const KEY_WAIT: Duration = Duration::from_millis(100);
/// Pause before following the stream again after it broke (daemon restarting).
const RECONNECT_AFTER: Duration = Duration::from_secs(1);

pub fn run(client: Client, mut view: TopView) -> Result<()> {
    let (sender, updates) = mpsc::channel();
    // Detached: it ends with the process, or sooner once the view is gone.
    std::thread::Builder::new()
        .name("top-stats".into())
        .spawn(move || follow(client, sender))
        .context("starting the stats reader")?;
    let mut screen = Screen::enter()?;
    loop {
        receive(&updates, &mut view);
        screen
            .terminal
            .draw(|frame| draw(frame, &view))
            .context("drawing")?;
        if !event::poll(KEY_WAIT).context("reading the keyboard")? {
            continue;
        }
        if let Event::Key(press) = event::read().context("reading the keyboard")? {
            if press.kind != KeyEventKind::Press {
                continue;
            }
            let key = match press.code {
                KeyCode::Char('c') if press.modifiers.contains(KeyModifiers::CONTROL) => Key::CtrlC,
                KeyCode::Char(c) => Key::Char(c),
                KeyCode::Backspace => Key::Backspace,
                KeyCode::Enter => Key::Enter,
                KeyCode::Esc => Key::Esc,
                _ => continue,
            };
            if view.key(key) == Flow::Quit {
                return Ok(());
            }
        }
    }
}

fn receive(updates: &Receiver<Result<StatsSnapshot, String>>, view: &mut TopView) {
    while let Ok(update) = updates.try_recv() {
        view.update(update);
    }
}

/// Follows `/v1/stats?follow=true` and hands each snapshot to the view; when the stream
/// breaks, says why and follows it again. Ends once the view is gone.
fn follow(client: Client, updates: Sender<Result<StatsSnapshot, String>>) {
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        let _ = updates.send(Err("cannot start the async runtime".into()));
        return;
    };
    runtime.block_on(async {
        loop {
            let mut view_gone = false;
            let ended = client
                .stream(STATS_STREAM, |line| {
                    let update = serde_json::from_str::<StatsSnapshot>(line)
                        .map_err(|err| format!("unexpected stats from the daemon: {err}"));
                    view_gone = updates.send(update).is_err();
                    !view_gone
                })
                .await;
            if view_gone {
                return;
            }
            let why = match ended {
                Ok(()) => "the daemon ended the stats stream".to_string(),
                Err(err) => format!("{err:#}"),
            };
            if updates.send(Err(why)).is_err() {
                return;
            }
            tokio::time::sleep(RECONNECT_AFTER).await;
        }
    });
}

/// The terminal in raw mode on the alternate screen, for as long as this lives. ratatui's
/// init also installs a panic hook that restores the terminal before the panic message.
struct Screen {
    terminal: ratatui::DefaultTerminal,
}

impl Screen {
    fn enter() -> Result<Screen> {
        let terminal = ratatui::try_init().context("setting up the terminal")?;
        Ok(Screen { terminal })
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        ratatui::restore();
    }
}
