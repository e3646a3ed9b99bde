//! Machine facts and `/proc` readings (memory, CPU time) that both benchmarks report.

use super::*;

pub(crate) fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

pub(crate) struct Machine {
    pub(crate) nproc: usize,
    pub(crate) cpu_model: String,
    pub(crate) mem_total_kb: u64,
    pub(crate) kernel: String,
    /// /proc/loadavg when the run started (other load skews the figures).
    pub(crate) loadavg: String,
}

pub(crate) fn machine_facts() -> Machine {
    let cpuinfo = read("/proc/cpuinfo");
    let cpu_model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_owned())
        .unwrap_or_else(|| "unknown".into());
    let mem_total_kb = read("/proc/meminfo")
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Machine {
        nproc: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        cpu_model,
        mem_total_kb,
        kernel: read("/proc/sys/kernel/osrelease").trim().to_owned(),
        loadavg: read("/proc/loadavg")
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
    }
}

/// (VmRSS, VmHWM) in KiB of a process, from /proc/<pid>/status.
#[derive(Clone, Copy, Default)]
pub(crate) struct Rss {
    pub(crate) rss_kb: u64,
    pub(crate) hwm_kb: u64,
}

pub(crate) fn rss_of(pid: u32) -> Rss {
    let status = read(&format!("/proc/{pid}/status"));
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Rss {
        rss_kb: field("VmRSS:"),
        hwm_kb: field("VmHWM:"),
    }
}

pub(crate) fn clock_ticks_per_s() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// utime + stime of a process in clock ticks, from /proc/<pid>/stat.
pub(crate) fn cpu_ticks(stat_path: &str) -> u64 {
    let stat = read(stat_path);
    // Fields after the parenthesised command name: state is field 3, utime 14, stime 15.
    let rest = match stat.rfind(')') {
        Some(i) => &stat[i + 1..],
        None => return 0,
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let get = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    get(11) + get(12)
}

/// Busy time of the whole machine in clock ticks, from the `cpu` line of /proc/stat
/// (user + nice + system + irq + softirq + steal).
pub(crate) fn machine_busy_ticks() -> u64 {
    let stat = read("/proc/stat");
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return 0;
    };
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    [0, 1, 2, 5, 6, 7].iter().filter_map(|&i| f.get(i)).sum()
}
