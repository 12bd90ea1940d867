//! Looking at a file in the plugin directory before anything loads it.
//!
//! What a name in the plugin directory is comes out without opening it (`stat`, following
//! links): a dangling link, a link loop, a directory, a named pipe, a socket or a device is
//! rejected as such and never opened — opening a named pipe blocks until something writes to
//! it, and reading `/dev/zero` never ends. A regular file is opened without blocking
//! (`O_NONBLOCK`), checked again through the open file (`fstat`, so a swap after the first look
//! changes nothing) and refused unread when it is larger than `limits.max_plugin_bytes`. Then
//! only its headers are read: its first bytes must be this platform's library format, an ELF
//! file must be as long as its headers and segments say (else loading it would crash with
//! SIGBUS), and its dynamic symbol table must export abi_stable's root-module header, which
//! every job-sdk plugin exports. A file that passes is hashed and copied from the same open
//! file, streaming, never held in memory whole; only then does an inspector process load it,
//! so no constructor of a file that is plainly no plugin ever runs.

use std::{
    fs::File,
    io::{Read, Seek, SeekFrom, Write},
    path::Path,
};

use abi_stable::library::ROOT_MODULE_LOADER_NAME;
use object::{
    elf,
    read::elf::{FileHeader, ProgramHeader, Sym},
    Endianness, ReadCache, ReadRef,
};

use crate::runner::reason::Reason;

/// A regular file of the plugin directory that looks like a plugin library, open.
#[derive(Debug)]
pub struct Candidate {
    file: File,
    len: u64,
}

impl Candidate {
    /// Opens the file at `path` if it is a regular file (or a link to one) of at most `limit`
    /// bytes whose headers make it a job-sdk plugin library of this platform; else says why
    /// not. Nothing but its headers is read.
    pub fn open(path: &Path, limit: u64) -> Result<Self, Reason> {
        let meta = std::fs::metadata(path).map_err(|e| unresolved(path, &e))?;
        regular(&meta, path)?;
        let file = crate::shared::files::without_blocking(std::fs::OpenOptions::new().read(true))
            .open(path)
            .map_err(|e| Reason::unreadable(&e))?;
        // The file opened, not the name looked at: it may have been swapped in between.
        let meta = file.metadata().map_err(|e| Reason::unreadable(&e))?;
        regular(&meta, path)?;
        let len = meta.len();
        if len > limit {
            return Err(Reason::too_big(len, limit));
        }
        if len == 0 {
            return Err(Reason::empty());
        }
        let mut magic = [0u8; 16];
        let n = (&file)
            .take(magic.len() as u64)
            .read(&mut magic)
            .map_err(|e| Reason::unreadable(&e))?;
        check_library(&ReadCache::new(&file), len, &magic[..n])?;
        Ok(Self { file, len })
    }

    /// The BLAKE3 hash of the file, hex, read streaming.
    pub fn hash(&self) -> Result<String, Reason> {
        self.stream(&mut std::io::sink())
            .map_err(|e| Reason::unreadable(&e))?
            .ok_or_else(Reason::changed_while_read)
    }

    /// Copies the file to `target`, streaming, and returns the hash of what was copied;
    /// `Ok(None)` when the file changed length while it was copied.
    pub fn copy_to(&self, target: &Path) -> std::io::Result<Option<String>> {
        let mut out = File::create(target)?;
        let copied = self.stream(&mut out)?;
        out.sync_all()?;
        Ok(copied)
    }

    /// Reads the whole file once, from its start, into `sink`; its hash, or `None` when it no
    /// longer has the length it had when opened.
    fn stream(&self, sink: &mut impl Write) -> std::io::Result<Option<String>> {
        let mut file = &self.file;
        file.seek(SeekFrom::Start(0))?;
        let mut hasher = blake3::Hasher::new();
        let mut buffer = vec![0u8; 64 * 1024];
        let mut read = 0u64;
        // One byte more than its length: a file that grew is noticed, and never read past.
        let mut limited = file.take(self.len + 1);
        loop {
            let n = limited.read(&mut buffer)?;
            if n == 0 {
                break;
            }
            hasher.update(&buffer[..n]);
            sink.write_all(&buffer[..n])?;
            read += n as u64;
        }
        Ok((read == self.len).then(|| hasher.finalize().to_hex().to_string()))
    }
}

/// Why `stat` could not follow `path`: a dangling link, a link loop, or a plain error.
fn unresolved(path: &Path, error: &std::io::Error) -> Reason {
    let link = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
    match std::fs::read_link(path) {
        Ok(_) if link && is_loop(error) => Reason::symlink_loop(),
        Ok(target) if link && error.kind() == std::io::ErrorKind::NotFound => {
            Reason::dangling_symlink(&target)
        }
        _ => Reason::unreadable(error),
    }
}

/// Whether `error` says links led to a loop.
fn is_loop(error: &std::io::Error) -> bool {
    #[cfg(unix)]
    let eloop = rustix::io::Errno::LOOP.raw_os_error();
    // ERROR_CANT_RESOLVE_FILENAME
    #[cfg(windows)]
    let eloop = 1921;
    error.raw_os_error() == Some(eloop)
}

/// `Ok` for a regular file; else what it is.
fn regular(meta: &std::fs::Metadata, path: &Path) -> Result<(), Reason> {
    let kind = meta.file_type();
    if kind.is_file() {
        return Ok(());
    }
    if kind.is_dir() {
        return Err(Reason::directory());
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if kind.is_fifo() {
            return Err(Reason::fifo());
        }
        if kind.is_socket() {
            return Err(Reason::socket());
        }
        if kind.is_char_device() || kind.is_block_device() {
            // Where the link leads, when it is one: `/dev/zero` says more than "a device".
            let what = match std::fs::canonicalize(path) {
                Ok(target) if target != path => target.display().to_string(),
                _ if kind.is_char_device() => "a character device".to_owned(),
                _ => "a block device".to_owned(),
            };
            return Err(Reason::device(&what));
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    Err(Reason::not_regular())
}

/// The executable formats a plugin file may be in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Elf,
    Pe,
    MachO,
}

impl Format {
    /// The format this platform loads.
    const NATIVE: Self = if cfg!(windows) {
        Self::Pe
    } else if cfg!(target_vendor = "apple") {
        Self::MachO
    } else {
        Self::Elf
    };

    /// The format whose magic number `first_bytes` start with.
    fn of(first_bytes: &[u8]) -> Option<Self> {
        match first_bytes {
            [0x7f, b'E', b'L', b'F', ..] => Some(Self::Elf),
            [b'M', b'Z', ..] => Some(Self::Pe),
            [0xfe, 0xed, 0xfa, 0xce | 0xcf, ..]
            | [0xce | 0xcf, 0xfa, 0xed, 0xfe, ..]
            | [0xca, 0xfe, 0xba, 0xbe | 0xbf, ..] => Some(Self::MachO),
            _ => None,
        }
    }

    /// Its header's name.
    fn header(self) -> &'static str {
        match self {
            Self::Elf => "ELF",
            Self::Pe => "PE",
            Self::MachO => "Mach-O",
        }
    }

    /// A file of this format, for people.
    fn file(self) -> &'static str {
        match self {
            Self::Elf => "a Linux or Unix (ELF) file",
            Self::Pe => "a Windows (PE) file",
            Self::MachO => "a macOS (Mach-O) file",
        }
    }

    /// Libraries of this format, for people.
    fn libraries(self) -> &'static str {
        match self {
            Self::Elf => "ELF shared libraries",
            Self::Pe => "Windows DLLs (PE)",
            Self::MachO => "Mach-O dynamic libraries",
        }
    }
}

/// Checks that `data` (`len` bytes, starting with `first_bytes`) is a shared library of this
/// platform that exports abi_stable's root-module header.
fn check_library<'data, R: ReadRef<'data>>(
    data: R,
    len: u64,
    first_bytes: &[u8],
) -> Result<(), Reason> {
    let native = Format::NATIVE;
    match Format::of(first_bytes) {
        None => Err(Reason::not_a_library(native.header(), first_bytes)),
        Some(format) if format != native => {
            Err(Reason::other_platform(format.file(), native.libraries()))
        }
        Some(Format::Elf) if first_bytes.get(4) == Some(&elf::ELFCLASS32) => {
            check_elf::<elf::FileHeader32<Endianness>, R>(data, len)
        }
        Some(Format::Elf) => check_elf::<elf::FileHeader64<Endianness>, R>(data, len),
        Some(Format::Pe | Format::MachO) => check_exports(data),
    }
}

/// The ELF checks: whole, a shared object of this machine, exporting the root-module header.
fn check_elf<'data, Elf, R>(data: R, len: u64) -> Result<(), Reason>
where
    Elf: FileHeader<Endian = Endianness>,
    R: ReadRef<'data>,
{
    let damaged = |e: object::Error| Reason::damaged("ELF", e);
    let header = Elf::parse(data).map_err(damaged)?;
    let endian = header.endian().map_err(damaged)?;
    if let Some(needed) = elf_needs(header, endian, data, len)? {
        return Err(Reason::truncated(len, needed));
    }
    let found = |what: String| Reason::other_platform(&what, &this_machine());
    if header.is_type_64() != cfg!(target_pointer_width = "64") {
        let bits = if header.is_type_64() { 64 } else { 32 };
        return Err(found(format!("a {bits}-bit ELF file")));
    }
    if endian != Endianness::default() {
        return Err(found(format!("a {endian:?}-endian ELF file")));
    }
    let machine = header.e_machine(endian);
    if MACHINE.is_some_and(|m| m != machine) {
        return Err(found(format!("an ELF file for {}", machine_name(machine))));
    }
    match header.e_type(endian) {
        elf::ET_DYN => {}
        elf::ET_EXEC => return Err(Reason::not_shared("an ELF executable")),
        elf::ET_REL => return Err(Reason::not_shared("an ELF object file (.o)")),
        other => return Err(Reason::not_shared(&format!("an ELF file of type {other}"))),
    }
    let sections = header.sections(endian, data).map_err(damaged)?;
    let symbols = sections
        .symbols(endian, data, elf::SHT_DYNSYM)
        .map_err(damaged)?;
    let exported = symbols.iter().any(|symbol| {
        !symbol.is_undefined(endian)
            && symbol.name(endian, symbols.strings()) == Ok(ROOT_MODULE_LOADER_NAME.as_bytes())
    });
    if exported {
        Ok(())
    } else {
        Err(Reason::no_export())
    }
}

/// For an ELF file shorter than its program headers, section headers and segments say: the
/// length they need. `None` for a whole file.
fn elf_needs<'data, Elf, R>(
    header: &Elf,
    endian: Endianness,
    data: R,
    len: u64,
) -> Result<Option<u64>, Reason>
where
    Elf: FileHeader<Endian = Endianness>,
    R: ReadRef<'data>,
{
    let table_end = |offset: u64, count: u16, size: u16| {
        offset.saturating_add(u64::from(count).saturating_mul(u64::from(size)))
    };
    let headers = table_end(
        header.e_phoff(endian).into(),
        header.e_phnum(endian),
        header.e_phentsize(endian),
    )
    .max(table_end(
        header.e_shoff(endian).into(),
        header.e_shnum(endian),
        header.e_shentsize(endian),
    ));
    if headers > len {
        return Ok(Some(headers));
    }
    let segments = header
        .program_headers(endian, data)
        .map_err(|e| Reason::damaged("ELF", e))?;
    let needed = segments
        .iter()
        .map(|s| {
            let offset: u64 = s.p_offset(endian).into();
            offset.saturating_add(s.p_filesz(endian).into())
        })
        .fold(headers, u64::max);
    Ok((needed > len).then_some(needed))
}

/// The ELF machine this host runs, when it is one jobhost knows.
const MACHINE: Option<u16> = if cfg!(target_arch = "x86_64") {
    Some(elf::EM_X86_64)
} else if cfg!(target_arch = "aarch64") {
    Some(elf::EM_AARCH64)
} else {
    None
};

/// An ELF machine, for people.
fn machine_name(machine: u16) -> String {
    match machine {
        elf::EM_386 => "x86 (32-bit)".to_owned(),
        elf::EM_X86_64 => "x86-64".to_owned(),
        elf::EM_ARM => "ARM (32-bit)".to_owned(),
        elf::EM_AARCH64 => "AArch64".to_owned(),
        elf::EM_RISCV => "RISC-V".to_owned(),
        elf::EM_PPC64 => "PowerPC 64".to_owned(),
        elf::EM_S390 => "s390x".to_owned(),
        other => format!("machine {other}"),
    }
}

/// This host's machine, for people.
fn this_machine() -> String {
    let machine = MACHINE.map_or(std::env::consts::ARCH.to_owned(), machine_name);
    format!("{} for {machine}", Format::NATIVE.libraries())
}

/// The PE and Mach-O check: the library exports the root-module header.
fn check_exports<'data, R: ReadRef<'data>>(data: R) -> Result<(), Reason> {
    use object::Object;
    let format = Format::NATIVE.header();
    let file = match object::File::parse(data) {
        Ok(file) => file,
        // A universal (fat) Mach-O file holds several libraries: the loader picks its own.
        Err(_) if format == "Mach-O" => return Ok(()),
        Err(e) => return Err(Reason::damaged(format, e)),
    };
    let exports = file.exports().map_err(|e| Reason::damaged(format, e))?;
    let name = ROOT_MODULE_LOADER_NAME.as_bytes();
    // Mach-O symbol names carry a leading underscore.
    let exported = exports
        .iter()
        .any(|e| e.name() == name || e.name().strip_prefix(b"_") == Some(name));
    if exported {
        Ok(())
    } else {
        Err(Reason::no_export())
    }
}

/// The checks as Linux makes them: ELF is its format.
#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// A 64-bit little-endian ELF shared object with one program header whose segment spans
    /// `segment_end` bytes of the file, padded or cut to `len` bytes.
    fn elf(segment_end: u64, len: usize) -> Vec<u8> {
        let mut bytes = vec![0u8; len.max(64 + 56)];
        bytes[..7].copy_from_slice(b"\x7fELF\x02\x01\x01");
        bytes[0x10..0x12].copy_from_slice(&elf::ET_DYN.to_le_bytes());
        bytes[0x12..0x14].copy_from_slice(&MACHINE.unwrap_or(0).to_le_bytes());
        bytes[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        bytes[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        bytes[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes());
        bytes[64 + 32..64 + 40].copy_from_slice(&segment_end.to_le_bytes());
        bytes.truncate(len);
        bytes
    }

    fn check(bytes: &[u8]) -> Result<(), String> {
        let first = &bytes[..bytes.len().min(16)];
        check_library(bytes, bytes.len() as u64, first).map_err(|r| r.to_string())
    }

    #[test]
    fn a_file_shorter_than_its_headers_or_segments_is_truncated() {
        let truncated = |needed: u64, len: usize| {
            format!("truncated: the file has {len} bytes but its ELF headers and segments need {needed} ")
        };
        assert!(check(&elf(4096, 1000))
            .unwrap_err()
            .starts_with(&truncated(4096, 1000)));
        // Cut inside the program headers: they alone need more than there is.
        assert!(check(&elf(4096, 80))
            .unwrap_err()
            .starts_with(&truncated(64 + 56, 80)));
        // Whole: then the (empty) dynamic symbol table is what is missing.
        let whole = check(&elf(4096, 4096)).unwrap_err();
        assert!(
            whole.starts_with("does not export job-sdk's root module"),
            "{whole}"
        );
        assert_eq!(check(&elf(4096, 8192)).unwrap_err(), whole);
    }

    #[test]
    fn first_bytes_tell_a_text_file_or_another_platforms_library_apart() {
        let text = check(b"this is a text file, not a library\n").unwrap_err();
        assert!(
            text.starts_with(
                "not a shared library: its first bytes are not an ELF header (\"this is a text f\")"
            ),
            "{text}"
        );
        let pe = check(b"MZ\x90\x00\x03\x00\x00\x00\x04\x00\x00\x00\xff\xff\x00\x00").unwrap_err();
        assert!(pe.starts_with("built for another platform: a Windows (PE) file, this host loads ELF shared libraries"), "{pe}");
        let mut executable = elf(4096, 4096);
        executable[0x10..0x12].copy_from_slice(&elf::ET_EXEC.to_le_bytes());
        assert!(check(&executable)
            .unwrap_err()
            .starts_with("not a shared library: an ELF executable"));
        let mut arm = elf(4096, 4096);
        arm[0x12..0x14].copy_from_slice(&elf::EM_RISCV.to_le_bytes());
        let arm = check(&arm).unwrap_err();
        assert!(
            arm.starts_with("built for another platform: an ELF file for RISC-V"),
            "{arm}"
        );
    }
}
