//! Compressed cluster payloads (qcow2.txt, "Compressed Clusters Descriptor").
//!
//! Both decoders follow QEMU's acceptance rules exactly: the data must produce a whole cluster,
//! and anything after that (the rest of the last 512-byte sector) is ignored.

use super::header::{COMPRESSION_DEFLATE, COMPRESSION_ZSTD};

/// Decompresses `input` into all of `output`. Returns false when the data does not produce a
/// full cluster (QEMU reports EIO for those).
pub fn decompress(compression_type: u8, input: &[u8], output: &mut [u8]) -> bool {
    match compression_type {
        COMPRESSION_DEFLATE => inflate_raw(input, output),
        COMPRESSION_ZSTD => zstd_frames(input, output),
        _ => false,
    }
}

thread_local! {
    // Decoder state is reused per thread: allocating it for every cluster costs more than
    // decompressing a small cluster, and churns the allocator.
    static INFLATER: std::cell::RefCell<flate2::Decompress> =
        std::cell::RefCell::new(flate2::Decompress::new(false));
    static ZSTD: std::cell::RefCell<Option<zstd::stream::raw::Decoder<'static>>> =
        const { std::cell::RefCell::new(None) };
}

/// Raw deflate (no zlib header), as QEMU writes with `deflateInit2(-12)`. A full output buffer
/// is success even when the stream has not reached its end marker (QEMU accepts Z_BUF_ERROR).
fn inflate_raw(input: &[u8], output: &mut [u8]) -> bool {
    INFLATER.with_borrow_mut(|inflater| {
        inflater.reset(false);
        match inflater.decompress(input, output, flate2::FlushDecompress::Finish) {
            Ok(_) => inflater.total_out() == output.len() as u64,
            Err(_) => false,
        }
    })
}

/// zstd, possibly several frames back to back (QEMU's encoder may split a cluster into frames).
/// Mirrors QEMU's loop: stop with an error when a call makes no progress, and require the last
/// frame to be complete once the cluster is full.
fn zstd_frames(input: &[u8], output: &mut [u8]) -> bool {
    use zstd::stream::raw::{Decoder, Operation};
    ZSTD.with_borrow_mut(|slot| {
        if slot.is_none() {
            *slot = Decoder::new().ok();
        }
        let Some(decoder) = slot.as_mut() else {
            return false;
        };
        // A decoder left mid-frame by garbage input must start clean.
        if decoder.reinit().is_err() {
            *slot = None;
            return false;
        }
        zstd_run(decoder, input, output)
    })
}

fn zstd_run(
    decoder: &mut zstd::stream::raw::Decoder<'static>,
    input: &[u8],
    output: &mut [u8],
) -> bool {
    use zstd::stream::raw::{InBuffer, Operation, OutBuffer};
    let out_len = output.len();
    let mut inbuf = InBuffer::around(input);
    let mut outbuf = OutBuffer::around(output);
    let mut remaining_hint = 0;
    while outbuf.pos() < out_len {
        let (in_before, out_before) = (inbuf.pos(), outbuf.pos());
        match decoder.run(&mut inbuf, &mut outbuf) {
            Ok(hint) => remaining_hint = hint,
            Err(_) => return false,
        }
        if inbuf.pos() <= in_before && outbuf.pos() <= out_before {
            return false;
        }
    }
    remaining_hint == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn raw_deflate_round_trip_with_trailing_garbage() {
        let data: Vec<u8> = (0..4096u32).map(|i| (i % 251) as u8).collect();
        let mut enc = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
        enc.write_all(&data).unwrap();
        let mut compressed = enc.finish().unwrap();
        compressed.extend_from_slice(&[0xAA; 300]);
        let mut out = vec![0u8; 4096];
        assert!(decompress(COMPRESSION_DEFLATE, &compressed, &mut out));
        assert_eq!(out, data);
    }

    #[test]
    fn short_deflate_output_is_an_error() {
        let data = vec![7u8; 1000];
        let mut enc = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(&data).unwrap();
        let compressed = enc.finish().unwrap();
        let mut out = vec![0u8; 4096];
        assert!(!decompress(COMPRESSION_DEFLATE, &compressed, &mut out));
    }

    #[test]
    fn zstd_accepts_several_frames() {
        let a = zstd::bulk::compress(&[1u8; 2048], 3).unwrap();
        let b = zstd::bulk::compress(&[2u8; 2048], 3).unwrap();
        let mut input = a;
        input.extend_from_slice(&b);
        input.extend_from_slice(&[0u8; 100]);
        let mut out = vec![0u8; 4096];
        assert!(decompress(COMPRESSION_ZSTD, &input, &mut out));
        assert!(out[..2048].iter().all(|&x| x == 1) && out[2048..].iter().all(|&x| x == 2));
    }

    #[test]
    fn garbage_is_rejected_by_both_decoders() {
        let mut out = vec![0u8; 4096];
        assert!(!decompress(
            COMPRESSION_ZSTD,
            &[0xde, 0xad, 0xbe, 0xef],
            &mut out
        ));
        assert!(!decompress(COMPRESSION_DEFLATE, &[0xff; 16], &mut out));
        assert!(!decompress(9, &[], &mut out));
    }
}
