//! Zero-shot classification head: class prompts, prompt ensembling, `logit_scale · cos`,
//! softmax and top-k. Pure computation on plain slices; the encoders and the cache live
//! elsewhere.

use crate::error::{ExitClass, HasExitClass};
/// Built-in prompt templates for a class domain, in the style of the CLIP zero-shot studies
/// (`{}` is replaced by the class name). Unknown domains get the generic
/// "a photo of a {}, a type of <domain>." template.
pub fn domain_templates(domain: Option<&str>) -> Vec<String> {
    let Some(domain) = domain.map(str::trim).filter(|d| !d.is_empty()) else {
        return vec!["a photo of a {}.".to_string()];
    };
    let fixed: &[&str] = match domain.to_ascii_lowercase().as_str() {
        "food" => &["a photo of {}, a type of food."],
        "animal" => &["a photo of a {}, a kind of animal."],
        "dog" | "dog breed" => &["a photo of a {}, a type of dog."],
        "cat" | "cat breed" | "pet" => &["a photo of a {}, a type of pet."],
        "bird" => &["a photo of a {}, a type of bird."],
        "flower" => &["a photo of a {}, a type of flower."],
        "aircraft" => &["a photo of a {}, a type of aircraft."],
        _ => &[],
    };
    if fixed.is_empty() {
        vec![format!("a photo of a {{}}, a type of {domain}.")]
    } else {
        fixed.iter().map(|s| s.to_string()).collect()
    }
}

/// Why `template` is not a prompt template: it must name the class (`{}` or `{name}`) and use
/// no placeholder but `{}`, `{name}` and `{domain}`; a typo such as `{nmae}` would otherwise
/// be embedded literally.
pub fn check_template(template: &str) -> Result<(), String> {
    let mut rest = template;
    let mut names_class = false;
    while let Some(open) = rest.find('{') {
        let Some(len) = rest[open..].find('}') else {
            return Err(format!("{template:?} has an unclosed '{{'"));
        };
        let placeholder = &rest[open..open + len + 1];
        match placeholder {
            "{}" | "{name}" => names_class = true,
            "{domain}" => {}
            other => {
                return Err(format!(
                    "{template:?}: unknown placeholder {other} (use {{}} or {{name}} for the class name, {{domain}} for its domain)"
                ))
            }
        }
        rest = &rest[open + len + 1..];
    }
    if names_class {
        Ok(())
    } else {
        Err(format!(
            "{template:?} does not name the class: put {{}} (or {{name}}) where the class name goes"
        ))
    }
}

/// Fill a template: `{}` and `{name}` become the class name, `{domain}` its domain.
pub fn fill_template(template: &str, name: &str, domain: Option<&str>) -> String {
    template
        .replace("{name}", name)
        .replace("{domain}", domain.unwrap_or(""))
        .replace("{}", name)
}

/// The prompts for one class: explicit `prompts` win, then explicit `templates`, then the
/// domain's built-in templates.
pub fn class_prompts(
    name: &str,
    domain: Option<&str>,
    templates: Option<&[String]>,
    prompts: Option<&[String]>,
) -> Vec<String> {
    if let Some(p) = prompts.filter(|p| !p.is_empty()) {
        return p.to_vec();
    }
    let templates = match templates.filter(|t| !t.is_empty()) {
        Some(t) => t.to_vec(),
        None => domain_templates(domain),
    };
    templates
        .iter()
        .map(|t| fill_template(t, name, domain))
        .collect()
}

/// Prompt ensembling: the mean of the L2-normalised prompt embeddings, renormalised.
pub fn ensemble(rows: &[&[f32]]) -> Vec<f32> {
    let dim = rows.first().map_or(0, |r| r.len());
    let mut acc = vec![0f32; dim];
    for r in rows {
        let n = norm(r);
        if n > 0.0 {
            for (a, v) in acc.iter_mut().zip(r.iter()) {
                *a += v / n;
            }
        }
    }
    let n = norm(&acc);
    if n > 0.0 {
        acc.iter_mut().for_each(|v| *v /= n);
    }
    acc
}

fn norm(v: &[f32]) -> f32 {
    v.iter().map(|x| x * x).sum::<f32>().sqrt()
}

/// Numerically stable softmax in place.
pub fn softmax(v: &mut [f32]) {
    let max = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for x in v.iter_mut() {
        *x = (*x - max).exp();
        sum += *x;
    }
    if sum > 0.0 {
        v.iter_mut().for_each(|x| *x /= sum);
    }
}

/// Indices of the `k` largest values, largest first (ties keep the lower index first).
pub fn top_k(v: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by(|&a, &b| v[b].total_cmp(&v[a]).then(a.cmp(&b)));
    idx.truncate(k);
    idx
}

/// One classification result.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    /// Index of the top-1 class.
    pub class: usize,
    /// Softmax probability of the top-1 class.
    pub score: f32,
    /// (class index, probability), best first.
    pub top_k: Vec<(usize, f32)>,
}

#[derive(Debug, thiserror::Error)]
pub enum HeadError {
    #[error("no classes")]
    NoClasses,
    #[error("class matrix has {got} values, expected {classes} classes × {dim}")]
    Shape {
        got: usize,
        classes: usize,
        dim: usize,
    },
}

impl HasExitClass for HeadError {
    fn exit_class(&self) -> ExitClass {
        ExitClass::Model
    }
}

/// The zero-shot head: a K×d matrix of normalised class embeddings and a logit scale.
#[derive(Debug, Clone)]
pub struct ZeroShotHead {
    labels: Vec<String>,
    weights: Vec<f32>,
    dim: usize,
    logit_scale: f32,
}

impl ZeroShotHead {
    /// Build from per-class embeddings (`labels.len() × dim`, normalised here).
    pub fn new(
        labels: Vec<String>,
        mut weights: Vec<f32>,
        dim: usize,
        logit_scale: f32,
    ) -> Result<Self, HeadError> {
        if labels.is_empty() {
            return Err(HeadError::NoClasses);
        }
        if dim == 0 || weights.len() != labels.len() * dim {
            return Err(HeadError::Shape {
                got: weights.len(),
                classes: labels.len(),
                dim,
            });
        }
        crate::encoder::l2_normalize_rows(&mut weights, dim);
        Ok(ZeroShotHead {
            labels,
            weights,
            dim,
            logit_scale,
        })
    }

    /// Build from each class's prompt embeddings (any scale), ensembled per class.
    pub fn from_prompts(
        labels: Vec<String>,
        per_class: &[Vec<Vec<f32>>],
        dim: usize,
        logit_scale: f32,
    ) -> Result<Self, HeadError> {
        let mut weights = Vec::with_capacity(per_class.len() * dim);
        for prompts in per_class {
            let rows: Vec<&[f32]> = prompts.iter().map(Vec::as_slice).collect();
            let e = ensemble(&rows);
            if e.len() != dim {
                return Err(HeadError::Shape {
                    got: e.len(),
                    classes: 1,
                    dim,
                });
            }
            weights.extend(e);
        }
        ZeroShotHead::new(labels, weights, dim, logit_scale)
    }

    pub fn labels(&self) -> &[String] {
        &self.labels
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The normalised K×d class matrix.
    pub fn weights(&self) -> &[f32] {
        &self.weights
    }

    /// `logit_scale · cos(f, t_k)` for every class; `feature` must be L2-normalised.
    pub fn logits(&self, feature: &[f32]) -> Vec<f32> {
        self.weights
            .chunks_exact(self.dim)
            .map(|w| self.logit_scale * w.iter().zip(feature).map(|(a, b)| a * b).sum::<f32>())
            .collect()
    }

    /// Softmax over the logits, top-1 and top-k.
    pub fn predict(&self, feature: &[f32], k: usize) -> Prediction {
        predict_from_logits(self.logits(feature), k)
    }
}

/// Softmax over `logits`, then the top-1 class and the `k` best.
pub fn predict_from_logits(mut p: Vec<f32>, k: usize) -> Prediction {
    softmax(&mut p);
    let top = top_k(&p, k.max(1));
    let class = top.first().copied().unwrap_or(0);
    Prediction {
        class,
        score: p.get(class).copied().unwrap_or(0.0),
        top_k: top.into_iter().map(|i| (i, p[i])).collect(),
    }
}

/// What the pipeline classifies a normalised image embedding with: the zero-shot head or a
/// few-shot adapter.
pub trait Classifier: Send + Sync {
    fn labels(&self) -> &[String];
    fn dim(&self) -> usize;
    /// Logits over the classes for one L2-normalised embedding.
    fn logits(&self, feature: &[f32]) -> Vec<f32>;
    /// Softmax, top-1 and the `k` best.
    fn predict(&self, feature: &[f32], k: usize) -> Prediction {
        predict_from_logits(self.logits(feature), k)
    }
}

/// A classifier shared between threads (the pipeline's head and the refiner) is still one.
impl<C: Classifier + ?Sized> Classifier for std::sync::Arc<C> {
    fn labels(&self) -> &[String] {
        (**self).labels()
    }
    fn dim(&self) -> usize {
        (**self).dim()
    }
    fn logits(&self, feature: &[f32]) -> Vec<f32> {
        (**self).logits(feature)
    }
    fn predict(&self, feature: &[f32], k: usize) -> Prediction {
        (**self).predict(feature, k)
    }
}

impl Classifier for ZeroShotHead {
    fn labels(&self) -> &[String] {
        ZeroShotHead::labels(self)
    }
    fn dim(&self) -> usize {
        ZeroShotHead::dim(self)
    }
    fn logits(&self, feature: &[f32]) -> Vec<f32> {
        ZeroShotHead::logits(self, feature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompts_follow_domain_and_overrides() {
        assert_eq!(
            class_prompts("circle", Some("shape"), None, None),
            vec!["a photo of a circle, a type of shape."]
        );
        assert_eq!(
            class_prompts("pizza", Some("food"), None, None),
            vec!["a photo of pizza, a type of food."]
        );
        assert_eq!(
            class_prompts("cat", None, None, None),
            vec!["a photo of a cat."]
        );
        let t = vec!["{} on a {domain}".to_string(), "a {name}".to_string()];
        assert_eq!(
            class_prompts("mug", Some("table"), Some(&t), None),
            vec!["mug on a table", "a mug"]
        );
        let p = vec!["literal".to_string()];
        assert_eq!(
            class_prompts("mug", Some("x"), Some(&t), Some(&p)),
            vec!["literal"]
        );
    }

    #[test]
    fn ensemble_is_mean_of_normalised_then_renormalised() {
        let a = [2.0, 0.0];
        let b = [0.0, 5.0];
        let e = ensemble(&[&a, &b]);
        let s = 1.0 / 2f32.sqrt();
        assert!((e[0] - s).abs() < 1e-6 && (e[1] - s).abs() < 1e-6);
    }

    #[test]
    fn softmax_and_topk() {
        let mut v = vec![1.0, 3.0, 2.0, 3.0];
        assert_eq!(top_k(&v, 3), vec![1, 3, 2]);
        softmax(&mut v);
        assert!((v.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        let mut big = vec![1000.0, 0.0];
        softmax(&mut big);
        assert_eq!(big, vec![1.0, 0.0]);
    }

    #[test]
    fn head_predicts_nearest_class_with_scaled_logits() {
        let head = ZeroShotHead::new(
            vec!["x".into(), "y".into(), "z".into()],
            vec![1.0, 0.0, 0.0, 2.0, 1.0, 1.0],
            2,
            100.0,
        )
        .unwrap();
        let l = head.logits(&[0.0, 1.0]);
        assert!((l[0] - 0.0).abs() < 1e-4 && (l[1] - 100.0).abs() < 1e-4);
        assert!((l[2] - 100.0 / 2f32.sqrt()).abs() < 1e-3);
        let p = head.predict(&[0.0, 1.0], 2);
        assert_eq!(p.class, 1);
        assert_eq!(p.top_k.len(), 2);
        assert_eq!(p.top_k[1].0, 2);
        assert!(p.score > 0.99);
        assert!(ZeroShotHead::new(vec![], vec![], 2, 1.0).is_err());
        assert!(ZeroShotHead::new(vec!["a".into()], vec![1.0], 2, 1.0).is_err());
    }
}
