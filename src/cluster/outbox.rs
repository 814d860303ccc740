//! The queue between the callers that publish (REST calls, the library
//! handle) and the publisher thread, bounded in packets and in bytes.
//!
//! A packet's bytes count from the moment it is queued until the publisher
//! says it is done with them ([`Outbox::release`], after the write to Redis
//! or after dropping them), so the bound covers the batch being written as
//! well as the queue. Pushing never blocks: a packet over either bound is
//! refused, and the caller counts it as dropped. This module never talks to
//! Redis.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

/// One packet for the publisher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Outgoing {
    pub packet: Vec<u8>,
    /// The streams Redis numbers it on (`super::sequence::streams`); empty:
    /// published as it is.
    pub streams: Vec<String>,
}

impl Outgoing {
    #[cfg(test)]
    pub fn plain(packet: Vec<u8>) -> Outgoing {
        Outgoing {
            packet,
            streams: Vec::new(),
        }
    }

    /// Bytes it holds.
    pub fn size(&self) -> usize {
        self.packet.len() + self.streams.iter().map(String::len).sum::<usize>()
    }
}

/// A bounded queue of encoded packets.
#[derive(Debug)]
pub(crate) struct Outbox {
    tx: Sender<Outgoing>,
    rx: Receiver<Outgoing>,
    /// Bytes of the packets queued or held by the publisher.
    bytes: AtomicUsize,
    max_bytes: usize,
}

impl Outbox {
    pub fn new(max_packets: usize, max_bytes: usize) -> Outbox {
        let (tx, rx) = crossbeam_channel::bounded(max_packets);
        Outbox {
            tx,
            rx,
            bytes: AtomicUsize::new(0),
            max_bytes,
        }
    }

    /// Queues `packet` unless that passes either bound; never blocks. A
    /// packet larger than the byte bound on its own is taken when nothing
    /// else is held, so that it can still go out.
    pub fn push(&self, packet: Outgoing) -> bool {
        let n = packet.size();
        let held = self.bytes.fetch_add(n, Relaxed);
        if held > 0 && held.saturating_add(n) > self.max_bytes {
            self.bytes.fetch_sub(n, Relaxed);
            return false;
        }
        if self.tx.try_send(packet).is_err() {
            self.bytes.fetch_sub(n, Relaxed);
            return false;
        }
        true
    }

    /// The next packet, waiting at most `wait`. Its bytes stay counted until
    /// [`Outbox::release`].
    pub fn recv_timeout(&self, wait: Duration) -> Result<Outgoing, RecvTimeoutError> {
        self.rx.recv_timeout(wait)
    }

    /// The next packet if one is queued. Its bytes stay counted until
    /// [`Outbox::release`].
    pub fn try_recv(&self) -> Option<Outgoing> {
        self.rx.try_recv().ok()
    }

    /// Packets queued (not yet taken by the publisher).
    pub fn len(&self) -> usize {
        self.rx.len()
    }

    /// The publisher is done with `n` bytes of packets (written or dropped).
    pub fn release(&self, n: usize) {
        self.bytes.fetch_sub(n, Relaxed);
    }

    /// Bytes queued or held by the publisher.
    #[cfg(test)]
    pub fn held_bytes(&self) -> usize {
        self.bytes.load(Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_are_bounded_until_the_publisher_releases_them() {
        let o = Outbox::new(100, 1000);
        assert!(o.push(Outgoing::plain(vec![0; 600])));
        assert!(o.push(Outgoing::plain(vec![0; 400])));
        assert!(
            !o.push(Outgoing::plain(vec![0; 1])),
            "1000 bytes held: full"
        );
        // Taking a packet does not free its bytes: it is still being written.
        let p = o.try_recv().expect("queued");
        assert!(!o.push(Outgoing::plain(vec![0; 1])));
        assert_eq!(o.held_bytes(), 1000);
        o.release(p.size());
        assert!(
            !o.push(Outgoing::plain(vec![0; 601])),
            "400 held + 601 > 1000"
        );
        assert!(o.push(Outgoing::plain(vec![0; 600])));
        assert_eq!(o.held_bytes(), 1000);
    }

    #[test]
    fn packets_are_bounded_too_and_a_huge_packet_goes_alone() {
        let o = Outbox::new(2, 1 << 20);
        assert!(o.push(Outgoing::plain(vec![1])));
        assert!(o.push(Outgoing::plain(vec![2])));
        assert!(!o.push(Outgoing::plain(vec![3])), "two packets queued");
        assert_eq!(o.held_bytes(), 2, "a refused packet is not counted");
        for _ in 0..2 {
            let p = o.try_recv().expect("queued");
            o.release(p.size());
        }
        assert!(o.try_recv().is_none());
        assert!(
            o.push(Outgoing::plain(vec![0; 2 << 20])),
            "over the bound, but alone"
        );
        assert!(!o.push(Outgoing::plain(vec![0; 1])));
        let p = o.recv_timeout(Duration::ZERO).expect("queued");
        o.release(p.size());
        assert_eq!(o.held_bytes(), 0);
    }
}
