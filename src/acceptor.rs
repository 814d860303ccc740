//! Accepting connections: every shard owns one listening socket, bound to
//! the server's address with `SO_REUSEPORT`, registered in the shard's own
//! poll. The kernel spreads incoming connections over the shards' listeners
//! (by a hash of the address pair), and a shard accepts straight into its
//! slab: no acceptor thread, no hand-over through a channel, no wake-up of
//! another thread per accept batch. On this 2-core machine that hop cost a
//! context switch and an eventfd write per batch, and a thread competing with
//! the shards for the cores during connect storms.
//!
//! `TCP_NODELAY` is set on the listening sockets: Linux copies it to every
//! socket they accept, which saves a `setsockopt` per connection.
//!
//! Accept errors never stop a shard: on EMFILE/ENFILE/ENOBUFS/ENOMEM it
//! pauses accepting for [`ERROR_BACKOFF`] (the queued connections wait in the
//! kernel's backlog) and goes on.

use std::io;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Registry, Token};

use crate::metrics::Metrics;

/// At most one accept-error warning per this interval (per shard).
const WARNING_INTERVAL: Duration = Duration::from_secs(5);

/// How long to pause accepting after the process ran out of descriptors or memory.
pub const ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// Connections one shard accepts per loop turn before it serves its other
/// sockets again (the rest are accepted next turn).
const ACCEPT_BUDGET: usize = 128;

/// Listen backlog: connect storms must not be refused by a short queue.
const BACKLOG: i32 = 4096;

/// Binds `count` listeners to `addr` that share it through `SO_REUSEPORT`
/// (the first one picks the port when `addr`'s port is 0).
///
/// Before a fixed port is shared it is probed with a plain bind (no
/// `SO_REUSEPORT`), which fails while anything listens there: a second
/// server started on the same address gets "address in use" instead of
/// silently splitting the connections with the first.
pub fn bind_listeners(addr: SocketAddr, count: usize) -> io::Result<Vec<StdListener>> {
    if addr.port() != 0 {
        drop(listener(addr, false)?);
    }
    let first = listener(addr, true)?;
    let addr = first.local_addr()?;
    let mut all = Vec::with_capacity(count.max(1));
    all.push(first);
    for _ in 1..count {
        all.push(listener(addr, true)?);
    }
    Ok(all)
}

/// A non-blocking listener with SO_REUSEADDR (restart without waiting for
/// TIME_WAIT), TCP_NODELAY for the accepted sockets, a deep backlog and,
/// when `share`, SO_REUSEPORT.
fn listener(addr: SocketAddr, share: bool) -> io::Result<StdListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    if share {
        socket.set_reuse_port(true)?;
    }
    socket.set_tcp_nodelay(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// One shard's listener and its accept state.
pub struct Acceptor {
    listener: Option<TcpListener>,
    /// Accepting is paused until then after a resource error.
    paused_until: Option<Instant>,
    /// The budget ran out with connections possibly still queued.
    more: bool,
    last_warning: Option<Instant>,
}

impl Acceptor {
    /// Registers `listener` under `token` in a shard's poll.
    pub fn new(listener: StdListener, registry: &Registry, token: Token) -> io::Result<Acceptor> {
        let mut listener = TcpListener::from_std(listener);
        registry.register(&mut listener, token, Interest::READABLE)?;
        Ok(Acceptor {
            listener: Some(listener),
            paused_until: None,
            more: false,
            last_warning: None,
        })
    }

    /// True when accepting should go on without waiting for an event: the
    /// last turn's budget ran out, or a pause just ended (with edge-triggered
    /// readiness no new event comes for connections already queued).
    pub fn due(&self, now: Instant) -> bool {
        self.listener.is_some() && (self.more || self.paused_until.is_some_and(|t| now >= t))
    }

    /// How long the shard's poll may wait as far as accepting is concerned.
    pub fn timeout(&self, now: Instant) -> Option<Duration> {
        self.listener.as_ref()?;
        if self.more {
            return Some(Duration::ZERO);
        }
        self.paused_until.map(|t| t.saturating_duration_since(now))
    }

    /// Accepts up to the budget, giving each socket to `adopt`.
    pub fn accept(&mut self, now: Instant, metrics: &Metrics, mut adopt: impl FnMut(TcpStream)) {
        let Some(listener) = &self.listener else {
            return;
        };
        if self.paused_until.is_some_and(|t| now < t) {
            return;
        }
        self.paused_until = None;
        self.more = false;
        let mut accepted = 0;
        loop {
            if accepted == ACCEPT_BUDGET {
                self.more = true;
                return;
            }
            match listener.accept() {
                Ok((sock, _peer)) => {
                    accepted += 1;
                    adopt(sock);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if is_resource_error(&e) => {
                    metrics
                        .accept_errors
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if self
                        .last_warning
                        .is_none_or(|t| now.duration_since(t) >= WARNING_INTERVAL)
                    {
                        self.last_warning = Some(now);
                        log::warn!("accept: {e}; pausing accepts for {ERROR_BACKOFF:?}");
                    }
                    self.paused_until = Some(now + ERROR_BACKOFF);
                    return;
                }
                Err(e) => {
                    // ECONNABORTED and friends concern one peer only.
                    metrics
                        .accept_errors
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    log::debug!("accept: {e}");
                }
            }
        }
    }

    /// Stops accepting for good: the listener is closed (connections still
    /// in its backlog are refused by the kernel).
    pub fn close(&mut self, registry: &Registry) {
        if let Some(mut l) = self.listener.take() {
            let _ = registry.deregister(&mut l);
        }
        self.more = false;
        self.paused_until = None;
    }
}

fn is_resource_error(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc_errno::EMFILE | libc_errno::ENFILE | libc_errno::ENOBUFS | libc_errno::ENOMEM)
    )
}

/// The errno values we back off on (Linux numbering).
mod libc_errno {
    pub const ENOMEM: i32 = 12;
    pub const ENFILE: i32 = 23;
    pub const EMFILE: i32 = 24;
    pub const ENOBUFS: i32 = 105;
}
