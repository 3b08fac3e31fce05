//! `/metrics` families of what the kernel counted for each instance and the memory its
//! cgroup holds, from the supervisor's sampled `InstanceStats` (the one view every reader
//! shares, at most a second old). An instance shows up while it has a process; its kernel
//! families only while kernel counters are on and it is registered.
//!
//! Counters start at zero each time an instance's process starts (its cgroup is registered
//! anew), which Prometheus treats as a counter reset: `rate()` and `increase()` handle it.

use super::metrics::{Exposition, Kind, Metrics};
use crate::{monitor::KernelStats, supervisor::Supervisor};

/// One series of a family: its extra labels and how to read it from the kernel's numbers.
struct Series {
    labels: &'static [(&'static str, &'static str)],
    value: fn(&KernelStats) -> Option<f64>,
}

struct Family {
    name: &'static str,
    kind: Kind,
    help: &'static str,
    series: &'static [Series],
}

const fn plain(value: fn(&KernelStats) -> Option<f64>) -> Series {
    Series { labels: &[], value }
}

const INBOUND: &[(&str, &str)] = &[("direction", "inbound")];
const OUTBOUND: &[(&str, &str)] = &[("direction", "outbound")];

const FAMILIES: &[Family] = &[
    Family {
        name: "tenement_instance_rx_bytes_total",
        kind: Kind::Counter,
        help: "Bytes of IP packets (headers included) the instance's sockets received.",
        series: &[plain(|k| Some(k.rx_bytes as f64))],
    },
    Family {
        name: "tenement_instance_tx_bytes_total",
        kind: Kind::Counter,
        help: "Bytes of IP packets (headers included) the instance's sockets sent.",
        series: &[plain(|k| Some(k.tx_bytes as f64))],
    },
    Family {
        name: "tenement_instance_rx_packets_total",
        kind: Kind::Counter,
        help: "IP packets the instance's sockets received.",
        series: &[plain(|k| Some(k.rx_packets as f64))],
    },
    Family {
        name: "tenement_instance_tx_packets_total",
        kind: Kind::Counter,
        help: "IP packets the instance's sockets sent.",
        series: &[plain(|k| Some(k.tx_packets as f64))],
    },
    Family {
        name: "tenement_instance_cpu_seconds_total",
        kind: Kind::Counter,
        help: "CPU time the instance's tasks spent on a CPU.",
        series: &[plain(|k| Some(k.cpu_ns as f64 / 1e9))],
    },
    Family {
        name: "tenement_instance_connections_opened_total",
        kind: Kind::Counter,
        help: "TCP connections that reached ESTABLISHED: accepted by the instance \
               (inbound) or made by it (outbound).",
        series: &[
            Series {
                labels: INBOUND,
                value: |k| Some(k.inbound_opened as f64),
            },
            Series {
                labels: OUTBOUND,
                value: |k| Some(k.outbound_opened as f64),
            },
        ],
    },
    Family {
        name: "tenement_instance_connections_closed_total",
        kind: Kind::Counter,
        help: "TCP connections of the instance that closed, by who opened them.",
        series: &[
            Series {
                labels: INBOUND,
                value: |k| Some(k.inbound_closed as f64),
            },
            Series {
                labels: OUTBOUND,
                value: |k| Some(k.outbound_closed as f64),
            },
        ],
    },
    Family {
        name: "tenement_instance_connections_open",
        kind: Kind::Gauge,
        help: "TCP connections of the instance open now, both directions.",
        series: &[plain(|k| Some(k.connections_open as f64))],
    },
    Family {
        name: "tenement_instance_tcp_retransmits_total",
        kind: Kind::Counter,
        help: "TCP segments the instance's sockets retransmitted.",
        series: &[plain(|k| Some(k.retransmits as f64))],
    },
    Family {
        name: "tenement_instance_tcp_resets_total",
        kind: Kind::Counter,
        help: "TCP resets the instance's sockets sent or received.",
        series: &[
            Series {
                labels: &[("direction", "sent")],
                value: |k| Some(k.resets_sent as f64),
            },
            Series {
                labels: &[("direction", "received")],
                value: |k| Some(k.resets_received as f64),
            },
        ],
    },
    Family {
        name: "tenement_instance_network_denied_total",
        kind: Kind::Counter,
        help: "Socket operations of the instance that the network boundary refused: binds \
               of a port not its own, connects and UDP sends to a protected port or outside \
               its egress policy.",
        series: &[
            Series {
                labels: &[("operation", "bind")],
                value: |k| Some(k.binds_denied as f64),
            },
            Series {
                labels: &[("operation", "connect")],
                value: |k| Some(k.connects_denied as f64),
            },
            Series {
                labels: &[("operation", "send")],
                value: |k| Some(k.sends_denied as f64),
            },
        ],
    },
];

/// One instance as its latest sample shows it.
struct Reading {
    instance: String,
    service: String,
    kernel: Option<KernelStats>,
    memory_bytes: Option<u64>,
    idle_secs: Option<f64>,
}

/// Adds the kernel families to `/metrics`.
pub fn register(metrics: &Metrics, supervisor: Supervisor) {
    metrics.register(move |out| write(&read(&supervisor), out));
}

fn read(supervisor: &Supervisor) -> Vec<Reading> {
    supervisor
        .instances()
        .into_iter()
        .filter_map(|info| {
            let stats = supervisor.stats(&info.name)?;
            Some(Reading {
                instance: info.name.to_string(),
                service: info.name.service.clone(),
                kernel: stats.totals,
                memory_bytes: stats.memory_bytes,
                idle_secs: stats.idle_for_secs,
            })
        })
        .collect()
}

fn write(readings: &[Reading], out: &mut Exposition) {
    for family in FAMILIES {
        out.family(family.name, family.kind, family.help);
        for reading in readings {
            let Some(kernel) = &reading.kernel else {
                continue;
            };
            for series in family.series {
                if let Some(value) = (series.value)(kernel) {
                    let mut labels = vec![
                        ("instance", reading.instance.as_str()),
                        ("service", reading.service.as_str()),
                    ];
                    labels.extend_from_slice(series.labels);
                    out.sample(family.name, &labels, value);
                }
            }
        }
    }
    gauge(
        out,
        readings,
        "tenement_instance_memory_bytes",
        "Memory charged to the instance's memory cgroup (memory.current, or \
         memory.usage_in_bytes on hybrid hosts).",
        |reading| reading.memory_bytes.map(|bytes| bytes as f64),
    );
    gauge(
        out,
        readings,
        "tenement_instance_idle_seconds",
        "Seconds the instance has been idle as the idle reaper sees it: no packet of its own \
         (tenement's health probes aside) and no proxied request; 0 while one is answered.",
        |reading| reading.idle_secs,
    );
}

/// A gauge family with one sample per instance that has a value.
fn gauge(
    out: &mut Exposition,
    readings: &[Reading],
    name: &str,
    help: &str,
    value: fn(&Reading) -> Option<f64>,
) {
    out.family(name, Kind::Gauge, help);
    for reading in readings {
        if let Some(value) = value(reading) {
            out.sample(
                name,
                &[
                    ("instance", reading.instance.as_str()),
                    ("service", reading.service.as_str()),
                ],
                value,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_every_family_with_instance_labels() {
        let kernel = KernelStats {
            rx_bytes: 1500,
            tx_bytes: 3000,
            cpu_ns: 2_500_000_000,
            inbound_opened: 4,
            inbound_closed: 3,
            outbound_opened: 1,
            connections_open: 2,
            resets_received: 7,
            ..Default::default()
        };
        let readings = [
            Reading {
                instance: "api:alice".into(),
                service: "api".into(),
                kernel: Some(kernel),
                memory_bytes: Some(8192),
                idle_secs: Some(1.5),
            },
            Reading {
                instance: "api:bob".into(),
                service: "api".into(),
                kernel: None,
                memory_bytes: None,
                idle_secs: None,
            },
        ];
        let mut out = Exposition::default();
        write(&readings, &mut out);
        let text = out.as_str();
        for line in [
            "tenement_instance_rx_bytes_total{instance=\"api:alice\",service=\"api\"} 1500",
            "tenement_instance_cpu_seconds_total{instance=\"api:alice\",service=\"api\"} 2.5",
            "tenement_instance_connections_opened_total{instance=\"api:alice\",service=\"api\",direction=\"inbound\"} 4",
            "tenement_instance_connections_opened_total{instance=\"api:alice\",service=\"api\",direction=\"outbound\"} 1",
            "tenement_instance_connections_open{instance=\"api:alice\",service=\"api\"} 2",
            "tenement_instance_tcp_resets_total{instance=\"api:alice\",service=\"api\",direction=\"received\"} 7",
            "tenement_instance_memory_bytes{instance=\"api:alice\",service=\"api\"} 8192",
            "tenement_instance_idle_seconds{instance=\"api:alice\",service=\"api\"} 1.5",
            "# TYPE tenement_instance_connections_open gauge",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line}:\n{text}");
        }
        assert!(!text.contains("api:bob"), "{text}");
    }
}
