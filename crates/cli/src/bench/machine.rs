//! The machine a benchmark ran on (cores, CPU model, kernel, memory) and the process's own
//! resource use (resident memory, CPU time), read from `/proc`.

use std::fmt;
use std::time::Duration;

/// What the figures were measured on.
#[derive(Debug, Clone)]
pub struct Machine {
    /// Cores this process may use (`nproc`).
    pub nproc: usize,
    /// `model name` of `/proc/cpuinfo`.
    pub cpu: String,
    /// Kernel release.
    pub kernel: String,
    /// Total memory, MiB.
    pub mem_total_mib: Option<u64>,
}

impl Machine {
    /// Reads the machine's description (missing parts read as "unknown").
    pub fn detect() -> Self {
        let nproc = std::thread::available_parallelism().map_or(1, |n| n.get());
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, v)| v.trim().to_owned())
            })
            .unwrap_or_else(|| "unknown".into());
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|_| "unknown".into());
        let mem_total_mib = proc_kib("/proc/meminfo", "MemTotal:").map(|k| k / 1024);
        Self {
            nproc,
            cpu,
            kernel,
            mem_total_mib,
        }
    }
}

impl fmt::Display for Machine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "nproc = {}, CPU {}, Linux {}",
            self.nproc, self.cpu, self.kernel
        )?;
        if let Some(m) = self.mem_total_mib {
            write!(f, ", {m} MiB RAM")?;
        }
        Ok(())
    }
}

/// A `Name:   123 kB` line of a `/proc` file, in KiB.
fn proc_kib(path: &str, key: &str) -> Option<u64> {
    std::fs::read_to_string(path).ok().and_then(|s| {
        s.lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l[key.len()..].split_whitespace().next())
            .and_then(|v| v.parse().ok())
    })
}

/// This process's resident memory (`VmRSS` of `/proc/self/status`), bytes.
pub fn rss_bytes() -> Option<u64> {
    proc_kib("/proc/self/status", "VmRSS:").map(|k| k * 1024)
}

/// Bytes as MiB with one decimal.
pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// CPU time (user + system) this process has used so far, from `/proc/self/stat`.
pub fn cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which is in parentheses and may contain spaces).
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 here.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    let ticks = clock_ticks();
    Some(Duration::from_secs_f64((utime + stime) as f64 / ticks))
}

/// The machine's CPU time so far (all processes), from the `cpu` line of `/proc/stat`.
#[derive(Debug, Clone, Copy)]
pub struct SystemCpu {
    busy: u64,
    at: std::time::Instant,
}

impl SystemCpu {
    /// Reads the counters now.
    pub fn now() -> Option<SystemCpu> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let line = stat.lines().find(|l| l.starts_with("cpu "))?;
        let v: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .filter_map(|x| x.parse().ok())
            .collect();
        // user nice system idle iowait irq softirq steal …: busy is all but idle and iowait.
        let busy = v.iter().take(8).sum::<u64>() - v.get(3)? - v.get(4)?;
        Some(SystemCpu {
            busy,
            at: std::time::Instant::now(),
        })
    }

    /// Cores kept busy on average since `self` by processes other than this one, given the
    /// CPU time this process used meanwhile.
    pub fn others_since(&self, own: Duration) -> Option<f64> {
        let end = SystemCpu::now()?;
        let wall = end.at.duration_since(self.at).as_secs_f64();
        if wall <= 0.0 {
            return None;
        }
        let busy = end.busy.saturating_sub(self.busy) as f64 / clock_ticks();
        Some(((busy - own.as_secs_f64()) / wall).max(0.0))
    }
}

/// The 1-minute load average.
pub fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Clock ticks per second of `/proc/*/stat` times (`USER_HZ`, 100 on Linux).
fn clock_ticks() -> f64 {
    100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let m = Machine::detect();
        assert!(m.nproc >= 1);
        assert!(rss_bytes().is_some_and(|b| b > 0));
        assert!(cpu_time().is_some());
        let sys = SystemCpu::now().expect("/proc/stat");
        assert!(sys.others_since(Duration::ZERO).is_some_and(|c| c >= 0.0));
        assert!(load_average().is_some());
        assert_eq!(mib(3 * 1024 * 1024 / 2), "1.5 MiB");
    }
}
