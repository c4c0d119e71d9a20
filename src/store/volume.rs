//! Facts about the volume a database lives on: whether it is a network
//! file system, and how much space is free on it.
//!
//! SQLite's WAL mode keeps its index in shared memory (the `-shm` file,
//! mapped by every connection) and relies on POSIX advisory locks. Neither
//! works reliably over NFS, CIFS/SMB and their kind: two hosts do not share
//! the mapping, and lock support varies by server and mount options. The
//! result is silent corruption, so such a volume is refused unless the user
//! says they know (`store.allow_network_fs`), and then warned about.

use std::path::Path;

/// `statfs(2)` `f_type` magic numbers of the file systems treated as
/// network-backed, with the name the error message shows (from
/// `linux/magic.h` and the file systems' own headers).
const NETWORK_FS_MAGIC: &[(u32, &str)] = &[
    (0x6969, "nfs"),
    (0x517B, "smb"),
    (0xFF53_4D42, "cifs"),
    (0xFE53_4D42, "smb2"),
    (0x5346_414F, "afs"),
    (0x6B41_4653, "kafs"),
    (0x7375_7245, "coda"),
    (0x564C, "ncp"),
    (0x0102_1997, "9p"),
    (0x00C3_6400, "ceph"),
    (0x0BD0_0BD0, "lustre"),
    (0x0116_1970, "gfs2"),
    (0x7461_636F, "ocfs2"),
];

/// The network file system a `statfs` `f_type` names, if it is one.
pub fn network_fs_name(f_type: u32) -> Option<&'static str> {
    NETWORK_FS_MAGIC
        .iter()
        .find(|(magic, _)| *magic == f_type)
        .map(|(_, name)| *name)
}

/// The network file system `path` lives on, if any. The database may not
/// exist yet, so the nearest existing ancestor is asked. `None` when the
/// volume is local or cannot be examined (then SQLite's own open reports
/// any real problem).
#[cfg(target_os = "linux")]
pub fn network_fs_of(path: &Path) -> Option<&'static str> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;

    let probe = nearest_existing(path)?;
    let c_path = CString::new(probe.as_os_str().as_bytes()).ok()?;
    // SAFETY: `statfs` writes into the zeroed struct we own and reads the
    // NUL-terminated path, which outlives the call.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statfs(c_path.as_ptr(), &mut st) };
    if rc != 0 {
        return None;
    }
    // `f_type` is i64 on 64-bit targets and i32 on 32-bit ARM (a Raspberry
    // Pi OS userland): the magic is the low 32 bits either way.
    #[allow(clippy::unnecessary_cast)]
    let magic = st.f_type as u32;
    network_fs_name(magic)
}

/// Only Linux is examined; elsewhere nothing is refused.
#[cfg(not(target_os = "linux"))]
pub fn network_fs_of(_path: &Path) -> Option<&'static str> {
    None
}

/// Bytes an unprivileged process may still write on the volume holding
/// `path` (or its nearest existing ancestor); `None` when unknown.
#[cfg(unix)]
pub fn available_bytes(path: &Path) -> Option<u64> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;

    let probe = nearest_existing(path)?;
    let c_path = CString::new(probe.as_os_str().as_bytes()).ok()?;
    // SAFETY: as for `statfs` above: a zeroed struct we own, a live C string.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), &mut st) };
    if rc != 0 {
        return None;
    }
    // Field widths differ between targets; both are unsigned counts.
    #[allow(clippy::unnecessary_cast)]
    let bytes = (st.f_bavail as u64).saturating_mul(st.f_frsize as u64);
    Some(bytes)
}

#[cfg(not(unix))]
pub fn available_bytes(_path: &Path) -> Option<u64> {
    None
}

/// `path` itself if it exists, else its closest existing ancestor (a
/// relative path with no such ancestor is asked about `.`).
fn nearest_existing(path: &Path) -> Option<&Path> {
    let mut probe = path;
    loop {
        if probe.as_os_str().is_empty() {
            probe = Path::new(".");
        }
        if probe.exists() {
            return Some(probe);
        }
        probe = probe.parent()?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_network_magics_and_passes_local_ones() {
        assert_eq!(network_fs_name(0x6969), Some("nfs"));
        assert_eq!(network_fs_name(0xFF53_4D42), Some("cifs"));
        assert_eq!(network_fs_name(0xFE53_4D42), Some("smb2"));
        assert_eq!(network_fs_name(0x517B), Some("smb"));
        assert_eq!(network_fs_name(0x0102_1997), Some("9p"));
        // ext4, tmpfs, btrfs, xfs, f2fs, overlayfs, vfat: local.
        for local in [
            0xEF53u32,
            0x0102_1994,
            0x9123_683E,
            0x5846_5342,
            0xF2F5_2010,
            0x794C_7630,
            0x4d44,
        ] {
            assert_eq!(network_fs_name(local), None, "{local:#x}");
        }
    }

    #[test]
    fn cifs_magic_survives_a_signed_32_bit_f_type() {
        // On 32-bit ARM `f_type` is an i32, so CIFS's magic arrives negative.
        let as_i32 = 0xFF53_4D42u32 as i32;
        assert!(as_i32 < 0);
        #[allow(clippy::unnecessary_cast)]
        let magic = as_i32 as u32;
        assert_eq!(network_fs_name(magic), Some("cifs"));
    }

    #[test]
    fn a_local_temp_dir_and_a_missing_file_in_it_are_local() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(network_fs_of(dir.path()), None);
        assert_eq!(network_fs_of(&dir.path().join("a/b/missing.db")), None);
        assert_eq!(network_fs_of(Path::new("relative-missing.db")), None);
    }

    #[test]
    fn free_space_is_reported_for_missing_files_too() {
        let dir = tempfile::tempdir().unwrap();
        let here = available_bytes(dir.path()).unwrap();
        assert!(here > 0);
        assert!(available_bytes(&dir.path().join("x/y.db")).is_some());
    }
}
