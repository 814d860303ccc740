//! The kernel's floor under broadcast latency on this machine: a "server"
//! that does nothing but write one small message to each of N loopback TCP
//! sockets (2 writer threads, like 2 shards), and one reader thread (like
//! the load tool) that reads them and measures when each arrived. No
//! WebSocket, no JSON, no queues: whatever latency this shows, no server can
//! beat on the same machine, because it is the loopback TCP send and receive
//! path alone.
//!
//! ```sh
//! cargo run --release --example loopback_floor -- [CONNECTIONS] [ROUNDS_PER_S] [SECONDS]
//! cargo run --release --example loopback_floor -- 9000 10 10
//! ```
//!
//! Prints, per round, how long the writers took to get the message into
//! every socket, and over all deliveries p50/p99/max from the round's start
//! to each arrival. Both ends share one process, so at most about half the
//! open-file limit of connections fit. Loopback only; bounded in rounds and
//! time.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use mio::{Events, Interest, Poll, Token};

const MESSAGE: [u8; 70] = [b'x'; 70];

fn main() -> io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, d: f64| args.get(i).and_then(|s| s.parse().ok()).unwrap_or(d);
    let n = arg(0, 9000.0) as usize;
    let rate = arg(1, 10.0).clamp(0.1, 1000.0);
    let secs = arg(2, 10.0).clamp(1.0, 120.0);
    let rounds = (rate * secs) as usize;

    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let mut servers = Vec::with_capacity(n);
    let mut clients = Vec::with_capacity(n);
    for _ in 0..n {
        let c = TcpStream::connect(addr)?;
        let (s, _) = listener.accept()?;
        s.set_nodelay(true)?;
        c.set_nonblocking(true)?;
        servers.push(s);
        clients.push(mio::net::TcpStream::from_std(c));
    }
    eprintln!("{n} loopback connections open; {rounds} rounds at {rate}/s");

    // One start instant per round, shared by writers and reader.
    let epoch = Instant::now();
    let period = Duration::from_secs_f64(1.0 / rate);
    let start_of = move |round: usize| epoch + Duration::from_millis(500) + period * round as u32;

    // The reader: one thread, epoll over every client socket.
    let reader = std::thread::spawn(move || -> io::Result<Vec<f64>> {
        let mut poll = Poll::new()?;
        for (i, c) in clients.iter_mut().enumerate() {
            poll.registry().register(c, Token(i), Interest::READABLE)?;
        }
        let mut events = Events::with_capacity(1024);
        let mut latencies = Vec::with_capacity(n * rounds);
        let mut got = vec![0usize; n];
        let mut buf = [0u8; 4096];
        let deadline = start_of(rounds) + Duration::from_secs(10);
        while latencies.len() < n * rounds && Instant::now() < deadline {
            poll.poll(&mut events, Some(Duration::from_millis(100)))?;
            let now = Instant::now();
            for ev in events.iter() {
                let i = ev.token().0;
                loop {
                    match clients[i].read(&mut buf) {
                        Ok(0) => break,
                        Ok(k) => {
                            // Messages are 70 bytes: count whole ones, each
                            // stamped against the start of its round.
                            let before = got[i] / MESSAGE.len();
                            got[i] += k;
                            for r in before..got[i] / MESSAGE.len() {
                                let lat = now.saturating_duration_since(start_of(r));
                                latencies.push(lat.as_secs_f64() * 1e3);
                            }
                            if k < buf.len() {
                                break; // drained: skip the recv that would say WouldBlock
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        Ok(latencies)
    });

    // Two writers, each with half of the server-side sockets.
    let half = servers.len().div_ceil(2);
    let second: Vec<TcpStream> = servers.split_off(half);
    let barrier = Arc::new(Barrier::new(2));
    let writer = |mut socks: Vec<TcpStream>, barrier: Arc<Barrier>| {
        std::thread::spawn(move || -> io::Result<Vec<f64>> {
            let mut took = Vec::with_capacity(rounds);
            for r in 0..rounds {
                barrier.wait();
                let at = start_of(r);
                if let Some(wait) = at.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                for s in &mut socks {
                    s.write_all(&MESSAGE)?;
                }
                took.push(at.elapsed().as_secs_f64() * 1e3);
            }
            Ok(took)
        })
    };
    let w1 = writer(servers, barrier.clone());
    let w2 = writer(second, barrier);
    let join = |h: std::thread::JoinHandle<io::Result<Vec<f64>>>| {
        h.join().map_err(|_| io::Error::other("thread panicked"))?
    };
    let t1 = join(w1)?;
    let t2 = join(w2)?;
    let mut lat = join(reader)?;

    let fanout: Vec<f64> = t1.iter().zip(&t2).map(|(a, b)| a.max(*b)).collect();
    let mut sorted = fanout.clone();
    sorted.sort_by(f64::total_cmp);
    lat.sort_by(f64::total_cmp);
    let pct = |v: &[f64], p: f64| v.get(((v.len() as f64 - 1.0) * p) as usize).copied();
    // A round that starts late (the one before overran its period) counts
    // from its scheduled start, so rounds that do not fit in the period
    // pile up, as broadcasts would in a server.
    let min = pct(&sorted, 0.0).unwrap_or(f64::NAN);
    println!(
        "writes of one round into {n} sockets (2 threads): min {min:.1} ms ({:.1} µs per write per thread), median {:.1} ms, max {:.1} ms",
        min * 1e3 / half as f64,
        pct(&sorted, 0.5).unwrap_or(f64::NAN),
        pct(&sorted, 1.0).unwrap_or(f64::NAN)
    );
    println!(
        "arrival after round start ({} of {} messages): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        lat.len(),
        n * rounds,
        pct(&lat, 0.5).unwrap_or(f64::NAN),
        pct(&lat, 0.99).unwrap_or(f64::NAN),
        pct(&lat, 1.0).unwrap_or(f64::NAN)
    );
    Ok(())
}
