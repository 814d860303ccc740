//! The cost of decoding a chunked body: arbitrary bytes fed to the
//! incremental decoder (`Chunked`, what a connection runs as a body
//! arrives) in fuzzer-chosen segments, down to one byte per read event.
//! Whatever the bytes and the split, the work done (bytes examined or
//! copied, counted by the decoder) stays linear in the input: re-decoding
//! from the start on every read made a trickled body quadratic.
//!
//! Input: byte 0 is the segment size (0: the whole input at once), byte 1
//! picks the body limit (× 64 bytes, 255: 1 MiB); the rest is the body.

use wsedge::testbed::{decode_chunked, Chunked};

/// Work allowed per input byte: a line's CRLF search looks back one byte
/// across calls, and data is copied once.
const WORK_PER_BYTE: usize = 3;

/// One fuzz input.
pub fn run(data: &[u8]) {
    let [seg, limit, body @ ..] = data else {
        return;
    };
    let max = match limit {
        255 => 1 << 20,
        n => *n as usize * 64,
    };
    let seg = if *seg == 0 {
        body.len().max(1)
    } else {
        *seg as usize
    };
    let mut c = Chunked::default();
    let mut end = 0;
    let mut outcome = Ok(false);
    while end < body.len() {
        end = (end + seg).min(body.len());
        outcome = c.advance(&body[..end], max);
        if !matches!(outcome, Ok(false)) {
            break;
        }
    }
    assert!(
        c.work() <= WORK_PER_BYTE * end + 2,
        "decoding {end} bytes in segments of {seg} cost {}",
        c.work()
    );
    // Split or whole, the decoder says the same.
    let whole = decode_chunked(&body[..end], max);
    match outcome {
        Ok(true) => {
            let (decoded, used) = c.finish();
            assert_eq!(whole, Ok(Some((decoded, used))));
        }
        Ok(false) => assert_eq!(whole, Ok(None)),
        Err(e) => assert_eq!(whole.map_err(|w| w.status()), Err(e.status())),
    }
}
