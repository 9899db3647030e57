//! The server's resident memory and CPU time, read from `/proc`.
//!
//! The PIDs come from `--server-pid`; by default their descendants are
//! included too (Nginx workers under the master, Pushpin's services under
//! its runner). `/proc/PID/stat` of a process already sums all its
//! threads, so threads need no separate walk.

use std::collections::BTreeSet;
use std::fs;

/// Clock ticks per second used by `/proc/PID/stat` (`USER_HZ`, 100 on
/// every Linux architecture this runs on).
const USER_HZ: f64 = 100.0;

/// One reading over the server's processes.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Sample {
    /// Sum of VmRSS in KiB.
    pub rss_kib: u64,
    /// Sum of utime + stime in seconds.
    pub cpu_secs: f64,
    /// How many processes were read.
    pub procs: usize,
}

/// The processes to watch.
#[derive(Debug, Clone)]
pub struct ServerProcs {
    roots: Vec<u32>,
    descendants: bool,
}

impl ServerProcs {
    pub fn new(roots: Vec<u32>, descendants: bool) -> Self {
        Self { roots, descendants }
    }

    pub fn is_empty(&self) -> bool {
        self.roots.is_empty()
    }

    /// Reads RSS and CPU now. Processes that vanished are skipped.
    pub fn sample(&self) -> Sample {
        let mut s = Sample::default();
        for pid in self.pids() {
            let (Ok(status), Ok(stat)) = (
                fs::read_to_string(format!("/proc/{pid}/status")),
                fs::read_to_string(format!("/proc/{pid}/stat")),
            ) else {
                continue;
            };
            s.rss_kib += vm_rss_kib(&status).unwrap_or(0);
            if let Some(f) = parse_stat(&stat) {
                s.cpu_secs += (f.utime + f.stime) as f64 / USER_HZ;
            }
            s.procs += 1;
        }
        s
    }

    fn pids(&self) -> BTreeSet<u32> {
        let mut set: BTreeSet<u32> = self.roots.iter().copied().collect();
        if !self.descendants || set.is_empty() {
            return set;
        }
        // Parent links of every process, then a bounded closure walk.
        let mut parents = Vec::new();
        if let Ok(dir) = fs::read_dir("/proc") {
            for entry in dir.flatten() {
                let Some(pid) = entry
                    .file_name()
                    .to_str()
                    .and_then(|n| n.parse::<u32>().ok())
                else {
                    continue;
                };
                if let Some(f) = fs::read_to_string(format!("/proc/{pid}/stat"))
                    .ok()
                    .as_deref()
                    .and_then(parse_stat)
                {
                    parents.push((pid, f.ppid));
                }
            }
        }
        for _ in 0..16 {
            let before = set.len();
            for &(pid, ppid) in &parents {
                if set.contains(&ppid) {
                    set.insert(pid);
                }
            }
            if set.len() == before {
                break;
            }
        }
        set
    }
}

/// Fields of `/proc/PID/stat` this module needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatFields {
    pub ppid: u32,
    pub utime: u64,
    pub stime: u64,
}

/// Parses `/proc/PID/stat`. The command name (field 2) may hold spaces and
/// parentheses, so fields are counted from the last `)`.
pub fn parse_stat(stat: &str) -> Option<StatFields> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After `)`: state(3) ppid(4) ... utime(14) stime(15).
    Some(StatFields {
        ppid: f.get(1)?.parse().ok()?,
        utime: f.get(11)?.parse().ok()?,
        stime: f.get(12)?.parse().ok()?,
    })
}

/// `VmRSS:` from `/proc/PID/status`, in KiB.
pub fn vm_rss_kib(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_odd_comm() {
        let line = "1234 (my (odd) proc) S 1 1234 1234 0 -1 4194560 500 0 0 0 250 75 0 0 20 0 4 0 100 1000000 200 18446744073709551615";
        assert_eq!(
            parse_stat(line),
            Some(StatFields {
                ppid: 1,
                utime: 250,
                stime: 75
            })
        );
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(parse_stat("1 (x) S"), None);
    }

    #[test]
    fn parses_vm_rss() {
        let status = "Name:\tnginx\nVmPeak:\t  1000 kB\nVmRSS:\t    5120 kB\nThreads:\t1\n";
        assert_eq!(vm_rss_kib(status), Some(5120));
        assert_eq!(vm_rss_kib("Name: x\n"), None);
    }

    #[test]
    fn samples_own_process() {
        let me = ServerProcs::new(vec![std::process::id()], false);
        let s = me.sample();
        assert_eq!(s.procs, 1);
        assert!(s.rss_kib > 0);
        let none = ServerProcs::new(vec![u32::MAX], true).sample();
        assert_eq!(none.procs, 0);
    }
}
