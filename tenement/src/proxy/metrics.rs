//! What the proxy counts for `/metrics`: requests per instance by status class, wakes, and
//! latency histograms per service. The request path only does relaxed atomic increments on
//! slots it already holds (each routing-table entry carries its instance's slot): no lock,
//! no allocation, no formatting per request. The per-request counters are split per proxy
//! worker, each on cache lines of its own, so that workers on different cores never write
//! the same line; a scrape sums them. The `/metrics` collector reads the slots when it is
//! scraped (`api/metrics_proxy.rs`).

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc, Mutex,
    },
    time::Duration,
};

use crate::config::InstanceName;

/// Upper bounds of the request duration buckets, in nanoseconds: 0.5 ms to 10 s.
const REQUEST_BOUNDS_NS: &[u64] = &[
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];

/// Upper bounds of the wake duration buckets, in nanoseconds: a cold start takes from a few
/// milliseconds (a small binary) to the service's `startup_timeout`.
const WAKE_BOUNDS_NS: &[u64] = &[
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
    30_000_000_000,
    60_000_000_000,
];

/// The `code_class` label of each slot of [`Outcomes`]. `none`: the request ended without
/// a response (the client left first) or with a status outside 100-599.
pub const CODE_CLASSES: [&str; 6] = ["none", "1xx", "2xx", "3xx", "4xx", "5xx"];

/// One worker's share of a counter set, alone on its cache lines.
#[repr(align(128))]
struct Shard<T>(T);

/// A shard per proxy worker (see `pool::shelf_count`).
fn shards<T>(make: impl Fn() -> T) -> Box<[Shard<T>]> {
    (0..super::pool::shelf_count())
        .map(|_| Shard(make()))
        .collect()
}

/// The current worker's shard.
fn mine<T>(shards: &[Shard<T>]) -> &T {
    &shards[super::pool::worker() % shards.len()].0
}

/// Requests by status class.
pub struct Outcomes(Box<[Shard<[AtomicU64; 6]>]>);

impl Default for Outcomes {
    fn default() -> Outcomes {
        Outcomes(shards(Default::default))
    }
}

impl Outcomes {
    fn count(&self, status: u16) {
        let class = match status / 100 {
            class @ 1..=5 => usize::from(class),
            _ => 0,
        };
        mine(&self.0)[class].fetch_add(1, Relaxed);
    }

    /// `(code_class, requests)` for every class, in [`CODE_CLASSES`] order.
    pub fn read(&self) -> [(&'static str, u64); 6] {
        std::array::from_fn(|class| {
            let total = self
                .0
                .iter()
                .map(|shard| shard.0[class].load(Relaxed))
                .sum();
            (CODE_CLASSES[class], total)
        })
    }
}

/// A latency histogram with fixed buckets.
pub struct Histogram {
    bounds_ns: &'static [u64],
    shards: Box<[Shard<Buckets>]>,
}

struct Buckets {
    /// One count per bound (observations above the previous bound, up to this one), then
    /// the observations above every bound. Not cumulative: one increment per observation.
    counts: Box<[AtomicU64]>,
    sum_ns: AtomicU64,
}

/// A histogram as Prometheus shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct HistogramReading {
    /// `(upper bound in seconds, observations up to it)`, cumulative; `+Inf` is `count`.
    pub buckets: Vec<(f64, u64)>,
    pub count: u64,
    pub sum_secs: f64,
}

impl Histogram {
    fn new(bounds_ns: &'static [u64]) -> Histogram {
        Histogram {
            bounds_ns,
            shards: shards(|| Buckets {
                counts: (0..=bounds_ns.len()).map(|_| AtomicU64::new(0)).collect(),
                sum_ns: AtomicU64::new(0),
            }),
        }
    }

    fn observe(&self, elapsed: Duration) {
        let ns = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        // The first bucket whose bound is at least `ns` (Prometheus buckets are `le`).
        let bucket = self.bounds_ns.partition_point(|&bound| bound < ns);
        let mine = mine(&self.shards);
        mine.counts[bucket].fetch_add(1, Relaxed);
        mine.sum_ns.fetch_add(ns, Relaxed);
    }

    /// The count is the sum of the buckets read, so a scrape during traffic still shows a
    /// consistent histogram (the sum may be a request ahead or behind).
    pub fn read(&self) -> HistogramReading {
        let mut cumulative = 0;
        let mut buckets = Vec::with_capacity(self.bounds_ns.len());
        let count = |bucket: usize| -> u64 {
            self.shards
                .iter()
                .map(|shard| shard.0.counts[bucket].load(Relaxed))
                .sum()
        };
        for (bucket, bound) in self.bounds_ns.iter().enumerate() {
            cumulative += count(bucket);
            buckets.push((*bound as f64 / 1e9, cumulative));
        }
        let above = count(self.bounds_ns.len());
        let sum_ns: u64 = self
            .shards
            .iter()
            .map(|shard| shard.0.sum_ns.load(Relaxed))
            .sum();
        HistogramReading {
            buckets,
            count: cumulative + above,
            sum_secs: sum_ns as f64 / 1e9,
        }
    }
}

/// One service's histograms. They outlive its instances, so the service's totals never go
/// back when an instance is removed.
pub struct ServiceRequests {
    /// From the request's arrival to the end of its response body (or to the `101` of an
    /// upgrade: the tunnel afterwards is not part of it).
    pub duration: Histogram,
    /// How long requests waited for their instance to start.
    pub wake_duration: Histogram,
}

impl Default for ServiceRequests {
    fn default() -> ServiceRequests {
        ServiceRequests {
            duration: Histogram::new(REQUEST_BOUNDS_NS),
            wake_duration: Histogram::new(WAKE_BOUNDS_NS),
        }
    }
}

/// One instance's slot, held by its routing-table entry.
pub struct InstanceRequests {
    pub outcomes: Outcomes,
    /// Requests that found the instance not running and waited for it: started in time...
    pub wakes_ready: AtomicU64,
    /// ...or not (it failed to start, or `startup_timeout` passed).
    pub wakes_failed: AtomicU64,
    /// Requests answered 504 because the instance sent no response head within its
    /// service's `request_timeout`.
    pub timeouts: AtomicU64,
    service: Arc<ServiceRequests>,
}

impl InstanceRequests {
    /// A request to this instance ended with `status` (0: no response was sent).
    pub(crate) fn finished(&self, status: u16, elapsed: Duration) {
        self.outcomes.count(status);
        self.service.duration.observe(elapsed);
    }

    /// A request got no response head within `request_timeout`.
    pub(crate) fn timed_out(&self) {
        self.timeouts.fetch_add(1, Relaxed);
    }

    /// A request waited `elapsed` for the instance to start.
    pub(crate) fn woke(&self, elapsed: Duration, ready: bool) {
        let counter = if ready {
            &self.wakes_ready
        } else {
            &self.wakes_failed
        };
        counter.fetch_add(1, Relaxed);
        self.service.wake_duration.observe(elapsed);
    }
}

/// Every slot of one proxy. Cheap to share; the proxy makes one (see
/// `Proxy::request_metrics`).
#[derive(Default)]
pub struct RequestMetrics {
    instances: Mutex<BTreeMap<InstanceName, Arc<InstanceRequests>>>,
    services: Mutex<BTreeMap<String, Arc<ServiceRequests>>>,
    /// Requests answered before reaching any instance: no route, no Host, no instance with
    /// weight, or answered by the pre-router (ACME challenges, redirects to HTTPS).
    unrouted: Outcomes,
}

impl RequestMetrics {
    pub fn new() -> Arc<RequestMetrics> {
        Arc::default()
    }

    /// The slot of `name`, made on first use. Called when the routing table is built.
    pub(crate) fn instance(&self, name: &InstanceName) -> Arc<InstanceRequests> {
        let mut instances = self.instances.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(slot) = instances.get(name) {
            return slot.clone();
        }
        let service = self
            .services
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(name.service.clone())
            .or_default()
            .clone();
        let slot = Arc::new(InstanceRequests {
            outcomes: Outcomes::default(),
            wakes_ready: AtomicU64::new(0),
            wakes_failed: AtomicU64::new(0),
            timeouts: AtomicU64::new(0),
            service,
        });
        instances.insert(name.clone(), slot.clone());
        slot
    }

    /// Forgets instances that are gone, so their series leave `/metrics` with them.
    pub(crate) fn retain(&self, keep: impl Fn(&InstanceName) -> bool) {
        self.instances
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|name, _| keep(name));
    }

    pub(crate) fn count_unrouted(&self, status: u16) {
        self.unrouted.count(status);
    }

    /// Every instance's slot, by name.
    pub fn instances(&self) -> Vec<(InstanceName, Arc<InstanceRequests>)> {
        let instances = self.instances.lock().unwrap_or_else(|p| p.into_inner());
        instances
            .iter()
            .map(|(name, slot)| (name.clone(), slot.clone()))
            .collect()
    }

    /// Every service's histograms, by name.
    pub fn services(&self) -> Vec<(String, Arc<ServiceRequests>)> {
        let services = self.services.lock().unwrap_or_else(|p| p.into_inner());
        services
            .iter()
            .map(|(name, slot)| (name.clone(), slot.clone()))
            .collect()
    }

    pub fn unrouted(&self) -> &Outcomes {
        &self.unrouted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(text: &str) -> InstanceName {
        InstanceName::parse(text).unwrap()
    }

    #[test]
    fn counts_by_status_class() {
        let metrics = RequestMetrics::new();
        let alice = metrics.instance(&name("api:alice"));
        for status in [200, 204, 404, 503, 101, 0, 302, 700] {
            alice.finished(status, Duration::from_millis(1));
        }
        assert_eq!(
            alice.outcomes.read(),
            [
                ("none", 2),
                ("1xx", 1),
                ("2xx", 2),
                ("3xx", 1),
                ("4xx", 1),
                ("5xx", 1)
            ]
        );
        assert!(Arc::ptr_eq(&alice, &metrics.instance(&name("api:alice"))));
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_inclusive() {
        let histogram = Histogram::new(REQUEST_BOUNDS_NS);
        histogram.observe(Duration::from_micros(500)); // exactly on the first bound
        histogram.observe(Duration::from_micros(501));
        histogram.observe(Duration::from_millis(3));
        histogram.observe(Duration::from_secs(11)); // above every bound
        let reading = histogram.read();
        assert_eq!(reading.count, 4);
        assert_eq!(reading.buckets[0], (0.0005, 1));
        assert_eq!(reading.buckets[1], (0.001, 2));
        assert_eq!(reading.buckets[2], (0.0025, 2));
        assert_eq!(reading.buckets[3], (0.005, 3));
        assert_eq!(reading.buckets.last(), Some(&(10.0, 3)));
        assert!((reading.sum_secs - 11.004001).abs() < 1e-9, "{reading:?}");
    }

    #[test]
    fn services_outlive_their_instances() {
        let metrics = RequestMetrics::new();
        metrics
            .instance(&name("api:alice"))
            .finished(200, Duration::from_millis(2));
        metrics
            .instance(&name("api:bob"))
            .woke(Duration::from_millis(40), false);
        metrics.retain(|name| name.id == "bob");
        let names: Vec<String> = metrics
            .instances()
            .iter()
            .map(|(name, _)| name.to_string())
            .collect();
        assert_eq!(names, ["api:bob"]);
        let (service, slot) = &metrics.services()[0];
        assert_eq!(service, "api");
        assert_eq!(slot.duration.read().count, 1);
        assert_eq!(slot.wake_duration.read().count, 1);
    }
}
