//! Where the example jobs keep their files, and how they write them.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

/// The storage directory: `$APP_STORAGE_DIR` if set and non-empty, else `./storage`
/// (relative to the worker's current directory).
pub fn storage_dir() -> PathBuf {
    std::env::var_os("APP_STORAGE_DIR")
        .filter(|dir| !dir.is_empty())
        .map_or_else(|| PathBuf::from("storage"), PathBuf::from)
}

/// Writes `contents` to a temporary file beside `path`, then renames it over `path`, creating
/// the parent directory if needed; readers never see a partial file.
///
/// The temporary file is `.<name>.tmp-<pid>` in the same directory, so the rename stays on one
/// file system; it is removed again if the write or the rename fails.
pub fn write_atomically(path: &Path, contents: &[u8]) -> io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::other("path has no parent directory"))?;
    fs::create_dir_all(dir)?;
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::other("path has no file name"))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let written = fs::write(&tmp, contents).and_then(|()| fs::rename(&tmp, path));
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{file_names, TestDir};

    #[test]
    fn write_atomically_creates_the_parent_and_leaves_no_temporary_file() {
        let dir = TestDir::new("example-support", "atomic");
        let path = dir.0.join("a/b/file.txt");
        write_atomically(&path, b"one").expect("first write");
        write_atomically(&path, b"two").expect("overwrite");
        assert_eq!(fs::read(&path).expect("written"), b"two");
        assert_eq!(file_names(&dir.0.join("a/b")), ["file.txt"]);
    }

    #[test]
    fn write_atomically_needs_a_file_name() {
        let dir = TestDir::new("example-support", "no-name");
        let err = write_atomically(&dir.0.join(".."), b"x").expect_err("no file name");
        assert_eq!(err.to_string(), "path has no file name");
    }
}
