//! The chunked decoder never panics, never claims more bytes than it was
//! given, and gives the same data and verdict however the input is split.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tunnel_lib::http1::{ChunkStep, ChunkedDecoder};

fn decode(input: &[u8], cuts: &[usize]) -> Result<(Vec<u8>, bool), ()> {
    let mut dec = ChunkedDecoder::new(64, 256);
    let mut data = Vec::new();
    let mut start = 0;
    for &end in cuts.iter().chain(std::iter::once(&input.len())) {
        let end = end.clamp(start, input.len());
        let mut piece = &input[start..end];
        start = end;
        while !piece.is_empty() && !dec.is_done() {
            let n = match dec.step(piece).map_err(|_| ())? {
                ChunkStep::Data(n) => {
                    data.extend_from_slice(&piece[..n]);
                    n
                }
                ChunkStep::Framing(n) | ChunkStep::Done(n) => n,
            };
            assert!(n <= piece.len());
            piece = &piece[n..];
        }
    }
    Ok((data, dec.is_done()))
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let cuts = [data[0] as usize, data[0] as usize + data[1] as usize];
    let input = &data[2..];
    let whole = decode(input, &[]);
    let split = decode(input, &cuts);
    assert_eq!(whole, split);
});
