//! Test helpers for the example plugins' unit tests.

use std::{
    fs,
    path::{Path, PathBuf},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

/// A fresh directory under the system temp dir, removed (with everything in it) when dropped.
///
/// The directory is `<temp>/<prefix>-test-<name>-<pid>`: give each crate its own `prefix` and
/// each test its own `name`, so tests running in parallel never share a directory.
pub struct TestDir(
    /// The directory's path.
    pub PathBuf,
);

impl TestDir {
    /// Creates the directory for test `name` of crate `prefix`, emptying any left over from an
    /// earlier run.
    ///
    /// # Panics
    ///
    /// If the directory cannot be created.
    pub fn new(prefix: &str, name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("{prefix}-test-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create test dir");
        Self(dir)
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// The time `secs` seconds after the Unix epoch.
pub fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

/// The names of the entries of `dir`, sorted.
///
/// # Panics
///
/// If `dir` cannot be listed.
pub fn file_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .expect("list the directory")
        .map(|e| {
            e.expect("directory entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_directory_exists_until_dropped() {
        let dir = TestDir::new("example-support", "drop");
        let path = dir.0.clone();
        assert!(path.ends_with(format!("example-support-test-drop-{}", std::process::id())));
        fs::write(path.join("b"), "x").expect("write into the test dir");
        fs::create_dir(path.join("a")).expect("mkdir in the test dir");
        assert_eq!(file_names(&path), ["a", "b"]);
        drop(dir);
        assert!(!path.exists());
    }

    #[test]
    fn at_counts_from_the_epoch() {
        assert_eq!(at(0), UNIX_EPOCH);
        assert_eq!(at(90), UNIX_EPOCH + Duration::from_secs(90));
    }
}
