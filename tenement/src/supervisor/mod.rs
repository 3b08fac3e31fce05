//! Instances: spawn, isolation, cgroups, health checks, restarts, stop.

pub mod cgroup;
