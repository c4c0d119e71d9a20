//! The rows the history holds, as the rest of clipd hands them to the store and reads them back:
//! classified frames, refinement passes, state changes, classes.

use serde::Serialize;

/// One classified (or failed) frame, as the pipeline produces it.
///
/// Exactly one of `label` and `error` is set: a frame that could not be
/// decoded or classified is still logged, with its error and no label.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct FrameRecord {
    /// Row id to insert under; `None` lets SQLite pick. The daemon assigns ids
    /// itself (see [`Store::max_frame_id`]) so its refiner can name rows that
    /// are still on their way to the database.
    pub id: Option<i64>,
    /// Capture time, UTC epoch milliseconds (see [`now_ms`]).
    pub ts_ms: i64,
    /// Source name from the config (camera, directory, glob, ...).
    pub source: String,
    /// File path or frame counter, enough to find the frame again.
    pub frame_ref: String,
    /// Top-1 label; `None` exactly when `error` is set.
    pub label: Option<String>,
    /// Top-1 probability.
    pub score: Option<f32>,
    /// Top-k `(label, probability)` pairs, best first.
    pub topk: Vec<(String, f32)>,
    /// sha256 of the model bundle.
    pub model_id: String,
    /// Adapter identity; `None` for zero-shot.
    pub adapter_id: Option<String>,
    /// Time spent on this frame from decode to prediction.
    pub latency_us: Option<u64>,
    /// Image embedding, stored as f16 (half the space; CLIP embeddings do not
    /// need more precision for retrieval or refinement).
    pub embedding: Option<Vec<f32>>,
    /// Why the frame has no label.
    pub error: Option<String>,
}

impl FrameRecord {
    /// A successfully classified frame; `topk[0]` is the label.
    pub fn classified(
        ts_ms: i64,
        source: impl Into<String>,
        frame_ref: impl Into<String>,
        model_id: impl Into<String>,
        topk: Vec<(String, f32)>,
    ) -> FrameRecord {
        let (label, score) = match topk.first() {
            Some((l, s)) => (Some(l.clone()), Some(*s)),
            None => (None, None),
        };
        FrameRecord {
            ts_ms,
            source: source.into(),
            frame_ref: frame_ref.into(),
            label,
            score,
            topk,
            model_id: model_id.into(),
            ..FrameRecord::default()
        }
    }

    /// A frame that could not be classified (corrupt file, unsupported format...).
    pub fn failed(
        ts_ms: i64,
        source: impl Into<String>,
        frame_ref: impl Into<String>,
        model_id: impl Into<String>,
        error: impl Into<String>,
    ) -> FrameRecord {
        FrameRecord {
            ts_ms,
            source: source.into(),
            frame_ref: frame_ref.into(),
            model_id: model_id.into(),
            error: Some(error.into()),
            ..FrameRecord::default()
        }
    }

    /// `frame "<frame_ref>" from source "<source>"`, for messages.
    pub fn describe(&self) -> String {
        format!("frame {:?} from source {:?}", self.frame_ref, self.source)
    }

    /// Checks the invariants the schema enforces, so a bad record can be
    /// rejected alone instead of failing the whole batch it travels in.
    pub fn validate(&self) -> Result<(), String> {
        match (&self.label, &self.error) {
            (Some(_), Some(_)) => return Err("it has both a label and an error".into()),
            (None, None) => return Err("it has neither a label nor an error".into()),
            _ => {}
        }
        if self.ts_ms < 0 {
            return Err(format!("timestamp {} ms is before 1970", self.ts_ms));
        }
        if let Some(s) = self.score {
            if !s.is_finite() {
                return Err(format!("score {s} is not a finite number"));
            }
        }
        if let Some((l, s)) = self.topk.iter().find(|(_, s)| !s.is_finite()) {
            return Err(format!("top-k score {s} for {l:?} is not a finite number"));
        }
        Ok(())
    }
}

/// One refiner pass: what ran, over how many frames, and the labels it chose.
#[derive(Debug, Clone, PartialEq)]
pub struct RefinementRecord {
    pub ts_ms: i64,
    /// e.g. `transclip`, `em-dirichlet`.
    pub algorithm: String,
    /// JSON object of the parameters used.
    pub params: String,
    pub n_frames: usize,
    /// Frames whose refined label differs from their original label.
    pub n_changed: usize,
    pub duration_ms: u64,
    /// `(frame id, refined label, refined score)`.
    pub labels: Vec<(i64, String, f32)>,
    /// Decision-state changes this pass caused.
    pub state_changes: Vec<StateChange>,
}

/// A source's smoothed state moved from one label to another.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StateChange {
    pub ts_ms: i64,
    pub source: String,
    pub from_label: Option<String>,
    pub to_label: String,
    /// Fraction of the window's refined labels that agreed on `to_label`.
    pub agreement: f32,
    pub n_frames: usize,
}

/// A stored frame with its embedding, as offline refinement reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct EmbeddedFrame {
    pub id: i64,
    pub ts_ms: i64,
    pub source: String,
    pub label: String,
    pub model_id: String,
    pub adapter_id: Option<String>,
    pub embedding: Vec<f32>,
}

/// A class the head was configured with, and its ensembled text embedding.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClassRecord {
    pub name: String,
    pub domain: Option<String>,
    pub prompts: Vec<String>,
    pub embedding: Vec<f32>,
}
