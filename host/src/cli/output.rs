//! Where the commands print, and what a failed write means: [`Stdout`] is the one way a command
//! writes its output, and every write returns a [`StdoutError`] instead of panicking as
//! `println!` does. `main` ends the program quietly with success when stdout was closed (a
//! reader such as `head` that has seen enough, as ripgrep does) and reports any other failure
//! (a full disk) as an error. Notes for people go to stderr through [`note!`], best effort: a
//! command whose stderr is gone still does its work and exits with its own code.
//!
//! [`check_arguments`] refuses an argument that is not UTF-8 before the command line is parsed:
//! classes, methods, params and paths are written into JSON requests, the job database and the
//! logs, which hold text.

use std::{
    ffi::OsString,
    io::{self, Write as _},
};

/// Why writing to stdout failed.
#[derive(Debug, thiserror::Error)]
#[error("cannot write to stdout")]
pub struct StdoutError(#[source] io::Error);

impl StdoutError {
    /// Whether the reader went away: not a failure of the command.
    pub fn is_closed(&self) -> bool {
        self.0.kind() == io::ErrorKind::BrokenPipe
    }
}

/// The process's stdout. Use it with `writeln!(out, ...)?`.
pub struct Stdout(io::Stdout);

impl Stdout {
    /// The process's stdout.
    pub fn new() -> Self {
        Self(io::stdout())
    }

    /// What `write!` and `writeln!` call.
    pub fn write_fmt(&mut self, args: std::fmt::Arguments<'_>) -> Result<(), StdoutError> {
        self.0.write_fmt(args).map_err(StdoutError)
    }

    /// Writes out what is buffered; a command calls it before it returns, so that a write that
    /// fails at the end still decides the exit code.
    pub fn flush(&mut self) -> Result<(), StdoutError> {
        self.0.flush().map_err(StdoutError)
    }
}

/// Writes a note for people to stderr, with a newline; a stderr that cannot be written loses it.
pub fn write_note(args: std::fmt::Arguments<'_>) {
    // One write for the whole line: stderr is unbuffered, and a reader (a log collector, a
    // test reading the file) must never see half of it.
    let _ = io::stderr()
        .lock()
        .write_all(format!("{args}\n").as_bytes());
}

/// `note!("job {id} queued")`: [`write_note`] with `format!` arguments.
macro_rules! note {
    ($($arg:tt)*) => {
        $crate::cli::output::write_note(format_args!($($arg)*))
    };
}
pub(crate) use note;

/// An argument that is not UTF-8.
#[derive(Debug, thiserror::Error)]
#[error("argument {position} is not valid UTF-8: \"{shown}\"; jobhost takes text arguments only")]
pub struct NotUtf8 {
    /// Its position, from 1 (after the program's name).
    position: usize,
    /// Its bytes, those that are not printable ASCII escaped (`\xff`).
    shown: String,
}

/// The arguments as text, or the first that is not UTF-8.
pub fn check_arguments(args: impl IntoIterator<Item = OsString>) -> Result<Vec<String>, NotUtf8> {
    args.into_iter()
        .enumerate()
        .map(|(position, arg)| {
            arg.into_string().map_err(|arg| NotUtf8 {
                position,
                shown: arg.as_encoded_bytes().escape_ascii().to_string(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_arguments_names_the_first_argument_that_is_not_utf8() {
        #[cfg(unix)]
        {
            use std::os::unix::ffi::OsStringExt;
            let args = [
                OsString::from("jobhost"),
                OsString::from("run"),
                OsString::from_vec(b"A\xffB".to_vec()),
                OsString::from_vec(b"\xfe".to_vec()),
            ];
            let error = check_arguments(args).unwrap_err();
            assert_eq!(
                error.to_string(),
                "argument 2 is not valid UTF-8: \"A\\xffB\"; jobhost takes text arguments only"
            );
        }
        let args = ["jobhost", "run", "A"].map(OsString::from);
        assert_eq!(check_arguments(args).unwrap(), ["jobhost", "run", "A"]);
    }
}
