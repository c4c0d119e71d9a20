//! The text side of zero-shot classification: class prompts → text embeddings → the head's
//! class matrix. Prompt embeddings are cached in the history database keyed by (bundle sha256,
//! prompt text), so a restart with the same bundle and classes never loads the text encoder.

use std::collections::HashMap;

use crate::bundle::Bundle;
use crate::encoder::{encode_texts, l2_normalize_rows, EncoderOptions, TractTextEncoder};
use crate::error::{ExitClass, HasExitClass};
use crate::head::{ensemble, HeadError, ZeroShotHead};
use crate::tokenizer::{ClipTokenizer, TokenizerError};

#[derive(Debug, thiserror::Error)]
pub enum ClassesError {
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error(transparent)]
    Encoder(#[from] crate::encoder::EncoderError),
    #[error(transparent)]
    Head(#[from] HeadError),
}

impl HasExitClass for ClassesError {
    fn exit_class(&self) -> ExitClass {
        ExitClass::Model
    }
}

/// One class with its prompts, as the head is built from it.
#[derive(Debug, Clone)]
pub struct ClassSpec {
    pub name: String,
    pub domain: Option<String>,
    pub prompts: Vec<String>,
    pub aliases: Vec<String>,
}

/// Every distinct prompt of `classes`, in first-seen order.
pub fn distinct_prompts(classes: &[ClassSpec]) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    classes
        .iter()
        .flat_map(|c| c.prompts.iter())
        .filter(|p| seen.insert(p.as_str()))
        .cloned()
        .collect()
}

/// Embeds prompts with the bundle's tokenizer and text encoder, both loaded on first use.
pub struct PromptEmbedder<'a> {
    bundle: &'a Bundle,
    threads: usize,
    loaded: Option<(ClipTokenizer, TractTextEncoder)>,
}

impl<'a> PromptEmbedder<'a> {
    pub fn new(bundle: &'a Bundle, threads: usize) -> Self {
        PromptEmbedder {
            bundle,
            threads,
            loaded: None,
        }
    }

    /// Whether the text encoder had to be loaded.
    pub fn was_loaded(&self) -> bool {
        self.loaded.is_some()
    }

    /// Load the tokenizer and text encoder now (checks them against the manifest).
    pub fn load(&mut self) -> Result<(), ClassesError> {
        if self.loaded.is_none() {
            let m = &self.bundle.manifest;
            let tok = ClipTokenizer::load(&self.bundle.tokenizer_path(), &m.text)?;
            let enc = TractTextEncoder::load(
                self.bundle,
                EncoderOptions {
                    batch: 8,
                    threads: self.threads,
                    lanes: 1,
                },
            )?;
            self.loaded = Some((tok, enc));
        }
        Ok(())
    }

    /// L2-normalised embeddings of `prompts`, one row each.
    pub fn embed(&mut self, prompts: &[String]) -> Result<Vec<Vec<f32>>, ClassesError> {
        if prompts.is_empty() {
            return Ok(vec![]);
        }
        self.load()?;
        let Some((tok, enc)) = self.loaded.as_mut() else {
            return Ok(vec![]);
        };
        let ids = tok.encode_all(prompts)?;
        let mut out = encode_texts(enc, &ids)?;
        let d = self.bundle.manifest.embed_dim;
        l2_normalize_rows(&mut out, d);
        Ok(out.chunks_exact(d).map(<[f32]>::to_vec).collect())
    }
}

/// Build the head from classes and a prompt → normalised embedding map covering every prompt.
pub fn build_head(
    classes: &[ClassSpec],
    embeddings: &HashMap<String, Vec<f32>>,
    dim: usize,
    logit_scale: f32,
) -> Result<(ZeroShotHead, Vec<Vec<f32>>), HeadError> {
    let mut per_class = Vec::with_capacity(classes.len());
    for c in classes {
        let rows: Vec<&[f32]> = c
            .prompts
            .iter()
            .filter_map(|p| embeddings.get(p).map(Vec::as_slice))
            .collect();
        if rows.len() != c.prompts.len() || rows.iter().any(|r| r.len() != dim) {
            return Err(HeadError::Shape {
                got: rows.iter().map(|r| r.len()).sum(),
                classes: 1,
                dim,
            });
        }
        per_class.push(ensemble(&rows));
    }
    let labels = classes.iter().map(|c| c.name.clone()).collect();
    let head = ZeroShotHead::new(labels, per_class.concat(), dim, logit_scale)?;
    Ok((head, per_class))
}

/// Maps known labels (class names, aliases, loosely spelled directory names) to class indices.
#[derive(Debug, Clone)]
pub struct LabelIndex {
    exact: HashMap<String, usize>,
    loose: HashMap<String, usize>,
}

fn loosen(s: &str) -> String {
    s.trim()
        .to_lowercase()
        .chars()
        .map(|c| if c == '_' || c == '-' { ' ' } else { c })
        .collect::<String>()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

impl LabelIndex {
    pub fn new(classes: &[ClassSpec]) -> Self {
        let mut exact = HashMap::new();
        let mut loose = HashMap::new();
        for (i, c) in classes.iter().enumerate() {
            for n in std::iter::once(&c.name).chain(c.aliases.iter()) {
                exact.entry(n.clone()).or_insert(i);
                loose.entry(loosen(n)).or_insert(i);
            }
        }
        LabelIndex { exact, loose }
    }

    /// The class a known label refers to: exact name or alias first, then ignoring case,
    /// `_`/`-` versus spaces.
    pub fn lookup(&self, label: &str) -> Option<usize> {
        self.exact
            .get(label)
            .or_else(|| self.loose.get(&loosen(label)))
            .copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, prompts: &[&str], aliases: &[&str]) -> ClassSpec {
        ClassSpec {
            name: name.into(),
            domain: None,
            prompts: prompts.iter().map(|s| s.to_string()).collect(),
            aliases: aliases.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn builds_head_from_cached_prompts() {
        let classes = vec![spec("a", &["p1", "p2"], &[]), spec("b", &["p2"], &[])];
        assert_eq!(distinct_prompts(&classes), vec!["p1", "p2"]);
        let mut emb = HashMap::new();
        emb.insert("p1".to_string(), vec![1.0, 0.0]);
        emb.insert("p2".to_string(), vec![0.0, 1.0]);
        let (head, rows) = build_head(&classes, &emb, 2, 100.0).unwrap();
        assert_eq!(head.labels(), &["a".to_string(), "b".to_string()]);
        assert!((rows[0][0] - rows[0][1]).abs() < 1e-6);
        assert_eq!(head.predict(&[0.0, 1.0], 1).class, 1);
        emb.remove("p1");
        assert!(build_head(&classes, &emb, 2, 100.0).is_err());
    }

    #[test]
    fn label_index_matches_names_aliases_and_dir_spellings() {
        let classes = vec![spec("hot dog", &[], &[]), spec("7", &[], &["digit_7"])];
        let ix = LabelIndex::new(&classes);
        assert_eq!(ix.lookup("hot dog"), Some(0));
        assert_eq!(ix.lookup("Hot_Dog"), Some(0));
        assert_eq!(ix.lookup("digit_7"), Some(1));
        assert_eq!(ix.lookup("7"), Some(1));
        assert_eq!(ix.lookup("cat"), None);
    }
}
