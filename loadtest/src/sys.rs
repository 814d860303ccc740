//! What the tool asks of Linux: the open-file limit, a process's memory and
//! CPU time from `/proc`, which process listens on a port, and the client
//! sockets (source address, receive buffer, non-blocking connect).

use std::fs;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::time::SystemTime;

use socket2::{Domain, Socket, Type};

/// Open-file limits after raising the soft one to the hard one.
#[derive(Debug, Clone, Copy)]
pub struct FdLimit {
    pub soft_before: u64,
    pub soft: u64,
    pub hard: u64,
}

/// Raises this process's `RLIMIT_NOFILE` soft limit to its hard limit.
/// Children spawned afterwards inherit it.
pub fn raise_fd_limit() -> io::Result<FdLimit> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let before = lim.rlim_cur;
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(FdLimit {
        soft_before: before,
        soft: lim.rlim_cur,
        hard: lim.rlim_max,
    })
}

/// `recv(2)` into `buf`: what `read(2)` does on a socket minus the VFS layer
/// (file-position lock), one call per delivery on the tool's hot path.
pub fn recv(fd: std::os::fd::RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: the kernel writes at most `buf.len()` bytes into `buf`, which
    // we borrow mutably for the call; `fd` is a socket the caller owns.
    let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// `IP_BIND_ADDRESS_NO_PORT`: bind() picks the source address only; the
/// port is chosen at connect() with the whole 4-tuple in view, so one source
/// address can reach the ~28k ephemeral ports per destination.
pub fn bind_address_no_port(fd: std::os::fd::RawFd) {
    const IP_BIND_ADDRESS_NO_PORT: libc::c_int = 24;
    let one: libc::c_int = 1;
    // SAFETY: a plain setsockopt on a socket we own; failure is harmless.
    unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_IP,
            IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// The `i`-th of `k` loopback source addresses, 127.0.0.1 … 127.0.0.K in
/// turn.
pub fn source_addr(i: usize, k: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, 1 + (i % k.clamp(1, 254)) as u8)
}

/// A non-blocking TCP socket from the start (no `fcntl`s), bound to the
/// loopback address `source` (the port chosen at connect, see
/// [`bind_address_no_port`]), its connect to `target` under way. `rcvbuf`
/// sets the receive buffer first, while it still decides the window.
pub fn connect_from(
    source: Ipv4Addr,
    target: SocketAddr,
    rcvbuf: Option<usize>,
) -> io::Result<mio::net::TcpStream> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM.nonblocking(), None)?;
    if let Some(bytes) = rcvbuf {
        socket.set_recv_buffer_size(bytes)?;
    }
    bind_address_no_port(socket.as_raw_fd());
    socket.bind(&SocketAddr::V4(SocketAddrV4::new(source, 0)).into())?;
    match socket.connect(&target.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(mio::net::TcpStream::from_std(socket.into()))
}

/// After a readiness event on a socket from [`connect_from`]: `Ok(true)`
/// once connected, `Ok(false)` while the connect goes on, `Err` when it
/// failed (refused, unreachable).
pub fn connect_done(stream: &mio::net::TcpStream) -> io::Result<bool> {
    if let Some(e) = stream.take_error()? {
        return Err(e);
    }
    match stream.peer_addr() {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(false),
        Err(e) => Err(e),
    }
}

/// Asks the kernel to kill this process when its parent dies (a child
/// server must never outlive the tool).
pub fn die_with_parent() {
    // SAFETY: prctl with integer arguments.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
    }
}

pub fn send_signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) on a pid we spawned.
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

/// Resident memory of a process in bytes (`VmRSS` of `/proc/<pid>/status`).
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status_kib(&status, "VmRSS:").map(|k| k * 1024)
}

/// Resident memory of processes together: `None` without any, or when
/// one cannot be read.
pub fn rss_sum(pids: &[u32]) -> Option<u64> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|p| rss_bytes(*p)).sum()
}

fn status_kib(status: &str, key: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with(key))?;
    line[key.len()..].split_whitespace().next()?.parse().ok()
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no memory effects.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// `utime + stime` in seconds from a `stat` line (fields 14 and 15, counted
/// after the parenthesized command name, which may contain spaces).
pub fn stat_cpu_secs(stat: &str) -> Option<f64> {
    let after = &stat[stat.rfind(')')? + 1..];
    let mut fields = after.split_whitespace();
    // after ')' come field 3 (state) onwards: utime is field 14 → index 11
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / clock_ticks())
}

fn stat_comm(stat: &str) -> Option<&str> {
    Some(&stat[stat.find('(')? + 1..stat.rfind(')')?])
}

/// CPU seconds (user + system) a process has used.
pub fn cpu_secs(pid: u32) -> Option<f64> {
    stat_cpu_secs(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// CPU seconds of the threads of `pid` whose name starts with one of
/// `prefixes` (in-process mode: the server's threads are named `wsedge-…`).
pub fn thread_cpu_secs(pid: u32, prefixes: &[&str]) -> f64 {
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0.0;
    };
    let mut total = 0.0;
    for entry in dir.flatten().take(100_000) {
        let Ok(stat) = fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        if let Some(comm) = stat_comm(&stat) {
            if prefixes.iter().any(|p| comm.starts_with(p)) {
                total += stat_cpu_secs(&stat).unwrap_or(0.0);
            }
        }
    }
    total
}

/// The soft open-file limit of another process, from `/proc/<pid>/limits`.
pub fn fd_soft_limit_of(pid: u32) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The process that listens on TCP `port` (to measure a server given by
/// `--target` without `--server-pid`): the socket's inode from
/// `/proc/net/tcp{,6}`, then the process holding `socket:[inode]`.
pub fn find_listener_pid(port: u16) -> Option<u32> {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        if let Ok(text) = fs::read_to_string(table) {
            inodes.extend(listening_inodes(&text, port));
        }
    }
    if inodes.is_empty() {
        return None;
    }
    let wanted: Vec<String> = inodes.iter().map(|i| format!("socket:[{i}]")).collect();
    for proc_entry in fs::read_dir("/proc").ok()?.flatten().take(1_000_000) {
        let name = proc_entry.file_name();
        let Some(pid) = name.to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(fds) = fs::read_dir(proc_entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten().take(2_000_000) {
            if let Ok(link) = fs::read_link(fd.path()) {
                if wanted.iter().any(|w| link.as_os_str() == w.as_str()) {
                    return Some(pid);
                }
            }
        }
    }
    None
}

/// Inodes of sockets in state LISTEN (`0A`) on `port` in a `/proc/net/tcp` table.
fn listening_inodes(table: &str, port: u16) -> Vec<u64> {
    let mut out = Vec::new();
    for line in table.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 10 || f[3] != "0A" {
            continue;
        }
        let Some(p) = f[1].rsplit(':').next() else {
            continue;
        };
        if u16::from_str_radix(p, 16).ok() == Some(port) {
            if let Ok(inode) = f[9].parse() {
                out.push(inode);
            }
        }
    }
    out
}

/// Busy CPU seconds of the whole machine (all CPUs, from `/proc/stat`):
/// with the server's and the tool's own, it tells how much other
/// processes took from the run.
pub fn machine_busy_secs() -> Option<f64> {
    let text = fs::read_to_string("/proc/stat").ok()?;
    let line = text.lines().next()?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...
    if v.len() < 8 {
        return None;
    }
    let busy = v[0] + v[1] + v[2] + v[5] + v[6] + v[7];
    Some(busy as f64 / clock_ticks())
}

/// The 1-minute load average.
pub fn loadavg() -> Option<f64> {
    fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Microseconds since the Unix epoch (the clock the payload's `t` uses; the
/// tool and the server share the machine, so one clock serves both ends).
pub fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_spaces_in_the_name() {
        let stat = "1234 (my (odd) proc) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 1 0 100 1000 200";
        let secs = stat_cpu_secs(stat).unwrap();
        assert!((secs - 300.0 / clock_ticks()).abs() < 1e-9);
        assert_eq!(stat_comm(stat), Some("my (odd) proc"));
    }

    #[test]
    fn reads_our_own_figures() {
        let me = std::process::id();
        assert!(rss_bytes(me).unwrap() > 0);
        assert!(cpu_secs(me).is_some());
        assert!(fd_soft_limit_of(me).unwrap() > 0);
        assert!(machine_busy_secs().unwrap() > 0.0);
        assert!(loadavg().is_some());
    }

    #[test]
    fn finds_the_listener_of_a_port() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        assert_eq!(find_listener_pid(port), Some(std::process::id()));
    }

    #[test]
    fn listening_inode_from_a_table() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 0100007F:0BB8 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0000000000000000 100 0 0 10 0\n   1: 0100007F:0BB8 0100007F:9C40 01 00000000:00000000 00:00000000 00000000     0        0 4343 1\n";
        assert_eq!(listening_inodes(table, 3000), vec![4242]);
        assert!(listening_inodes(table, 3001).is_empty());
    }
}
