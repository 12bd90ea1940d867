//! The fork server (Linux): workers forked from a small helper instead of executed anew.
//!
//! Executing the `jobhost` program for every attempt costs most of an attempt's time (loading
//! and linking a large program, starting its runtime). The fork server pays that once: the
//! dispatcher starts it (`jobhost __zygote`, the *zygote*) and asks it, over a socket, for one
//! worker per attempt; it forks, and the forked child is the worker. Everything that makes a
//! worker a worker still happens in the child, exactly as in an executed one: its own session
//! and process group, no core dumps, the go-ahead read from its stdin, the allowlist checked
//! and the plugin loaded by the child itself.
//!
//! What keeps forking safe and cheap:
//! - The zygote stays single-threaded and small, and loads no plugin code except a library
//!   that declares itself fork-safe (`job_sdk::export_plugin!(#[fork_safe] …)`), and at most
//!   [`MAX_PRELOADED`] of those: a thread in the forking process (a plugin's constructor may
//!   start one) could hold a lock the child then waits on forever, and fork costs grow with
//!   the forking process's memory. After loading one it counts its threads; a library that
//!   started one is never loaded before forking again, and that zygote forks nothing more and
//!   is replaced. A preloaded library spares each worker its `dlopen`, relocations and layout
//!   check; the worker still checks the allowlist before it calls anything. The zygote parses
//!   nothing of a request either: the child does.
//! - It watches each child with a pidfd in its one `poll` loop (no SIGCHLD handler), reaps it,
//!   kills what it left behind in its process group while the group id is still the child's,
//!   and writes how it ended into a status pipe the dispatcher gave it for that child.
//! - A child closes every descriptor it inherited except its stdin (the go-ahead pipe), stdout
//!   and stderr (the attempt's output), and until its go-ahead comes it dies with the zygote
//!   (`PR_SET_PDEATHSIG`): a child the dispatcher never heard of, because the zygote died
//!   between forking it and answering, cannot run anything. Once the go-ahead is there to read
//!   it no longer does, so a running job outlives a zygote that dies, as it outlives a
//!   dispatcher that dies; and one killed with its zygote before then never took the byte,
//!   which tells its supervisor it never started.
//! - Random state is not shared: the zygote creates none before forking (no hash maps, no
//!   random numbers), and plugins, loaded after the fork, seed their own.
//! - A child rewrites its command line to `jobhost __worker {"report": …, "job_id": …}` (in
//!   the zygote's argument area, which the dispatcher pads when it starts it), so that `ps`,
//!   and a dispatcher adopting workers after a crash, see a worker as they see an executed one.
//!
//! The dispatcher side is [`ForkServer`]: it starts the zygote on first use and again whenever
//! it died (a request it did not answer is asked again of the new one: the first one's child,
//! if any, died with it before it could start). When the dispatcher goes (its end of the socket
//! closes), the zygote stops forking and stays until its last child has ended: a child still
//! at its gate then sees its dispatcher gone and says it never started, as an executed worker
//! does, rather than dying with the zygote.

use std::{
    collections::BTreeSet,
    ffi::OsString,
    io::{self, IoSlice, IoSliceMut},
    os::unix::ffi::{OsStrExt, OsStringExt},
    path::{Path, PathBuf},
    mem::MaybeUninit,
    os::fd::{AsFd, BorrowedFd, OwnedFd},
    process::{Child, Command, Stdio},
    sync::{Mutex, PoisonError},
};

use rustix::{
    event::{poll, PollFd, PollFlags},
    io::Errno,
    net::{
        recvmsg, sendmsg, socketpair, AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage,
        RecvFlags, SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketFlags, SocketType,
    },
    process::{
        getpid, getppid, kill_process_group, pidfd_open, set_parent_process_death_signal, waitid,
        Pid, PidfdFlags, Signal, WaitId, WaitIdOptions,
    },
};

use super::ExitKind;

/// The descriptors a forked worker gets, in this order: its stdin (the go-ahead pipe's read
/// end), its stdout and stderr (the attempt's output), and the status pipe's write end, which
/// only the zygote keeps.
pub struct ForkFds<'a> {
    /// The go-ahead pipe's read end: the child's stdin.
    pub gate: BorrowedFd<'a>,
    /// The attempt's output: the child's stdout and stderr.
    pub output: BorrowedFd<'a>,
    /// Where the zygote writes how the child ended ([`read_status`]).
    pub status: BorrowedFd<'a>,
}

/// The dispatcher's side of the fork server: starts the zygote with `command` on first use
/// and again after it died, and asks it for workers.
pub struct ForkServer {
    command: Box<dyn Fn() -> Command + Send + Sync>,
    state: Mutex<State>,
}

/// The most libraries one zygote loads before forking. Each adds to what every fork copies; a
/// zygote that has loaded this many is replaced by a fresh one when another is asked for.
pub const MAX_PRELOADED: usize = 16;

/// What the dispatcher's side keeps.
#[derive(Default)]
struct State {
    zygote: Option<Zygote>,
    /// Zygotes told to leave (their control socket closed), until their last child has ended.
    retired: Vec<Child>,
    /// Libraries never loaded before forking again: loading one left a thread in the zygote,
    /// or the zygote died while it was asked to load it.
    refused: BTreeSet<PathBuf>,
}

impl State {
    /// Tells the running zygote, if any, to leave once its children have ended.
    fn retire(&mut self) {
        if let Some(Zygote {
            process, control, ..
        }) = self.zygote.take()
        {
            drop(control);
            self.retired.push(process);
        }
    }
}

impl std::fmt::Debug for ForkServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ForkServer").finish_non_exhaustive()
    }
}

/// A running zygote: the process, our end of its control socket (its stdin), and the
/// libraries it was asked to load before forking (each is named to it once).
struct Zygote {
    process: Child,
    control: OwnedFd,
    preloaded: BTreeSet<PathBuf>,
}

/// A zygote's answer to a request it read.
enum Answer {
    /// It forked the worker: its pid and a pidfd for it.
    Forked(u32, OwnedFd),
    /// It could not fork.
    Failed(io::Error),
    /// Loading the library it was asked to load left it with more than one thread: it forked
    /// nothing and is leaving.
    Threaded,
}

/// The answer of a zygote whose preloaded library started a thread.
const ANSWER_THREADED: i32 = i32::MIN;

impl ForkServer {
    /// A fork server whose zygote is started by `command` (which must run
    /// [`serve_zygote`]), not yet started.
    pub fn new(command: impl Fn() -> Command + Send + Sync + 'static) -> Self {
        Self {
            command: Box::new(command),
            state: Mutex::new(State::default()),
        }
    }

    /// Forks a worker that gets `fds` ([`ForkFds`]), rewrites its command line to `title`
    /// (arguments separated by NUL bytes) and runs `request`. Returns its pid and a pidfd for
    /// it. A zygote that died is replaced, and the request asked again, once.
    ///
    /// `preload` names a library that declares itself fork-safe: the zygote loads it (once)
    /// before forking, so that the worker starts with it loaded. A library that leaves a
    /// thread in the zygote, or whose loading the zygote does not survive, is never preloaded
    /// again; the zygote it was loaded in is replaced.
    pub fn fork(
        &self,
        title: &[u8],
        request: &[u8],
        fds: &ForkFds<'_>,
        preload: Option<&Path>,
    ) -> io::Result<(u32, OwnedFd)> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state
            .retired
            .retain_mut(|zygote| matches!(zygote.try_wait(), Ok(None)));
        let mut died = None;
        let mut tries = 0;
        while tries < 2 {
            let preload = preload.filter(|path| !state.refused.contains(*path));
            let full = |zygote: &Zygote| {
                preload.is_some_and(|path| {
                    !zygote.preloaded.contains(path) && zygote.preloaded.len() >= MAX_PRELOADED
                })
            };
            if state.zygote.as_ref().is_some_and(full) {
                state.retire();
            }
            let running = match state.zygote.as_mut() {
                Some(running) => running,
                None => state.zygote.insert(Zygote::start(&*self.command)?),
            };
            // Named only the first time: the zygote keeps what it loaded (or tried to).
            let preload = preload.filter(|path| !running.preloaded.contains(*path));
            let answer = running.ask(title, request, fds, preload);
            if let (Some(path), Ok(Answer::Forked(..) | Answer::Failed(_))) = (preload, &answer) {
                running.preloaded.insert(path.to_owned());
            }
            match answer {
                Ok(Answer::Forked(pid, pidfd)) => return Ok((pid, pidfd)),
                Ok(Answer::Failed(e)) => return Err(e),
                Ok(Answer::Threaded) => {
                    // Not a try: asked again of a new zygote, without the library.
                    if let Some(path) = preload {
                        tracing::warn!(
                            "The plugin {} declares itself fork-safe, but loading it started \
                             a thread in the fork server: it is no longer loaded before \
                             forking (its workers load it themselves), and the fork server is \
                             replaced",
                            path.display()
                        );
                        state.refused.insert(path.to_owned());
                    }
                    state.retire();
                }
                Err(e) => {
                    // It died, or cannot be talked to: end and reap it (a child it forked
                    // and did not tell of dies with it), then try a new one, which is not
                    // asked to load what this one may have died of.
                    if let Some(path) = preload {
                        state.refused.insert(path.to_owned());
                    }
                    if let Some(gone) = state.zygote.take() {
                        gone.end();
                    }
                    died = Some(e);
                    tries += 1;
                }
            }
        }
        Err(io::Error::other(format!(
            "the fork server stopped answering twice in a row: {}",
            died.map_or_else(String::new, |e| e.to_string())
        )))
    }
}

/// How long a fork server that is told to leave gets before its dispatcher stops waiting for
/// it (it stays while a worker of its runs).
const LEAVE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

impl Drop for ForkServer {
    fn drop(&mut self) {
        let state = self.state.get_mut().unwrap_or_else(PoisonError::into_inner);
        for retired in &mut state.retired {
            let _ = retired.try_wait();
        }
        if let Some(zygote) = state.zygote.take() {
            // End of input is the zygote's signal to leave, once its children have ended;
            // they run on meanwhile. Waited for a moment, so that it is reaped when it can be.
            let Zygote {
                mut process,
                control,
                ..
            } = zygote;
            drop(control);
            let pidfd = Pid::from_raw(process.id() as i32)
                .and_then(|pid| pidfd_open(pid, PidfdFlags::empty()).ok());
            if let Some(pidfd) = pidfd {
                let mut fds = [PollFd::new(&pidfd, PollFlags::IN)];
                let wait = rustix::event::Timespec {
                    tv_sec: LEAVE_WAIT.as_secs() as i64,
                    tv_nsec: 0,
                };
                let _ = poll(&mut fds, Some(&wait));
            }
            let _ = process.try_wait();
        }
    }
}

impl Zygote {
    fn start(command: &dyn Fn() -> Command) -> io::Result<Self> {
        let (control, theirs) = socketpair(
            AddressFamily::UNIX,
            SocketType::STREAM,
            SocketFlags::CLOEXEC,
            None,
        )?;
        let mut command = command();
        command
            .stdin(Stdio::from(theirs))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        let process = command.spawn()?;
        Ok(Self {
            process,
            control,
            preloaded: BTreeSet::new(),
        })
    }

    /// One request and its answer. `Err` means the zygote is gone (or unusable).
    fn ask(
        &mut self,
        title: &[u8],
        request: &[u8],
        fds: &ForkFds<'_>,
        preload: Option<&Path>,
    ) -> io::Result<Answer> {
        let preload = preload.map_or(&[][..], |path| path.as_os_str().as_bytes());
        let mut header = [0u8; HEADER_LEN];
        for (field, part) in header.chunks_exact_mut(4).zip([title, request, preload]) {
            field.copy_from_slice(&length(part)?.to_le_bytes());
        }
        send_with_fds(&self.control, &header, &[fds.gate, fds.output, fds.status])?;
        for part in [title, request, preload] {
            write_all(&self.control, part)?;
        }
        let mut answer = [0u8; 4];
        let pidfd = recv_with_fds(&self.control, &mut answer)?
            .ok_or(io::ErrorKind::UnexpectedEof)?
            .into_iter()
            .next();
        let answer = i32::from_le_bytes(answer);
        Ok(match (u32::try_from(answer), pidfd) {
            (Ok(pid), Some(pidfd)) if pid > 0 => Answer::Forked(pid, pidfd),
            _ if answer == ANSWER_THREADED => Answer::Threaded,
            _ => Answer::Failed(io::Error::from_raw_os_error(
                answer.saturating_neg().max(1),
            )),
        })
    }

    /// Kills and reaps it. Reaping is what makes sure that a child it forked and did not
    /// tell of is dead: its parent-death signal is sent before the zygote can be reaped.
    fn end(mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

/// A request's header: the lengths of its title, its body and the path of the library to load
/// before forking (0: none), each 4 bytes, little-endian.
const HEADER_LEN: usize = 12;

fn length(bytes: &[u8]) -> io::Result<u32> {
    u32::try_from(bytes.len()).map_err(|_| io::Error::other("a fork request over 4 GiB"))
}

fn retry<T>(mut call: impl FnMut() -> rustix::io::Result<T>) -> io::Result<T> {
    loop {
        match call() {
            Err(Errno::INTR) => continue,
            other => return other.map_err(io::Error::from),
        }
    }
}

fn write_all(socket: impl AsFd, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        let n = retry(|| rustix::net::send(socket.as_fd(), bytes, SendFlags::NOSIGNAL))?;
        bytes = &bytes[n..];
    }
    Ok(())
}

/// Sends `bytes` on `socket`, `fds` (at most three) passed with the first of them.
fn send_with_fds(socket: impl AsFd, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(3))];
    let mut ancillary = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() {
        ancillary.push(SendAncillaryMessage::ScmRights(fds));
    }
    let sent = retry(|| {
        sendmsg(
            socket.as_fd(),
            &[IoSlice::new(bytes)],
            &mut ancillary,
            SendFlags::NOSIGNAL,
        )
    })?;
    write_all(socket, &bytes[sent..])
}

/// Fills `buf` from `socket`; the descriptors (at most three) passed with its first bytes, or
/// `None` at the end of input before any byte.
fn recv_with_fds(socket: impl AsFd, buf: &mut [u8]) -> io::Result<Option<Vec<OwnedFd>>> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(3))];
    let mut ancillary = RecvAncillaryBuffer::new(&mut space);
    let got = retry(|| {
        recvmsg(
            socket.as_fd(),
            &mut [IoSliceMut::new(&mut *buf)],
            &mut ancillary,
            RecvFlags::CMSG_CLOEXEC,
        )
    })?
    .bytes;
    let mut fds = Vec::new();
    for message in ancillary.drain() {
        if let RecvAncillaryMessage::ScmRights(passed) = message {
            fds.extend(passed);
        }
    }
    if got == 0 {
        return Ok(None);
    }
    read_exact(socket, &mut buf[got..])?;
    Ok(Some(fds))
}

fn read_exact(fd: impl AsFd, mut buf: &mut [u8]) -> io::Result<()> {
    while !buf.is_empty() {
        match retry(|| rustix::io::read(fd.as_fd(), &mut *buf))? {
            0 => return Err(io::ErrorKind::UnexpectedEof.into()),
            n => buf = &mut buf[n..],
        }
    }
    Ok(())
}

/// How a forked worker ended, from its status pipe (`status`: the read end), waiting for the
/// zygote to reap it. `None` when the zygote died first: then nobody can tell.
pub fn read_status(status: &OwnedFd) -> Option<ExitKind> {
    let mut bytes = [0u8; 8];
    read_exact(status, &mut bytes).ok()?;
    let value = i32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
    Some(match bytes[0] {
        0 => ExitKind::Exited(value),
        _ => ExitKind::Signaled(value),
    })
}

/// The exit code of a forked child that could not become a worker (its zygote was gone, its
/// descriptors could not be set up, its request was not text), or whose worker code panicked.
const EXIT_UNSTARTED: i32 = 71;

/// One child of the zygote, watched until it ends.
struct Forked {
    pid: Pid,
    pidfd: OwnedFd,
    status: OwnedFd,
}

impl Forked {
    /// Reaps it, once its pidfd says it ended, and writes how it ended to its status pipe.
    fn reap(self) {
        // A zombie keeps its pid, and so its process group's id, until it is reaped: killing
        // the group now reaches only what its job left behind.
        let _ = kill_process_group(self.pid, Signal::KILL);
        let ended = loop {
            match waitid(WaitId::PidFd(self.pidfd.as_fd()), WaitIdOptions::EXITED) {
                Err(Errno::INTR) => continue,
                other => break other,
            }
        };
        let (tag, value) = match ended {
            Ok(Some(status)) => match (status.exit_status(), status.terminating_signal()) {
                (Some(code), _) => (0u8, code),
                (None, Some(signal)) => (1, signal),
                (None, None) => (0, -1),
            },
            // Not ours after all, or already reaped: unknown.
            _ => (0, -1),
        };
        let mut bytes = [0u8; 8];
        bytes[0] = tag;
        bytes[4..].copy_from_slice(&value.to_le_bytes());
        // Eight bytes always fit in a fresh pipe; a dispatcher that is gone does not read them.
        let _ = rustix::io::write(&self.status, &bytes);
    }
}

/// A request as the zygote receives it.
struct Request {
    title: Vec<u8>,
    body: Vec<u8>,
    /// The library to load before forking, if any.
    preload: Option<PathBuf>,
    gate: OwnedFd,
    output: OwnedFd,
    status: OwnedFd,
}

/// What a zygote runs.
#[derive(Clone, Copy)]
pub struct ZygoteCode {
    /// Runs a request's body in a forked child: the worker. Its exit code.
    pub child_main: fn(&str) -> i32,
    /// Loads the library at a path into the zygote itself, before it forks, so that its
    /// workers start with it loaded (one that does not load is loaded, and refused, by each
    /// worker itself); asked only of libraries that declare themselves fork-safe, once each.
    pub preload: fn(&Path),
}

/// The zygote: serves fork requests from its stdin (the control socket) until the dispatcher
/// closes it, running `code.child_main` with each request in a forked child. Returns its exit
/// code. Must be called in a process that has started no thread.
pub fn serve_zygote(code: ZygoteCode) -> i32 {
    // SAFETY: fd 0 is this process's stdin, open for its whole life: the control socket.
    let control = unsafe { BorrowedFd::borrow_raw(0) };
    let zygote = getpid();
    let title_area = TitleArea::of_this_process();
    let mut children: Vec<Forked> = Vec::new();
    // Until the dispatcher is gone; then until the last child has ended, so that one still
    // at its gate sees its dispatcher gone (and says it never started) rather than dying with
    // the fork server.
    let mut serving = true;
    while serving || !children.is_empty() {
        let mut fds: Vec<PollFd<'_>> = serving
            .then_some(control)
            .into_iter()
            .chain(children.iter().map(|c| c.pidfd.as_fd()))
            .map(|fd| PollFd::from_borrowed_fd(fd, PollFlags::IN))
            .collect();
        match poll(&mut fds, None) {
            Ok(_) | Err(Errno::INTR) => {}
            Err(e) => {
                eprintln!("jobhost fork server: cannot wait: {e}");
                return 1;
            }
        }
        let (asked, ended) = fds.split_at(usize::from(serving));
        let asked = asked.iter().any(|fd| !fd.revents().is_empty());
        let ended: Vec<usize> = ended
            .iter()
            .enumerate()
            .filter(|(_, fd)| !fd.revents().is_empty())
            .map(|(i, _)| i)
            .collect();
        drop(fds);
        // From the highest index down, so that each removal leaves the rest in place.
        for i in ended.into_iter().rev() {
            children.swap_remove(i).reap();
        }
        if asked {
            serving = serve_one(control, zygote, title_area.as_ref(), code, &mut children);
        }
    }
    0
}

/// Reads one request from `control`, loads its library first when it names one, forks its
/// child (added to `children`) and answers; false once the dispatcher is gone (or its request
/// unreadable), or loading left this process with a thread: nothing more will be forked.
fn serve_one(
    control: BorrowedFd<'_>,
    zygote: Pid,
    title_area: Option<&TitleArea>,
    code: ZygoteCode,
    children: &mut Vec<Forked>,
) -> bool {
    let request = match receive(control) {
        Ok(Some(request)) => request,
        // The dispatcher closed its end, or went away.
        Ok(None) => return false,
        Err(e) => {
            eprintln!("jobhost fork server: unreadable request: {e}");
            return false;
        }
    };
    if let Some(path) = &request.preload {
        (code.preload)(path);
        if thread_count() != Some(1) {
            // A thread could hold a lock that a forked child would wait on forever.
            let _ = answer_with(control, ANSWER_THREADED, None);
            return false;
        }
    }
    let answer = match fork_child(request, zygote, title_area, code.child_main) {
        Ok(child) => {
            let pid = child.pid.as_raw_nonzero().get();
            let answer = answer_with(control, pid, Some(&child.pidfd));
            children.push(child);
            answer
        }
        Err(e) => answer_with(control, -e.raw_os_error().unwrap_or(libc::EIO), None),
    };
    // Nobody to answer: the dispatcher is gone.
    answer.is_ok()
}

/// The threads of this process, from `/proc/self/task`; `None` when it cannot be read.
fn thread_count() -> Option<usize> {
    Some(std::fs::read_dir("/proc/self/task").ok()?.count())
}

/// Reads one request; `None` at the end of input.
fn receive(control: BorrowedFd<'_>) -> io::Result<Option<Request>> {
    let mut header = [0u8; HEADER_LEN];
    let Some(fds) = recv_with_fds(control, &mut header)? else {
        return Ok(None);
    };
    let mut parts = [Vec::new(), Vec::new(), Vec::new()];
    for (part, len) in parts.iter_mut().zip(header.chunks_exact(4)) {
        let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]);
        *part = vec![0u8; len as usize];
        read_exact(control, part)?;
    }
    let [title, body, preload] = parts;
    let preload = (!preload.is_empty()).then(|| PathBuf::from(OsString::from_vec(preload)));
    let mut fds = fds.into_iter();
    match (fds.next(), fds.next(), fds.next()) {
        (Some(gate), Some(output), Some(status)) => Ok(Some(Request {
            title,
            body,
            preload,
            gate,
            output,
            status,
        })),
        _ => Err(io::Error::other("a request without its three descriptors")),
    }
}

/// Answers a request: the child's pid and its pidfd, or `-errno`.
fn answer_with(control: BorrowedFd<'_>, answer: i32, pidfd: Option<&OwnedFd>) -> io::Result<()> {
    let passed: Vec<BorrowedFd<'_>> = pidfd.iter().map(|fd| fd.as_fd()).collect();
    send_with_fds(control, &answer.to_le_bytes(), &passed)
}

/// Forks the child for `request`; in the parent, returns it to be watched.
fn fork_child(
    request: Request,
    zygote: Pid,
    title_area: Option<&TitleArea>,
    child_main: fn(&str) -> i32,
) -> io::Result<Forked> {
    // SAFETY: this process has one thread (see `serve_zygote`), so the child may run any code:
    // no lock can be held by a thread that does not exist in it.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        become_worker(&request, zygote, title_area, child_main);
    }
    let Request { status, .. } = request;
    let pid = Pid::from_raw(pid).ok_or_else(|| io::Error::other("fork returned pid 0"))?;
    // Not reaped before we wait for it, so the pid is surely the child's.
    match pidfd_open(pid, PidfdFlags::empty()) {
        Ok(pidfd) => Ok(Forked { pid, pidfd, status }),
        Err(e) => {
            // Unwatchable: it must not run. Its pid is still its own (unreaped).
            let _ = rustix::process::kill_process(pid, Signal::KILL);
            let _ = rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::empty());
            Err(e.into())
        }
    }
}

/// In the forked child: becomes the worker of `request` and never returns.
fn become_worker(
    request: &Request,
    zygote: Pid,
    title_area: Option<&TitleArea>,
    child_main: fn(&str) -> i32,
) -> ! {
    // Until its go-ahead, it dies with the zygote; if the zygote died already, it stops here.
    let dies_with_zygote = set_parent_process_death_signal(Some(Signal::KILL)).is_ok();
    if !dies_with_zygote || getppid() != Some(zygote) {
        // SAFETY: ends this process at once, running nothing of the zygote's.
        unsafe { libc::_exit(EXIT_UNSTARTED) };
    }
    let stdio = rustix::stdio::dup2_stdin(&request.gate)
        .and_then(|()| rustix::stdio::dup2_stdout(&request.output))
        .and_then(|()| rustix::stdio::dup2_stderr(&request.output));
    if stdio.is_err() {
        // SAFETY: as above.
        unsafe { libc::_exit(EXIT_UNSTARTED) };
    }
    // Nothing of the zygote's stays open in the worker: not the control socket (stdin now is
    // the gate), nor the other children's pidfds and status pipes, nor this request's. The
    // `OwnedFd`s still naming them are never dropped: this function never returns.
    // SAFETY: close_range only closes descriptors.
    unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
    if let Some(area) = title_area {
        area.write(&request.title);
    }
    let code = match std::str::from_utf8(&request.body) {
        Ok(body) => std::panic::catch_unwind(|| child_main(body))
            .unwrap_or(EXIT_UNSTARTED),
        Err(_) => EXIT_UNSTARTED,
    };
    super::exit_child(code)
}

/// The zygote's argument area (its `argv` strings after the program name), which a forked
/// child overwrites with its own command line, as `setproctitle` does.
struct TitleArea {
    start: usize,
    len: usize,
}

impl TitleArea {
    /// The area of this process, from `/proc/self/stat` (`arg_start`, `arg_end`) and
    /// `/proc/self/cmdline` (the program name stays).
    fn of_this_process() -> Option<Self> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // Fields after the command name, which is in parentheses and may contain anything:
        // the first is field 3 (state); arg_start is field 48 and arg_end field 49.
        let fields: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
        let arg_start: usize = fields.get(48 - 3)?.parse().ok()?;
        let arg_end: usize = fields.get(49 - 3)?.parse().ok()?;
        let cmdline = std::fs::read("/proc/self/cmdline").ok()?;
        let program = cmdline.iter().position(|&b| b == 0)? + 1;
        let start = arg_start.checked_add(program)?;
        let len = arg_end.checked_sub(start)?;
        (len > 1).then_some(Self { start, len })
    }

    /// Writes `title` into the area, cut to fit, the rest zeroed (so the kernel shows no
    /// leftovers of the zygote's arguments).
    fn write(&self, title: &[u8]) {
        let n = title.len().min(self.len - 1);
        // SAFETY: [start, start + len) is this process's argument area: memory of its own,
        // mapped and writable for its whole life, which nothing else in a forked worker reads
        // (the request was read from the socket, not from the arguments).
        unsafe {
            let area = self.start as *mut u8;
            std::ptr::copy_nonoverlapping(title.as_ptr(), area, n);
            std::ptr::write_bytes(area.add(n), 0, self.len - n);
        }
    }
}
