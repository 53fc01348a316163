//! What a figure costs the machine: CPU time by process, read from `/proc`, so a
//! change's effect shows as CPU per email even when the rate itself moves with
//! whatever else the shared machine is doing.

use std::collections::BTreeMap;

/// CPU time (clock ticks) spent so far, by group, and by the whole machine.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    by: BTreeMap<&'static str, u64>,
    busy: u64,
    all: u64,
}

/// The groups a sample splits the machine into: the service (by its pid), this process,
/// and PostgreSQL, nats-server, Redis and smtp-sink by their command names.
pub fn sample(service_pid: u32) -> Sample {
    let mut by = BTreeMap::new();
    let me = std::process::id();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let Some((comm, ticks)) = process_ticks(pid) else { continue };
        let group = if pid == service_pid {
            "service"
        } else if pid == me {
            "bench"
        } else {
            match comm.as_str() {
                "postgres" => "PostgreSQL",
                "nats-server" => "nats-server",
                "redis-server" => "Redis",
                "smtp-sink" => "smtp-sink",
                "smtp-source" => "smtp-source",
                _ => continue,
            }
        };
        *by.entry(group).or_default() += ticks;
    }
    let (busy, all) = machine_ticks();
    Sample { by, busy, all }
}

/// A process's command name and its user + system ticks (all its threads).
fn process_ticks(pid: u32) -> Option<(String, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (open, close) = (stat.find('(')?, stat.rfind(')')?);
    let comm = stat[open + 1..close].to_owned();
    // After the name: state (field 3) … utime (14), stime (15).
    let rest: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    let ticks = rest.get(11)?.parse::<u64>().ok()? + rest.get(12)?.parse::<u64>().ok()?;
    Some((comm, ticks))
}

/// Busy and all ticks of every core (`/proc/stat`'s first line).
fn machine_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<u64> =
        stat.lines().next().unwrap_or_default().split_whitespace().skip(1).filter_map(|f| f.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal (guest time is inside user).
    let get = |i: usize| fields.get(i).copied().unwrap_or(0);
    let busy = get(0) + get(1) + get(2) + get(5) + get(6) + get(7);
    (busy, busy + get(3) + get(4))
}

fn ticks_per_second() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok()?.trim().parse().ok())
        .unwrap_or(100.0)
}

/// CPU per unit of work between two samples.
#[derive(Debug, Clone, Default)]
pub struct Cost {
    /// Milliseconds of CPU per unit, by group; "rest" is every other process and the kernel's own work.
    pub by: Vec<(&'static str, f64)>,
    /// Milliseconds of CPU per unit, the whole machine.
    pub total: f64,
    /// How busy the machine was (0–1).
    pub busy: f64,
}

impl Cost {
    pub fn between(before: &Sample, after: &Sample, units: usize) -> Cost {
        let ms = 1000.0 / ticks_per_second() / units.max(1) as f64;
        let total = after.busy.saturating_sub(before.busy) as f64 * ms;
        let mut by: Vec<(&'static str, f64)> = after
            .by
            .iter()
            .map(|(group, t)| (*group, t.saturating_sub(before.by.get(group).copied().unwrap_or(0)) as f64 * ms))
            .filter(|(_, v)| *v > 0.0)
            .collect();
        by.sort_by(|a, b| b.1.total_cmp(&a.1));
        let named: f64 = by.iter().map(|(_, v)| v).sum();
        by.push(("rest", (total - named).max(0.0)));
        let all = after.all.saturating_sub(before.all).max(1) as f64;
        Cost { by, total, busy: after.busy.saturating_sub(before.busy) as f64 / all }
    }

    /// The median of each group over several costs, as one line.
    pub fn describe(costs: &[Cost]) -> String {
        let median = |v: Vec<f64>| crate::stats::median(&v);
        let Some(first) = costs.first() else { return String::new() };
        let parts: Vec<String> = first
            .by
            .iter()
            .map(|(group, _)| {
                let v = median(
                    costs.iter().map(|c| c.by.iter().find(|(g, _)| g == group).map_or(0.0, |(_, v)| *v)).collect(),
                );
                format!("{group} {v:.3}")
            })
            .collect();
        format!(
            "{:.3} ms ({}), machine {:.0} % busy",
            median(costs.iter().map(|c| c.total).collect()),
            parts.join(", "),
            100.0 * median(costs.iter().map(|c| c.busy).collect())
        )
    }
}
