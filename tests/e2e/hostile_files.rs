//! A plugin directory holding things that are not plugins — pipes, devices, huge files, broken
//! links, directories, libraries of other programs — never hangs, exhausts or misleads jobhost:
//! each is listed with a reason naming what it is and what to do, nothing is read whole or
//! loaded before it is known to be a job-sdk plugin, and the good plugins keep serving.

use std::{
    fs,
    io::Write,
    os::unix::fs::{symlink, OpenOptionsExt},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

use jobhost::catalog::inventory::{FileStatus, Inventory};
use jobhost_e2e::{wait_for, Host, Run};
use serde_json::Value;

/// How long a command may take before it counts as hung: far beyond what it needs on a loaded
/// machine, so only a real hang reaches it.
pub(crate) const HANG: Duration = Duration::from_secs(60);

/// Runs `command` to its end, killing it if it has not ended within [`HANG`]: a command that
/// hangs fails the test instead of hanging it.
pub(crate) fn bounded(what: &str, mut command: Command) -> Run {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = tempfile::tempdir().unwrap();
    let n = N.fetch_add(1, Ordering::Relaxed);
    let (out, err) = (
        dir.path().join(format!("{n}.out")),
        dir.path().join(format!("{n}.err")),
    );
    command
        .stdin(Stdio::null())
        .stdout(fs::File::create(&out).unwrap())
        .stderr(fs::File::create(&err).unwrap());
    let mut child = command.spawn().unwrap();
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > HANG {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{what} hung: no answer after {HANG:?}; stderr: {}",
                fs::read_to_string(&err).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Run {
        code: status.code().unwrap_or(-1),
        stdout: fs::read_to_string(&out).unwrap(),
        stderr: fs::read_to_string(&err).unwrap(),
    }
}

/// `jobhost ARGS` in `host`, bounded by [`HANG`].
fn run(host: &Host, args: &[&str]) -> Run {
    let mut command = host.jobhost();
    command.args(args);
    bounded(&format!("jobhost {}", args.join(" ")), command)
}

/// A named pipe. When it goes, it is opened for writing once, which lets go of any reader
/// blocked opening it (so a failing test leaves no process stuck), then removed.
pub(crate) struct Fifo(PathBuf);

impl Fifo {
    pub(crate) fn new(path: PathBuf) -> Self {
        let made = Command::new("mkfifo").arg(&path).status().unwrap();
        assert!(made.success(), "mkfifo {}", path.display());
        Self(path)
    }
}

impl Drop for Fifo {
    fn drop(&mut self) {
        let _ = fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&self.0);
        let _ = fs::remove_file(&self.0);
    }
}

/// The catalog's entry for the file named `name`, from `jobhost plugins --json`.
pub(crate) fn entry(inventory: &Value, name: &str) -> Value {
    inventory["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| Path::new(f["path"].as_str().unwrap()).file_name() == Some(name.as_ref()))
        .unwrap_or_else(|| panic!("{name} not listed: {inventory:#}"))
        .clone()
}

/// The reason the file named `name` was rejected, checked to be one line that names no file
/// of jobhost's own (a snapshot, the state directory).
pub(crate) fn reason(inventory: &Value, name: &str) -> String {
    let file = entry(inventory, name);
    assert_eq!(file["status"], "rejected", "{name}: {file:#}");
    let reason = file["reason"].as_str().unwrap().to_owned();
    assert!(
        !reason.contains('\n')
            && !reason.contains("snapshots")
            && !reason.contains(".incoming")
            && !reason.contains("/state/"),
        "{name}: {reason}"
    );
    reason
}

pub(crate) fn assert_starts(reason: &str, start: &str) {
    assert!(
        reason.starts_with(start),
        "expected {start:?}…, got {reason:?}"
    );
}

/// A job of an example plugin runs to completion.
pub(crate) fn welcome_email_runs(host: &Host) {
    run(
        host,
        &[
            "run",
            r"App\Jobs\SendWelcomeEmail",
            "handle",
            "user_id=5",
            "--wait",
        ],
    )
    .expect_code(0);
}

#[test]
fn a_fifo_named_like_a_library_blocks_neither_the_command_line_nor_the_rust_api() {
    let host = Host::standard();
    let _fifo = Fifo::new(host.plugin_dir().join("pipe.so"));

    let listed = run(&host, &["plugins", "--json"]);
    listed.expect_code(0);
    let inventory = listed.json();
    assert_starts(&reason(&inventory, "pipe.so"), "a named pipe (FIFO)");
    assert_eq!(entry(&inventory, "libwelcome_email.so")["status"], "plugin");
    welcome_email_runs(&host);

    // The Rust API, on a thread of its own so that a hang fails the test.
    let (tx, rx) = std::sync::mpsc::channel();
    let mut client = host.client();
    std::thread::spawn(move || {
        let job = jobhost::Job::new(r"Tests\Misbehave", "echo").param("message", "hi");
        let _ = tx.send(client.dispatch(job).map(|id| client.follow(id, &|| false)));
    });
    let followed = rx.recv_timeout(HANG).expect("the Rust API hung");
    let done = followed.unwrap().unwrap().unwrap();
    assert_eq!(done.state, jobhost::store::JobState::Completed);
}

#[test]
fn a_dispatcher_started_beside_a_fifo_runs_jobs_answers_the_dashboard_and_stops() {
    let host = Host::standard();
    let _fifo = Fifo::new(host.plugin_dir().join("pipe.so"));
    let mut dashboard = crate::dashboard::Dashboard::start_in(host, "");
    let plugins = dashboard.get(
        "/api/plugins",
        crate::dashboard::As::Bearer(&dashboard.token),
    );
    assert_eq!(plugins.status, 200, "{}", plugins.body);
    let inventory: Value = serde_json::from_str(&plugins.body).unwrap();
    assert_starts(&reason(&inventory, "pipe.so"), "a named pipe (FIFO)");
    welcome_email_runs(&dashboard.host);
    let mut serve = dashboard.serve.take().unwrap();
    assert!(
        dashboard.host.stop_serve(&mut serve),
        "jobhost stop did not stop the dispatcher"
    );
}

#[test]
fn a_dispatcher_that_sees_a_fifo_appear_runs_jobs_and_obeys_sigterm() {
    let host = Host::standard();
    let mut serve = host.serve();
    let _fifo = Fifo::new(host.plugin_dir().join("pipe.so"));
    wait_for("the pipe to be catalogued", HANG, || {
        let catalog = jobhost::catalog::inventory::CatalogPaths::new(&host.state_dir()).catalog;
        let inventory = Inventory::read(&catalog)?;
        inventory
            .files
            .iter()
            .any(|f| f.path.ends_with("pipe.so"))
            .then_some(())
    });
    welcome_email_runs(&host);
    let term = Command::new("kill")
        .args(["-TERM", &serve.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let ended = wait_for("the dispatcher to obey SIGTERM", HANG, || {
        serve.try_wait().unwrap()
    });
    assert!(ended.success(), "{ended:?}");
}

/// The largest resident set (bytes) of any child of this test process that has ended.
fn children_peak_rss() -> u64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: `usage` is a valid, writable `rusage`, which getrusage fills in.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, usage.as_mut_ptr()) };
    assert_eq!(rc, 0);
    // SAFETY: getrusage succeeded, so it filled `usage` in.
    let usage = unsafe { usage.assume_init() };
    u64::try_from(usage.ru_maxrss).unwrap() * 1024
}

/// The largest resident set (bytes) process `pid` has had so far (`VmHWM`).
fn peak_rss(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .unwrap()
        .trim()
        .trim_end_matches(" kB")
        .parse::<u64>()
        .unwrap();
    kb * 1024
}

/// Far below the 1 GB the sparse file would take if it were read into memory.
const SMALL_RSS: u64 = 200 * 1024 * 1024;

/// The /dev/zero link and the 1 GB sparse file.
fn endless_and_huge(host: &Host) {
    symlink("/dev/zero", host.plugin_dir().join("zero.so")).unwrap();
    let big = fs::File::create(host.plugin_dir().join("big.so")).unwrap();
    big.set_len(1024 * 1024 * 1024).unwrap();
}

#[test]
fn a_dev_zero_link_and_a_huge_sparse_file_are_refused_unread() {
    let host = Host::standard();
    endless_and_huge(&host);
    // Should it read them after all, it fails at 4 GiB rather than take the machine's memory.
    let mut command = Command::new("sh");
    command
        .args(["-c", "ulimit -v 4194304 && exec \"$0\" \"$@\""])
        .arg(jobhost_e2e::artifacts_dir().join("jobhost"))
        .args(["plugins", "--json"])
        .current_dir(host.root());
    for (key, value) in host.jobhost().get_envs() {
        match value {
            Some(value) => command.env(key, value),
            None => command.env_remove(key),
        };
    }
    let listed = bounded("jobhost plugins", command);
    listed.expect_code(0);
    let inventory = listed.json();
    assert_starts(
        &reason(&inventory, "zero.so"),
        "a device, not a library: /dev/zero",
    );
    let big = reason(&inventory, "big.so");
    assert_starts(&big, "too big: 1073741824 bytes");
    assert!(big.contains("limits.max_plugin_bytes"), "{big}");
    let peak = children_peak_rss();
    assert!(peak < SMALL_RSS, "jobhost plugins peaked at {peak} bytes");
    // Nothing of them was copied into the state directory.
    let snapshots = jobhost::catalog::inventory::CatalogPaths::new(&host.state_dir()).snapshots;
    let copied: u64 = fs::read_dir(snapshots)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert!(copied < 64 * 1024 * 1024, "{copied} bytes of snapshots");

    // A limit raised above the file's size reads it, streaming: still refused, for what its
    // first bytes say, in little memory.
    host.settings("limits.max_plugin_bytes = 2147483648\n");
    let listed = run(&host, &["plugins", "--json"]);
    listed.expect_code(0);
    assert_starts(
        &reason(&listed.json(), "big.so"),
        "not a shared library: its first bytes are not an ELF header",
    );
    let peak = children_peak_rss();
    assert!(peak < SMALL_RSS, "jobhost plugins peaked at {peak} bytes");
}

#[test]
fn a_dispatcher_catalogues_a_dev_zero_link_and_a_huge_sparse_file_in_little_memory() {
    let host = Host::standard();
    let mut serve = host.serve();
    endless_and_huge(&host);
    wait_for("both to be catalogued", HANG, || {
        let catalog = jobhost::catalog::inventory::CatalogPaths::new(&host.state_dir()).catalog;
        let inventory = Inventory::read(&catalog)?;
        let rejected = |name: &str| {
            inventory
                .files
                .iter()
                .any(|f| f.path.ends_with(name) && matches!(f.status, FileStatus::Rejected { .. }))
        };
        (rejected("zero.so") && rejected("big.so")).then_some(())
    });
    welcome_email_runs(&host);
    let peak = peak_rss(serve.id());
    assert!(peak < SMALL_RSS, "the dispatcher peaked at {peak} bytes");
    assert!(host.stop_serve(&mut serve));
}

#[test]
fn a_library_without_job_sdks_export_is_refused_without_running_its_constructors() {
    let host = Host::standard();
    let library = host.install_plugin("not_a_plugin_fixture");
    let marker = host.root().join("constructor-ran");

    // The fixture's constructor does write the marker whenever something loads it.
    let control = host.root().join("control-marker");
    let loaded = Command::new("true")
        .env("LD_PRELOAD", &library)
        .env("JOBHOST_FIXTURE_MARKER", &control)
        .status()
        .unwrap();
    assert!(
        loaded.success() && control.exists(),
        "the fixture's constructor did not run"
    );

    let mut command = host.jobhost();
    command
        .args(["plugins", "--json"])
        .env("JOBHOST_FIXTURE_MARKER", &marker);
    let listed = bounded("jobhost plugins", command);
    listed.expect_code(0);
    let reason = reason(&listed.json(), "libnot_a_plugin_fixture.so");
    assert_starts(&reason, "does not export job-sdk's root module");
    assert!(reason.contains("job_sdk::export_plugin!"), "{reason}");
    assert!(
        !marker.exists(),
        "jobhost loaded the library: its constructor ran"
    );
}

#[test]
fn links_loops_directories_sockets_and_foreign_files_are_listed_with_what_they_are() {
    let host = Host::standard();
    let dir = host.plugin_dir();
    symlink(dir.join("libgone-1.0.so"), dir.join("libgone.so")).unwrap();
    symlink("loop-b.so", dir.join("loop-a.so")).unwrap();
    symlink("loop-a.so", dir.join("loop-b.so")).unwrap();
    fs::create_dir(dir.join("x.so")).unwrap();
    let _socket = std::os::unix::net::UnixListener::bind(dir.join("socket.so")).unwrap();
    let mut pe = b"MZ\x90\x00".to_vec();
    pe.resize(4096, 0);
    fs::write(dir.join("windows.so"), pe).unwrap();
    host.write("plugins/notes.so", "this is a text file, not a library\n");
    host.write("plugins/.hidden.so", "hidden: not listed\n");
    host.install_plugin("foreign_app_fixture");
    // The usual versioned name, behind a link.
    let welcome = dir.join("libwelcome_email.so");
    fs::rename(&welcome, dir.join("libwelcome_email-1.0")).unwrap();
    symlink("libwelcome_email-1.0", &welcome).unwrap();

    let listed = run(&host, &["plugins", "--json"]);
    listed.expect_code(0);
    let inventory = listed.json();
    let gone = reason(&inventory, "libgone.so");
    assert_starts(&gone, "dangling symlink: it points to ");
    assert!(gone.contains("libgone-1.0.so"), "{gone}");
    assert_starts(&reason(&inventory, "loop-a.so"), "symlink loop");
    assert_starts(&reason(&inventory, "loop-b.so"), "symlink loop");
    assert_starts(&reason(&inventory, "x.so"), "a directory, not a library");
    assert_starts(&reason(&inventory, "socket.so"), "a socket, not a library");
    assert_starts(
        &reason(&inventory, "windows.so"),
        "built for another platform: a Windows (PE) file",
    );
    assert_starts(
        &reason(&inventory, "notes.so"),
        "not a shared library: its first bytes are not an ELF header",
    );
    let foreign = reason(&inventory, "libforeign_app_fixture.so");
    assert_starts(&foreign, "another application's abi_stable plugin");
    assert!(foreign.contains("photo_filters"), "{foreign}");
    assert!(
        !foreign.contains("rebuild") && !foreign.contains("SDK version"),
        "{foreign}"
    );
    let files = inventory["files"].as_array().unwrap();
    assert!(
        !files
            .iter()
            .any(|f| f["path"].as_str().unwrap().ends_with(".hidden.so")),
        "{inventory:#}"
    );
    assert_eq!(entry(&inventory, "libwelcome_email.so")["status"], "plugin");
    welcome_email_runs(&host);
}

#[test]
fn a_file_made_unusable_in_place_keeps_its_last_good_version_until_its_name_goes() {
    let host = Host::standard();
    let plugin = host.plugin_dir().join("libwelcome_email.so");
    let good = fs::read(&plugin).unwrap();
    let listed = run(&host, &["plugins", "--json"]);
    listed.expect_code(0);
    let hash = entry(&listed.json(), "libwelcome_email.so")["hash"]
        .as_str()
        .unwrap()
        .to_owned();
    let serving = |inventory: &Value| {
        inventory["classes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["class"] == r"App\Jobs\SendWelcomeEmail")
            .map(|c| c["hash"].as_str().unwrap().to_owned())
    };

    // A symlink to nothing swapped over it, then a truncated copy: each is rejected, and the
    // good version keeps serving while the name is there.
    let swap = |make: &dyn Fn(&Path)| {
        let tmp = host.plugin_dir().join(".swap");
        make(&tmp);
        fs::rename(&tmp, &plugin).unwrap();
    };
    swap(&|tmp| symlink("libwelcome_email-2.0.so", tmp).unwrap());
    let listed = run(&host, &["plugins", "--json"]);
    let inventory = listed.json();
    assert_starts(
        &reason(&inventory, "libwelcome_email.so"),
        "dangling symlink",
    );
    assert_eq!(serving(&inventory).as_deref(), Some(hash.as_str()));
    welcome_email_runs(&host);

    swap(&|tmp| {
        let mut file = fs::File::create(tmp).unwrap();
        file.write_all(&good[..good.len() / 2]).unwrap();
    });
    let listed = run(&host, &["plugins", "--json"]);
    let inventory = listed.json();
    assert_starts(&reason(&inventory, "libwelcome_email.so"), "truncated");
    assert_eq!(serving(&inventory).as_deref(), Some(hash.as_str()));
    welcome_email_runs(&host);

    // Removing the name takes the class offline.
    fs::remove_file(&plugin).unwrap();
    let listed = run(&host, &["plugins", "--json"]);
    assert_eq!(serving(&listed.json()), None);
    let refused = run(
        &host,
        &["run", r"App\Jobs\SendWelcomeEmail", "handle", "user_id=5"],
    );
    assert_ne!(refused.code, 0, "{refused:?}");
    assert!(refused.stderr.contains("no plugin"), "{}", refused.stderr);
}

#[test]
fn a_reason_from_the_dynamic_loader_names_the_users_file_not_jobhosts_copy() {
    let host = Host::standard();
    // A whole plugin whose import `getcwd` is renamed: it passes every look, and the dynamic
    // loader refuses it, naming the file it was given.
    let good = fs::read(jobhost_e2e::built_library("welcome_email")).unwrap();
    let needle: &[u8] = b"\0getcwd\0";
    assert!(good.windows(needle.len()).any(|w| w == needle));
    let mut broken = Vec::with_capacity(good.len());
    let mut rest = good.as_slice();
    while let Some(at) = rest.windows(needle.len()).position(|w| w == needle) {
        broken.extend_from_slice(&rest[..at]);
        broken.extend_from_slice(b"\0getcwX\0");
        rest = &rest[at + needle.len()..];
    }
    broken.extend_from_slice(rest);
    let file = host.write("plugins/libbroken.so", broken);

    let listed = run(&host, &["plugins", "--json"]);
    listed.expect_code(0);
    let reason = reason(&listed.json(), "libbroken.so");
    let expected = format!(
        "not a loadable shared library: {}: undefined symbol: getcwX",
        file.display()
    );
    assert_starts(&reason, &expected);
}

#[test]
fn a_file_name_with_a_right_to_left_override_is_listed_escaped() {
    let host = Host::standard();
    host.write("plugins/evil\u{202E}os.txt.so", "not a library\n");
    let listed = run(&host, &["plugins"]);
    listed.expect_code(0);
    assert!(
        listed.stdout.contains("evil\\u{202E}os.txt.so  REJECTED: "),
        "{}",
        listed.stdout
    );
    assert!(!listed.stdout.contains('\u{202E}'), "{}", listed.stdout);
    // As data, the name stays exact.
    let json = run(&host, &["plugins", "--json"]);
    json.expect_code(0);
    entry(&json.json(), "evil\u{202E}os.txt.so");
}
