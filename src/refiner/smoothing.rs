//! Decision smoothing: a per-source current state that changes only when the refined labels of
//! its recent frames agree, in the spirit of Frigate's consensus rules. One noisy frame, or a
//! refinement that flips a few labels, never toggles the state; a sustained change does.

use std::collections::HashMap;

use serde::Deserialize;

use crate::store::StateChange;

/// When a source's state may change.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SmoothingConfig {
    /// The most recent refined frames of a source that vote.
    pub window: usize,
    /// Fewest votes the new label needs.
    pub min_frames: usize,
    /// Fraction of the window's votes the new label needs (0–1).
    pub agreement: f32,
}

impl Default for SmoothingConfig {
    fn default() -> Self {
        SmoothingConfig {
            window: 16,
            min_frames: 5,
            agreement: 0.6,
        }
    }
}

/// The current state of every source.
#[derive(Debug, Default)]
pub struct Smoother {
    config: SmoothingConfig,
    state: HashMap<String, String>,
}

impl Smoother {
    pub fn new(config: SmoothingConfig) -> Self {
        Smoother {
            config,
            state: HashMap::new(),
        }
    }

    pub fn state(&self, source: &str) -> Option<&str> {
        self.state.get(source).map(String::as_str)
    }

    /// Feed one refinement's labels, `(source, ts_ms, refined label)` oldest first, and return
    /// the state changes they cause (at most one per source, stamped with the time of the newest
    /// vote).
    pub fn update(&mut self, labels: &[(String, i64, String)]) -> Vec<StateChange> {
        let mut by_source: Vec<(&str, Vec<(i64, &str)>)> = Vec::new();
        for (s, ts, l) in labels {
            match by_source.iter_mut().find(|(name, _)| *name == s.as_str()) {
                Some((_, v)) => v.push((*ts, l.as_str())),
                None => by_source.push((s.as_str(), vec![(*ts, l.as_str())])),
            }
        }
        let mut changes = Vec::new();
        for (source, votes) in by_source {
            let recent = &votes[votes.len().saturating_sub(self.config.window.max(1))..];
            let mut counts: Vec<(&str, usize)> = Vec::new();
            for (_, l) in recent {
                match counts.iter_mut().find(|(name, _)| name == l) {
                    Some((_, n)) => *n += 1,
                    None => counts.push((l, 1)),
                }
            }
            // Most votes; on a tie the label voted for most recently wins.
            let Some(&(best, n)) = counts.iter().max_by(|a, b| {
                a.1.cmp(&b.1).then_with(|| {
                    let last = |l: &str| recent.iter().rposition(|(_, x)| *x == l);
                    last(a.0).cmp(&last(b.0))
                })
            }) else {
                continue;
            };
            let agreement = n as f32 / recent.len() as f32;
            let current = self.state.get(source).map(String::as_str);
            if current == Some(best)
                || n < self.config.min_frames
                || agreement < self.config.agreement
            {
                continue;
            }
            changes.push(StateChange {
                ts_ms: recent.last().map_or(0, |v| v.0),
                source: source.to_string(),
                from_label: current.map(str::to_string),
                to_label: best.to_string(),
                agreement,
                n_frames: recent.len(),
            });
            self.state.insert(source.to_string(), best.to_string());
        }
        changes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn votes(source: &str, labels: &[&str]) -> Vec<(String, i64, String)> {
        labels
            .iter()
            .enumerate()
            .map(|(i, l)| (source.to_string(), i as i64, l.to_string()))
            .collect()
    }

    #[test]
    fn state_changes_only_on_sustained_agreement() {
        let mut s = Smoother::new(SmoothingConfig {
            window: 10,
            min_frames: 4,
            agreement: 0.6,
        });
        // Three dogs are not enough votes.
        assert!(s.update(&votes("cam", &["dog", "dog", "dog"])).is_empty());
        let c = s.update(&votes("cam", &["dog", "dog", "cat", "dog", "dog"]));
        assert_eq!(c.len(), 1);
        assert_eq!(
            (c[0].from_label.as_deref(), c[0].to_label.as_str()),
            (None, "dog")
        );
        assert!((c[0].agreement - 0.8).abs() < 1e-6);
        // The same state again is no change; a lone cat is no change.
        assert!(s
            .update(&votes("cam", &["dog", "cat", "dog", "dog", "dog"]))
            .is_empty());
        // A split window (5 cat of 10) misses 60% agreement.
        let split = [
            "dog", "cat", "dog", "cat", "dog", "cat", "dog", "cat", "dog", "cat",
        ];
        assert!(s.update(&votes("cam", &split)).is_empty());
        let c = s.update(&votes("cam", &["dog", "cat", "cat", "cat", "cat", "cat"]));
        assert_eq!(
            (c[0].from_label.as_deref(), c[0].to_label.as_str()),
            (Some("dog"), "cat")
        );
        assert_eq!(s.state("cam"), Some("cat"));
    }

    #[test]
    fn sources_are_independent_and_only_the_window_votes() {
        let mut s = Smoother::new(SmoothingConfig {
            window: 4,
            min_frames: 3,
            agreement: 0.75,
        });
        let mut v = votes("a", &["x", "x", "x", "x", "y", "y", "y", "y"]);
        v.extend(votes("b", &["z", "z", "z"]));
        let c = s.update(&v);
        assert_eq!(c.len(), 2);
        assert_eq!((c[0].source.as_str(), c[0].to_label.as_str()), ("a", "y"));
        assert_eq!((c[1].source.as_str(), c[1].to_label.as_str()), ("b", "z"));
        assert_eq!(c[0].n_frames, 4);
    }
}
