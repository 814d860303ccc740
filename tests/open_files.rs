//! The server raises its own open-file soft limit to the hard limit at
//! start (docs/PROTOCOL.md §7.5): a default soft limit of 1,024 would cap a
//! server sized for 100,000 connections at about a thousand. Alone in its
//! test binary, since the limit belongs to the whole process and is raised
//! once per process.

mod common;

fn nofile() -> libc::rlimit {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct it is given, which outlives the call.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
    lim
}

#[test]
fn starting_a_server_raises_the_soft_open_file_limit_to_the_hard_one() {
    let hard = nofile().rlim_max;
    assert!(hard > 64, "hard limit {hard} leaves nothing to raise");
    let low = libc::rlimit {
        rlim_cur: 64,
        rlim_max: hard,
    };
    // SAFETY: setrlimit reads the struct it is given.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &low) }, 0);
    assert_eq!(nofile().rlim_cur, 64);

    let srv = common::start(|_| {});
    assert_eq!(nofile().rlim_cur, hard);
    // And it serves.
    let (status, _, body) = common::http_raw(srv.addr, b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!((status, body.as_slice()), (200, b"ok".as_slice()));
}
