//! Why a file in the plugin directory is not a usable plugin: every reason jobhost can give,
//! in one place.
//!
//! A [`Reason`] is one line that says what the file is and what to do about it. It is built
//! only here, by the constructors below, each from one template; `docs/writing-a-plugin.md`
//! (Troubleshooting) lists every template by its opening words, and a test checks that it does,
//! so a reason added here without its line in the doc fails the build's tests. A reason names
//! the user's file (or where its link points), never jobhost's own copy of it: see
//! [`Reason::naming`].

use std::{fmt, path::Path};

use serde::{Deserialize, Serialize};

/// Why a file is not a usable plugin, in one line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Reason(String);

/// A reason from its template: the only way one is made.
macro_rules! reason {
    ($($template:tt)+) => {
        Reason(format!($($template)+))
    };
}

impl Reason {
    /// A symbolic link whose target does not exist.
    pub fn dangling_symlink(target: &Path) -> Self {
        reason!(
            "dangling symlink: it points to {}, which does not exist; point it at a plugin file or remove it",
            target.display()
        )
    }

    /// A symbolic link that leads back to itself.
    pub fn symlink_loop() -> Self {
        reason!("symlink loop: following it leads back to a link already followed; point it at a plugin file or remove it")
    }

    /// A directory named like a library.
    pub fn directory() -> Self {
        reason!(
            "a directory, not a library: move it out of the plugin directory, or rename it so its name does not end in {}",
            std::env::consts::DLL_SUFFIX
        )
    }

    /// A named pipe: never opened, since opening one blocks until something writes to it.
    pub fn fifo() -> Self {
        reason!("a named pipe (FIFO), not a library: jobhost does not open it; remove it")
    }

    /// A Unix socket.
    pub fn socket() -> Self {
        reason!("a socket, not a library: remove it")
    }

    /// A device, such as a link to `/dev/zero`: never read, it may never end.
    pub fn device(what: &str) -> Self {
        reason!("a device, not a library: {what}; jobhost does not read devices, remove it")
    }

    /// Anything else that is not a regular file.
    pub fn not_regular() -> Self {
        reason!(
            "not a regular file: jobhost loads only regular files (or links to them); remove it"
        )
    }

    /// A file that cannot be opened or read.
    pub fn unreadable(error: &std::io::Error) -> Self {
        reason!("unreadable: {error}; check that the user jobhost runs as may read it")
    }

    /// A file of no bytes.
    pub fn empty() -> Self {
        reason!("empty file (an interrupted copy?): install the plugin again, copying it in under another name and renaming it into place")
    }

    /// A file larger than `limits.max_plugin_bytes`: not read at all.
    pub fn too_big(len: u64, limit: u64) -> Self {
        reason!(
            "too big: {len} bytes, over limits.max_plugin_bytes ({limit}), so it is not read; remove it, or raise the limit if it really is a plugin"
        )
    }

    /// A file whose first bytes are no executable format jobhost knows.
    pub fn not_a_library(expected: &str, first_bytes: &[u8]) -> Self {
        reason!(
            "not a shared library: its first bytes are not an {expected} header ({:?}); install the plugin's built library file",
            String::from_utf8_lossy(first_bytes)
        )
    }

    /// An executable or object file of the right format, not a shared library.
    pub fn not_shared(what: &str) -> Self {
        reason!(
            "not a shared library: {what}; build the plugin with crate-type = [\"cdylib\"] and install the library"
        )
    }

    /// A library of another operating system or processor.
    pub fn other_platform(found: &str, expected: &str) -> Self {
        reason!("built for another platform: {found}, this host loads {expected}; build the plugin for this platform")
    }

    /// A library whose headers cannot be read.
    pub fn damaged(format: &str, error: impl fmt::Display) -> Self {
        reason!("damaged: its {format} headers cannot be read ({error}); install the plugin again")
    }

    /// An ELF file shorter than its headers say: loading it would crash with SIGBUS.
    pub fn truncated(len: u64, needed: u64) -> Self {
        reason!(
            "truncated: the file has {len} bytes but its ELF headers and segments need {needed} (still being written?); copy plugins in under another name and rename them into place"
        )
    }

    /// A file that changed while it was being copied.
    pub fn changed_while_read() -> Self {
        reason!("changed while being read (still being written?): it is read again once it changes")
    }

    /// A library that does not export abi_stable's root-module header, so none of its code is
    /// run to find out more.
    pub fn no_export() -> Self {
        reason!("does not export job-sdk's root module: not a jobhost plugin; a plugin's crate calls job_sdk::export_plugin!(…) (add it and rebuild), or move the file out of the plugin directory")
    }

    /// A library the dynamic loader refuses.
    pub fn not_loadable(error: impl fmt::Display) -> Self {
        reason!("not a loadable shared library: {error}")
    }

    /// Another application's abi_stable plugin: a root module other than job-sdk's.
    pub fn foreign_plugin(name: &str, version: &str, ours: &str) -> Self {
        reason!(
            "another application's abi_stable plugin: its root module is {name} {version}, not job-sdk's {ours}; it is not a jobhost plugin, move it out of the plugin directory"
        )
    }

    /// SDK version strings that cannot be parsed.
    pub fn unreadable_sdk_version(error: impl fmt::Display) -> Self {
        reason!(
            "unreadable SDK version: {error}; rebuild the plugin against this jobhost's job-sdk"
        )
    }

    /// A plugin of another job-sdk version.
    pub fn incompatible_sdk_version(
        actual: impl fmt::Display,
        expected: impl fmt::Display,
    ) -> Self {
        reason!(
            "incompatible SDK version: built against job-sdk {actual}, this host uses job-sdk {expected}; rebuild it against this jobhost's job-sdk"
        )
    }

    /// A plugin whose root module is laid out differently from this job-sdk's.
    pub fn incompatible_layout(problems: &str) -> Self {
        reason!("incompatible SDK layout: {problems}; rebuild it against this jobhost's job-sdk")
    }

    /// A plugin of another abi_stable version.
    pub fn incompatible_abi_stable() -> Self {
        reason!("built with an incompatible version of abi_stable: rebuild it against this jobhost's job-sdk")
    }

    /// A plugin built for another C ABI.
    pub fn incompatible_c_abi() -> Self {
        reason!("built for an incompatible C ABI: rebuild it with the compiler and target this jobhost was built with")
    }

    /// A root module whose initialiser failed or panicked.
    pub fn root_module_failed(error: impl fmt::Display) -> Self {
        reason!("the plugin's root module failed to initialise: {error}")
    }

    /// A plugin whose class list is refused by the SDK.
    pub fn cannot_list_classes(message: impl fmt::Display) -> Self {
        reason!("the plugin cannot list its classes: {message}")
    }

    /// An inspector of another jobhost version.
    pub fn inspector_protocol(requested: u32, spoken: u32) -> Self {
        reason!("inspector protocol {requested} requested, this inspector speaks {spoken}: the jobhost binary was replaced while it ran; run the command again")
    }

    /// A library whose loading outlasted the inspection time limit `limit`: no verdict on
    /// its content, tried again when the file changes or after `retry_minutes`.
    pub fn hung(limit: &str, retry_minutes: u64) -> Self {
        reason!(
            "loading it hung for more than {limit} (its code that runs at load time, such as a static constructor, blocks); inspected again when the file changes, or in {retry_minutes} minutes"
        )
    }

    /// jobhost itself could not inspect the file (`why`): no verdict on its content, tried
    /// again at the next refresh.
    pub fn inspection_failed(why: &str) -> Self {
        reason!("inspection failed: {why} (will retry)")
    }

    /// A library whose loading killed the inspector.
    pub fn crashed(signal: &str) -> Self {
        reason!("loading it crashed the process: {signal}: code that runs at load time (a static constructor in a dependency) crashed")
    }

    /// A library whose loading ended the inspector.
    pub fn exited(code: i32) -> Self {
        reason!("loading it ended the process with code {code}: code that runs at load time (a static constructor in a dependency) exited")
    }

    /// Several reasons, in one line.
    pub fn all(reasons: impl IntoIterator<Item = Reason>) -> Self {
        let lines: Vec<String> = reasons.into_iter().map(|r| r.0).collect();
        Reason(lines.join("; "))
    }

    /// The reason with every mention of `internal` (the copy jobhost inspected) replaced by
    /// `user` (the file in the plugin directory): the dynamic loader's messages name the file
    /// it was given.
    pub fn naming(self, internal: &Path, user: &Path) -> Self {
        let internal = internal.display().to_string();
        if internal.is_empty() {
            return self;
        }
        Reason(self.0.replace(&internal, &user.display().to_string()))
    }

    /// The reason as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This module's source.
    const SOURCE: &str = include_str!("reason.rs");

    /// The opening words of every template in this module: the text before its first `:`,
    /// `;`, `(` or `{`.
    fn templates() -> Vec<String> {
        let mut found = Vec::new();
        let mut rest = SOURCE;
        let call = concat!("reason", "!(");
        while let Some(at) = rest.find(call) {
            rest = &rest[at + call.len()..];
            let literal = rest.trim_start();
            let Some(literal) = literal.strip_prefix('"') else {
                // The macro's own definition.
                continue;
            };
            let end = literal
                .find([':', ';', '(', '{', '"'])
                .expect("a template ends");
            found.push(literal[..end].trim().to_owned());
        }
        found
    }

    #[test]
    fn every_reason_is_in_the_troubleshooting_table_of_the_plugin_guide() {
        let doc = include_str!("../../../docs/writing-a-plugin.md");
        let section = doc
            .split("\n## Troubleshooting")
            .nth(1)
            .expect("a Troubleshooting section");
        let rows: Vec<&str> = section.lines().filter(|l| l.starts_with("| `")).collect();
        let templates = templates();
        assert!(templates.len() >= 30, "{templates:?}");
        let missing: Vec<&String> = templates
            .iter()
            .filter(|t| !rows.iter().any(|row| row.starts_with(&format!("| `{t}"))))
            .collect();
        assert!(
            missing.is_empty(),
            "docs/writing-a-plugin.md, Troubleshooting, lists no row starting with these reasons: {missing:?}"
        );
    }

    #[test]
    fn every_reason_is_made_from_a_template() {
        // The struct, the macro and `all`/`naming` build a `Reason` directly; nothing else may.
        let direct = SOURCE.matches(concat!("Reason", "(")).count();
        assert_eq!(
            direct, 4,
            "build every new reason with the reason! macro, from one template"
        );
    }

    #[test]
    fn a_reason_names_the_users_file_not_jobhosts_copy() {
        let internal = Path::new("/state/plugins/snapshots/.incoming-1-ab.so");
        let reason = Reason::not_loadable(format!("{}: undefined symbol: foo", internal.display()))
            .naming(internal, Path::new("/srv/plugins/libfoo.so"));
        assert_eq!(
            reason.as_str(),
            "not a loadable shared library: /srv/plugins/libfoo.so: undefined symbol: foo"
        );
    }
}
