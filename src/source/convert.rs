//! Raw camera pixel formats (YUYV, NV12, GREY, RGB) converted to RGB. MJPEG frames travel as
//! encoded bytes and go through the normal image decoder.

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
    #[error("{format:?} frame {width}×{height}: {msg}")]
    Malformed {
        format: PixelFormat,
        width: u32,
        height: u32,
        msg: String,
    },
}

/// Convert a raw frame to RGB.
pub fn to_rgb(frame: &RawFrame) -> Result<image::RgbImage, ConvertError> {
    Err(ConvertError::Malformed {
        format: frame.format,
        width: frame.width,
        height: frame.height,
        msg: "conversion not available yet".into(),
    })
}
