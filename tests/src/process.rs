//! What a test reads of a running process from /proc: memory, CPU time, open files.

/// Resident memory of `pid`, in KiB (0 if it cannot be read).
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// CPU time `pid` has used so far (user + system), in seconds; 0 if it cannot be read.
pub fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // The command name (field 2) may hold spaces; count fields after its closing ')'.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| f.get(i).and_then(|v| v.parse::<u64>().ok()))
        .sum();
    // Linux exports these in USER_HZ, which is 100 on every architecture.
    ticks as f64 / 100.0
}

/// Open file descriptors of `pid`.
pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// What each open file of a process is, for diagnostics: a path, or for a TCP socket its
/// `local -> remote state` (from /proc/PID/net/tcp and tcp6), sorted.
pub fn fd_descriptions(pid: u32) -> Vec<String> {
    let mut sockets = std::collections::HashMap::new();
    for table in ["tcp", "tcp6"] {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() > 9 {
                let port = |a: &str| {
                    a.rsplit(':')
                        .next()
                        .and_then(|p| u16::from_str_radix(p, 16).ok())
                        .unwrap_or(0)
                };
                let state = match f[3] {
                    "01" => "ESTABLISHED",
                    "06" => "TIME_WAIT",
                    "08" => "CLOSE_WAIT",
                    "0A" => "LISTEN",
                    s => s,
                };
                sockets.insert(
                    f[9].to_string(),
                    format!("tcp :{} -> :{} {state}", port(f[1]), port(f[2])),
                );
            }
        }
    }
    let mut out: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| std::fs::read_link(e.path()).ok())
                .map(|target| {
                    let t = target.to_string_lossy().into_owned();
                    t.strip_prefix("socket:[")
                        .and_then(|i| i.strip_suffix(']'))
                        .and_then(|inode| sockets.get(inode).cloned())
                        .unwrap_or(t)
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}
