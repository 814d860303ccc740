//! The accept loop: one thread that accepts sockets until `WouldBlock` and
//! hands each to a shard, round-robin, through the bus.
//!
//! One acceptor (rather than an SO_REUSEPORT listener per shard) spreads
//! connections evenly whatever their source ports hash to, and keeps a
//! single place where accept errors are handled. Accept errors never stop
//! it: on EMFILE/ENFILE/ENOBUFS/ENOMEM it backs off briefly and goes on.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token, Waker};

use crate::bus::Command;
use crate::handle::Handle;

const LISTENER: Token = Token(0);
const STOP: Token = Token(1);

/// Sockets handed over before the shards are woken within one accept burst.
const WAKE_BATCH: usize = 32;

/// At most one accept-error warning per this interval.
const WARNING_INTERVAL: Duration = Duration::from_secs(5);

/// How long to pause accepting after the process ran out of descriptors or memory.
const ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// A handle to stop the acceptor.
pub struct AcceptorControl {
    pub waker: Arc<Waker>,
    pub stop: Arc<AtomicBool>,
}

/// Prepares the acceptor's poll; run it with [`run`] on its own thread.
pub fn prepare(listener: &mut TcpListener) -> io::Result<(Poll, AcceptorControl)> {
    let poll = Poll::new()?;
    poll.registry()
        .register(listener, LISTENER, Interest::READABLE)?;
    let waker = Arc::new(Waker::new(poll.registry(), STOP)?);
    Ok((
        poll,
        AcceptorControl {
            waker,
            stop: Arc::new(AtomicBool::new(false)),
        },
    ))
}

/// Accepts until stopped.
pub fn run(mut poll: Poll, listener: TcpListener, handle: Handle, stop: Arc<AtomicBool>) {
    let bus = &handle.core.bus;
    let metrics = &handle.core.metrics;
    let mut events = Events::with_capacity(64);
    let mut next = 0usize;
    let mut backoff: Option<Duration> = None;
    // A long descriptor shortage would otherwise log ten warnings a second.
    let mut last_warning: Option<std::time::Instant> = None;
    loop {
        if let Err(e) = poll.poll(&mut events, backoff) {
            if e.kind() != io::ErrorKind::Interrupted {
                log::error!("acceptor: poll failed: {e}");
                return;
            }
        }
        if stop.load(Ordering::Acquire) {
            return;
        }
        // Accept on any wakeup, including the end of a backoff: with
        // edge-triggered readiness no new event comes for queued connections.
        backoff = None;
        // Shards are woken once per batch of accepted sockets, not per socket.
        let mut handed = 0usize;
        loop {
            if handed == WAKE_BATCH {
                (0..bus.shard_count()).for_each(|s| bus.wake(s));
                handed = 0;
            }
            match listener.accept() {
                Ok((sock, _peer)) => {
                    let _ = sock.set_nodelay(true);
                    let shard = next % bus.shard_count();
                    next = next.wrapping_add(1);
                    if bus.send_quiet(shard, Command::Adopt(sock)) {
                        handed += 1;
                    } else {
                        log::warn!("acceptor: shard {shard} is gone");
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if is_resource_error(&e) => {
                    metrics.accept_errors.fetch_add(1, Ordering::Relaxed);
                    if last_warning.is_none_or(|t| t.elapsed() >= WARNING_INTERVAL) {
                        last_warning = Some(std::time::Instant::now());
                        log::warn!("acceptor: {e}; pausing accepts for {ERROR_BACKOFF:?}");
                    }
                    backoff = Some(ERROR_BACKOFF);
                    break;
                }
                Err(e) => {
                    // ECONNABORTED and friends concern one peer only.
                    metrics.accept_errors.fetch_add(1, Ordering::Relaxed);
                    log::debug!("acceptor: {e}");
                }
            }
        }
        if handed > 0 {
            let shards = bus.shard_count();
            (0..shards.min(handed)).for_each(|i| bus.wake(next.wrapping_sub(1 + i) % shards));
        }
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
