//! What this host gives a ringlb process: sysctls from `/proc/sys`, the
//! process's rlimits, the kernel version and whether an io_uring ring can be
//! created here (the probe builds and drops one).

use std::io;

/// The host facts `assess` compares with a config's needs.
#[derive(Debug, Clone)]
pub struct Host {
    pub nofile_hard: u64,
    pub nr_open: u64,
    pub file_max: u64,
    pub port_range: (u32, u32),
    pub tw_reuse: u64,
    pub somaxconn: u64,
    pub syn_backlog: u64,
    /// `kernel.io_uring_disabled`, where the kernel has it.
    pub io_uring_disabled: Option<u64>,
    /// Creating a ring of the config's size: Ok, or why not.
    pub io_uring_probe: Result<(), String>,
    /// RLIMIT_MEMLOCK in bytes (`u64::MAX`: unlimited).
    pub memlock: u64,
    pub kernel: (u32, u32),
}

impl Host {
    /// Reads this machine, probing a ring of `ring_entries`.
    pub fn read(ring_entries: u32) -> Host {
        let (nofile_hard, memlock) = (hard_limit(libc::RLIMIT_NOFILE), soft_limit_memlock());
        Host {
            nofile_hard,
            nr_open: sysctl("fs/nr_open").unwrap_or(1_048_576),
            file_max: sysctl("fs/file-max").unwrap_or(u64::MAX),
            port_range: port_range().unwrap_or((32768, 60999)),
            tw_reuse: sysctl("net/ipv4/tcp_tw_reuse").unwrap_or(2),
            somaxconn: sysctl("net/core/somaxconn").unwrap_or(4096),
            syn_backlog: sysctl("net/ipv4/tcp_max_syn_backlog").unwrap_or(1024),
            io_uring_disabled: sysctl("kernel/io_uring_disabled"),
            io_uring_probe: probe_ring(ring_entries).map_err(|e| e.to_string()),
            memlock,
            kernel: kernel_version().unwrap_or((0, 0)),
        }
    }

    pub fn memlock_text(&self) -> String {
        if self.memlock == u64::MAX {
            "unlimited".into()
        } else {
            self.memlock.to_string()
        }
    }
}

fn read_proc(path: &str) -> Option<String> {
    std::fs::read_to_string(format!("/proc/sys/{path}")).ok()
}

fn sysctl(path: &str) -> Option<u64> {
    read_proc(path)?.trim().parse().ok()
}

fn port_range() -> Option<(u32, u32)> {
    let text = read_proc("net/ipv4/ip_local_port_range")?;
    let mut it = text.split_whitespace().map(|v| v.parse().ok());
    Some((it.next()??, it.next()??))
}

fn kernel_version() -> Option<(u32, u32)> {
    let release = read_proc("kernel/osrelease")?;
    let mut it = release.trim().split(['.', '-']).map(|v| v.parse().ok());
    Some((it.next()??, it.next()??))
}

fn limit(resource: libc::__rlimit_resource_t) -> libc::rlimit {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into a struct we own; on failure it stays zero.
    unsafe { libc::getrlimit(resource, &mut lim) };
    lim
}

fn unlimited(v: libc::rlim_t) -> u64 {
    if v == libc::RLIM_INFINITY {
        u64::MAX
    } else {
        v
    }
}

fn hard_limit(resource: libc::__rlimit_resource_t) -> u64 {
    unlimited(limit(resource).rlim_max)
}

fn soft_limit_memlock() -> u64 {
    unlimited(limit(libc::RLIMIT_MEMLOCK).rlim_cur)
}

fn probe_ring(entries: u32) -> io::Result<()> {
    io_uring::IoUring::new(entries).map(drop)
}
