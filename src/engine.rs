//! Start-up wiring shared by `run`, `classify` and `bench`: bundle → image encoder → class
//! prompts → text embeddings (from the cache when possible) → zero-shot head. Everything that
//! can be wrong with the inputs is found here, before any database is created.
//!
//! With a few-shot adapter the text side comes from the adapter file instead: its zero-shot
//! class embeddings feed the `classes` table and its trained head classifies, so the text
//! encoder is never loaded.
//!
//! `[engine] variant` selects reduced-precision encoders from the bundle (see
//! models/BUNDLE_FORMAT.md); the engine's `bundle` carries that choice, so every encoder loaded
//! from it, on either backend, runs the variant's graphs.

use std::collections::HashMap;
use std::path::Path;

use crate::adapter::file::{Adapter, AdapterError};
use crate::adapter::AdaptedHead;
use crate::bundle::{Bundle, BundleError};
use crate::classes::{
    build_head, distinct_prompts, ClassSpec, ClassesError, LabelIndex, PromptEmbedder,
};
use crate::encoder::{load_image_encoder, Backend, EncoderError, EncoderOptions, ImageEncoder};
use crate::error::{ExitClass, HasExitClass};
use crate::head::{Classifier, ZeroShotHead};
use crate::store::{ClassRecord, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error(transparent)]
    Encoder(#[from] EncoderError),
    #[error(transparent)]
    Classes(#[from] ClassesError),
    #[error(transparent)]
    Adapter(#[from] AdapterError),
}

impl HasExitClass for EngineError {
    fn exit_class(&self) -> ExitClass {
        match self {
            EngineError::Adapter(a) => a.exit_class(),
            _ => ExitClass::Model,
        }
    }
}

/// A loaded model ready to classify, plus what the history database still needs to learn.
pub struct Engine {
    pub bundle: Bundle,
    /// On the backend the config chose (tract unless `[engine] backend` says otherwise).
    pub image_encoder: Box<dyn ImageEncoder>,
    pub classes: Vec<ClassSpec>,
    pub head: ZeroShotHead,
    /// The ensembled embedding of each class (same order as `classes`).
    pub class_embeddings: Vec<Vec<f32>>,
    /// Prompt embeddings computed now (not found in the cache), to store.
    pub new_prompt_embeddings: Vec<(String, Vec<f32>)>,
    /// How many prompt embeddings came from the cache.
    pub cached_prompts: usize,
    /// The few-shot adapter that replaces the zero-shot head, if one was given.
    pub adapter: Option<Adapter>,
}

impl Engine {
    /// Load everything needed to classify with `classes`: the bundle's `variant` encoders
    /// (`[engine] variant`; `None`: the fp32 originals), the image encoder on `backend`.
    /// `cache_db`, if it exists, is read (read-only) for prompt embeddings computed by an
    /// earlier run with the same text encoder. Prompt embeddings are computed once at start-up
    /// (and cached, per text encoder) on tract whatever the backend: they agree with ONNX
    /// Runtime's to cosine ≥ 0.9999, and tract needs no library.
    pub fn load(
        backend: &Backend,
        variant: Option<&str>,
        bundle_dir: &Path,
        classes: Vec<ClassSpec>,
        opts: EncoderOptions,
        cache_db: Option<&Path>,
        adapter: Option<&Path>,
    ) -> Result<Engine, EngineError> {
        let bundle = Bundle::open(bundle_dir)?.with_variant(variant)?;
        if let Some(name) = bundle.variant() {
            log::info!(
                "model {}: variant {name}: {} and {}",
                bundle.model_id(),
                file_name(&bundle.image_encoder_path()),
                file_name(&bundle.text_encoder_path())
            );
        }
        // Check the adapter before the (slower) encoder load: a mismatch is the likelier error.
        let adapter = match adapter {
            Some(path) => {
                let a = Adapter::load(path)?;
                a.check(path, &bundle, &classes)?;
                Some(a)
            }
            None => None,
        };
        let image_encoder = load_image_encoder(&bundle, opts, backend)?;
        let m = &bundle.manifest;
        if let Some(a) = adapter {
            let labels = classes.iter().map(|c| c.name.clone()).collect();
            let head = ZeroShotHead::new(labels, a.text.data.clone(), m.embed_dim, m.logit_scale)
                .map_err(ClassesError::from)?;
            let class_embeddings = (0..a.text.rows).map(|i| a.text.row(i).to_vec()).collect();
            return Ok(Engine {
                bundle,
                image_encoder,
                classes,
                head,
                class_embeddings,
                new_prompt_embeddings: Vec::new(),
                cached_prompts: 0,
                adapter: Some(a),
            });
        }
        let prompts = distinct_prompts(&classes);
        let mut embeddings: HashMap<String, Vec<f32>> = HashMap::new();
        if let Some(db) = cache_db.filter(|p| p.exists()) {
            match read_cache(db, &text_cache_key(&bundle), &prompts) {
                Ok(found) => embeddings = found,
                // A cache is an optimisation: an unreadable one is reported, then recomputed.
                Err(e) => log::warn!("text-embedding cache not used: {e}"),
            }
        }
        let cached_prompts = embeddings.len();
        let missing: Vec<String> = prompts
            .iter()
            .filter(|p| !embeddings.contains_key(*p))
            .cloned()
            .collect();
        let mut new_prompt_embeddings = Vec::new();
        if !missing.is_empty() {
            let mut embedder = PromptEmbedder::new(&bundle, opts.threads);
            let rows = embedder.embed(&missing)?;
            for (p, e) in missing.into_iter().zip(rows) {
                embeddings.insert(p.clone(), e.clone());
                new_prompt_embeddings.push((p, e));
            }
        }
        let (head, class_embeddings) =
            build_head(&classes, &embeddings, m.embed_dim, m.logit_scale)
                .map_err(ClassesError::from)?;
        Ok(Engine {
            bundle,
            image_encoder,
            classes,
            head,
            class_embeddings,
            new_prompt_embeddings,
            cached_prompts,
            adapter: None,
        })
    }

    /// What frames are classified with: the adapter's head if there is one, else zero-shot.
    pub fn classifier(&self) -> Box<dyn Classifier> {
        match &self.adapter {
            Some(a) => Box::new(AdaptedHead::new(
                self.head.labels().to_vec(),
                a.head.clone(),
            )),
            None => Box::new(self.head.clone()),
        }
    }

    /// The adapter's id (logged with every frame), if an adapter is in use.
    pub fn adapter_id(&self) -> Option<String> {
        self.adapter.as_ref().map(|a| a.id.clone())
    }

    /// Maps known labels onto this engine's classes.
    pub fn label_index(&self) -> LabelIndex {
        LabelIndex::new(&self.classes)
    }

    /// Record the text side in the database: new prompt embeddings and the class table.
    pub fn save_text_side(&self, store: &mut Store) -> Result<(), StoreError> {
        if !self.new_prompt_embeddings.is_empty() {
            store
                .put_text_embeddings(&text_cache_key(&self.bundle), &self.new_prompt_embeddings)?;
        }
        let records: Vec<ClassRecord> = self
            .classes
            .iter()
            .zip(&self.class_embeddings)
            .map(|(c, e)| ClassRecord {
                name: c.name.clone(),
                domain: c.domain.clone(),
                prompts: c.prompts.clone(),
                embedding: e.clone(),
            })
            .collect();
        store.put_classes(&self.bundle.model_id(), &records)?;
        Ok(())
    }
}

/// What cached prompt embeddings are filed under: the bundle hash, plus the variant's name when
/// the variant replaces the text encoder (its embeddings differ from the fp32 encoder's).
fn text_cache_key(bundle: &Bundle) -> String {
    match bundle.variant() {
        Some(v) if bundle.text_encoder_is_variant() => format!("{}+{v}", bundle.sha256),
        _ => bundle.sha256.clone(),
    }
}

fn file_name(p: &Path) -> String {
    p.file_name().map_or_else(
        || p.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

fn read_cache(
    db: &Path,
    bundle_sha: &str,
    prompts: &[String],
) -> Result<HashMap<String, Vec<f32>>, StoreError> {
    let store = Store::open_read_only(db)?;
    let mut found = HashMap::new();
    for p in prompts {
        if let Some(e) = store.get_text_embedding(bundle_sha, p)? {
            found.insert(p.clone(), e);
        }
    }
    Ok(found)
}
