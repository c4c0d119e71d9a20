//! Raw camera pixel formats (YUYV, NV12, GREY, RGB) converted to RGB. MJPEG frames travel as
//! encoded bytes and go through the normal image decoder, once [`mjpeg_frame`] has made a
//! self-contained JPEG of the capture buffer.
//!
//! Colour: the Y′CbCr formats are read as ITU-R BT.601 with limited ("studio") range, V4L2's
//! default quantisation for every non-RGB format: Y′ spans 16–235 and Cb/Cr 16–240 around 128.
//! Output is full-range RGB; samples outside the legal range (sensors do produce them) clamp to
//! 0 or 255 rather than wrap. GREY is limited-range luma by the same rule, so every grey level
//! maps to R = G = B. A driver that reports full-range quantisation would need a second table;
//! nokhwa does not pass the driver's quantisation through, so the default is what can be honoured.
//!
//! Layout: rows are taken as tightly packed (bytes per line = width × bytes per pixel), since
//! nokhwa does not report the driver's line stride. A buffer longer than the frame is accepted
//! and its tail ignored (drivers round the buffer size up); a shorter one is an error.

use crate::error::{ExitClass, HasExitClass};
use std::fmt;

/// Pixel layout of a raw frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PixelFormat {
    /// Packed 4:2:2, Y0 U Y1 V.
    Yuyv,
    /// Planar Y, then interleaved UV at half resolution.
    Nv12,
    /// Packed 8-bit R G B.
    Rgb,
    /// 8-bit luma only.
    Grey,
}

impl fmt::Display for PixelFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PixelFormat::Yuyv => "YUYV",
            PixelFormat::Nv12 => "NV12",
            PixelFormat::Rgb => "RGB",
            PixelFormat::Grey => "GREY",
        })
    }
}

/// One captured frame in a raw pixel format.
#[derive(Debug, Clone)]
pub struct RawFrame {
    pub format: PixelFormat,
    pub width: u32,
    pub height: u32,
    pub data: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    #[error("{format} frame {width}×{height}: {msg}")]
    Malformed {
        format: PixelFormat,
        width: u32,
        height: u32,
        msg: String,
    },
}

impl HasExitClass for ConvertError {
    fn exit_class(&self) -> ExitClass {
        ExitClass::Io
    }
}

/// Bytes a tightly packed `format` frame of `width`×`height` occupies; an error for sizes the
/// format cannot represent (odd widths in 4:2:2, odd sides in 4:2:0, empty or overflowing).
pub fn frame_len(format: PixelFormat, width: u32, height: u32) -> Result<usize, ConvertError> {
    let bad = |msg: &str| ConvertError::Malformed {
        format,
        width,
        height,
        msg: msg.to_string(),
    };
    if width == 0 || height == 0 {
        return Err(bad("empty frame"));
    }
    let (w, h) = (width as usize, height as usize);
    let pixels = w
        .checked_mul(h)
        .ok_or_else(|| bad("frame size overflows"))?;
    let len = match format {
        PixelFormat::Yuyv => {
            if width % 2 != 0 {
                return Err(bad("width must be even (YUYV pairs two pixels per Cb/Cr)"));
            }
            pixels.checked_mul(2)
        }
        PixelFormat::Nv12 => {
            if width % 2 != 0 || height % 2 != 0 {
                return Err(bad(
                    "width and height must be even (NV12 shares Cb/Cr per 2×2 block)",
                ));
            }
            pixels.checked_add(pixels / 2)
        }
        PixelFormat::Rgb => pixels.checked_mul(3),
        PixelFormat::Grey => Some(pixels),
    };
    len.ok_or_else(|| bad("frame size overflows"))
}

/// Convert a raw frame to RGB.
pub fn to_rgb(frame: &RawFrame) -> Result<image::RgbImage, ConvertError> {
    let need = frame_len(frame.format, frame.width, frame.height)?;
    if frame.data.len() < need {
        return Err(ConvertError::Malformed {
            format: frame.format,
            width: frame.width,
            height: frame.height,
            msg: format!("{} bytes, need {need}", frame.data.len()),
        });
    }
    let (w, h) = (frame.width as usize, frame.height as usize);
    let src = &frame.data[..need];
    let mut out = vec![0u8; w * h * 3];
    match frame.format {
        PixelFormat::Yuyv => yuyv_to_rgb(src, &mut out),
        PixelFormat::Nv12 => nv12_to_rgb(src, w, h, &mut out),
        PixelFormat::Grey => grey_to_rgb(src, &mut out),
        PixelFormat::Rgb => out.copy_from_slice(src),
    }
    image::RgbImage::from_raw(frame.width, frame.height, out).ok_or(ConvertError::Malformed {
        format: frame.format,
        width: frame.width,
        height: frame.height,
        msg: "RGB buffer does not match the frame size".into(),
    })
}

// BT.601 limited range → full-range RGB in 16.16 fixed point:
//   R = 255/219 (Y′−16) + 255/112 (1−Kr) (Cr−128)
//   G = 255/219 (Y′−16) − 255/112 (1−Kb) Kb/Kg (Cb−128) − 255/112 (1−Kr) Kr/Kg (Cr−128)
//   B = 255/219 (Y′−16) + 255/112 (1−Kb) (Cb−128)
// with Kr = 0.299, Kb = 0.114, Kg = 1 − Kr − Kb. The largest intermediate (|Y′ term| + |Cb
// term| at the extremes) is about 3.5·10⁷, well inside i32.
const FIX_SHIFT: u32 = 16;
const FIX_HALF: i32 = 1 << (FIX_SHIFT - 1);
const Y_MUL: i32 = 76_309; // 1.164383 · 2¹⁶
const R_CR: i32 = 104_597; // 1.596027 · 2¹⁶
const G_CB: i32 = 25_675; // 0.391762 · 2¹⁶
const G_CR: i32 = 53_279; // 0.812968 · 2¹⁶
const B_CB: i32 = 132_201; // 2.017232 · 2¹⁶

#[inline]
fn clamp_u8(v: i32) -> u8 {
    (v >> FIX_SHIFT).clamp(0, 255) as u8
}

/// The chroma contribution to (R, G, B) of one Cb/Cr pair, shared by the pixels it covers.
#[inline]
fn chroma(cb: u8, cr: u8) -> (i32, i32, i32) {
    let (u, v) = (i32::from(cb) - 128, i32::from(cr) - 128);
    (R_CR * v, -G_CB * u - G_CR * v, B_CB * u)
}

#[inline]
fn put(y: u8, (r, g, b): (i32, i32, i32), out: &mut [u8]) {
    let l = Y_MUL * (i32::from(y) - 16) + FIX_HALF;
    out[0] = clamp_u8(l + r);
    out[1] = clamp_u8(l + g);
    out[2] = clamp_u8(l + b);
}

fn yuyv_to_rgb(src: &[u8], out: &mut [u8]) {
    for (p, o) in src.chunks_exact(4).zip(out.chunks_exact_mut(6)) {
        let c = chroma(p[1], p[3]);
        let (left, right) = o.split_at_mut(3);
        put(p[0], c, left);
        put(p[2], c, right);
    }
}

fn nv12_to_rgb(src: &[u8], w: usize, h: usize, out: &mut [u8]) {
    let (luma, uv) = src.split_at(w * h);
    for (row, (ys, o)) in luma
        .chunks_exact(w)
        .zip(out.chunks_exact_mut(w * 3))
        .enumerate()
    {
        let uv_row = &uv[(row / 2) * w..(row / 2) * w + w];
        for ((y2, c2), o2) in ys
            .chunks_exact(2)
            .zip(uv_row.chunks_exact(2))
            .zip(o.chunks_exact_mut(6))
        {
            let c = chroma(c2[0], c2[1]);
            let (left, right) = o2.split_at_mut(3);
            put(y2[0], c, left);
            put(y2[1], c, right);
        }
    }
}

fn grey_to_rgb(src: &[u8], out: &mut [u8]) {
    for (&y, o) in src.iter().zip(out.chunks_exact_mut(3)) {
        let v = clamp_u8(Y_MUL * (i32::from(y) - 16) + FIX_HALF);
        o.fill(v);
    }
}

/// An MJPEG capture buffer as a self-contained JPEG: the stream cut at its EOI, with the
/// standard Huffman tables inserted when the frame carries none.
///
/// A V4L2 MJPEG buffer is as large as the driver's worst case and holds stale bytes after the
/// frame; copying only the stream saves most of a megabyte per HD frame. Many UVC cameras also
/// omit the DHT segment and rely on the tables of the JPEG specification (Annex K.3, as the
/// AVI1 MJPEG convention allows); a plain JPEG decoder refuses such a frame, so they are added
/// here. A buffer that does not parse as a JPEG is returned whole, for the decoder to report.
pub fn mjpeg_frame(buf: &[u8]) -> Vec<u8> {
    match jpeg_layout(buf) {
        None => buf.to_vec(),
        Some(l) if l.has_dht => buf[..l.end].to_vec(),
        Some(l) => {
            let dht = standard_dht();
            let mut out = Vec::with_capacity(l.end + dht.len());
            out.extend_from_slice(&buf[..l.sos]);
            out.extend_from_slice(&dht);
            out.extend_from_slice(&buf[l.sos..l.end]);
            out
        }
    }
}

/// Where a JPEG's first scan starts, whether Huffman tables precede it, and where it ends.
struct JpegLayout {
    sos: usize,
    has_dht: bool,
    end: usize,
}

/// The header segments are walked by their lengths (a table may contain the bytes FF D9), then
/// the entropy-coded data is scanned for EOI, which cannot occur inside it (a data byte FF is
/// always stuffed as FF 00). Without an EOI the stream runs to the end of the buffer.
fn jpeg_layout(data: &[u8]) -> Option<JpegLayout> {
    if data.len() < 4 || data[0] != 0xFF || data[1] != 0xD8 {
        return None;
    }
    let mut i = 2;
    let mut has_dht = false;
    let sos = loop {
        if i + 4 > data.len() || data[i] != 0xFF {
            return None;
        }
        let marker = data[i + 1];
        if marker == 0xFF {
            i += 1; // fill byte
            continue;
        }
        if marker == 0xDA {
            break i;
        }
        has_dht |= marker == 0xC4;
        let len = usize::from(u16::from_be_bytes([data[i + 2], data[i + 3]]));
        if len < 2 {
            return None;
        }
        i += 2 + len;
    };
    let mut end = data.len();
    let mut j = sos + 2;
    while j + 1 < data.len() {
        if data[j] == 0xFF && data[j + 1] == 0xD9 {
            end = j + 2;
            break;
        }
        j += 1;
    }
    Some(JpegLayout { sos, has_dht, end })
}

/// The four Huffman tables of the JPEG specification, Annex K.3 (luminance and chrominance,
/// DC and AC), as one DHT segment. Each table: class/id byte, 16 code-length counts, values.
fn standard_dht() -> Vec<u8> {
    const DC_LUMA_BITS: [u8; 16] = [0, 1, 5, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0];
    const DC_CHROMA_BITS: [u8; 16] = [0, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0];
    const DC_VALUES: [u8; 12] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11];
    const AC_LUMA_BITS: [u8; 16] = [0, 2, 1, 3, 3, 2, 4, 3, 5, 5, 4, 4, 0, 0, 1, 0x7D];
    const AC_LUMA_VALUES: [u8; 162] = [
        0x01, 0x02, 0x03, 0x00, 0x04, 0x11, 0x05, 0x12, 0x21, 0x31, 0x41, 0x06, 0x13, 0x51, 0x61,
        0x07, 0x22, 0x71, 0x14, 0x32, 0x81, 0x91, 0xA1, 0x08, 0x23, 0x42, 0xB1, 0xC1, 0x15, 0x52,
        0xD1, 0xF0, 0x24, 0x33, 0x62, 0x72, 0x82, 0x09, 0x0A, 0x16, 0x17, 0x18, 0x19, 0x1A, 0x25,
        0x26, 0x27, 0x28, 0x29, 0x2A, 0x34, 0x35, 0x36, 0x37, 0x38, 0x39, 0x3A, 0x43, 0x44, 0x45,
        0x46, 0x47, 0x48, 0x49, 0x4A, 0x53, 0x54, 0x55, 0x56, 0x57, 0x58, 0x59, 0x5A, 0x63, 0x64,
        0x65, 0x66, 0x67, 0x68, 0x69, 0x6A, 0x73, 0x74, 0x75, 0x76, 0x77, 0x78, 0x79, 0x7A, 0x83,
        0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8A, 0x92, 0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99,
        0x9A, 0xA2, 0xA3, 0xA4, 0xA5, 0xA6, 0xA7, 0xA8, 0xA9, 0xAA, 0xB2, 0xB3, 0xB4, 0xB5, 0xB6,
        0xB7, 0xB8, 0xB9, 0xBA, 0xC2, 0xC3, 0xC4, 0xC5, 0xC6, 0xC7, 0xC8, 0xC9, 0xCA, 0xD2, 0xD3,
        0xD4, 0xD5, 0xD6, 0xD7, 0xD8, 0xD9, 0xDA, 0xE1, 0xE2, 0xE3, 0xE4, 0xE5, 0xE6, 0xE7, 0xE8,
        0xE9, 0xEA, 0xF1, 0xF2, 0xF3, 0xF4, 0xF5, 0xF6, 0xF7, 0xF8, 0xF9, 0xFA,
    ];
    const AC_CHROMA_BITS: [u8; 16] = [0, 2, 1, 2, 4, 4, 3, 4, 7, 5, 4, 4, 0, 1, 2, 0x77];
    const AC_CHROMA_VALUES: [u8; 162] = [
        0x00, 0x01, 0x02, 0x03, 0x11, 0x04, 0x05, 0x21, 0x31, 0x06, 0x12, 0x41, 0x51, 0x07, 0x61,
        0x71, 0x13, 0x22, 0x32, 0x81, 0x08, 0x14, 0x42, 0x91, 0xA1, 0xB1, 0xC1, 0x09, 0x23, 0x33,
        0x52, 0xF0, 0x15, 0x62, 0x72, 0xD1, 0x0A, 0x16, 0x24, 0x34, 0xE1, 0x25, 0xF1, 0x17, 0x18,
        0x19, 0x1A, 0x26, 0x27, 0x28, 0x29, 0x2A, 0x35, 0x36, 0x37, 0x38, 0x39, 0x3A, 0x43, 0x44,
        0x45, 0x46, 0x47, 0x48, 0x49, 0x4A, 0x53, 0x54, 0x55, 0x56, 0x57, 0x58, 0x59, 0x5A, 0x63,
        0x64, 0x65, 0x66, 0x67, 0x68, 0x69, 0x6A, 0x73, 0x74, 0x75, 0x76, 0x77, 0x78, 0x79, 0x7A,
        0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8A, 0x92, 0x93, 0x94, 0x95, 0x96, 0x97,
        0x98, 0x99, 0x9A, 0xA2, 0xA3, 0xA4, 0xA5, 0xA6, 0xA7, 0xA8, 0xA9, 0xAA, 0xB2, 0xB3, 0xB4,
        0xB5, 0xB6, 0xB7, 0xB8, 0xB9, 0xBA, 0xC2, 0xC3, 0xC4, 0xC5, 0xC6, 0xC7, 0xC8, 0xC9, 0xCA,
        0xD2, 0xD3, 0xD4, 0xD5, 0xD6, 0xD7, 0xD8, 0xD9, 0xDA, 0xE2, 0xE3, 0xE4, 0xE5, 0xE6, 0xE7,
        0xE8, 0xE9, 0xEA, 0xF2, 0xF3, 0xF4, 0xF5, 0xF6, 0xF7, 0xF8, 0xF9, 0xFA,
    ];
    let tables: [(u8, &[u8], &[u8]); 4] = [
        (0x00, &DC_LUMA_BITS, &DC_VALUES),
        (0x10, &AC_LUMA_BITS, &AC_LUMA_VALUES),
        (0x01, &DC_CHROMA_BITS, &DC_VALUES),
        (0x11, &AC_CHROMA_BITS, &AC_CHROMA_VALUES),
    ];
    let body: Vec<u8> = tables
        .iter()
        .flat_map(|(class_id, bits, values)| {
            std::iter::once(*class_id)
                .chain(bits.iter().copied())
                .chain(values.iter().copied())
        })
        .collect();
    let len = (body.len() + 2) as u16;
    let mut seg = vec![0xFF, 0xC4];
    seg.extend_from_slice(&len.to_be_bytes());
    seg.extend_from_slice(&body);
    seg
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    const W: u32 = 48;
    const H: u32 = 32;

    fn fixture(name: &str) -> Vec<u8> {
        let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/raw")
            .join(name);
        std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }

    /// Largest per-channel difference between two RGB buffers, and where.
    fn max_diff(a: &[u8], b: &[u8]) -> (u8, usize) {
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(b)
            .enumerate()
            .map(|(i, (x, y))| (x.abs_diff(*y), i))
            .max()
            .unwrap()
    }

    fn check_fixture(format: PixelFormat, file: &str) {
        let frame = RawFrame {
            format,
            width: W,
            height: H,
            data: fixture(file),
        };
        let rgb = to_rgb(&frame).unwrap();
        assert_eq!(rgb.dimensions(), (W, H));
        let want = fixture(&format!("{file}.ref.rgb"));
        let (d, at) = max_diff(rgb.as_raw(), &want);
        assert!(
            d <= 2,
            "{format}: channel {} of pixel {} differs by {d} from the numpy reference",
            at % 3,
            at / 3
        );
    }

    #[test]
    fn yuyv_matches_numpy_reference() {
        check_fixture(PixelFormat::Yuyv, "picture.yuyv");
    }

    #[test]
    fn nv12_matches_numpy_reference() {
        check_fixture(PixelFormat::Nv12, "picture.nv12");
    }

    #[test]
    fn grey_matches_numpy_reference() {
        check_fixture(PixelFormat::Grey, "picture.grey");
    }

    #[test]
    fn rgb_passes_through_unchanged() {
        let data = fixture("picture.rgb");
        let rgb = to_rgb(&RawFrame {
            format: PixelFormat::Rgb,
            width: W,
            height: H,
            data: data.clone(),
        })
        .unwrap();
        assert_eq!(rgb.as_raw(), &data);
    }

    #[test]
    fn grey_gives_equal_channels_and_monotone_levels() {
        let data: Vec<u8> = (0..=255).collect();
        let rgb = to_rgb(&RawFrame {
            format: PixelFormat::Grey,
            width: 256,
            height: 1,
            data,
        })
        .unwrap();
        let px: Vec<[u8; 3]> = rgb.pixels().map(|p| p.0).collect();
        assert!(px.iter().all(|p| p[0] == p[1] && p[1] == p[2]));
        assert!(px.windows(2).all(|w| w[0][0] <= w[1][0]));
        // Limited range: black and white levels and everything beyond them.
        assert!(px[..=16].iter().all(|p| p[0] == 0));
        assert!(px[235..].iter().all(|p| p[0] == 255));
        assert_eq!(px[126][0], 128, "mid grey (126 − 16) · 255/219 = 128.1");
    }

    #[test]
    fn extremes_clamp_instead_of_wrapping() {
        // Y′ 255 with Cr 255 pushes R far above 255; Y′ 0 with Cb 0 pushes B far below 0.
        let rgb = to_rgb(&RawFrame {
            format: PixelFormat::Yuyv,
            width: 4,
            height: 1,
            data: vec![255, 128, 255, 255, 0, 0, 0, 128],
        })
        .unwrap();
        // Wrapping would turn the overflowing channels into small values; clamping pins them.
        for x in [0, 1] {
            let p = rgb.get_pixel(x, 0).0;
            assert_eq!((p[0], p[2]), (255, 255), "{p:?}");
            assert_eq!(p[1], 175, "G = 1.164·239 − 0.813·127 = 175.0");
        }
        for x in [2, 3] {
            let p = rgb.get_pixel(x, 0).0;
            assert_eq!((p[0], p[2]), (0, 0), "{p:?}");
            assert_eq!(p[1], 32, "G = 1.164·(−16) + 0.392·128 = 31.5");
        }
    }

    #[test]
    fn neutral_chroma_is_grey_in_every_yuv_format() {
        for y in [16u8, 60, 128, 200, 235] {
            let yuyv = to_rgb(&RawFrame {
                format: PixelFormat::Yuyv,
                width: 2,
                height: 1,
                data: vec![y, 128, y, 128],
            })
            .unwrap();
            let nv12 = to_rgb(&RawFrame {
                format: PixelFormat::Nv12,
                width: 2,
                height: 2,
                data: vec![y, y, y, y, 128, 128],
            })
            .unwrap();
            let grey = to_rgb(&RawFrame {
                format: PixelFormat::Grey,
                width: 1,
                height: 1,
                data: vec![y],
            })
            .unwrap();
            let g = grey.get_pixel(0, 0).0;
            assert_eq!(g[0], g[1]);
            assert!(yuyv.pixels().chain(nv12.pixels()).all(|p| p.0 == g), "{y}");
        }
    }

    #[test]
    fn round_trip_through_ycbcr_stays_within_rounding() {
        // Full-range RGB → BT.601 limited Y′CbCr (4:4:4 via YUYV pairs of equal pixels) → RGB.
        let (kr, kb) = (0.299f64, 0.114f64);
        let kg = 1.0 - kr - kb;
        let mut worst = 0u8;
        for r in (0..=255).step_by(15) {
            for g in (0..=255).step_by(17) {
                for b in (0..=255).step_by(51) {
                    let (rf, gf, bf) = (r as f64 / 255.0, g as f64 / 255.0, b as f64 / 255.0);
                    let y = kr * rf + kg * gf + kb * bf;
                    let cb = (bf - y) / (2.0 * (1.0 - kb));
                    let cr = (rf - y) / (2.0 * (1.0 - kr));
                    let q = |v: f64| v.round().clamp(0.0, 255.0) as u8;
                    let (y8, cb8, cr8) = (
                        q(16.0 + 219.0 * y),
                        q(128.0 + 224.0 * cb),
                        q(128.0 + 224.0 * cr),
                    );
                    let out = to_rgb(&RawFrame {
                        format: PixelFormat::Yuyv,
                        width: 2,
                        height: 1,
                        data: vec![y8, cb8, y8, cr8],
                    })
                    .unwrap();
                    let p = out.get_pixel(0, 0).0;
                    for (got, want) in p.iter().zip([r as u8, g as u8, b as u8]) {
                        worst = worst.max(got.abs_diff(want));
                    }
                }
            }
        }
        // 8-bit quantisation of Y′CbCr alone costs up to about 3 levels in G.
        assert!(worst <= 3, "round trip off by {worst}");
    }

    #[test]
    fn longer_buffers_are_accepted_and_their_tail_ignored() {
        let mut data = fixture("picture.yuyv");
        data.extend_from_slice(&[0xAB; 100]);
        let rgb = to_rgb(&RawFrame {
            format: PixelFormat::Yuyv,
            width: W,
            height: H,
            data,
        })
        .unwrap();
        let (d, _) = max_diff(rgb.as_raw(), &fixture("picture.yuyv.ref.rgb"));
        assert!(d <= 2);
    }

    #[test]
    fn malformed_frames_are_errors_naming_format_and_size() {
        let cases = [
            (
                PixelFormat::Yuyv,
                3,
                2,
                vec![0; 12],
                "YUYV frame 3×2: width must be even",
            ),
            (
                PixelFormat::Nv12,
                4,
                3,
                vec![0; 18],
                "NV12 frame 4×3: width and height",
            ),
            (
                PixelFormat::Yuyv,
                4,
                2,
                vec![0; 15],
                "YUYV frame 4×2: 15 bytes, need 16",
            ),
            (
                PixelFormat::Nv12,
                4,
                2,
                vec![0; 11],
                "NV12 frame 4×2: 11 bytes, need 12",
            ),
            (
                PixelFormat::Rgb,
                2,
                2,
                vec![0; 11],
                "RGB frame 2×2: 11 bytes, need 12",
            ),
            (
                PixelFormat::Grey,
                2,
                2,
                vec![],
                "GREY frame 2×2: 0 bytes, need 4",
            ),
            (
                PixelFormat::Grey,
                0,
                2,
                vec![],
                "GREY frame 0×2: empty frame",
            ),
            (
                PixelFormat::Rgb,
                u32::MAX,
                u32::MAX,
                vec![],
                "RGB frame 4294967295×4294967295:",
            ),
        ];
        for (format, width, height, data, want) in cases {
            let e = to_rgb(&RawFrame {
                format,
                width,
                height,
                data,
            })
            .unwrap_err()
            .to_string();
            assert!(e.starts_with(want), "{e:?} should start with {want:?}");
        }
    }

    #[test]
    fn mjpeg_frame_cuts_stale_bytes_after_eoi() {
        let jpg = fixture("picture.jpg");
        assert_eq!(mjpeg_frame(&jpg), jpg);
        // Stale bytes from an earlier, larger frame, including a fake EOI.
        let mut buf = jpg.clone();
        buf.extend_from_slice(&[0x12, 0xFF, 0xD9, 0x00, 0xFF, 0xD8, 0x34]);
        assert_eq!(mjpeg_frame(&buf), jpg);
        // Not a JPEG, or cut short before the scan: returned whole.
        assert_eq!(mjpeg_frame(b"GIF89a"), b"GIF89a");
        assert_eq!(mjpeg_frame(&jpg[..40]), &jpg[..40]);
        assert_eq!(mjpeg_frame(&[]), Vec::<u8>::new());
    }

    /// The DHT segments of `jpg`, table by table, as (class/id, code counts + values).
    fn huffman_tables(jpg: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut out = Vec::new();
        let mut i = 2;
        while jpg[i + 1] != 0xDA {
            let len = usize::from(u16::from_be_bytes([jpg[i + 2], jpg[i + 3]]));
            if jpg[i + 1] == 0xC4 {
                let seg = &jpg[i + 4..i + 2 + len];
                let mut j = 0;
                while j < seg.len() {
                    let n: usize = seg[j + 1..j + 17].iter().map(|&b| usize::from(b)).sum();
                    out.push((seg[j], seg[j + 1..j + 17 + n].to_vec()));
                    j += 17 + n;
                }
            }
            i += 2 + len;
        }
        out.sort();
        out
    }

    #[test]
    fn inserted_tables_are_the_standard_ones_libjpeg_writes() {
        // Pillow (libjpeg) writes the Annex K tables unless asked to optimise them.
        let reference = huffman_tables(&fixture("picture.jpg"));
        assert_eq!(reference.len(), 4);
        let bare = fixture("picture_nodht.jpg");
        assert!(huffman_tables(&bare).is_empty());
        let completed = mjpeg_frame(&bare);
        assert_eq!(huffman_tables(&completed), reference);
        // Same bytes as the original apart from where the tables sit.
        assert_eq!(completed.len(), fixture("picture.jpg").len() - 3 * 4);
    }

    /// A camera's MJPEG frame decodes like the reference decoder, with or without the Huffman
    /// tables many UVC cameras leave out.
    #[test]
    fn mjpeg_frames_decode_close_to_the_reference() {
        let want = fixture("picture.jpg.ref.rgb");
        for file in ["picture.jpg", "picture_nodht.jpg"] {
            let mut buf = fixture(file);
            buf.resize(buf.len() + 1000, 0x55);
            let img =
                image::load_from_memory_with_format(&mjpeg_frame(&buf), image::ImageFormat::Jpeg)
                    .unwrap_or_else(|e| panic!("{file}: {e}"))
                    .to_rgb8();
            assert_eq!(img.dimensions(), (W, H));
            let (d, at) = max_diff(img.as_raw(), &want);
            assert!(d <= 2, "{file}: pixel {} off by {d}", at / 3);
        }
    }
}
