//! V4L2 cameras through nokhwa.

use super::{FrameSource, SourceError};
use crate::config::SourceConfig;

/// Open the camera of config entry `key`.
pub fn open(
    key: &str,
    _name: String,
    cfg: &SourceConfig,
) -> Result<Box<dyn FrameSource>, SourceError> {
    Err(SourceError::Setup {
        key: key.to_string(),
        path: std::path::PathBuf::from(&cfg.path),
        msg: "camera sources are not available yet".into(),
    })
}
