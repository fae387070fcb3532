//! CPU time and resident memory of a local process, from /proc.

#[derive(Debug, Clone, Copy)]
pub struct ProcStat {
    pub cpu_secs: f64,
    pub rss_kib: u64,
}

impl ProcStat {
    pub fn read(pid: u32) -> Option<ProcStat> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Fields after the command name (which may contain spaces) start after ") ".
        let rest = &stat[stat.rfind(')')? + 2..];
        let f: Vec<&str> = rest.split(' ').collect();
        // utime and stime are fields 14 and 15 of the whole line: 12 and 13 here.
        let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let rss_kib = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())?;
        // USER_HZ is 100 on Linux.
        Some(ProcStat {
            cpu_secs: ticks as f64 / 100.0,
            rss_kib,
        })
    }
}
