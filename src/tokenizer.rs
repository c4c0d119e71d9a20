//! CLIP tokenisation: the bundle's `tokenizer.json` through the `tokenizers` crate, framed as
//! `[SOT] tokens… [EOT]`, truncated so that EOT stays last and right-padded with `pad_id` to the
//! manifest's context length (open_clip's `tokenize` semantics).

use std::path::{Path, PathBuf};

use crate::bundle::TextSpec;
use crate::error::{ExitClass, HasExitClass};

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("{}: cannot load tokenizer: {msg}", path.display())]
    Load { path: PathBuf, msg: String },
    #[error("cannot tokenize {text:?}: {msg}")]
    Encode { text: String, msg: String },
}

impl HasExitClass for TokenizerError {
    fn exit_class(&self) -> ExitClass {
        ExitClass::Model
    }
}

/// A loaded CLIP tokenizer with the manifest's framing parameters.
pub struct ClipTokenizer {
    inner: tokenizers::Tokenizer,
    spec: TextSpec,
}

impl ClipTokenizer {
    pub fn load(path: &Path, spec: &TextSpec) -> Result<Self, TokenizerError> {
        if !path.is_file() {
            return Err(TokenizerError::Load {
                path: path.to_path_buf(),
                msg: "file not found".into(),
            });
        }
        let mut inner =
            tokenizers::Tokenizer::from_file(path).map_err(|e| TokenizerError::Load {
                path: path.to_path_buf(),
                msg: e.to_string(),
            })?;
        // Framing is done here, so any truncation/padding baked into the file must not interfere.
        inner.with_padding(None);
        inner
            .with_truncation(None)
            .map_err(|e| TokenizerError::Load {
                path: path.to_path_buf(),
                msg: e.to_string(),
            })?;
        Ok(ClipTokenizer {
            inner,
            spec: spec.clone(),
        })
    }

    pub fn context_length(&self) -> usize {
        self.spec.context_length
    }

    /// Token ids for `text`, exactly `context_length` long.
    pub fn encode(&self, text: &str) -> Result<Vec<i64>, TokenizerError> {
        let enc = self
            .inner
            .encode(text, true)
            .map_err(|e| TokenizerError::Encode {
                text: text.to_string(),
                msg: e.to_string(),
            })?;
        Ok(frame(enc.get_ids(), &self.spec))
    }

    /// Token ids for several texts, `n × context_length` row-major.
    pub fn encode_all(&self, texts: &[String]) -> Result<Vec<i64>, TokenizerError> {
        let mut out = Vec::with_capacity(texts.len() * self.spec.context_length);
        for t in texts {
            out.extend(self.encode(t)?);
        }
        Ok(out)
    }
}

/// Frame raw ids as `[SOT] body… [EOT] pad…` of exactly `context_length`, whether or not the
/// tokenizer's post-processor already added SOT/EOT; truncation drops body tokens, never EOT.
pub fn frame(ids: &[u32], spec: &TextSpec) -> Vec<i64> {
    let ctx = spec.context_length;
    let mut body = ids;
    if body.first() == Some(&spec.sot_id) {
        body = &body[1..];
    }
    if body.last() == Some(&spec.eot_id) {
        body = &body[..body.len() - 1];
    }
    let keep = body.len().min(ctx.saturating_sub(2));
    let mut out = Vec::with_capacity(ctx);
    out.push(spec.sot_id as i64);
    out.extend(body[..keep].iter().map(|&i| i as i64));
    out.push(spec.eot_id as i64);
    out.resize(ctx, spec.pad_id as i64);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(ctx: usize) -> TextSpec {
        TextSpec {
            context_length: ctx,
            sot_id: 1,
            eot_id: 2,
            pad_id: 0,
        }
    }

    #[test]
    fn frames_pads_and_truncates_keeping_eot() {
        assert_eq!(frame(&[1, 5, 6, 2], &spec(6)), vec![1, 5, 6, 2, 0, 0]);
        assert_eq!(frame(&[5, 6], &spec(6)), vec![1, 5, 6, 2, 0, 0]);
        assert_eq!(frame(&[1, 5, 6, 7, 8, 9, 2], &spec(5)), vec![1, 5, 6, 7, 2]);
        assert_eq!(frame(&[], &spec(3)), vec![1, 2, 0]);
    }

    #[test]
    fn missing_file_names_path() {
        let e = match ClipTokenizer::load(Path::new("/nonexistent/tokenizer.json"), &spec(4)) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("loaded a missing file"),
        };
        assert!(e.contains("/nonexistent/tokenizer.json"), "{e}");
    }
}
