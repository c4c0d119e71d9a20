//! The support set on disk — one folder per class, folder name = class name — and its
//! features: every shot is decoded once and encoded in its plain CLIP view plus `augment`
//! random views (random resized crop + flip, as Tip-Adapter builds its cache).

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::linalg::Mat;
use super::train::Shots;
use crate::classes::{ClassSpec, LabelIndex};
use crate::encoder::{l2_normalize_rows, EncoderError, ImageEncoder};
use crate::error::{ExitClass, HasExitClass};
use crate::preprocess::{augment, decode_bytes, to_rgb8, DecodeLimits, Transform};
use crate::rng::Rng;
use crate::source::is_image_path;

#[derive(Debug, thiserror::Error)]
pub enum SupportError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("support folder {}: no such directory (it holds one folder of shots per class, e.g. shots/dog/1.jpg)", path.display())]
    NoFolder { path: PathBuf },
    #[error("{}: folder {folder:?} matches no configured class; rename it to a class name or add the class to the config", path.display())]
    UnknownFolder { path: PathBuf, folder: String },
    #[error("{}: no folder for class {class:?}; add {}/ with at least one image or remove the class from the config", dir.display(), class.replace(' ', "_"))]
    MissingClass { dir: PathBuf, class: String },
    #[error("{}: no images (supported: png, jpg, jpeg, gif, bmp, tif, tiff, webp); every class needs at least one shot", path.display())]
    EmptyFolder { path: PathBuf },
    #[error("{}: no readable images in the class folder; every class needs at least one valid shot", path.display())]
    NoValidShots { path: PathBuf },
    #[error("folders {} and {} both name class {class:?}; keep one", a.display(), b.display())]
    Duplicate {
        class: String,
        a: PathBuf,
        b: PathBuf,
    },
    #[error(transparent)]
    Encoder(#[from] EncoderError),
}

impl HasExitClass for SupportError {
    fn exit_class(&self) -> ExitClass {
        match self {
            SupportError::Io { .. } => ExitClass::Io,
            SupportError::Encoder(e) => e.exit_class(),
            _ => ExitClass::Usage,
        }
    }
}

/// One class folder and its image files (sorted).
#[derive(Debug, Clone)]
pub struct ClassFolder {
    pub class: usize,
    pub path: PathBuf,
    pub files: Vec<PathBuf>,
}

/// Map the sub-folders of `dir` onto `classes` (by name, alias, or the name with `_` for
/// spaces). Every folder must be a class and every class must have a non-empty folder.
pub fn scan(dir: &Path, classes: &[ClassSpec]) -> Result<Vec<ClassFolder>, SupportError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| SupportError::Io { path, source }
    };
    if !dir.is_dir() {
        return Err(SupportError::NoFolder {
            path: dir.to_path_buf(),
        });
    }
    let index = LabelIndex::new(classes);
    let mut found: Vec<Option<ClassFolder>> = vec![None; classes.len()];
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io(dir))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .map_err(io(dir))?;
    entries.sort();
    for path in entries {
        if !path.is_dir() {
            continue;
        }
        let folder = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if folder.starts_with('.') {
            continue;
        }
        let class = index
            .lookup(&folder)
            .ok_or_else(|| SupportError::UnknownFolder {
                path: path.clone(),
                folder: folder.clone(),
            })?;
        let mut files: Vec<PathBuf> = std::fs::read_dir(&path)
            .map_err(io(&path))?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(io(&path))?
            .into_iter()
            .filter(|p| p.is_file() && is_image_path(p))
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(SupportError::EmptyFolder { path });
        }
        if let Some(prev) = &found[class] {
            return Err(SupportError::Duplicate {
                class: classes[class].name.clone(),
                a: prev.path.clone(),
                b: path,
            });
        }
        found[class] = Some(ClassFolder { class, path, files });
    }
    found
        .into_iter()
        .enumerate()
        .map(|(i, f)| {
            f.ok_or_else(|| SupportError::MissingClass {
                dir: dir.to_path_buf(),
                class: classes[i].name.clone(),
            })
        })
        .collect()
}

/// A shot that made it into the features.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ShotRecord {
    pub class: usize,
    pub file: String,
    pub sha256: String,
}

/// Encoded shots plus what was skipped.
#[derive(Debug, Clone)]
pub struct Encoded {
    pub shots: Shots,
    /// One per shot, in feature-row order.
    pub records: Vec<ShotRecord>,
    /// Unreadable files and why.
    pub skipped: Vec<(PathBuf, String)>,
}

/// Decode every file of `folders` and encode it in the plain view plus `augment` random
/// views. Unreadable images are skipped and reported; a class left without any shot is an
/// error naming its folder. Views are deterministic in `seed` (one stream per file).
#[allow(clippy::too_many_arguments)]
pub fn encode(
    folders: &[ClassFolder],
    classes: usize,
    transform: &Transform,
    encoder: &mut dyn ImageEncoder,
    limits: &DecodeLimits,
    augment_views: usize,
    seed: u64,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Encoded, SupportError> {
    let views = 1 + augment_views;
    let per = transform.len();
    let d = encoder.embed_dim();
    let total: usize = folders.iter().map(|f| f.files.len()).sum();
    let mut pixels: Vec<Vec<f32>> = vec![Vec::new(); views];
    let mut records = Vec::new();
    let mut labels = Vec::new();
    let mut skipped = Vec::new();
    for folder in folders {
        let before = labels.len();
        for file in &folder.files {
            let bytes = match std::fs::read(file) {
                Ok(b) => b,
                Err(e) => {
                    skipped.push((file.clone(), e.to_string()));
                    continue;
                }
            };
            let img = match decode_bytes(&bytes, file, limits) {
                Ok(i) => to_rgb8(i),
                Err(e) => {
                    skipped.push((file.clone(), e.to_string()));
                    continue;
                }
            };
            let mut buf = vec![0.0; per];
            transform.apply(&img, &mut buf);
            pixels[0].extend_from_slice(&buf);
            let mut rng = Rng::derive(seed, &[records.len() as u64]);
            for v in pixels.iter_mut().skip(1) {
                let a = augment(&img, transform.size, &mut rng);
                transform.apply(&a, &mut buf);
                v.extend_from_slice(&buf);
            }
            records.push(ShotRecord {
                class: folder.class,
                file: file.display().to_string(),
                sha256: format!("{:x}", Sha256::digest(&bytes)),
            });
            labels.push(folder.class);
            progress(records.len() + skipped.len(), total);
        }
        if labels.len() == before {
            return Err(SupportError::NoValidShots {
                path: folder.path.clone(),
            });
        }
    }
    let n = labels.len();
    let mut feats = Vec::with_capacity(views);
    for px in &pixels {
        feats.push(Mat::from_vec(n, d, encode_all(encoder, px, n, per)?));
    }
    Ok(Encoded {
        shots: Shots {
            views: feats,
            labels,
            classes,
        },
        records,
        skipped,
    })
}

/// Encode `n` preprocessed images in encoder-sized batches; rows come back normalised.
pub fn encode_all(
    encoder: &mut dyn ImageEncoder,
    pixels: &[f32],
    n: usize,
    per: usize,
) -> Result<Vec<f32>, EncoderError> {
    let d = encoder.embed_dim();
    let b = encoder.batch_size().max(1);
    let mut out = Vec::with_capacity(n * d);
    for chunk in pixels.chunks(b * per) {
        out.extend(encoder.encode(chunk, chunk.len() / per)?);
    }
    l2_normalize_rows(&mut out, d);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str) -> ClassSpec {
        ClassSpec {
            name: name.into(),
            domain: None,
            prompts: vec![],
            aliases: vec![],
        }
    }

    #[test]
    fn a_missing_support_folder_is_named() {
        let e = scan(Path::new("/no/such/shots"), &[spec("cat")]).unwrap_err();
        assert!(matches!(e, SupportError::NoFolder { .. }), "{e}");
        assert!(
            e.to_string()
                .starts_with("support folder /no/such/shots: no such directory"),
            "{e}"
        );
    }

    fn png(dir: &Path, name: &str, v: u8) {
        let img = image::RgbImage::from_pixel(8, 8, image::Rgb([v, v / 2, 255 - v]));
        img.save(dir.join(name)).unwrap();
    }

    /// Mean channel values as a 3-d "embedding": enough to see that each view was encoded.
    struct MeanEncoder;
    impl ImageEncoder for MeanEncoder {
        fn batch_size(&self) -> usize {
            2
        }
        fn embed_dim(&self) -> usize {
            3
        }
        fn image_size(&self) -> usize {
            4
        }
        fn encode(&mut self, px: &[f32], n: usize) -> Result<Vec<f32>, EncoderError> {
            assert!(n <= 2);
            let per = 48;
            Ok((0..n)
                .flat_map(|i| {
                    (0..3).map(move |c| {
                        px[i * per + c * 16..i * per + (c + 1) * 16]
                            .iter()
                            .sum::<f32>()
                            / 16.0
                    })
                })
                .collect())
        }
    }

    #[test]
    fn scan_maps_folders_and_names_every_problem() {
        let t = tempfile::tempdir().unwrap();
        let classes = [spec("wood grain"), spec("cup")];
        for (d, v) in [("wood_grain", 10), ("cup", 200)] {
            std::fs::create_dir(t.path().join(d)).unwrap();
            png(&t.path().join(d), "a.png", v);
        }
        let f = scan(t.path(), &classes).unwrap();
        assert_eq!(f.len(), 2);
        assert_eq!((f[0].class, f[0].files.len()), (0, 1));

        std::fs::create_dir(t.path().join("teapot")).unwrap();
        let e = scan(t.path(), &classes).unwrap_err().to_string();
        assert!(
            e.contains("teapot") && e.contains("matches no configured class"),
            "{e}"
        );
        std::fs::remove_dir(t.path().join("teapot")).unwrap();

        let more = [spec("wood grain"), spec("cup"), spec("fish")];
        let e = scan(t.path(), &more).unwrap_err().to_string();
        assert!(e.contains("no folder for class \"fish\""), "{e}");

        std::fs::create_dir(t.path().join("fish")).unwrap();
        std::fs::write(t.path().join("fish/notes.txt"), "x").unwrap();
        let e = scan(t.path(), &more).unwrap_err().to_string();
        assert!(e.contains("fish") && e.contains("no images"), "{e}");
    }

    #[test]
    fn encode_skips_unreadable_shots_and_builds_views() {
        let t = tempfile::tempdir().unwrap();
        let classes = [spec("a"), spec("b")];
        for (d, v) in [("a", 10u8), ("b", 240)] {
            let dir = t.path().join(d);
            std::fs::create_dir(&dir).unwrap();
            png(&dir, "1.png", v);
            png(&dir, "2.png", v.wrapping_add(5));
        }
        std::fs::write(t.path().join("a/3.png"), b"not a png").unwrap();
        let folders = scan(t.path(), &classes).unwrap();
        let tr = Transform {
            size: 4,
            mean: [0.0; 3],
            std: [1.0; 3],
        };
        let enc = encode(
            &folders,
            2,
            &tr,
            &mut MeanEncoder,
            &DecodeLimits::default(),
            3,
            7,
            &mut |_, _| {},
        )
        .unwrap();
        assert_eq!(enc.skipped.len(), 1);
        assert!(enc.skipped[0].0.ends_with("a/3.png"));
        assert_eq!(enc.shots.labels, vec![0, 0, 1, 1]);
        assert_eq!(enc.shots.views.len(), 4);
        assert_eq!(enc.records[2].sha256.len(), 64);
        // Flat-colour images look the same in every view.
        for v in &enc.shots.views[1..] {
            for (a, b) in v.data.iter().zip(&enc.shots.views[0].data) {
                assert!((a - b).abs() < 1e-5);
            }
        }

        // A class whose only file is unreadable is an error naming its folder.
        std::fs::remove_file(t.path().join("b/1.png")).unwrap();
        std::fs::write(t.path().join("b/2.png"), b"broken").unwrap();
        let folders = scan(t.path(), &classes).unwrap();
        let e = encode(
            &folders,
            2,
            &tr,
            &mut MeanEncoder,
            &DecodeLimits::default(),
            0,
            7,
            &mut |_, _| {},
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("no readable images") && e.contains('b'), "{e}");
    }
}
