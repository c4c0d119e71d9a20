//! The CLIP image transform from the bundle manifest, reproducing open_clip's eval pipeline on
//! PIL: shortest side resized to `size` with PIL's antialiased bicubic filter, centre crop with
//! torchvision's rounding, RGB, `/255`, `(x - mean) / std`, CHW float32.
//!
//! The resampler is a port of Pillow's `Resample.c` (separable, support widened by the
//! downscale factor, 22-bit fixed-point coefficients, horizontal pass first through an 8-bit
//! intermediate) because `image::imageops` filters neither antialias the same way nor round the
//! same way, and the embeddings must match the Python reference.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use image::{DynamicImage, ImageDecoder, ImageReader, Limits, RgbImage};

use crate::bundle::ImageSpec;
use crate::error::{ExitClass, HasExitClass};

/// Limits applied while decoding: an image over them is refused from its header, before any
/// pixel buffer is allocated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DecodeLimits {
    /// Largest accepted width or height in pixels.
    pub max_side: u32,
    /// Largest decoder allocation in bytes.
    pub max_alloc_bytes: u64,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        DecodeLimits {
            max_side: 10_000,
            max_alloc_bytes: 512 << 20,
        }
    }
}

/// Why a frame could not be turned into a tensor. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum PreprocessError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: empty file", path.display())]
    Empty { path: PathBuf },
    #[error("{}: unsupported image format", path.display())]
    Unsupported { path: PathBuf },
    #[error("{}: image is {width}x{height}, over the decode limit of {max} pixels per side", path.display())]
    TooLarge {
        path: PathBuf,
        width: u32,
        height: u32,
        max: u32,
    },
    #[error("{}: cannot decode image: {msg}", path.display())]
    Decode { path: PathBuf, msg: String },
}

// A frame that cannot be decoded is an input that could not be processed.
impl HasExitClass for PreprocessError {
    fn exit_class(&self) -> ExitClass {
        ExitClass::SomeFailed
    }
}

impl PreprocessError {
    /// A short machine-friendly kind, logged with the frame.
    pub fn kind(&self) -> &'static str {
        match self {
            PreprocessError::Io { .. } => "io",
            PreprocessError::Empty { .. } => "empty",
            PreprocessError::Unsupported { .. } => "unsupported",
            PreprocessError::TooLarge { .. } => "too_large",
            PreprocessError::Decode { .. } => "decode",
        }
    }
}

/// Read and decode an image file, applying its EXIF orientation.
pub fn decode_file(path: &Path, limits: &DecodeLimits) -> Result<DynamicImage, PreprocessError> {
    let bytes = std::fs::read(path).map_err(|source| PreprocessError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    decode_bytes(&bytes, path, limits)
}

/// Decode an in-memory image (`path` only labels errors), applying its EXIF orientation.
pub fn decode_bytes(
    bytes: &[u8],
    path: &Path,
    limits: &DecodeLimits,
) -> Result<DynamicImage, PreprocessError> {
    let p = || path.to_path_buf();
    if bytes.is_empty() {
        return Err(PreprocessError::Empty { path: p() });
    }
    let decode_err = |e: image::ImageError| match e {
        image::ImageError::Unsupported(_) => PreprocessError::Unsupported { path: p() },
        e => PreprocessError::Decode {
            path: p(),
            msg: one_line(&e.to_string()),
        },
    };
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|source| PreprocessError::Io { path: p(), source })?;
    if reader.format().is_none() {
        return Err(PreprocessError::Unsupported { path: p() });
    }
    if reader.format() == Some(image::ImageFormat::Jpeg) && !jpeg_is_complete(bytes) {
        return Err(PreprocessError::Decode {
            path: p(),
            msg: "truncated JPEG: the image data has no end-of-image marker".into(),
        });
    }
    let mut lim = Limits::default();
    lim.max_image_width = Some(limits.max_side);
    lim.max_image_height = Some(limits.max_side);
    lim.max_alloc = Some(limits.max_alloc_bytes);
    reader.limits(lim);
    let mut decoder = reader.into_decoder().map_err(|e| match e {
        // The dimension check happens on the header; report the real size when we can.
        image::ImageError::Limits(_) => too_large(bytes, path, limits),
        e => decode_err(e),
    })?;
    let (width, height) = decoder.dimensions();
    if width > limits.max_side || height > limits.max_side {
        return Err(PreprocessError::TooLarge {
            path: p(),
            width,
            height,
            max: limits.max_side,
        });
    }
    let orientation = decoder
        .orientation()
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut img = DynamicImage::from_decoder(decoder).map_err(decode_err)?;
    img.apply_orientation(orientation);
    Ok(img)
}

fn too_large(bytes: &[u8], path: &Path, limits: &DecodeLimits) -> PreprocessError {
    let dims = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .ok()
        .and_then(|r| r.into_dimensions().ok());
    match dims {
        Some((width, height)) => PreprocessError::TooLarge {
            path: path.to_path_buf(),
            width,
            height,
            max: limits.max_side,
        },
        None => PreprocessError::Decode {
            path: path.to_path_buf(),
            msg: "over the decode limits".into(),
        },
    }
}

/// Convert any decoded image to 8-bit RGB the way PIL's `convert("RGB")` does: grey is
/// replicated, alpha is dropped (not composited), palettes are already expanded by the decoder,
/// and 16-bit samples are scaled to 8 bits.
/// A decoder message as one line (some end with a newline or span several).
fn one_line(msg: &str) -> String {
    msg.split('\n')
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

/// Whether a JPEG's last scan is followed by its end-of-image marker.
///
/// The JPEG decoder fills a truncated scan with grey and reports success, so a frame cut off in
/// transfer (a half-written file, a camera frame torn by a USB hiccup) would be classified as
/// if it were whole. Inside entropy-coded data every 0xFF byte is followed by 0x00 or a restart
/// marker, so neither SOS (FF DA) nor EOI (FF D9) can occur there: the last SOS begins the last
/// scan, and an intact file has an EOI after it.
fn jpeg_is_complete(bytes: &[u8]) -> bool {
    let marker_at = |m: u8| bytes.windows(2).rposition(|w| w[0] == 0xFF && w[1] == m);
    match (marker_at(0xDA), marker_at(0xD9)) {
        (Some(sos), Some(eoi)) => eoi > sos,
        // No scan at all: let the decoder report what is wrong.
        (None, _) => true,
        (Some(_), None) => false,
    }
}

pub fn to_rgb8(img: DynamicImage) -> RgbImage {
    match img {
        DynamicImage::ImageRgb8(rgb) => rgb,
        other => other.to_rgb8(),
    }
}

/// The manifest's image transform.
#[derive(Debug, Clone)]
pub struct Transform {
    pub size: usize,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl Transform {
    pub fn from_spec(spec: &ImageSpec) -> Transform {
        Transform {
            size: spec.size,
            mean: spec.mean,
            std: spec.std,
        }
    }

    /// Number of floats in one output tensor (`3 × size × size`).
    pub fn len(&self) -> usize {
        3 * self.size * self.size
    }

    pub fn is_empty(&self) -> bool {
        self.size == 0
    }

    /// Decode, convert and transform one file into a new CHW tensor.
    pub fn load(&self, path: &Path, limits: &DecodeLimits) -> Result<Vec<f32>, PreprocessError> {
        let img = to_rgb8(decode_file(path, limits)?);
        let mut out = vec![0.0; self.len()];
        self.apply(&img, &mut out);
        Ok(out)
    }

    /// Transform an RGB image into `out` (`3 × size × size`, CHW).
    pub fn apply(&self, img: &RgbImage, out: &mut [f32]) {
        let s = self.size;
        let (w, h) = (img.width() as usize, img.height() as usize);
        let (rw, rh) = resized_dims(w, h, s);
        let left = crop_offset(rw, s);
        let top = crop_offset(rh, s);
        let cropped = resize_crop(img.as_raw(), w, h, 3, rw, rh, left, top, s, s);
        let plane = s * s;
        for (i, px) in cropped.chunks_exact(3).enumerate() {
            for c in 0..3 {
                let v = px[c] as f32 / 255.0;
                out[c * plane + i] = (v - self.mean[c]) / self.std[c];
            }
        }
    }
}

/// Tip-Adapter's training augmentation: torchvision's `RandomResizedCrop(size, scale=(0.5, 1),
/// ratio=(3/4, 4/3), bicubic)` followed by `RandomHorizontalFlip(0.5)`, drawn from `rng`.
/// Returns a `size × size` image for [`Transform::apply`] (which then only normalises).
pub fn augment(img: &RgbImage, size: usize, rng: &mut crate::rng::Rng) -> RgbImage {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let (cw, ch, left, top) = random_crop_box(w, h, rng);
    let mut crop = Vec::with_capacity(cw * ch * 3);
    for y in top..top + ch {
        let start = (y * w + left) * 3;
        crop.extend_from_slice(&img.as_raw()[start..start + cw * 3]);
    }
    let mut out = resize_crop(&crop, cw, ch, 3, size, size, 0, 0, size, size);
    if rng.uniform() < 0.5 {
        for row in out.chunks_exact_mut(size * 3) {
            for x in 0..size / 2 {
                for c in 0..3 {
                    row.swap(x * 3 + c, (size - 1 - x) * 3 + c);
                }
            }
        }
    }
    RgbImage::from_raw(size as u32, size as u32, out).unwrap_or_else(|| RgbImage::new(1, 1))
}

/// torchvision's `RandomResizedCrop.get_params` with scale (0.5, 1) and ratio (3/4, 4/3):
/// ten tries at a random area and aspect ratio, then a centred crop clamped to the ratio range.
fn random_crop_box(w: usize, h: usize, rng: &mut crate::rng::Rng) -> (usize, usize, usize, usize) {
    let area = (w * h) as f64;
    let (lo, hi) = ((3.0f64 / 4.0).ln(), (4.0f64 / 3.0).ln());
    for _ in 0..10 {
        let target = area * rng.range(0.5, 1.0);
        let ratio = rng.range(lo, hi).exp();
        let cw = (target * ratio).sqrt().round() as usize;
        let ch = (target / ratio).sqrt().round() as usize;
        if cw > 0 && ch > 0 && cw <= w && ch <= h {
            let top = rng.below(h - ch + 1);
            let left = rng.below(w - cw + 1);
            return (cw, ch, left, top);
        }
    }
    let in_ratio = w as f64 / h.max(1) as f64;
    let (cw, ch) = if in_ratio < 3.0 / 4.0 {
        (w, ((w as f64) / (3.0 / 4.0)).round() as usize)
    } else if in_ratio > 4.0 / 3.0 {
        (((h as f64) * (4.0 / 3.0)).round() as usize, h)
    } else {
        (w, h)
    };
    let (cw, ch) = (cw.clamp(1, w.max(1)), ch.clamp(1, h.max(1)));
    (cw, ch, (w - cw) / 2, (h - ch) / 2)
}

/// torchvision's `Resize(int)` output size: the shorter side becomes `size`, the longer one is
/// scaled and truncated.
pub fn resized_dims(w: usize, h: usize, size: usize) -> (usize, usize) {
    let (short, long) = if w <= h { (w, h) } else { (h, w) };
    let new_long = ((size as f64) * (long as f64) / (short.max(1) as f64)) as usize;
    if w <= h {
        (size, new_long.max(size))
    } else {
        (new_long.max(size), size)
    }
}

/// torchvision's centre-crop offset: `int(round((n - crop) / 2))`, with Python's round half to
/// even.
pub fn crop_offset(n: usize, crop: usize) -> usize {
    let diff = n.saturating_sub(crop);
    let half = diff / 2;
    if diff % 2 == 1 && half % 2 == 1 {
        half + 1
    } else {
        half
    }
}

/// Pillow's bicubic kernel (a = -0.5).
fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Fixed-point filter taps for each output position along one axis (Pillow's
/// `precompute_coeffs` + `normalize_coeffs_8bpc`).
struct Taps {
    /// (first input index, tap count) per output index.
    bounds: Vec<(usize, usize)>,
    ksize: usize,
    k: Vec<i32>,
}

fn taps(in_size: usize, out_size: usize) -> Taps {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = 2.0 * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let mut bounds = Vec::with_capacity(out_size);
    let mut k = vec![0i32; out_size * ksize];
    let mut w = vec![0f64; ksize];
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        // Pillow truncates toward zero with a C cast.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
        let n = xmax.saturating_sub(xmin).min(ksize);
        let mut total = 0.0;
        for (x, wx) in w.iter_mut().enumerate().take(n) {
            *wx = bicubic((x as f64 + xmin as f64 - center + 0.5) * ss);
            total += *wx;
        }
        for x in 0..n {
            let v = if total != 0.0 { w[x] / total } else { w[x] };
            let f = v * (1u32 << PRECISION_BITS) as f64;
            k[xx * ksize + x] = if v < 0.0 {
                (-0.5 + f) as i32
            } else {
                (0.5 + f) as i32
            };
        }
        bounds.push((xmin, n));
    }
    Taps { bounds, ksize, k }
}

#[inline]
fn clip8(acc: i64) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Resize `src` (`w × h`, `ch` interleaved 8-bit channels) to `rw × rh` with Pillow's bicubic
/// filter and return only the `cw × ch_` window at (`left`, `top`). Output pixels outside the
/// window are never computed; the window's values are identical to a full resize then crop.
#[allow(clippy::too_many_arguments)]
pub fn resize_crop(
    src: &[u8],
    w: usize,
    h: usize,
    ch: usize,
    rw: usize,
    rh: usize,
    left: usize,
    top: usize,
    cw: usize,
    chh: usize,
) -> Vec<u8> {
    let need_h = rw != w;
    let need_v = rh != h;
    let half = 1i64 << (PRECISION_BITS - 1);

    // Rows of the source the vertical pass will read for the cropped output rows.
    let vt = need_v.then(|| taps(h, rh));
    let (row_lo, row_hi) = match &vt {
        Some(t) => {
            let lo = (top..top + chh).map(|y| t.bounds[y].0).min().unwrap_or(0);
            let hi = (top..top + chh)
                .map(|y| t.bounds[y].0 + t.bounds[y].1)
                .max()
                .unwrap_or(0);
            (lo, hi)
        }
        None => (top, top + chh),
    };

    // Horizontal pass over the needed rows, cropped columns only.
    let rows = row_hi - row_lo;
    let mut tmp = vec![0u8; rows * cw * ch];
    if need_h {
        let t = taps(w, rw);
        for y in 0..rows {
            let src_row = &src[(row_lo + y) * w * ch..(row_lo + y + 1) * w * ch];
            for x in 0..cw {
                let (xmin, n) = t.bounds[left + x];
                let k = &t.k[(left + x) * t.ksize..(left + x) * t.ksize + n];
                for c in 0..ch {
                    let mut acc = half;
                    for (i, kv) in k.iter().enumerate() {
                        acc += src_row[(xmin + i) * ch + c] as i64 * *kv as i64;
                    }
                    tmp[(y * cw + x) * ch + c] = clip8(acc);
                }
            }
        }
    } else {
        for y in 0..rows {
            let s0 = ((row_lo + y) * w + left) * ch;
            tmp[y * cw * ch..(y + 1) * cw * ch].copy_from_slice(&src[s0..s0 + cw * ch]);
        }
    }

    // Vertical pass.
    let Some(t) = vt else {
        return tmp;
    };
    let mut out = vec![0u8; chh * cw * ch];
    for y in 0..chh {
        let (ymin, n) = t.bounds[top + y];
        let k = &t.k[(top + y) * t.ksize..(top + y) * t.ksize + n];
        for x in 0..cw {
            for c in 0..ch {
                let mut acc = half;
                for (i, kv) in k.iter().enumerate() {
                    acc += tmp[((ymin - row_lo + i) * cw + x) * ch + c] as i64 * *kv as i64;
                }
                out[(y * cw + x) * ch + c] = clip8(acc);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_size_and_crop_follow_torchvision() {
        assert_eq!(resized_dims(640, 480, 224), (298, 224));
        assert_eq!(resized_dims(480, 640, 224), (224, 298));
        assert_eq!(resized_dims(100, 100, 64), (64, 64));
        assert_eq!(resized_dims(10, 30, 64), (64, 192));
        // round((n - c) / 2) with half to even: 1 -> 0, 3 -> 2 (1.5 -> 2), 5 -> 2 (2.5 -> 2).
        assert_eq!(crop_offset(65, 64), 0);
        assert_eq!(crop_offset(67, 64), 2);
        assert_eq!(crop_offset(69, 64), 2);
        assert_eq!(crop_offset(68, 64), 2);
        assert_eq!(crop_offset(64, 64), 0);
    }

    #[test]
    fn constant_image_stays_constant() {
        let src = vec![200u8; 37 * 23 * 3];
        let out = resize_crop(&src, 37, 23, 3, 27, 16, 5, 0, 16, 16);
        assert!(out.iter().all(|&v| v == 200));
        let up = resize_crop(&src, 37, 23, 3, 111, 69, 10, 2, 64, 64);
        assert!(up.iter().all(|&v| v == 200));
    }

    #[test]
    fn window_equals_full_resize_then_crop() {
        let (w, h) = (50, 31);
        let src: Vec<u8> = (0..w * h * 3).map(|i| ((i * 37) % 251) as u8).collect();
        let (rw, rh) = resized_dims(w, h, 16);
        let full = resize_crop(&src, w, h, 3, rw, rh, 0, 0, rw, rh);
        let (l, t) = (crop_offset(rw, 16), crop_offset(rh, 16));
        let win = resize_crop(&src, w, h, 3, rw, rh, l, t, 16, 16);
        for y in 0..16 {
            for x in 0..16 {
                for c in 0..3 {
                    assert_eq!(
                        win[(y * 16 + x) * 3 + c],
                        full[((y + t) * rw + x + l) * 3 + c]
                    );
                }
            }
        }
    }

    #[test]
    fn matches_pillow_exactly() {
        // Expected values from Pillow: Image.frombytes("L", ...).resize(..., Image.BICUBIC).
        let step = [0u8, 0, 0, 0, 255, 255, 255, 255];
        assert_eq!(
            resize_crop(&step, 8, 1, 1, 4, 1, 0, 0, 4, 1),
            [0, 17, 238, 255]
        );
        let src: Vec<u8> = (0..13 * 7).map(|i| ((i * 37) % 251) as u8).collect();
        assert_eq!(
            resize_crop(&src, 13, 7, 1, 5, 3, 0, 0, 5, 3),
            [85, 108, 172, 63, 143, 174, 70, 163, 122, 90, 179, 96, 107, 188, 76]
        );
        let up = resize_crop(&src, 13, 7, 1, 29, 17, 0, 0, 29, 17);
        assert_eq!(
            up[..20],
            [0, 0, 13, 43, 60, 75, 91, 108, 124, 141, 158, 174, 192, 227, 224, 119, 0, 0, 31, 58]
        );
    }

    #[test]
    fn normalises_channels() {
        let t = Transform {
            size: 2,
            mean: [0.5, 0.5, 0.5],
            std: [0.5, 0.25, 1.0],
        };
        let img = RgbImage::from_pixel(2, 2, image::Rgb([255, 255, 0]));
        let mut out = vec![0.0; t.len()];
        t.apply(&img, &mut out);
        assert_eq!(&out[0..4], &[1.0; 4]);
        assert_eq!(&out[4..8], &[2.0; 4]);
        assert_eq!(&out[8..12], &[-0.5; 4]);
    }

    #[test]
    fn augmentation_is_seeded_square_and_keeps_content() {
        // Left half red, right half blue: any crop keeps only these two colours (up to
        // resampling at the seam), and a fixed seed repeats exactly.
        let mut img = RgbImage::new(40, 30);
        for (x, _, p) in img.enumerate_pixels_mut() {
            *p = if x < 20 {
                image::Rgb([255, 0, 0])
            } else {
                image::Rgb([0, 0, 255])
            };
        }
        let mut a = crate::rng::Rng::new(3);
        let mut b = crate::rng::Rng::new(3);
        let mut flips = 0;
        for _ in 0..20 {
            let x = augment(&img, 16, &mut a);
            assert_eq!((x.width(), x.height()), (16, 16));
            assert_eq!(x, augment(&img, 16, &mut b));
            assert!(x.pixels().all(|p| p[1] == 0));
            // Red on the right edge means the crop was mirrored.
            flips += usize::from(x.get_pixel(15, 8)[0] > 128);
            let (w, h, l, t) = random_crop_box(40, 30, &mut crate::rng::Rng::new(flips as u64));
            assert!(w * h * 2 >= 40 * 30 - 40 && l + w <= 40 && t + h <= 30);
        }
        assert!((3..18).contains(&flips), "{flips} of 20 mirrored");
    }

    #[test]
    fn refuses_huge_header_before_decoding() {
        // A valid PNG signature + IHDR for 20000x20000 RGB and nothing else: decoding would need
        // 1.2 GB, the header alone must be enough to refuse it.
        let png = include_bytes!("../tests/fixtures/bad/images/huge_header.png");
        let e = decode_bytes(png, Path::new("huge.png"), &DecodeLimits::default()).unwrap_err();
        assert!(
            matches!(e, PreprocessError::TooLarge { width: 20_000, .. }),
            "{e}"
        );
        let e = decode_bytes(b"", Path::new("z.png"), &DecodeLimits::default()).unwrap_err();
        assert!(matches!(e, PreprocessError::Empty { .. }));
        let e = decode_bytes(b"hello", Path::new("t.txt"), &DecodeLimits::default()).unwrap_err();
        assert!(matches!(e, PreprocessError::Unsupported { .. }), "{e}");
    }

    #[test]
    fn truncated_jpeg_is_refused_and_messages_are_one_line() {
        let whole = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/fieldset/test/circle/circle_000.jpg"
        ))
        .unwrap();
        assert!(jpeg_is_complete(&whole));
        assert!(decode_bytes(&whole, Path::new("ok.jpg"), &DecodeLimits::default()).is_ok());
        // Cut anywhere inside the scan: the decoder alone would fill the rest with grey.
        let sos = whole.windows(2).position(|w| w == [0xff, 0xda]).unwrap();
        for cut in [sos + 20, (sos + whole.len()) / 2, whole.len() - 2] {
            let e = decode_bytes(
                &whole[..cut],
                Path::new("cut.jpg"),
                &DecodeLimits::default(),
            )
            .unwrap_err();
            assert!(matches!(e, PreprocessError::Decode { .. }), "{e}");
            assert!(e.to_string().contains("truncated JPEG"), "{e}");
        }
        // Cut inside the header: the decoder's own message, folded onto one line.
        let e = decode_bytes(
            &whole[..sos / 2],
            Path::new("h.jpg"),
            &DecodeLimits::default(),
        )
        .unwrap_err();
        assert!(!e.to_string().contains('\n'), "{e:?}");
        assert_eq!(one_line("a\n\n b \n"), "a; b");
    }
}
