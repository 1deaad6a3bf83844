//! A decompression bomb for the server's tests and load test: a valid PNG whose header says
//! `side`x`side` RGB pixels, its pixel data a few KB of deflated zeros (a real one inflates to
//! gigabytes; this one ends early, which only matters to a decoder that gets that far).

use std::io::Write;

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

pub fn png_bomb(side: u32) -> Vec<u8> {
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut chunk = |kind: &[u8], data: &[u8]| {
        let body = [kind, data].concat();
        png.extend((data.len() as u32).to_be_bytes());
        png.extend(&body);
        png.extend(crc32(&body).to_be_bytes());
    };
    let mut header = side.to_be_bytes().repeat(2);
    header.extend([8, 2, 0, 0, 0]);
    chunk(b"IHDR", &header);
    let mut zeros = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
    zeros.write_all(&vec![0u8; 4 << 20]).unwrap();
    chunk(b"IDAT", &zeros.finish().unwrap());
    chunk(b"IEND", &[]);
    png
}
