//! The host's CPU and memory use, from /proc, for the overview's header.

/// CPU time counters from the first line of /proc/stat: (busy, total) in clock ticks.
pub fn cpu_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    parse_cpu(stat.lines().next()?)
}

fn parse_cpu(line: &str) -> Option<(u64, u64)> {
    let mut fields = line.split_whitespace();
    if fields.next()? != "cpu" {
        return None;
    }
    let values: Vec<u64> = fields.filter_map(|field| field.parse().ok()).collect();
    let total: u64 = values.iter().sum();
    // idle and iowait are the time the CPUs had nothing to run.
    let idle = values.get(3).copied().unwrap_or(0) + values.get(4).copied().unwrap_or(0);
    Some((total.saturating_sub(idle), total))
}

/// Busy share of all CPUs between two readings, 0-100.
pub fn cpu_percent(before: (u64, u64), now: (u64, u64)) -> Option<f64> {
    let busy = now.0.checked_sub(before.0)?;
    let total = now.1.checked_sub(before.1)?;
    (total > 0).then(|| busy as f64 / total as f64 * 100.0)
}

/// (used, total) bytes of memory: used is what is not available to new programs.
pub fn memory() -> Option<(u64, u64)> {
    parse_meminfo(&std::fs::read_to_string("/proc/meminfo").ok()?)
}

fn parse_meminfo(text: &str) -> Option<(u64, u64)> {
    let field = |name: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .map(|kib| kib * 1024)
    };
    let total = field("MemTotal:")?;
    let available = field("MemAvailable:")?;
    Some((total.saturating_sub(available), total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_proc_formats() {
        let before = parse_cpu("cpu  100 0 100 700 100 0 0 0 0 0").unwrap();
        let after = parse_cpu("cpu  150 0 150 750 150 0 0 0 0 0").unwrap();
        assert_eq!(before, (200, 1000));
        assert_eq!(cpu_percent(before, after), Some(50.0));
        let meminfo = "MemTotal:       1000 kB\nMemFree:  10 kB\nMemAvailable:    250 kB\n";
        assert_eq!(parse_meminfo(meminfo), Some((750 * 1024, 1000 * 1024)));
        assert!(cpu_ticks().is_some() && memory().is_some());
    }
}
