//! Secret files (keys, tokens): read only when nobody but the owner can read them.
//!
//! A private key or token in a file that group or others may read is as good as published on a
//! shared machine, so such a file is refused with the fix spelled out, as ssh refuses
//! `~/.ssh/id_*` with mode `0644`.

use std::{io, os::unix::fs::PermissionsExt, path::Path};

/// Why a secret file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The file could not be read.
    #[error("{path}: {error}")]
    Io {
        /// The file.
        path: String,
        /// What went wrong (in the message, so not also a `source`).
        error: io::Error,
    },
    /// Group or others may read or write the file.
    #[error(
        "{path}: permissions {mode:04o} are too open: a secret file must be readable by its owner only (run `chmod 600 {path}`)"
    )]
    TooOpen {
        /// The file.
        path: String,
        /// Its permission bits.
        mode: u32,
    },
    /// The file holds nothing.
    #[error("{path}: the file is empty")]
    Empty {
        /// The file.
        path: String,
    },
}

/// Checks that only the owner may read or write `path` (no group or other bits).
pub fn check_owner_only(path: &Path) -> Result<(), SecretError> {
    let meta = std::fs::metadata(path).map_err(|error| SecretError::Io {
        path: path.display().to_string(),
        error,
    })?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(SecretError::TooOpen {
            path: path.display().to_string(),
            mode,
        });
    }
    Ok(())
}

/// The trimmed contents of the secret file `path`, after checking that only its owner may read it.
pub fn read_secret_file(path: &Path) -> Result<String, SecretError> {
    check_owner_only(path)?;
    let text = std::fs::read_to_string(path).map_err(|error| SecretError::Io {
        path: path.display().to_string(),
        error,
    })?;
    let text = text.trim().to_owned();
    if text.is_empty() {
        return Err(SecretError::Empty {
            path: path.display().to_string(),
        });
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_with(mode: u32, text: &str) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("key");
        std::fs::write(&path, text).expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
        (dir, path)
    }

    #[test]
    fn owner_only_files_are_read_trimmed() {
        let (_d, path) = file_with(0o600, "  0xabc\n");
        assert_eq!(read_secret_file(&path).expect("read"), "0xabc");
        let (_d, path) = file_with(0o400, "k");
        assert_eq!(read_secret_file(&path).expect("read"), "k");
    }

    #[test]
    fn group_or_world_bits_are_refused_with_the_fix() {
        for mode in [0o644, 0o640, 0o604, 0o660, 0o606, 0o610] {
            let (_d, path) = file_with(mode, "secret-material");
            let err = read_secret_file(&path).expect_err("too open");
            let msg = err.to_string();
            assert!(
                matches!(err, SecretError::TooOpen { .. }),
                "{mode:o}: {msg}"
            );
            assert!(msg.contains("chmod 600"), "{msg}");
            assert!(!msg.contains("secret-material"), "{msg}");
        }
    }

    #[test]
    fn empty_and_missing_files_are_clear_errors() {
        let (_d, path) = file_with(0o600, " \n");
        assert!(matches!(
            read_secret_file(&path),
            Err(SecretError::Empty { .. })
        ));
        let missing = std::path::Path::new("/nonexistent/paychan/key");
        assert!(matches!(
            read_secret_file(missing),
            Err(SecretError::Io { .. })
        ));
    }
}
