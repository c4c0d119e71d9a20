//! Minimal `.npy` (format 1.0/2.0/3.0) reader and writer for little-endian f32 and i64 arrays in
//! C order: enough for feature dumps and test fixtures without pulling in an ndarray stack.

use crate::error::{ExitClass, HasExitClass};
use std::io::{Read, Write};
use std::path::Path;

/// Errors from reading or writing `.npy` files.
#[derive(Debug, thiserror::Error)]
pub enum NpyError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a .npy file: {reason}")]
    Format { path: String, reason: String },
}

impl HasExitClass for NpyError {
    fn exit_class(&self) -> ExitClass {
        ExitClass::Io
    }
}

/// A dense array read from a `.npy` file.
#[derive(Debug, Clone, PartialEq)]
pub struct Array<T> {
    pub shape: Vec<usize>,
    pub data: Vec<T>,
}

/// Element types this module can read and write.
pub trait Element: Copy + Sized {
    /// numpy dtype descriptor, e.g. `<f4`.
    const DESCR: &'static str;
    /// Size of one element in bytes.
    const SIZE: usize;
    fn from_le(bytes: &[u8]) -> Self;
    fn to_le(self) -> Vec<u8>;
}

impl Element for f32 {
    const DESCR: &'static str = "<f4";
    const SIZE: usize = 4;
    fn from_le(b: &[u8]) -> Self {
        f32::from_le_bytes([b[0], b[1], b[2], b[3]])
    }
    fn to_le(self) -> Vec<u8> {
        self.to_le_bytes().to_vec()
    }
}

impl Element for i64 {
    const DESCR: &'static str = "<i8";
    const SIZE: usize = 8;
    fn from_le(b: &[u8]) -> Self {
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[..8]);
        i64::from_le_bytes(a)
    }
    fn to_le(self) -> Vec<u8> {
        self.to_le_bytes().to_vec()
    }
}

const MAGIC: &[u8] = b"\x93NUMPY";

/// Read a `.npy` file holding elements of type `T`.
pub fn read<T: Element>(path: &Path) -> Result<Array<T>, NpyError> {
    let p = path.display().to_string();
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(|source| NpyError::Io {
            path: p.clone(),
            source,
        })?;
    parse(&bytes).map_err(|reason| NpyError::Format { path: p, reason })
}

/// Parse `.npy` bytes.
pub fn parse<T: Element>(bytes: &[u8]) -> Result<Array<T>, String> {
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        return Err("bad magic".into());
    }
    let (header_len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 => {
            if bytes.len() < 12 {
                return Err("truncated header".into());
            }
            (
                u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
                12,
            )
        }
        v => return Err(format!("unsupported version {v}")),
    };
    let header = bytes
        .get(start..start + header_len)
        .ok_or("truncated header")?;
    let header = std::str::from_utf8(header).map_err(|_| "header is not UTF-8")?;
    let descr = dict_value(header, "descr").ok_or("header has no descr")?;
    let quote = descr.chars().next().ok_or("empty descr")?;
    let descr = descr[1..].split(quote).next().ok_or("malformed descr")?;
    if descr != T::DESCR && !(descr.starts_with('|') && descr[1..] == T::DESCR[1..]) {
        return Err(format!("dtype {descr}, expected {}", T::DESCR));
    }
    if dict_value(header, "fortran_order").is_some_and(|v| v.starts_with("True")) {
        return Err("fortran_order arrays are not supported".into());
    }
    let shape_src = dict_value(header, "shape").ok_or("header has no shape")?;
    let inner = shape_src
        .trim()
        .strip_prefix('(')
        .and_then(|s| s.split(')').next())
        .ok_or("malformed shape")?;
    let shape = inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<usize>().map_err(|_| format!("bad dim {s:?}")))
        .collect::<Result<Vec<_>, _>>()?;
    let count: usize = shape.iter().product();
    let size = T::SIZE;
    let body = &bytes[start + header_len..];
    if body.len() < count * size {
        return Err(format!(
            "truncated data: {} bytes for {count} elements",
            body.len()
        ));
    }
    let data = body[..count * size]
        .chunks_exact(size)
        .map(T::from_le)
        .collect();
    Ok(Array { shape, data })
}

/// The raw text following `'key':` in a numpy header dict, up to the end of the dict.
fn dict_value<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let pat_single = format!("'{key}':");
    let pat_double = format!("\"{key}\":");
    let pos = header
        .find(&pat_single)
        .map(|p| p + pat_single.len())
        .or_else(|| header.find(&pat_double).map(|p| p + pat_double.len()))?;
    Some(header[pos..].trim_start())
}

/// Write `data` with `shape` as a version 1.0 `.npy` file.
pub fn write<T: Element>(path: &Path, shape: &[usize], data: &[T]) -> Result<(), NpyError> {
    let p = path.display().to_string();
    let bytes = encode(shape, data).map_err(|reason| NpyError::Format {
        path: p.clone(),
        reason,
    })?;
    std::fs::File::create(path)
        .and_then(|mut f| f.write_all(&bytes))
        .map_err(|source| NpyError::Io { path: p, source })
}

/// Encode `data` with `shape` as `.npy` bytes.
pub fn encode<T: Element>(shape: &[usize], data: &[T]) -> Result<Vec<u8>, String> {
    let count: usize = shape.iter().product();
    if count != data.len() {
        return Err(format!(
            "shape {shape:?} holds {count} elements, got {}",
            data.len()
        ));
    }
    let dims = match shape.len() {
        1 => format!("({},)", shape[0]),
        _ => format!(
            "({})",
            shape
                .iter()
                .map(usize::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut header = format!(
        "{{'descr': '{}', 'fortran_order': False, 'shape': {dims}, }}",
        T::DESCR
    );
    // Pad so that the data starts on a 64-byte boundary, header ends with '\n'.
    let total = MAGIC.len() + 4 + header.len() + 1;
    header.push_str(&" ".repeat((64 - total % 64) % 64));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + data.len() * 8);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for v in data {
        out.extend_from_slice(&v.to_le());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_f32_and_i64() {
        let data = vec![1.0f32, -2.5, 3.25, 0.0, 7.0, 8.5];
        let bytes = encode(&[2, 3], &data).unwrap();
        assert_eq!(bytes.len() % 64, 6 * 4, "data starts on a 64-byte boundary");
        let back: Array<f32> = parse(&bytes).unwrap();
        assert_eq!(back.shape, vec![2, 3]);
        assert_eq!(back.data, data);

        let ids = vec![49406i64, 320, 49407];
        let back: Array<i64> = parse(&encode(&[3], &ids).unwrap()).unwrap();
        assert_eq!(back.shape, vec![3]);
        assert_eq!(back.data, ids);
    }

    #[test]
    fn reads_numpy_written_header() {
        // Header exactly as numpy 2.x writes it for np.zeros((2,), np.float32).
        let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
        let mut h = "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }".to_string();
        while (10 + h.len() + 1) % 64 != 0 {
            h.push(' ');
        }
        h.push('\n');
        bytes.extend_from_slice(&(h.len() as u16).to_le_bytes());
        bytes.extend_from_slice(h.as_bytes());
        bytes.extend_from_slice(&[0u8; 8]);
        let a: Array<f32> = parse(&bytes).unwrap();
        assert_eq!(a.shape, vec![2]);
        assert_eq!(a.data, vec![0.0, 0.0]);
    }

    #[test]
    fn rejects_wrong_dtype_and_truncation() {
        let bytes = encode(&[2], &[1i64, 2]).unwrap();
        assert!(parse::<f32>(&bytes).unwrap_err().contains("dtype"));
        let bytes = encode(&[4], &[1.0f32; 4]).unwrap();
        assert!(parse::<f32>(&bytes[..bytes.len() - 1])
            .unwrap_err()
            .contains("truncated"));
        assert!(parse::<f32>(b"nope").is_err());
        assert!(encode(&[3], &[1.0f32; 2]).is_err());
    }
}
