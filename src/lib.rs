//! clipd: on-device CLIP image classification with a SQLite history.
//!
//! Frames flow `source → preprocess → encoder → head → store`; each stage is a module here
//! (see ARCHITECTURE.md). The `clipd` binary is a thin CLI over this library.

pub mod adapter;
pub mod bundle;
pub mod classes;
pub mod config;
pub mod daemon;
pub mod encoder;
pub mod engine;
pub mod error;
pub mod exit;
pub mod head;
pub mod npy;
pub mod paths;
pub mod pipeline;
pub mod preprocess;
pub mod refiner;
pub mod report;
pub mod rng;
pub mod source;
pub mod store;
pub mod tokenizer;
pub mod transduct;
