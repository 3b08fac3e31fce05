//! What `tenement top` shows of each instance, in which order: the columns, their cells,
//! sorting and the service filter. Shared by the live view and `--once`.

use std::cmp::Ordering;

use crate::api::types::InstanceStatsView;

use super::super::table::{duration, or_dash, Table};

/// Every column, in display order.
pub const HEADERS: [&str; 11] = [
    "NAME", "STATE", "CPU%", "MEM", "RX/s", "TX/s", "CONNS", "RETRANS", "DENIED", "RESTARTS",
    "IDLE-FOR",
];

/// The columns a key sorts by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SortBy {
    Name,
    State,
    Cpu,
    Memory,
    Rx,
    Tx,
    Connections,
    Idle,
}

impl SortBy {
    /// The key that selects it, and its name in the header.
    pub const KEYS: [(char, SortBy); 8] = [
        ('c', SortBy::Cpu),
        ('m', SortBy::Memory),
        ('r', SortBy::Rx),
        ('t', SortBy::Tx),
        ('o', SortBy::Connections),
        ('i', SortBy::Idle),
        ('n', SortBy::Name),
        ('s', SortBy::State),
    ];

    pub fn from_key(key: char) -> Option<SortBy> {
        Self::KEYS
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, sort)| *sort)
    }

    pub fn label(self) -> &'static str {
        match self {
            SortBy::Name => "name",
            SortBy::State => "state",
            SortBy::Cpu => "cpu",
            SortBy::Memory => "mem",
            SortBy::Rx => "rx",
            SortBy::Tx => "tx",
            SortBy::Connections => "conns",
            SortBy::Idle => "idle",
        }
    }

    /// The column it sorts, as an index into [`HEADERS`].
    pub fn column(self) -> usize {
        match self {
            SortBy::Name => 0,
            SortBy::State => 1,
            SortBy::Cpu => 2,
            SortBy::Memory => 3,
            SortBy::Rx => 4,
            SortBy::Tx => 5,
            SortBy::Connections => 6,
            SortBy::Idle => 10,
        }
    }

    /// Text sorts A to Z first, numbers biggest first: what one looks for in each.
    pub fn descending_first(self) -> bool {
        !matches!(self, SortBy::Name | SortBy::State)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sort {
    pub by: SortBy,
    pub descending: bool,
}

impl Sort {
    pub fn new(by: SortBy) -> Sort {
        Sort {
            by,
            descending: by.descending_first(),
        }
    }

    /// The same key again reverses the order; another key sorts by its column.
    pub fn pick(self, by: SortBy) -> Sort {
        if by == self.by {
            Sort {
                by,
                descending: !self.descending,
            }
        } else {
            Sort::new(by)
        }
    }

    /// `cpu ▼`: what the header shows.
    pub fn label(self) -> String {
        format!("{} {}", self.by.label(), self.arrow())
    }

    pub fn arrow(self) -> char {
        if self.descending {
            '▼'
        } else {
            '▲'
        }
    }
}

impl Default for Sort {
    fn default() -> Sort {
        Sort::new(SortBy::Cpu)
    }
}

/// One instance as a row: the raw values (for sorting) and nothing else.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub name: String,
    pub service: String,
    pub state: String,
    pub cpu_percent: Option<f64>,
    pub memory_bytes: Option<u64>,
    pub rx_per_sec: Option<f64>,
    pub tx_per_sec: Option<f64>,
    pub connections: Option<u64>,
    pub retransmits: Option<u64>,
    /// Binds, connects and sends the network boundary refused.
    pub denied: Option<u64>,
    pub restarts: u32,
    pub idle_for_secs: Option<f64>,
    /// Why it is degraded or failed, shown below the table.
    pub reason: Option<String>,
}

impl Row {
    pub fn from_view(view: &InstanceStatsView) -> Row {
        let stats = view.stats.as_ref();
        let rates = stats.and_then(|s| s.rates);
        let totals = stats.and_then(|s| s.totals);
        Row {
            name: view.name.clone(),
            service: view.service.clone(),
            state: view.state.clone(),
            cpu_percent: rates.map(|r| r.cpu_percent),
            memory_bytes: stats.and_then(|s| s.memory_bytes),
            rx_per_sec: rates.map(|r| r.rx_bytes_per_sec),
            tx_per_sec: rates.map(|r| r.tx_bytes_per_sec),
            connections: totals.map(|t| t.connections_open),
            retransmits: totals.map(|t| t.retransmits),
            denied: totals.map(|t| t.denied()),
            restarts: view.restarts,
            idle_for_secs: stats.and_then(|s| s.idle_for_secs),
            reason: view.last_error.clone(),
        }
    }

    /// The cells, in the order of [`HEADERS`]; `-` where there is nothing to show.
    pub fn cells(&self) -> Vec<String> {
        vec![
            self.name.clone(),
            self.state.clone(),
            or_dash(self.cpu_percent.map(|cpu| format!("{cpu:.1}"))),
            or_dash(self.memory_bytes.map(|bytes| compact_bytes(bytes as f64))),
            or_dash(self.rx_per_sec.map(compact_bytes)),
            or_dash(self.tx_per_sec.map(compact_bytes)),
            or_dash(self.connections),
            or_dash(self.retransmits),
            or_dash(self.denied),
            self.restarts.to_string(),
            or_dash(self.idle_for_secs.map(|secs| duration(secs as u64))),
        ]
    }
}

/// The rows of `instances` whose service contains `filter` (all with an empty filter), in
/// `sort` order; ties, and rows without the value, go by name.
pub fn rows(instances: &[InstanceStatsView], sort: Sort, filter: &str) -> Vec<Row> {
    let mut rows: Vec<Row> = instances
        .iter()
        .filter(|view| view.service.contains(filter))
        .map(Row::from_view)
        .collect();
    rows.sort_by(|a, b| compare(a, b, sort).then_with(|| a.name.cmp(&b.name)));
    rows
}

fn compare(a: &Row, b: &Row, sort: Sort) -> Ordering {
    let ordered = |ordering: Ordering| {
        if sort.descending {
            ordering.reverse()
        } else {
            ordering
        }
    };
    // Missing values stay at the bottom whichever the direction.
    let numbers = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) => ordered(a.total_cmp(&b)),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => Ordering::Equal,
    };
    match sort.by {
        SortBy::Name => ordered(a.name.cmp(&b.name)),
        SortBy::State => ordered(a.state.cmp(&b.state)),
        SortBy::Cpu => numbers(a.cpu_percent, b.cpu_percent),
        SortBy::Memory => numbers(
            a.memory_bytes.map(|m| m as f64),
            b.memory_bytes.map(|m| m as f64),
        ),
        SortBy::Rx => numbers(a.rx_per_sec, b.rx_per_sec),
        SortBy::Tx => numbers(a.tx_per_sec, b.tx_per_sec),
        SortBy::Connections => numbers(
            a.connections.map(|c| c as f64),
            b.connections.map(|c| c as f64),
        ),
        SortBy::Idle => numbers(a.idle_for_secs, b.idle_for_secs),
    }
}

/// `--once`: the same columns as a plain table.
pub fn plain_table(rows: &[Row]) -> String {
    let mut table = Table::new(&HEADERS);
    for row in rows {
        table.row(row.cells());
    }
    table.render().trim_end().to_string()
}

/// `512B`, `1.5K`, `3.2M`: narrow, so the columns stay readable; binary units.
pub fn compact_bytes(bytes: f64) -> String {
    const UNITS: [&str; 5] = ["K", "M", "G", "T", "P"];
    if bytes < 1024.0 {
        return format!("{bytes:.0}B");
    }
    let mut value = bytes / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1}{}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::monitor::{InstanceStats, KernelStats, Rates};

    fn view(name: &str, cpu: Option<f64>) -> InstanceStatsView {
        let (service, _) = name.split_once(':').unwrap();
        InstanceStatsView {
            name: name.into(),
            service: service.into(),
            state: "running".into(),
            restarts: 1,
            last_error: None,
            stats: Some(InstanceStats {
                totals: Some(KernelStats {
                    connections_open: 3,
                    retransmits: 7,
                    ..Default::default()
                }),
                rates: cpu.map(|cpu_percent| Rates {
                    cpu_percent,
                    rx_bytes_per_sec: 2048.0,
                    ..Default::default()
                }),
                memory_bytes: Some(5 * 1024 * 1024),
                idle_for_secs: Some(75.0),
            }),
        }
    }

    #[test]
    fn cells_show_rates_and_totals() {
        let row = Row::from_view(&view("api:alice", Some(12.345)));
        assert_eq!(
            row.cells(),
            [
                "api:alice",
                "running",
                "12.3",
                "5.0M",
                "2.0K",
                "0B",
                "3",
                "7",
                "0",
                "1",
                "1m15s"
            ]
        );
        let mut stopped = view("api:bob", None);
        stopped.stats = None;
        let cells = Row::from_view(&stopped).cells();
        assert_eq!(cells[2..9], ["-", "-", "-", "-", "-", "-", "-"]);
    }

    #[test]
    fn sorts_and_reverses_with_missing_values_last() {
        let views = [
            view("api:alice", Some(1.0)),
            view("api:bob", Some(50.0)),
            view("web:carol", None),
        ];
        let names = |sort: Sort| -> Vec<String> {
            rows(&views, sort, "").into_iter().map(|r| r.name).collect()
        };
        let cpu = Sort::default();
        assert_eq!(names(cpu), ["api:bob", "api:alice", "web:carol"]);
        assert_eq!(
            names(cpu.pick(SortBy::Cpu)),
            ["api:alice", "api:bob", "web:carol"]
        );
        let name = cpu.pick(SortBy::Name);
        assert_eq!(name.label(), "name ▲");
        assert_eq!(names(name), ["api:alice", "api:bob", "web:carol"]);
        assert_eq!(
            names(name.pick(SortBy::Name)),
            ["web:carol", "api:bob", "api:alice"]
        );
    }

    #[test]
    fn filters_by_service() {
        let views = [view("api:alice", None), view("web:carol", None)];
        let rows = rows(&views, Sort::default(), "we");
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].name, "web:carol");
    }

    #[test]
    fn compact_units() {
        assert_eq!(compact_bytes(0.0), "0B");
        assert_eq!(compact_bytes(1023.0), "1023B");
        assert_eq!(compact_bytes(1536.0), "1.5K");
        assert_eq!(compact_bytes(3.0 * 1024.0 * 1024.0 * 1024.0), "3.0G");
    }
}
