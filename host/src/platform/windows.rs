//! The Windows implementation of the platform layer.
//!
//! A worker is started the way the spec's `start /b` starts a job: detached from the caller's
//! console (`DETACHED_PROCESS | CREATE_NEW_PROCESS_GROUP | CREATE_NO_WINDOW`), with stdin from
//! `NUL`. It is put into a Job Object at once, so a stop reaches the whole tree it starts.
//! Windows has no SIGTERM: a stop first sets a named event the worker watches (the job sees it
//! through `JobContext::is_cancelled`), then, after the grace period, terminates the Job
//! Object. Crashes are named by their NTSTATUS code (`0xC0000005` access violation, ...).
//!
//! On Linux a restarted dispatcher opens a worker's output pipe again through `/proc`; here an
//! attempt's output cannot be reopened, so a worker adopted after its dispatcher crashed keeps running and is
//! settled by its report, but what it prints after the crash is not captured. An adopted worker
//! is found by its recorded pid (Windows offers no portable way to read another process's
//! command line) and stopped with `TerminateProcess` alone. The doorbell is a loopback TCP
//! socket whose port is written to the doorbell's path, since Wine (where this is tested) has
//! no `AF_UNIX` sockets.

use std::{
    ffi::OsStr,
    io::{self, PipeReader, PipeWriter, Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    os::windows::{
        ffi::OsStrExt,
        io::{AsRawHandle, FromRawHandle, OwnedHandle, RawHandle},
        process::CommandExt,
    },
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use windows_sys::Win32::{
    Foundation::{
        SetHandleInformation, BOOL, HANDLE, HANDLE_FLAG_INHERIT, INVALID_HANDLE_VALUE,
        STILL_ACTIVE, WAIT_OBJECT_0, WAIT_TIMEOUT,
    },
    System::{
        Console::{
            GetStdHandle, SetConsoleCtrlHandler, STD_ERROR_HANDLE, STD_INPUT_HANDLE,
            STD_OUTPUT_HANDLE,
        },
        Diagnostics::Debug::{SetErrorMode, SEM_FAILCRITICALERRORS, SEM_NOGPFAULTERRORBOX},
        JobObjects::{AssignProcessToJobObject, CreateJobObjectW, TerminateJobObject},
        Threading::{
            CreateEventW, GetExitCodeProcess, OpenEventW, OpenProcess, SetEvent, TerminateProcess,
            WaitForMultipleObjects, WaitForSingleObject, CREATE_NEW_PROCESS_GROUP,
            CREATE_NO_WINDOW, DETACHED_PROCESS, INFINITE, PROCESS_QUERY_LIMITED_INFORMATION,
            PROCESS_SYNCHRONIZE, PROCESS_TERMINATE, SYNCHRONIZATION_SYNCHRONIZE,
        },
    },
};

use super::{
    give_go_ahead, OutputSink, ProcessEnd, SignalRequest, StopReason, StopSchedule, SuperviseOptions,
};

/// The environment variable naming the event a worker watches for a stop request.
const STOP_EVENT_VAR: &str = "JOBHOST_STOP_EVENT";

/// The creation flags of a detached process: the spec's `start /b`.
const DETACHED: u32 = DETACHED_PROCESS | CREATE_NEW_PROCESS_GROUP | CREATE_NO_WINDOW;

fn wide(text: &OsStr) -> Vec<u16> {
    text.encode_wide().chain(Some(0)).collect()
}

/// Takes ownership of a handle a Win32 call returned; null means the call failed.
fn owned(handle: HANDLE) -> io::Result<OwnedHandle> {
    if handle.is_null() {
        Err(io::Error::last_os_error())
    } else {
        // SAFETY: the handle was just returned to us by the system and is owned by nobody else.
        Ok(unsafe { OwnedHandle::from_raw_handle(handle as RawHandle) })
    }
}

fn raw(handle: &impl AsRawHandle) -> HANDLE {
    handle.as_raw_handle() as HANDLE
}

fn millis(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(INFINITE - 1)
}

/// A one-shot cancellation that wakes a supervisor blocked in a wait: a manual-reset event.
#[derive(Debug)]
pub struct CancelToken {
    fired: AtomicBool,
    event: OwnedHandle,
}

impl CancelToken {
    /// A token that has not fired.
    pub fn new() -> io::Result<Arc<Self>> {
        // SAFETY: no security attributes, manual reset, initially unset, unnamed.
        let event = owned(unsafe { CreateEventW(std::ptr::null(), 1, 0, std::ptr::null()) })?;
        Ok(Arc::new(Self {
            fired: AtomicBool::new(false),
            event,
        }))
    }

    /// Fires the token.
    pub fn cancel(&self) {
        self.fired.store(true, Ordering::SeqCst);
        // SAFETY: the event handle is valid for as long as self lives.
        unsafe { SetEvent(raw(&self.event)) };
    }

    /// Whether the token has fired.
    pub fn is_cancelled(&self) -> bool {
        self.fired.load(Ordering::SeqCst)
    }
}

/// Nothing to do on Windows: the Job Object [`supervise`] puts a child in holds the child's
/// whole process tree (Unix: becomes the reaper of its descendants).
pub fn adopt_orphans() -> io::Result<()> {
    Ok(())
}

/// Nothing to do on Windows: [`supervise`] terminates the child's Job Object, and with it
/// every process the child started, when the child ends (Unix: kills every descendant).
pub fn kill_adopted() {}

/// In a gated worker: reads its go-ahead from stdin, the byte, or `None` at the end of input
/// (there is no fork server here to outlive).
pub fn await_go_ahead() -> io::Result<Option<u8>> {
    let mut byte = [0u8; 1];
    match std::io::Read::read(&mut std::io::stdin().lock(), &mut byte)? {
        0 => Ok(None),
        _ => Ok(Some(byte[0])),
    }
}

/// Ends a child process (a worker, an inspector) with `code`.
pub fn exit_child(code: i32) -> ! {
    std::process::exit(code)
}

/// In a gated worker, once its go-ahead is read. Its stdin pipe is closed by the supervisor
/// after the go-ahead, so reading it gives end of input, as `NUL` does: nothing to do.
pub fn stdin_to_null() -> io::Result<()> {
    Ok(())
}

/// A child to supervise: a command to spawn (Windows has no fork server).
pub enum Launch {
    /// Spawned by the supervisor, with stdin from a pipe of its own.
    Exec(Command),
}

/// What a worker or inspector does to itself first: no error dialogs for a crash, and a
/// thread that turns the supervisor's stop event into the cancellation flag the job reads.
pub fn prepare_child() -> io::Result<&'static AtomicBool> {
    static STOP: AtomicBool = AtomicBool::new(false);
    // SAFETY: only changes how this process reports its own crashes.
    unsafe { SetErrorMode(SEM_FAILCRITICALERRORS | SEM_NOGPFAULTERRORBOX) };
    if let Some(name) = std::env::var_os(STOP_EVENT_VAR) {
        let name = wide(&name);
        // SAFETY: `name` is a NUL-terminated wide string that outlives the call.
        let event = owned(unsafe { OpenEventW(SYNCHRONIZATION_SYNCHRONIZE, 0, name.as_ptr()) })?;
        std::thread::Builder::new()
            .name("stop-event".into())
            .spawn(move || {
                // SAFETY: the event handle is owned by this thread's closure.
                if unsafe { WaitForSingleObject(raw(&event), INFINITE) } == WAIT_OBJECT_0 {
                    STOP.store(true, Ordering::SeqCst);
                }
            })?;
    }
    Ok(&STOP)
}

/// The name of a crash code, such as `0xC0000005 access violation`.
pub fn crash_name(code: i32) -> String {
    super::ntstatus_name(code as u32)
}

/// Where a child's stdout and stderr go: the supervisor reads `read`, the child gets `write`.
pub struct OutputPair {
    read: PipeReader,
    write: PipeWriter,
}

impl OutputPair {
    /// An anonymous pipe.
    pub fn pipe() -> io::Result<Self> {
        let (read, write) = io::pipe()?;
        Ok(Self { read, write })
    }
}

/// Nothing for a worker to hold open on Windows: see the module documentation.
pub const HELD_OUTPUT: Option<&str> = None;

/// Windows output pipes cannot be opened again after a crash: see the module documentation.
pub fn reopen_output(_pid: u32) -> io::Result<PipeReader> {
    Err(io::ErrorKind::Unsupported.into())
}

/// Nothing to hold open on Windows: see the module documentation.
pub fn hold_output_open(_path: &Path) -> io::Result<()> {
    Ok(())
}

static STOP_EVENTS: AtomicU64 = AtomicU64::new(0);

/// Spawns the command of `launch` detached, in a Job Object, with stdin from a pipe that carries only its go-ahead and stdout and stderr
/// into `output`; calls `on_spawn` with its pid; streams its output into `sink`; at
/// `options.timeout` or when `cancel` fires, sets its stop event and after `options.kill_grace`
/// terminates its Job Object; terminates whatever it left in the job; reports how it ended.
pub fn supervise(
    launch: Launch,
    output: OutputPair,
    options: SuperviseOptions,
    cancel: &CancelToken,
    sink: &mut dyn OutputSink,
    on_spawn: &mut dyn FnMut(u32) -> bool,
) -> io::Result<ProcessEnd> {
    let Launch::Exec(mut command) = launch;
    let OutputPair { read, write } = output;
    let name = format!(
        "Local\\jobhost-stop-{}-{}",
        std::process::id(),
        STOP_EVENTS.fetch_add(1, Ordering::Relaxed)
    );
    let wide_name = wide(OsStr::new(&name));
    // SAFETY: manual-reset, unset event with a NUL-terminated name that outlives the call.
    let stop_event = owned(unsafe { CreateEventW(std::ptr::null(), 1, 0, wide_name.as_ptr()) })?;
    // SAFETY: an unnamed Job Object with default security.
    let job = owned(unsafe { CreateJobObjectW(std::ptr::null(), std::ptr::null()) })?;
    command
        .env(STOP_EVENT_VAR, &name)
        .stdin(Stdio::piped())
        .stdout(Stdio::from(write.try_clone()?))
        .stderr(Stdio::from(write))
        .creation_flags(DETACHED);
    let started = Instant::now();
    let mut child = command.spawn()?;
    drop(command);
    // A process the worker started before this line would escape the job; the worker starts
    // none before it has loaded the plugin, which takes far longer (and nothing before its
    // go-ahead, which comes after).
    // SAFETY: both handles are valid; the child has not been waited for.
    if unsafe { AssignProcessToJobObject(raw(&job), raw(&child)) } == 0 {
        let error = io::Error::last_os_error();
        // Outside a job it could not be stopped with what it starts: it never gets its
        // go-ahead, and goes now.
        // SAFETY: the child's handle is valid; it has not been waited for.
        unsafe { TerminateProcess(raw(&child), 1) };
        let _ = child.wait();
        return Err(io::Error::new(
            error.kind(),
            format!("cannot put the worker in a Job Object, so it was not started: {error}"),
        ));
    }
    let pid = child.id();
    let go = on_spawn(pid);
    // Closed at once: the job's stdin gives end of input from then on (see `stdin_to_null`). So
    // whether the worker read it cannot be told afterwards; it counts as read when given.
    drop(give_go_ahead(child.stdin.take(), go));

    let deadline = started + options.timeout;
    let stopped = std::thread::scope(|scope| {
        let reader = scope.spawn(move || pump(read, sink));
        let stopped = watch(
            raw(&child),
            deadline,
            options.kill_grace,
            cancel,
            || {
                // SAFETY: the event handle is valid for this scope.
                unsafe { SetEvent(raw(&stop_event)) };
            },
            || terminate(&job, &child),
        );
        // Whatever the job left behind goes now, which also closes the pipe's last writers.
        terminate(&job, &child);
        let pumped = reader
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p));
        pumped.and(Ok(stopped))
    })?;
    let status = child.wait()?;
    let exit = super::exit_kind_of_code(status.code().unwrap_or(-1) as u32);
    Ok(ProcessEnd {
        pid,
        duration: started.elapsed(),
        exit: Some(exit),
        stopped,
        took_go_ahead: go,
    })
}

/// Ends everything in `job`, and `child` itself (in it, but a stop must not depend on that):
/// what a stop forces.
fn terminate(job: &OwnedHandle, child: &std::process::Child) {
    // SAFETY: both handles are valid while the caller holds them; the child has not been
    // waited for, so its handle names it (terminating one that ended does nothing).
    unsafe {
        TerminateJobObject(raw(job), 1);
        TerminateProcess(raw(child), 1);
    }
}

/// Copies what the child writes into `sink` until the pipe closes.
fn pump(mut read: PipeReader, sink: &mut dyn OutputSink) -> io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match read.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => sink.write(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Waits for `process` to end, asking it to stop (`ask`) at the deadline or on cancel and
/// forcing it (`force`) once the grace period is over. Returns why it was stopped, if it was.
fn watch(
    process: HANDLE,
    deadline: Instant,
    kill_grace: Duration,
    cancel: &CancelToken,
    ask: impl Fn(),
    force: impl Fn(),
) -> Option<StopReason> {
    let mut schedule = StopSchedule::new(deadline, kill_grace);
    loop {
        let now = Instant::now();
        let actions = schedule.at(now, cancel.is_cancelled());
        if actions.ask {
            ask();
        }
        if actions.force {
            force();
        }
        let timeout = schedule
            .wake_at()
            .map_or(INFINITE, |at| millis(at.saturating_duration_since(now)));
        let handles = [process, raw(&cancel.event)];
        let stopped = schedule.stopped();
        let count = if stopped.is_none() { 2 } else { 1 };
        // SAFETY: both handles are valid for the duration of the call.
        let waited = unsafe { WaitForMultipleObjects(count, handles.as_ptr(), 0, timeout) };
        if waited == WAIT_OBJECT_0 {
            return stopped;
        }
        if waited != WAIT_TIMEOUT && waited != WAIT_OBJECT_0 + 1 {
            // The wait itself failed; treat the process as gone rather than spin.
            return stopped;
        }
    }
}

/// Watches a worker this process did not start (its dispatcher crashed) until it ends, with
/// the same deadline and cancellation as [`supervise`]; the stop is `TerminateProcess`.
/// `Ok(None)` at once when no process `pid` exists.
pub fn adopt(
    pid: u32,
    _output: Option<PipeReader>,
    time_left: Duration,
    kill_grace: Duration,
    cancel: &CancelToken,
    _sink: &mut dyn OutputSink,
) -> io::Result<Option<StopReason>> {
    let Some(process) = open_process(pid) else {
        return Ok(None);
    };
    let terminate = || {
        // SAFETY: the process handle is valid while `process` lives.
        unsafe { TerminateProcess(raw(&process), 1) };
    };
    Ok(watch(
        raw(&process),
        Instant::now() + time_left,
        kill_grace,
        cancel,
        terminate,
        terminate,
    ))
}

fn open_process(pid: u32) -> Option<OwnedHandle> {
    let access = PROCESS_SYNCHRONIZE | PROCESS_TERMINATE | PROCESS_QUERY_LIMITED_INFORMATION;
    // SAFETY: plain handle acquisition; a null handle means no such process.
    let handle = owned(unsafe { OpenProcess(access, 0, pid) }).ok()?;
    let mut code = 0u32;
    // SAFETY: the handle is valid and `code` is a valid out-pointer.
    let ok = unsafe { GetExitCodeProcess(raw(&handle), &mut code) };
    (ok != 0 && code == STILL_ACTIVE as u32).then_some(handle)
}

/// The live worker of an attempt: the recorded pid, if that process still runs. See the module
/// documentation for why the command line is not checked here.
pub fn find_worker(pid: Option<u32>, _markers: &[&str]) -> Option<u32> {
    pid.filter(|&p| open_process(p).is_some())
}

type Handler = Box<dyn Fn() + Send + Sync>;

static HANDLERS: Mutex<Vec<Handler>> = Mutex::new(Vec::new());

unsafe extern "system" fn console_event(_kind: u32) -> BOOL {
    if let Ok(handlers) = HANDLERS.lock() {
        for handler in handlers.iter() {
            handler();
        }
    }
    1
}

/// Calls `handler` with [`SignalRequest::Stop`] on Ctrl+C, Ctrl+Break or the console closing;
/// Windows has no signal asking to reopen the logs.
pub fn on_signals(handler: impl Fn(SignalRequest) + Send + Sync + 'static) -> io::Result<()> {
    on_termination(move || handler(SignalRequest::Stop))
}

/// Calls `handler` on Ctrl+C, Ctrl+Break or the console closing.
pub fn on_termination(handler: impl Fn() + Send + Sync + 'static) -> io::Result<()> {
    let mut handlers = HANDLERS
        .lock()
        .map_err(|_| io::Error::other("handler list poisoned"))?;
    if handlers.is_empty() {
        // SAFETY: registers a handler that only reads a static list.
        if unsafe { SetConsoleCtrlHandler(Some(console_event), 1) } == 0 {
            return Err(io::Error::last_os_error());
        }
    }
    handlers.push(Box::new(handler));
    Ok(())
}

/// A dispatcher's doorbell: a loopback TCP listener whose port is written to the doorbell's
/// path. Ringing connects and sends one byte; nobody listening means the connection is
/// refused at once.
#[derive(Debug)]
pub struct Doorbell {
    listener: TcpListener,
    path: PathBuf,
    closed: Arc<AtomicBool>,
}

impl Doorbell {
    /// Binds a doorbell and publishes its port at `path`.
    pub fn bind(path: &Path) -> io::Result<Self> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        let port = listener.local_addr()?.port();
        crate::shared::files::write_atomically(path, port.to_string().as_bytes())?;
        Ok(Self {
            listener,
            path: path.to_path_buf(),
            closed: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Blocks until the doorbell rings; returns the byte rung. Fails once unlinked.
    pub fn wait(&self) -> io::Result<u8> {
        loop {
            let (mut stream, _) = self.listener.accept()?;
            if self.closed.load(Ordering::SeqCst) {
                return Err(io::ErrorKind::NotConnected.into());
            }
            let mut buf = [0u8; 1];
            if stream.read_exact(&mut buf).is_ok() {
                return Ok(buf[0]);
            }
        }
    }

    /// Another handle to the same doorbell (for a listener thread).
    pub fn try_clone(&self) -> io::Result<Self> {
        Ok(Self {
            listener: self.listener.try_clone()?,
            path: self.path.clone(),
            closed: Arc::clone(&self.closed),
        })
    }

    /// Removes the port file, so that ringing fails from now on, and wakes a thread blocked in
    /// [`Doorbell::wait`] with an error.
    pub fn unlink(&self) -> io::Result<()> {
        self.closed.store(true, Ordering::SeqCst);
        if let Ok(addr) = self.listener.local_addr() {
            let _ = TcpStream::connect_timeout(&addr, Duration::from_secs(1));
        }
        std::fs::remove_file(&self.path)
    }
}

/// Whether someone listens at the doorbell `path`, found without ringing it: a connection
/// that sends nothing, which [`Doorbell::wait`] drops without waking its owner.
pub fn answers(path: &Path) -> io::Result<bool> {
    Ok(connect_doorbell(path)?.is_some())
}

/// Rings the doorbell at `path` with `byte`. `Ok(false)` when nobody is listening there.
pub fn ring(path: &Path, byte: u8) -> io::Result<bool> {
    match connect_doorbell(path)? {
        Some(mut stream) => {
            stream.write_all(&[byte])?;
            Ok(true)
        }
        None => Ok(false),
    }
}

/// A connection to the doorbell at `path`; `None` when nobody is listening there.
fn connect_doorbell(path: &Path) -> io::Result<Option<TcpStream>> {
    let port: u16 = match crate::shared::files::read_capped_text(
        path,
        crate::shared::files::MAX_STATE_FILE_BYTES,
        "a doorbell file",
    ) {
        Ok(text) => match text.trim().parse() {
            Ok(port) => port,
            Err(_) => return Ok(None),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
        Ok(stream) => Ok(Some(stream)),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::ConnectionRefused | io::ErrorKind::TimedOut
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Nothing to do in the process itself: [`detach_command`] made it detached.
pub fn detach_self() -> io::Result<()> {
    Ok(())
}

/// Makes `command` start detached from this process's console: the spec's `start /b`.
///
/// `CreateProcess` hands a child every inheritable handle of its parent, whatever the
/// child's own stdio, and a process's standard handles usually are inheritable: a detached
/// dispatcher would keep the caller's stdout and stderr pipes open for as long as it runs, so
/// whoever reads `jobhost run`'s output (a shell's `$(...)`, PHP's `exec`) would wait for the
/// dispatcher to exit instead of getting the job id at once. So this process's own standard
/// handles are made non-inheritable first; std duplicates them for a child whose stdio is
/// `Stdio::inherit()`, so such children are not affected.
pub fn detach_command(command: &mut Command) {
    for which in [STD_INPUT_HANDLE, STD_OUTPUT_HANDLE, STD_ERROR_HANDLE] {
        // SAFETY: reads this process's standard handle; null or invalid when there is none.
        let handle = unsafe { GetStdHandle(which) };
        if !handle.is_null() && handle != INVALID_HANDLE_VALUE {
            // SAFETY: only clears the inherit flag of a handle this process owns; a failure
            // (such as a pseudo-handle) leaves it as it was.
            unsafe { SetHandleInformation(handle, HANDLE_FLAG_INHERIT, 0) };
        }
    }
    command.creation_flags(DETACHED);
}
