//! Reading the files jobhost reads whole — settings, the allowlist, the plugin catalog, the
//! reports its children write, lock and health files — without trusting what is at the path.
//!
//! A path may name a FIFO (opening it for reading would wait for a writer), a device such as
//! `/dev/zero` (endless) or a file far larger than any the host writes. [`read_capped`] opens
//! without blocking, accepts only a regular file (after following symlinks), and reads at most
//! a limit, so none of these can hang a process or exhaust its memory; each gets one error
//! naming the file, what is wrong and what to do. The limits are in `docs/limits.md`.

use std::{
    io::{self, Read},
    path::{Path, PathBuf},
};

/// The largest settings file (`jobhost.toml`) read.
pub const MAX_SETTINGS_BYTES: u64 = 1024 * 1024;
/// The largest allowlist file read.
pub const MAX_ALLOWLIST_BYTES: u64 = 1024 * 1024;
/// The largest report read: one a child process writes (a worker's result, an inspector's
/// listing), and the plugin catalog (`catalog.json`), written the same way.
pub const MAX_REPORT_BYTES: u64 = 64 * 1024 * 1024;
/// The largest small state file read: a lock file, the health file, a doorbell's port.
pub const MAX_STATE_FILE_BYTES: u64 = 64 * 1024;

/// Reads the whole file at `path`, at most `limit` bytes of it. `what` says what the file is
/// (`"a settings file"`), for the error. Opens without blocking, and refuses anything but a
/// regular file: a FIFO, a device, a directory or a socket is an
/// [`io::ErrorKind::InvalidInput`] error; a file over `limit` an [`io::ErrorKind::FileTooLarge`]
/// error. Both messages say what is wrong and what to do; the caller's error names the file
/// (`cannot read settings file PATH: it is a FIFO …`). A missing file is the usual
/// [`io::ErrorKind::NotFound`].
pub fn read_capped(path: &Path, limit: u64, what: &str) -> io::Result<Vec<u8>> {
    let file = open_regular(std::fs::OpenOptions::new().read(true), path, what)?;
    let too_big = |len: u64| {
        io::Error::new(
            io::ErrorKind::FileTooLarge,
            format!(
                "it is {len} bytes, over the limit of {limit} bytes for {what}: name the right \
                 file, or make it smaller"
            ),
        )
    };
    let len = file.metadata()?.len();
    if len > limit {
        return Err(too_big(len));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    // One byte over the limit tells a file that grew since the `fstat` from one that did not.
    file.take(limit + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(too_big(bytes.len() as u64));
    }
    Ok(bytes)
}

/// [`read_capped`], as UTF-8 text.
pub fn read_capped_text(path: &Path, limit: u64, what: &str) -> io::Result<String> {
    String::from_utf8(read_capped(path, limit, what)?).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("it is not UTF-8 text: {e}"),
        )
    })
}

/// `options` made to open without waiting for a FIFO's other end (`O_NONBLOCK` on Unix, which
/// changes nothing for a regular file) and without making a terminal the controlling one
/// (`O_NOCTTY`): a path that turned into something other than a file since it was looked at
/// cannot hang the process that opens it.
pub fn without_blocking(options: &mut std::fs::OpenOptions) -> &mut std::fs::OpenOptions {
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::custom_flags(
        options,
        (rustix::fs::OFlags::NONBLOCK | rustix::fs::OFlags::NOCTTY).bits() as i32,
    );
    options
}

/// Opens `path` with `options`, never waiting for a FIFO's other end (`O_NONBLOCK` on Unix,
/// which changes nothing for a regular file) nor making a terminal the controlling one
/// (`O_NOCTTY`), and checks that it is a regular file.
pub fn open_regular(
    options: &mut std::fs::OpenOptions,
    path: &Path,
    what: &str,
) -> io::Result<std::fs::File> {
    let file = without_blocking(options).open(path)?;
    let kind = file.metadata()?.file_type();
    if kind.is_file() {
        return Ok(file);
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidInput,
        format!(
            "it is {}, not a regular file: {what} must be a regular file",
            describe(&kind)
        ),
    ))
}

/// Removes the file at `path` if there is one. Looked for first: unlinking takes its
/// directory's lock even when there is nothing to remove, and in a directory that workers
/// create files in, waiting for it costs more than the look.
pub fn remove_if_present(path: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        _ => match std::fs::remove_file(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        },
    }
}

/// Creates the directory `path` and any missing parents, each owner-only (mode 0700 on Unix:
/// the state directory holds the queue, the dashboard's login URL and every job's params and
/// output). A directory that exists already is left as it is (see [`loose_permissions`]).
pub fn create_private_dir(path: &Path) -> io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(path)
}

/// The permission bits of the directory `path` when others than its owner may use it (Unix),
/// so that the dispatcher can warn about a state directory made by hand or by an earlier
/// version; `None` when it is owner-only, or cannot be looked at.
pub fn loose_permissions(path: &Path) -> Option<u32> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
        (mode & 0o077 != 0).then_some(mode)
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        None
    }
}

/// What kind of file `kind` is, for people.
fn describe(kind: &std::fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if kind.is_fifo() {
            return "a FIFO (named pipe)";
        }
        if kind.is_char_device() || kind.is_block_device() {
            return "a device";
        }
        if kind.is_socket() {
            return "a socket";
        }
    }
    if kind.is_dir() {
        "a directory"
    } else {
        "not a regular file"
    }
}

/// The temporary file `path` is written under before it is renamed into place: beside it (so
/// the rename stays on one file system) and unique per process, so two writers of one file
/// never share a temporary.
pub fn temporary_beside(path: &Path) -> PathBuf {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{}.tmp", std::process::id()));
    PathBuf::from(tmp)
}

/// Writes `bytes` to `path` atomically: to [`temporary_beside`] it, then renamed over it, so
/// a reader sees the whole file or the one before, never half of it.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    replace(path, bytes, false)
}

/// [`write_atomically`] for a file that holds a secret: readable by its owner only (0600 on
/// Unix, from its creation on, so no reader ever opens it wider) and on disk before it takes
/// the old one's place.
pub fn write_privately(path: &Path, bytes: &[u8]) -> io::Result<()> {
    replace(path, bytes, true)
}

fn replace(path: &Path, bytes: &[u8], private: bool) -> io::Result<()> {
    use std::io::Write as _;
    let tmp = temporary_beside(path);
    let write = || {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        if private {
            // A temporary left by a killed writer may be wider: start from none.
            let _ = std::fs::remove_file(&tmp);
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            options.create_new(true);
        }
        let mut file = options.open(&tmp)?;
        file.write_all(bytes)?;
        if private {
            file.sync_all()?;
        }
        drop(file);
        std::fs::rename(&tmp, path)
    };
    write().inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_atomic_write_replaces_the_file_whole_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("catalog.json");
        write_atomically(&path, b"first").unwrap();
        write_atomically(&path, b"second").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["catalog.json"]);
        // A target that cannot be replaced (a directory): an error, and no temporary left.
        let blocked = dir.path().join("blocked");
        std::fs::create_dir(&blocked).unwrap();
        std::fs::write(blocked.join("inside"), b"x").unwrap();
        assert!(write_atomically(&blocked, b"x").is_err());
        assert!(!temporary_beside(&blocked).exists());
    }

    #[test]
    fn reads_a_regular_file_up_to_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.toml");
        std::fs::write(&path, b"12345").unwrap();
        assert_eq!(read_capped(&path, 5, "a settings file").unwrap(), b"12345");
        let err = read_capped(&path, 4, "a settings file").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::FileTooLarge);
        let message = err.to_string();
        assert!(
            message.contains("5 bytes, over the limit of 4 bytes"),
            "{message}"
        );
        assert_eq!(
            read_capped(&dir.path().join("none"), 4, "a settings file")
                .unwrap_err()
                .kind(),
            io::ErrorKind::NotFound
        );
    }

    #[test]
    fn a_directory_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let err = read_capped(dir.path(), 4, "an allowlist").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{err}");
        assert!(err.to_string().contains("a directory"), "{err}");
    }

    #[cfg(unix)]
    #[test]
    fn a_fifo_and_a_device_are_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        rustix::fs::mkfifoat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::Mode::RUSR | rustix::fs::Mode::WUSR,
        )
        .unwrap();
        let err = read_capped(&fifo, 4, "an allowlist").unwrap_err();
        assert!(err.to_string().contains("a FIFO"), "{err}");
        let err = read_capped(Path::new("/dev/zero"), 4, "an allowlist").unwrap_err();
        assert!(err.to_string().contains("a device"), "{err}");
    }
}
