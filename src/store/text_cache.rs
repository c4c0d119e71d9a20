//! The text side, cached: prompt embeddings keyed by (text encoder, prompt), so a restart with
//! the same bundle and classes never loads the text encoder, and the classes each model was
//! configured with.

use rusqlite::{params, OptionalExtension, TransactionBehavior};

use super::{f32_from_le_bytes, f32_le_bytes, ClassRecord, Ctx, Store, StoreError};

impl Store {
    /// The cached text embedding of `prompt` under model `model_id`.
    pub fn get_text_embedding(
        &self,
        model_id: &str,
        prompt: &str,
    ) -> Result<Option<Vec<f32>>, StoreError> {
        let row: Option<(Vec<u8>, i64)> = self
            .conn
            .prepare_cached(
                "SELECT embedding, dim FROM text_cache WHERE model_id = ?1 AND prompt = ?2",
            )
            .and_then(|mut s| {
                s.query_row([model_id, prompt], |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()
            })
            .ctx(&self.path, "reading the text-embedding cache")?;
        let Some((blob, dim)) = row else {
            return Ok(None);
        };
        match f32_from_le_bytes(&blob) {
            Some(v) if i64::try_from(v.len()) == Ok(dim) => Ok(Some(v)),
            _ => Err(StoreError::InvalidData {
                path: self.path.clone(),
                what: "text_cache.embedding",
                row: format!("model {model_id}, prompt {prompt:?}"),
                detail: format!("{} bytes do not hold {dim} f32 values", blob.len()),
            }),
        }
    }

    /// Stores (or replaces) text embeddings for `model_id`, all in one
    /// transaction. Returns the number stored.
    pub fn put_text_embeddings<P, E>(
        &mut self,
        model_id: &str,
        entries: &[(P, E)],
    ) -> Result<usize, StoreError>
    where
        P: AsRef<str>,
        E: AsRef<[f32]>,
    {
        let path = &self.path;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .ctx(path, "starting a write transaction")?;
        {
            let mut stmt = tx
                .prepare_cached(
                    "INSERT INTO text_cache (model_id, prompt, embedding, dim) VALUES (?1, ?2, ?3, ?4) \
                     ON CONFLICT (model_id, prompt) DO UPDATE SET embedding = excluded.embedding, dim = excluded.dim",
                )
                .ctx(path, "preparing the text-cache insert")?;
            for (prompt, emb) in entries {
                let emb = emb.as_ref();
                if emb.is_empty() {
                    return Err(StoreError::InvalidRecord {
                        path: path.clone(),
                        what: format!("a text embedding for prompt {:?}", prompt.as_ref()),
                        reason: "the embedding is empty".into(),
                    });
                }
                let dim = i64::try_from(emb.len()).unwrap_or(i64::MAX);
                stmt.execute(params![model_id, prompt.as_ref(), f32_le_bytes(emb), dim])
                    .ctx(path, "writing the text-embedding cache")?;
            }
        }
        tx.commit()
            .ctx(path, "committing the text-embedding cache")?;
        Ok(entries.len())
    }

    /// Stores (or replaces) the classes `model_id` runs with, in one
    /// transaction. Classes not in `classes` are left as they are. Returns the
    /// number stored.
    pub fn put_classes(
        &mut self,
        model_id: &str,
        classes: &[ClassRecord],
    ) -> Result<usize, StoreError> {
        let path = &self.path;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .ctx(path, "starting a write transaction")?;
        {
            let mut stmt = tx
                .prepare_cached(
                    "INSERT INTO classes (model_id, name, domain, prompts, embedding) VALUES (?1, ?2, ?3, ?4, ?5) \
                     ON CONFLICT (model_id, name) DO UPDATE SET domain = excluded.domain, \
                     prompts = excluded.prompts, embedding = excluded.embedding",
                )
                .ctx(path, "preparing the class insert")?;
            for c in classes {
                let prompts =
                    serde_json::to_string(&c.prompts).map_err(|e| StoreError::InvalidRecord {
                        path: path.clone(),
                        what: format!("class {:?}", c.name),
                        reason: e.to_string(),
                    })?;
                stmt.execute(params![
                    model_id,
                    c.name,
                    c.domain,
                    prompts,
                    f32_le_bytes(&c.embedding)
                ])
                .ctx(path, "writing classes")?;
            }
        }
        tx.commit().ctx(path, "committing classes")?;
        Ok(classes.len())
    }

    /// The classes stored for `model_id`, by name.
    /// Every class name any model was configured with, sorted.
    pub fn class_names(&self) -> Result<Vec<String>, StoreError> {
        self.conn
            .prepare_cached("SELECT DISTINCT name FROM classes ORDER BY name")
            .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
            .ctx(&self.path, "reading class names")
    }

    pub fn classes(&self, model_id: &str) -> Result<Vec<ClassRecord>, StoreError> {
        let path = &self.path;
        let raw: Vec<(String, Option<String>, String, Vec<u8>)> = self
            .conn
            .prepare_cached(
                "SELECT name, domain, prompts, embedding FROM classes WHERE model_id = ?1 ORDER BY name",
            )
            .and_then(|mut s| {
                s.query_map([model_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
                    .collect()
            })
            .ctx(path, "reading classes")?;
        raw.into_iter()
            .map(|(name, domain, prompts, blob)| {
                let bad = |what, detail| StoreError::InvalidData {
                    path: path.clone(),
                    what,
                    row: format!("model {model_id}, class {name:?}"),
                    detail,
                };
                let prompts: Vec<String> = serde_json::from_str(&prompts)
                    .map_err(|e| bad("classes.prompts", e.to_string()))?;
                let embedding = f32_from_le_bytes(&blob).ok_or_else(|| {
                    bad(
                        "classes.embedding",
                        format!("{} bytes is not a whole number of f32 values", blob.len()),
                    )
                })?;
                Ok(ClassRecord {
                    name,
                    domain,
                    prompts,
                    embedding,
                })
            })
            .collect()
    }
}
