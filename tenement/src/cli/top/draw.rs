//! One frame of the live view: a header (daemon, instances, kernel counters, sort, filter),
//! the table, the reasons of degraded instances, and a line of keys.

use ratatui::{
    layout::{Constraint, Layout},
    style::{Color, Modifier, Style},
    text::Line,
    widgets::{Cell, Paragraph, Row as TableRow, Table},
    Frame,
};

use super::{
    rows::{Row, HEADERS},
    view::TopView,
};

const KEYS_HELP: &str =
    "keys: c cpu  m mem  r rx  t tx  o conns  i idle  n name  s state (again: reverse)  / filter  q quit";

pub fn draw(frame: &mut Frame, view: &TopView) {
    let rows = view.rows();
    let reasons: Vec<Line> = rows
        .iter()
        .filter_map(|row| {
            let reason = row.reason.as_ref()?;
            Some(Line::from(format!("{}: {reason}", row.name)))
        })
        .collect();
    let [header, table, notes, keys] = Layout::vertical([
        Constraint::Length(2),
        Constraint::Min(1),
        Constraint::Length(reasons.len().min(5) as u16),
        Constraint::Length(1),
    ])
    .areas(frame.area());

    frame.render_widget(Paragraph::new(header_lines(view, rows.len())), header);
    frame.render_widget(instance_table(view, &rows), table);
    frame.render_widget(
        Paragraph::new(reasons).style(Style::default().fg(Color::Yellow)),
        notes,
    );
    frame.render_widget(
        Paragraph::new(KEYS_HELP).style(Style::default().add_modifier(Modifier::DIM)),
        keys,
    );
}

fn header_lines(view: &TopView, shown: usize) -> Vec<Line<'static>> {
    let kernel = match view.snapshot.as_ref().map(|s| &s.kernel_counters) {
        Some(counters) if counters.active => "kernel counters: active".to_string(),
        Some(counters) => format!(
            "kernel counters off: {}",
            counters.reason.as_deref().unwrap_or("no reason given")
        ),
        None => "waiting for the first stats".to_string(),
    };
    let total = view.snapshot.as_ref().map_or(0, |s| s.instances.len());
    let mut first = format!("tenement top  {}  {total} instances  {kernel}", view.daemon);
    if let Some(error) = &view.error {
        first.push_str(&format!("  [stale: {error}]"));
    }
    let filter = match &view.editing {
        Some(typed) => format!("filter (Enter to keep, Esc to drop): {typed}_"),
        None if view.filter.is_empty() => "filter: none".to_string(),
        None => format!("filter: service ~ {:?} ({shown} shown)", view.filter),
    };
    vec![
        Line::from(first).style(Style::default().add_modifier(Modifier::BOLD)),
        Line::from(format!("sort: {}  {filter}", view.sort.label())),
    ]
}

fn instance_table<'a>(view: &TopView, rows: &'a [Row]) -> Table<'a> {
    let sorted = view.sort.by.column();
    let header = TableRow::new(HEADERS.iter().enumerate().map(|(column, title)| {
        let title = if column == sorted {
            format!("{title}{}", view.sort.arrow())
        } else {
            title.to_string()
        };
        Cell::from(title)
    }))
    .style(Style::default().add_modifier(Modifier::REVERSED));
    let body = rows.iter().map(|row| {
        let style = match row.state.as_str() {
            "degraded" | "unhealthy" => Style::default().fg(Color::Yellow),
            "failed" => Style::default().fg(Color::Red),
            "running" => Style::default(),
            _ => Style::default().add_modifier(Modifier::DIM),
        };
        TableRow::new(row.cells()).style(style)
    });
    // As wide as the longest name, so the numbers stay next to it on a wide terminal.
    let name_width = rows
        .iter()
        .map(|row| row.name.chars().count())
        .max()
        .unwrap_or(0);
    let widths = [
        Constraint::Length(name_width.max(HEADERS[0].len() + 1) as u16),
        Constraint::Length(10),
        Constraint::Length(7),
        Constraint::Length(8),
        Constraint::Length(8),
        Constraint::Length(8),
        Constraint::Length(6),
        Constraint::Length(8),
        Constraint::Length(7),
        Constraint::Length(9),
        Constraint::Length(9),
    ];
    Table::new(body, widths).header(header).column_spacing(1)
}
