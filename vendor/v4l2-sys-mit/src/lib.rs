//! Raw V4L2 bindings: bindgen's output for `<linux/videodev2.h>`, generated ahead of time per
//! target (`bindings/<arch>.rs`, made by `scripts/gen-v4l2-bindings` with the options the
//! upstream crate's build script uses), so no libclang is needed to build.
#![allow(clippy::all)]
#![allow(deref_nullptr)]
#![allow(non_camel_case_types)]
#![allow(non_snake_case)]
#![allow(non_upper_case_globals)]

#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
include!("bindings/x86_64.rs");
#[cfg(all(target_os = "linux", target_arch = "aarch64"))]
include!("bindings/aarch64.rs");
#[cfg(all(target_os = "linux", target_arch = "arm"))]
include!("bindings/armv7.rs");

#[cfg(not(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64", target_arch = "arm")
)))]
compile_error!(
    "no pre-generated V4L2 bindings for this target: add it to scripts/gen-v4l2-bindings \
     and run it (needs libclang), or build clipd with --no-default-features (no camera)"
);
