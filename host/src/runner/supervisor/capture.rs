//! Captured output of one attempt: kept on disk as it arrives, capped.
//!
//! The first `max_output_bytes` bytes are written to the attempt's output file as they come,
//! so they survive a crash of the host. The file is created with the first byte: an attempt
//! that printed nothing has none (most print nothing, and on a busy file system creating a
//! file costs more than the rest of an attempt's supervision). Past the cap, only the last [`TAIL_BYTES`] are kept
//! (a crash message is usually at the end); [`Capture::finish`] appends them after a line
//! saying how much was dropped in between.

use std::{
    collections::VecDeque,
    fs::File,
    io::{self, Write},
    path::{Path, PathBuf},
};

use crate::platform::OutputSink;

/// How much of the end of an over-long output is kept.
pub const TAIL_BYTES: usize = 8 * 1024;

/// A capped output file being written.
pub struct Capture {
    path: PathBuf,
    /// The output file, once something was written to it.
    file: Option<File>,
    limit: u64,
    written: u64,
    total: u64,
    recent: VecDeque<u8>,
    error: Option<io::Error>,
}

/// What was captured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapturedOutput {
    /// The file holding it.
    pub path: PathBuf,
    /// Bytes the process wrote in all.
    pub total_bytes: u64,
    /// Bytes dropped in the middle because of the cap.
    pub dropped_bytes: u64,
    /// Why some of it could not be written to the file (a full disk), if so. The attempt's
    /// outcome does not depend on it: output is kept best effort, the report is what counts.
    pub not_saved: Option<String>,
}

/// The most an output file kept with `limit` holds: the kept bytes, the truncation notice and
/// the tail.
pub fn max_file_bytes(limit: u64) -> u64 {
    limit + TAIL_BYTES as u64 + 256
}

impl Capture {
    /// Starts the output file at `path`, keeping at most `limit` leading bytes: an earlier
    /// one there (of a run of the attempt that did not start) is removed, and the file is
    /// created with the first byte.
    pub fn create(path: &Path, limit: u64) -> io::Result<Self> {
        crate::shared::files::remove_if_present(path)?;
        Ok(Self {
            path: path.to_path_buf(),
            file: None,
            limit,
            written: 0,
            total: 0,
            recent: VecDeque::with_capacity(TAIL_BYTES),
            error: None,
        })
    }

    /// Opens the output file at `path` to go on capturing after a restart: what is already
    /// there counts against the limit.
    pub fn append(path: &Path, limit: u64) -> io::Result<Self> {
        make_parent(path)?;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        let written = file.metadata()?.len().min(limit);
        Ok(Self {
            path: path.to_path_buf(),
            file: Some(file),
            limit,
            written,
            total: written,
            recent: VecDeque::with_capacity(TAIL_BYTES),
            error: None,
        })
    }

    /// Whether the last [`TAIL_BYTES`] of output contain `needle`.
    pub fn tail_contains(&self, needle: &str) -> bool {
        let (a, b) = self.recent.as_slices();
        String::from_utf8_lossy(&[a, b].concat()).contains(needle)
    }

    /// Writes the kept tail and the truncation notice, and says what was captured, and what
    /// could not be written.
    pub fn finish(mut self) -> CapturedOutput {
        let beyond_cap = self.total - self.written;
        let tail_len = beyond_cap.min(self.recent.len() as u64) as usize;
        let dropped = beyond_cap - tail_len as u64;
        if dropped > 0 {
            let notice = format!(
                "\n[jobhost: output over the {} byte limit; {dropped} bytes dropped here, the last {tail_len} follow]\n",
                self.limit
            );
            self.keep(notice.as_bytes());
        }
        let skip = self.recent.len() - tail_len;
        let tail: Vec<u8> = self.recent.iter().skip(skip).copied().collect();
        self.keep(&tail);
        CapturedOutput {
            not_saved: self
                .error
                .map(|e| format!("cannot write {}: {e}", self.path.display())),
            path: self.path,
            total_bytes: self.total,
            dropped_bytes: dropped,
        }
    }

    /// Writes `bytes` to the file, creating it first if need be; the first failure is kept
    /// for [`CapturedOutput::not_saved`].
    fn keep(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        let written = match &mut self.file {
            Some(file) => file.write_all(bytes),
            None => make_parent(&self.path)
                .and_then(|()| File::create(&self.path))
                .and_then(|mut file| {
                let written = file.write_all(bytes);
                self.file = Some(file);
                written
            }),
        };
        if let Err(e) = written {
            self.error.get_or_insert(e);
        }
    }
}

/// Makes the directory an output file goes in (its job's), owner-only, if it is not there.
fn make_parent(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(dir) => crate::shared::files::create_private_dir(dir),
        None => Ok(()),
    }
}

impl OutputSink for Capture {
    fn write(&mut self, chunk: &[u8]) {
        self.total += chunk.len() as u64;
        let room = (self.limit - self.written).min(chunk.len() as u64) as usize;
        if room > 0 {
            self.keep(&chunk[..room]);
            self.written += room as u64;
        }
        let keep = &chunk[chunk.len().saturating_sub(TAIL_BYTES)..];
        let excess = (self.recent.len() + keep.len()).saturating_sub(TAIL_BYTES);
        self.recent.drain(..excess);
        self.recent.extend(keep);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn captured(limit: u64, chunks: &[&[u8]]) -> (CapturedOutput, String) {
        let dir = std::env::temp_dir().join(format!(
            "jobhost-capture-{}-{limit}-{}",
            std::process::id(),
            chunks.len()
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("out.log");
        let mut capture = Capture::create(&path, limit).expect("create");
        for chunk in chunks {
            capture.write(chunk);
        }
        let out = capture.finish();
        assert_eq!(out.not_saved, None);
        let text = std::fs::read_to_string(&path).expect("read");
        std::fs::remove_dir_all(&dir).expect("clean up");
        (out, text)
    }

    #[test]
    fn an_attempt_that_prints_nothing_has_no_output_file_and_a_stale_one_goes() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("1.out");
        std::fs::write(&path, "from a run that did not start").expect("stale file");
        let out = Capture::create(&path, 100).expect("create").finish();
        assert_eq!((out.total_bytes, out.dropped_bytes), (0, 0));
        assert_eq!(out.not_saved, None);
        assert!(!path.exists(), "no output, no file");
    }

    #[test]
    fn output_under_the_limit_is_kept_whole() {
        let (out, text) = captured(100, &[b"hello ", b"world\n"]);
        assert_eq!(text, "hello world\n");
        assert_eq!((out.total_bytes, out.dropped_bytes), (12, 0));
    }

    #[test]
    fn output_over_the_limit_keeps_head_and_tail_and_says_what_was_dropped() {
        let big = vec![b'x'; 3 * TAIL_BYTES];
        let (out, text) = captured(10, &[b"0123456789HEAD-OVERFLOW", &big, b"THE-END"]);
        assert!(
            text.starts_with("0123456789\n[jobhost: output over the 10 byte limit;"),
            "{}",
            &text[..80]
        );
        assert!(text.ends_with("THE-END"));
        assert_eq!(out.total_bytes, 10 + 13 + big.len() as u64 + 7);
        assert_eq!(out.dropped_bytes, out.total_bytes - 10 - TAIL_BYTES as u64);
    }

    #[test]
    fn output_just_over_the_limit_drops_nothing() {
        let (out, text) = captured(4, &[b"abcdef"]);
        assert_eq!(text, "abcdef");
        assert_eq!(out.dropped_bytes, 0);
    }
}
