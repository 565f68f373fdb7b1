//! Chunked decoder: never panics; feeding the input whole or in pieces gives the
//! same verdict, the same data and the same end; decoded data re-encodes and
//! decodes to itself. The canonical re-framer gives the same output whole or in
//! pieces, and its output decodes to the same data.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringlb::http::chunked::ChunkedDecoder;
use ringlb::http::reframe::Reframer;

/// Re-frames `input` fed in pieces: (output, done).
fn reframe(input: &[u8], piece: usize) -> Result<(Vec<u8>, bool), ()> {
    let mut r = Reframer::new(u64::MAX);
    let (mut buf, mut out, mut fed) = (Vec::new(), Vec::new(), 0);
    while fed < input.len() && !r.is_done() {
        let end = (fed + piece).min(input.len());
        buf.extend_from_slice(&input[fed..end]);
        fed = end;
        let o = r.reframe(&mut buf).map_err(|_| ())?;
        out.extend_from_slice(&buf[..o.output]);
        buf.drain(..o.consumed);
    }
    Ok((out, r.is_done()))
}

fn decode(input: &[u8], piece: usize) -> Result<(Vec<u8>, Option<usize>), ()> {
    let mut d = ChunkedDecoder::new();
    let mut data = Vec::new();
    let mut pos = 0;
    while pos < input.len() {
        let end = (pos + piece).min(input.len());
        let mut at = pos;
        while at < end {
            let p = d.step(&input[at..end]).map_err(|_| ())?;
            data.extend_from_slice(&input[at + p.data.start..at + p.data.end]);
            at += p.consumed;
            if p.done {
                return Ok((data, Some(at)));
            }
        }
        pos = end;
    }
    Ok((data, None))
}

fuzz_target!(|input: &[u8]| {
    let (piece, body) = match input.split_first() {
        Some((p, rest)) => (usize::from(*p).max(1), rest),
        None => return,
    };
    let whole = decode(body, body.len().max(1));
    let split = decode(body, piece);
    match (&whole, &split) {
        (Ok(a), Ok(b)) => assert_eq!(a, b),
        (Err(()), Err(())) => {}
        // An error past the end in one feeding may be unseen in the other only
        // if the body ended first; both stop at the same end.
        _ => panic!("whole {whole:?} vs pieces of {piece}: {split:?}"),
    }
    if let (Ok(a), Ok(b)) = (reframe(body, body.len().max(1)), reframe(body, piece)) {
        assert_eq!(a, b, "re-framing depends on how the input was split");
        if let (Ok((data, Some(_))), (out, true)) = (&whole, &a) {
            let (again, end) = decode(out, out.len()).expect("canonical framing decodes");
            assert_eq!(&again, data);
            assert_eq!(end, Some(out.len()));
        }
    }
    if let Ok((data, Some(_))) = whole {
        let mut wire = Vec::new();
        for c in data.chunks(7) {
            wire.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
            wire.extend_from_slice(c);
            wire.extend_from_slice(b"\r\n");
        }
        wire.extend_from_slice(b"0\r\n\r\n");
        let (again, end) = decode(&wire, wire.len()).expect("re-encoded body decodes");
        assert_eq!(again, data);
        assert_eq!(end, Some(wire.len()));
    }
});
