//! Support for jobhost's end-to-end tests: a throwaway jobhost installation per test (plugin
//! directory, allowlist, state and log directories, settings file) and helpers to run the real
//! `jobhost` binary in it and read what it left behind.
//!
//! The tests use the artifacts of `cargo build --workspace` (the binary and the plugin
//! libraries next to it in the target directory); the README's test command builds them first.
//!
//! Most helpers work on Linux and Windows alike. Those that read `/proc` (the process table,
//! process groups, [`Host::workers`]) are Linux-only; [`alive`] has an implementation for
//! each, and [`Process`] (a handle that keeps a Windows process's identity) is Windows-only.
#![allow(clippy::unwrap_used)]

#[cfg(unix)]
pub mod webdriver;

use std::{
    collections::BTreeMap,
    env::consts::{DLL_PREFIX, DLL_SUFFIX, EXE_SUFFIX},
    fs,
    path::{Path, PathBuf},
    process::{Command, Output},
    time::{Duration, Instant},
};

use jobhost::store::{DispatcherRecord, Store, StoreLocation};
use serde_json::Value;

/// The directory holding the built `jobhost` binary and plugin libraries.
pub fn artifacts_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let binary = format!("jobhost{EXE_SUFFIX}");
    exe.ancestors()
        .find(|dir| dir.join(&binary).is_file())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| {
            panic!(
                "no {binary} found above {}: run `cargo build --workspace` before the tests",
                exe.display()
            )
        })
}

/// The path of the built library of crate `lib_name`: `libNAME.so` on Linux, `NAME.dll` on
/// Windows.
pub fn built_library(lib_name: &str) -> PathBuf {
    let path = artifacts_dir().join(format!("{DLL_PREFIX}{lib_name}{DLL_SUFFIX}"));
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build --workspace` before the tests",
        path.display()
    );
    path
}

/// The example plugins.
pub const EXAMPLE_PLUGINS: [&str; 3] = ["welcome_email", "user_reports", "notifications"];
/// The misbehaving fixture plugin.
pub const MISBEHAVE: &str = "misbehave_fixture";
/// The fixture plugin whose results say which build of it ran.
pub const VERSIONED: &str = "versioned_fixture";

/// The built versioned fixture, rewritten to call itself `version` (at most 8 bytes): another
/// file, with another hash, of a valid plugin.
pub fn versioned_build(version: &str) -> Vec<u8> {
    const MARKER: &[u8] = b"jobhost-fixture-version:";
    assert!(version.len() <= 8, "version names have at most 8 bytes");
    let mut bytes = fs::read(built_library(VERSIONED)).unwrap();
    let mut name = [0u8; 8];
    name[..version.len()].copy_from_slice(version.as_bytes());
    let at = bytes
        .windows(MARKER.len())
        .position(|w| w == MARKER)
        .expect("the version marker is in the built fixture")
        + MARKER.len();
    bytes[at..at + 8].copy_from_slice(&name);
    bytes
}

/// The BLAKE3 hash of `bytes`, hex, as the catalog names file versions.
pub fn blake3_hex(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex().to_string()
}

/// The allowlist of the repository: the spec's classes.
pub const SPEC_ALLOWLIST: &str = r#"[jobs]
'App\Jobs\SendWelcomeEmail' = ["handle"]
'App\Jobs\ProcessUserReport' = ["generate", "send"]
'App\Jobs\SendNotification' = ["send"]
'Tests\Misbehave' = ["ok", "echo", "segfault", "abort", "panic", "stack_overflow", "hang", "hang_cooperative", "hang_with_child", "exit42", "huge_output", "sleep", "trace", "fail_until_attempt", "always_fail", "fail_permanent", "log_lines", "nest", "env", "clock", "console", "say_and_fail"]
"#;

/// The runner this run of the suite starts workers with: `JOBHOST_RUNNER`, which every
/// `jobhost` a test runs inherits (`scripts/test` runs the tests of workers, queue and recovery
/// once more with `exec`), else the default.
pub fn runner() -> jobhost::config::settings::Runner {
    std::env::var("JOBHOST_RUNNER")
        .ok()
        .and_then(|name| jobhost::config::settings::Runner::parse(&name))
        .unwrap_or(jobhost::config::settings::Runner::DEFAULT)
}

/// The settings of every test installation: everything under its root, a short kill grace so
/// stopped jobs end quickly, two slots, a dispatcher that leaves soon after its work, and no
/// dashboard (tests that want one enable it on a free port).
pub const BASE_SETTINGS: &str = "plugin_dir = \"plugins\"\nstate_dir = \"state\"\nlog_dir = \"logs\"\nlimits.kill_grace = 1\ndispatcher.slots = 2\ndispatcher.idle_exit = 2\nweb.enabled = false\n";

/// One throwaway jobhost installation.
pub struct Host {
    dir: tempfile::TempDir,
    /// The job database its settings name, when not the default SQLite file.
    store: Option<String>,
}

impl Host {
    /// An installation with the given built plugins (by lib name), the spec allowlist plus the
    /// fixture class, and a short kill grace so stopped jobs end quickly.
    pub fn with_plugins(libs: &[&str]) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("jobhost-e2e-")
            .tempdir()
            .unwrap();
        let host = Self { dir, store: None };
        fs::create_dir_all(host.plugin_dir()).unwrap();
        for lib in libs {
            host.install_plugin(lib);
        }
        host.write("allowlist.toml", SPEC_ALLOWLIST);
        host.write("jobhost.toml", BASE_SETTINGS);
        host
    }

    /// Replaces the settings file with [`BASE_SETTINGS`] (and the installation's `store`, see
    /// [`Host::on_store`]) followed by `extra` (dotted keys, such as
    /// `limits.max_output_bytes = 100`).
    /// A key in `extra` replaces the same key of the base settings.
    pub fn settings(&self, extra: &str) {
        let key = |line: &str| line.split('=').next().unwrap_or_default().trim().to_owned();
        let overridden: Vec<String> = extra.lines().map(key).collect();
        let base: String = BASE_SETTINGS
            .lines()
            .filter(|line| !overridden.contains(&key(line)))
            .map(|line| format!("{line}\n"))
            .collect();
        let store = self
            .store
            .as_ref()
            .map(|url| format!("store = {}\n", Value::from(url.as_str())))
            .unwrap_or_default();
        self.write("jobhost.toml", format!("{store}{base}{extra}"));
    }

    /// An installation with the example plugins and the misbehaving fixture.
    pub fn standard() -> Self {
        let mut libs = EXAMPLE_PLUGINS.to_vec();
        libs.push(MISBEHAVE);
        Self::with_plugins(&libs)
    }

    /// An installation like [`Host::standard`] whose settings name the job database `url` (a
    /// `postgres://` URL, `store = ...`), kept by [`Host::settings`]: installations on one
    /// database are dispatchers on several hosts sharing one queue.
    pub fn on_store(url: &str) -> Self {
        let mut host = Self::standard();
        host.store = Some(url.to_owned());
        host.settings("");
        host
    }

    /// The installation's root, the current directory of every command.
    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// The plugin directory.
    pub fn plugin_dir(&self) -> PathBuf {
        self.root().join("plugins")
    }

    /// The state directory.
    pub fn state_dir(&self) -> PathBuf {
        self.root().join("state")
    }

    /// Where the example plugins write their work.
    pub fn storage_dir(&self) -> PathBuf {
        self.root().join("storage")
    }

    /// Copies the built library `lib` into the plugin directory.
    pub fn install_plugin(&self, lib: &str) -> PathBuf {
        let source = built_library(lib);
        let target = self.plugin_dir().join(source.file_name().unwrap());
        fs::copy(&source, &target).unwrap();
        target
    }

    /// Writes `contents` to `name` under the root.
    pub fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let path = self.root().join(name);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).unwrap();
        }
        fs::write(&path, contents).unwrap();
        path
    }

    /// A `jobhost` command run in this installation.
    pub fn jobhost(&self) -> Command {
        let mut command = Command::new(artifacts_dir().join(format!("jobhost{EXE_SUFFIX}")));
        command
            .current_dir(self.root())
            .env("APP_STORAGE_DIR", self.storage_dir())
            .env("JOBHOST_ENV", "local")
            .env_remove("JOBHOST_CONFIG")
            .env_remove("JOBHOST_PLUGIN_DIR")
            .env_remove("JOBHOST_ALLOWLIST")
            .env_remove("JOBHOST_STATE_DIR")
            .env_remove("JOBHOST_LOG_DIR")
            .env_remove("JOBHOST_STORE")
            .env_remove("RUST_BACKTRACE");
        command
    }

    /// Runs `jobhost ARGS` to its end.
    pub fn run(&self, args: &[&str]) -> Run {
        let mut command = self.jobhost();
        command.args(args);
        Run::from(output(command))
    }

    /// Runs `jobhost ARGS` to its end with the variables `env` added to its environment.
    pub fn run_with_env(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        let mut command = self.jobhost();
        command.args(args).envs(env.iter().copied());
        Run::from(output(command))
    }

    /// Enqueues `jobhost run ARGS` in the background and returns the job id it printed.
    pub fn enqueue(&self, args: &[&str]) -> i64 {
        let mut full = vec!["run"];
        full.extend_from_slice(args);
        let run = self.run(&full);
        run.expect_code(0);
        run.stdout
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("no job id on stdout: {run:?}"))
    }

    /// `jobhost show ID --json`: `{"job": {...}, "attempts": [...]}`.
    pub fn show(&self, id: i64) -> Value {
        let run = self.run(&["show", &id.to_string(), "--json"]);
        run.expect_code(0);
        run.json()
    }

    /// Waits (generously) until job `id` is in one of `states`, and returns it as shown.
    pub fn wait_state(&self, id: i64, states: &[&str]) -> Value {
        wait_for(
            &format!("job {id} to be {states:?}"),
            Duration::from_secs(60),
            || {
                let shown = self.show(id);
                let state = shown["job"]["state"].as_str().unwrap().to_owned();
                states.contains(&state.as_str()).then_some(shown)
            },
        )
    }

    /// A Rust API client for this installation.
    pub fn client(&self) -> jobhost::Client {
        let overrides = jobhost::config::settings::Overrides {
            config: Some(self.root().join("jobhost.toml")),
            ..Default::default()
        };
        // Only the runner comes from the environment (the suite runs once per runner), as it
        // does for the `jobhost` commands a test runs.
        let runner = |name: &str| {
            (name == "JOBHOST_RUNNER")
                .then(|| std::env::var(name).ok())
                .flatten()
        };
        let settings =
            jobhost::config::settings::Settings::resolve_with(&overrides, self.root(), runner)
                .unwrap();
        jobhost::Client::new(settings).unwrap()
    }

    /// Starts `jobhost serve` (stderr to `serve.err`) and waits until it holds the state
    /// directory.
    pub fn serve(&self) -> std::process::Child {
        let serve = self.spawn_serve();
        wait_for("jobhost serve to start", Duration::from_secs(30), || {
            self.dispatcher_pid().filter(|pid| *pid == serve.id())
        });
        serve
    }

    /// Starts `jobhost serve`, its stderr going to `serve.err`.
    fn spawn_serve(&self) -> std::process::Child {
        let stderr = fs::File::create(self.root().join("serve.err")).unwrap();
        self.jobhost()
            .arg("serve")
            .stdout(std::process::Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap()
    }

    /// Waits (generously) until log file `name` has a line containing `needle`; returns it.
    pub fn wait_log(&self, name: &str, needle: &str) -> String {
        wait_for(
            &format!("a line with {needle:?} in {name}"),
            Duration::from_secs(60),
            || self.log(name).into_iter().find(|l| l.contains(needle)),
        )
    }

    /// Waits (generously) until the plugin catalog as last written
    /// (`<state>/plugins/catalog.json`, read without asking anyone to bring it up to date) says
    /// `class` is served by the version with hash `hash`, or by none when `hash` is `None`.
    pub fn wait_catalog(&self, class: &str, hash: Option<&str>) {
        let catalog = jobhost::catalog::inventory::CatalogPaths::new(&self.state_dir()).catalog;
        wait_for(
            &format!("the catalog to serve {class} with {hash:?}"),
            Duration::from_secs(60),
            || {
                let inventory = jobhost::catalog::inventory::Inventory::read(&catalog)?;
                let serving = inventory.find(class).map(|o| o.version.hash.as_str());
                (serving == hash).then_some(())
            },
        );
    }

    /// The pid of the dispatcher serving this installation, as written in its lock file.
    pub fn dispatcher_pid(&self) -> Option<u32> {
        let text = fs::read_to_string(self.state_dir().join("dispatcher.lock")).ok()?;
        let pid: u32 = text.lines().next()?.trim().parse().ok()?;
        alive(pid).then_some(pid)
    }

    /// The live worker processes of this installation, as (pid, command line).
    #[cfg(target_os = "linux")]
    pub fn workers(&self) -> Vec<(u32, String)> {
        let marker = self.root().to_string_lossy().into_owned();
        processes_matching("__worker")
            .into_iter()
            .filter(|(pid, cmd)| cmd.contains(&marker) && alive(*pid))
            .collect()
    }

    /// The live fork server (`jobhost __zygote`) of this installation's dispatcher: the one
    /// whose command line names its state directory.
    #[cfg(target_os = "linux")]
    pub fn zygote(&self) -> Option<u32> {
        let state_dir = self.state_dir().to_string_lossy().into_owned();
        processes_matching("__zygote")
            .into_iter()
            .find(|(pid, cmd)| cmd.contains(&state_dir) && alive(*pid))
            .map(|(pid, _)| pid)
    }

    /// Starts `jobhost serve` with the dashboard on a free loopback port (settings `extra`
    /// added, stderr to `serve.err`) and waits for the `dashboard.json` it writes, returned
    /// parsed: `{"url": ".../login", "token": ...}`.
    pub fn serve_dashboard(&self, extra: &str) -> (std::process::Child, Value) {
        self.settings(&format!(
            "web.enabled = true\nweb.listen = \"127.0.0.1:0\"\n{extra}"
        ));
        let serve = self.spawn_serve();
        let file = self.state_dir().join("dashboard.json");
        let info = wait_for("dashboard.json", Duration::from_secs(30), || {
            serde_json::from_slice(&fs::read(&file).ok()?).ok()
        });
        (serve, info)
    }

    /// Asks the dispatcher `serve` (a `jobhost serve` this test started) to stop and waits up
    /// to 30 s for it; kills it if it does not. Returns whether it stopped by itself.
    pub fn stop_serve(&self, serve: &mut std::process::Child) -> bool {
        let _ = self.jobhost().arg("stop").output();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(30) {
            if let Ok(Some(_)) = serve.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = serve.kill();
        let _ = serve.wait();
        false
    }

    /// The lines of log file `name` (`background_jobs.log` or `background_jobs_errors.log`),
    /// each checked for the spec's `[YYYY-MM-DD HH:MM:SS] ` prefix and returned without it.
    pub fn log(&self, name: &str) -> Vec<String> {
        let path = self.root().join("logs").join(name);
        let text = fs::read_to_string(&path).unwrap_or_default();
        text.lines()
            .map(|line| strip_timestamp(line).to_owned())
            .collect()
    }

    /// The context (parsed) of each line of `background_jobs.log` that says `Job EVENT: NAME`
    /// (`event` as `started` or `completed`, `name` as `Class@method`), in log order.
    pub fn logged(&self, event: &str, name: &str) -> Vec<Value> {
        let prefix = format!("local.INFO: Job {event}: {name} ");
        self.log("background_jobs.log")
            .iter()
            .filter_map(|line| {
                let context = line.strip_prefix(&prefix)?;
                Some(serde_json::from_str(context).unwrap())
            })
            .collect()
    }

    /// Waits (generously) until the dispatcher serving this installation is registered in
    /// `store`, and returns its registration.
    pub fn registered(&self, store: &mut dyn Store) -> DispatcherRecord {
        wait_for(
            "the dispatcher to register in the store",
            Duration::from_secs(30),
            || {
                let pid = self.dispatcher_pid()?;
                let dispatchers = store.dispatchers().unwrap();
                dispatchers.into_iter().find(|d| d.pid == pid)
            },
        )
    }

    /// Where the worker of attempt `attempt` of job `job_id` writes its report: beside the
    /// job's directory of output files.
    pub fn report_path(&self, job_id: impl std::fmt::Display, attempt: u32) -> PathBuf {
        self.state_dir()
            .join("attempts")
            .join(format!("{job_id}.{attempt}.report.json"))
    }

    /// Every attempt's files for job `job_id`: attempt number → (output, empty when it printed
    /// nothing, and report).
    pub fn attempts(&self, job_id: &str) -> BTreeMap<u32, (String, Option<Value>)> {
        let attempts_dir = self.state_dir().join("attempts");
        let dir = attempts_dir.join(job_id);
        let report_prefix = format!("{job_id}.");
        // An attempt that printed nothing has no output file (and a job none of whose attempts
        // printed anything no directory); every attempt that ran has a report.
        let outputs = fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .filter_map(|entry| {
                let name = entry.unwrap().file_name().to_string_lossy().into_owned();
                name.strip_suffix(".out")?.parse::<u32>().ok()
            });
        let reports = fs::read_dir(&attempts_dir)
            .unwrap()
            .filter_map(|entry| {
                let name = entry.unwrap().file_name().to_string_lossy().into_owned();
                name.strip_prefix(&report_prefix)?
                    .strip_suffix(".report.json")?
                    .parse::<u32>()
                    .ok()
            })
            .collect::<Vec<_>>();
        let mut attempts = BTreeMap::new();
        for n in outputs.chain(reports) {
            let output = fs::read_to_string(dir.join(format!("{n}.out"))).unwrap_or_default();
            let report = fs::read(self.report_path(job_id, n))
                .ok()
                .map(|bytes| serde_json::from_slice(&bytes).unwrap());
            attempts.insert(n, (output, report));
        }
        attempts
    }
}

impl Drop for Host {
    /// Stops the installation's dispatcher, if one runs, before its directory goes away.
    fn drop(&mut self) {
        let Some(pid) = self.dispatcher_pid() else {
            return;
        };
        let _ = self.jobhost().arg("stop").output();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(20) && alive(pid) {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The job database at `url` (a `postgres://` URL), opened as jobhost opens it.
pub fn open_store(url: &str) -> Box<dyn Store> {
    jobhost::store::open(&StoreLocation::parse(url).unwrap()).unwrap()
}

/// Runs `command` to its end, like [`Command::output`].
#[cfg(not(windows))]
fn output(mut command: Command) -> Output {
    command.output().unwrap()
}

/// Runs `command` to its end, like [`Command::output`] but with stdout and stderr going to
/// files: a command that starts a dispatcher then returns when it exits, even if the
/// dispatcher holds on to its output handles (which the Windows suite tests on its own).
#[cfg(windows)]
fn output(mut command: Command) -> Output {
    use std::io::{Read, Seek};
    let mut stdout = tempfile::tempfile().unwrap();
    let mut stderr = tempfile::tempfile().unwrap();
    command
        .stdin(std::process::Stdio::null())
        .stdout(stdout.try_clone().unwrap())
        .stderr(stderr.try_clone().unwrap());
    let status = spawn(&mut command).wait().unwrap();
    let read = |file: &mut fs::File| {
        let mut bytes = Vec::new();
        file.rewind().unwrap();
        file.read_to_end(&mut bytes).unwrap();
        bytes
    };
    Output {
        status,
        stdout: read(&mut stdout),
        stderr: read(&mut stderr),
    }
}

/// Starts `command`, like [`Command::spawn`], panicking if it cannot. Under Wine 8.0 without
/// its preloader, starting a process can fail with `ERROR_INTERNAL_ERROR` (the new process died
/// while Wine set it up, before any of its code ran) when address-space randomisation got in
/// the way; `ci/windows/wine-runner` turns randomisation off, and should it happen anyway the
/// start is tried again, a few times.
pub fn spawn(command: &mut Command) -> std::process::Child {
    const ERROR_INTERNAL_ERROR: i32 = 1359;
    let mut tries = 1;
    loop {
        match command.spawn() {
            Ok(child) => return child,
            Err(e)
                if cfg!(windows) && e.raw_os_error() == Some(ERROR_INTERNAL_ERROR) && tries < 5 =>
            {
                tries += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("cannot start {command:?}: {e}"),
        }
    }
}

/// Checks that `line` starts with the spec's timestamp and returns the rest.
pub fn strip_timestamp(line: &str) -> &str {
    let bytes = line.as_bytes();
    let shape = "[dddd-dd-dd dd:dd:dd] ";
    assert!(line.len() > shape.len(), "log line too short: {line:?}");
    for (i, want) in shape.bytes().enumerate() {
        let ok = if want == b'd' {
            bytes[i].is_ascii_digit()
        } else {
            bytes[i] == want
        };
        assert!(
            ok,
            "log line does not start with [YYYY-MM-DD HH:MM:SS]: {line:?}"
        );
    }
    &line[shape.len()..]
}

/// A finished `jobhost` command.
#[derive(Debug)]
pub struct Run {
    /// Its exit code.
    pub code: i32,
    /// Its stdout.
    pub stdout: String,
    /// Its stderr.
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(output: Output) -> Self {
        Self {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

impl Run {
    /// Asserts the exit code, showing the output when it is wrong.
    pub fn expect_code(&self, code: i32) -> &Self {
        assert_eq!(
            self.code, code,
            "exit code\n--- stdout\n{}\n--- stderr\n{}",
            self.stdout, self.stderr
        );
        self
    }

    /// The job id named in the `job ID ...` summary line on stderr.
    pub fn job_id(&self) -> String {
        self.stderr
            .lines()
            .find_map(|l| {
                l.strip_prefix("job ")
                    .and_then(|rest| rest.split(' ').next())
            })
            .unwrap_or_else(|| panic!("no job id in stderr:\n{}", self.stderr))
            .to_owned()
    }

    /// The `jobhost: ...` error lines on stderr.
    pub fn error_lines(&self) -> Vec<&str> {
        self.stderr
            .lines()
            .filter(|l| l.starts_with("jobhost: "))
            .collect()
    }

    /// stdout parsed as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}", self.stdout))
    }
}

/// Polls `condition` until it holds or `deadline` passes; panics with `what` on timeout.
pub fn wait_for<T>(what: &str, deadline: Duration, mut condition: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(value) = condition() {
            return value;
        }
        assert!(
            start.elapsed() < deadline,
            "timed out after {deadline:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The processes whose command line contains `needle`, as (pid, command line).
#[cfg(target_os = "linux")]
pub fn processes_matching(needle: &str) -> Vec<(u32, String)> {
    let mut found = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(needle) {
            found.push((pid, cmdline));
        }
    }
    found
}

/// Kills process `pid` with SIGKILL (`kill -9`) and waits (generously) until it is gone: dead
/// and reaped, or a zombie whose parent has not reaped it yet.
#[cfg(target_os = "linux")]
pub fn kill_9(pid: u32) {
    let killed = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success(), "kill -9 {pid}");
    wait_for(
        &format!("process {pid} to die"),
        Duration::from_secs(30),
        || (!alive(pid)).then_some(()),
    );
}

/// Fields of `/proc/PID/stat` after the command name: (state, ppid, pgrp, session, tty_nr).
#[cfg(target_os = "linux")]
pub fn proc_stat(pid: u32) -> Option<(char, u32, u32, u32, i32)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    Some((
        f[0].chars().next()?,
        f[1].parse().ok()?,
        f[2].parse().ok()?,
        f[3].parse().ok()?,
        f[4].parse().ok()?,
    ))
}

/// Whether process `pid` exists and one of its threads is not a zombie. A killed process's
/// main thread can be a zombie while its other threads are still exiting (one in the middle of
/// an `fsync`, say), holding its files and the locks on them: it is alive until they are gone.
#[cfg(target_os = "linux")]
pub fn alive(pid: u32) -> bool {
    let Ok(threads) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    threads.flatten().any(|thread| {
        let stat = fs::read_to_string(thread.path().join("stat")).unwrap_or_default();
        let state = stat
            .rfind(')')
            .and_then(|end| stat[end + 1..].trim_start().chars().next());
        state.is_some_and(|state| state != 'Z')
    })
}

/// Whether any live process (not a zombie) belongs to process group `pgrp`.
#[cfg(target_os = "linux")]
pub fn group_alive(pgrp: u32) -> bool {
    fs::read_dir("/proc").unwrap().flatten().any(|entry| {
        entry
            .file_name()
            .to_string_lossy()
            .parse::<u32>()
            .ok()
            .and_then(proc_stat)
            .is_some_and(|(state, _, group, _, _)| group == pgrp && state != 'Z')
    })
}

/// Whether process `pid` exists and has not exited.
#[cfg(windows)]
pub fn alive(pid: u32) -> bool {
    Process::open(pid).is_some_and(|p| p.running())
}

/// A handle to a Windows process. While it is held the process's id cannot be reused, so
/// [`Process::running`] always answers about the process that was opened.
#[cfg(windows)]
#[derive(Debug)]
pub struct Process {
    pid: u32,
    handle: std::os::windows::io::OwnedHandle,
    kill_on_drop: bool,
}

#[cfg(windows)]
impl Process {
    /// Opens process `pid` to query its state; `None` if there is no such process.
    pub fn open(pid: u32) -> Option<Self> {
        use std::os::windows::io::FromRawHandle;
        use windows_sys::Win32::System::Threading::{
            OpenProcess, PROCESS_QUERY_LIMITED_INFORMATION, PROCESS_TERMINATE,
        };
        let access = PROCESS_QUERY_LIMITED_INFORMATION | PROCESS_TERMINATE;
        // SAFETY: plain handle acquisition; null means there is no such process.
        let handle = unsafe { OpenProcess(access, 0, pid) };
        if handle.is_null() {
            return None;
        }
        // SAFETY: the handle was just returned to us and nobody else owns it.
        let handle = unsafe { std::os::windows::io::OwnedHandle::from_raw_handle(handle) };
        Some(Self {
            pid,
            handle,
            kill_on_drop: false,
        })
    }

    /// Makes dropping this handle terminate the process if it still runs: a test that fails
    /// leaves no process behind (a job's ten-minute child, for one).
    pub fn kill_on_drop(mut self) -> Self {
        self.kill_on_drop = true;
        self
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Whether the process has not exited yet (`GetExitCodeProcess` says `STILL_ACTIVE`).
    pub fn running(&self) -> bool {
        use std::os::windows::io::AsRawHandle;
        use windows_sys::Win32::{Foundation::STILL_ACTIVE, System::Threading::GetExitCodeProcess};
        let mut code = 0u32;
        // SAFETY: the handle is valid while self lives; `code` is a valid out-pointer.
        let ok = unsafe { GetExitCodeProcess(self.handle.as_raw_handle(), &mut code) };
        ok != 0 && code == STILL_ACTIVE as u32
    }
}

#[cfg(windows)]
impl Drop for Process {
    fn drop(&mut self) {
        use std::os::windows::io::AsRawHandle;
        if self.kill_on_drop && self.running() {
            // SAFETY: the handle is valid and was opened with PROCESS_TERMINATE.
            unsafe {
                windows_sys::Win32::System::Threading::TerminateProcess(
                    self.handle.as_raw_handle(),
                    1,
                )
            };
        }
    }
}

/// The spec's example jobs through `jobhost run --wait`, checked the same way on every
/// platform's suite.
pub mod examples {
    use std::fs;

    use serde_json::Value;

    use crate::Host;

    /// `ProcessUserReport@generate` writes a CSV; `@send`, given the report id by position,
    /// mails it as an attachment.
    pub fn report_is_generated_then_mailed(host: &Host) {
        host.run(&[
            "run",
            r"App\Jobs\ProcessUserReport",
            "generate",
            "report_id=456",
            "rows=3",
            "--wait",
        ])
        .expect_code(0);
        let csv =
            fs::read_to_string(host.storage_dir().join("reports").join("report-456.csv")).unwrap();
        assert_eq!(csv.lines().count(), 4, "header and three rows:\n{csv}");
        let sent = host.run(&[
            "run",
            r"App\Jobs\ProcessUserReport",
            "send",
            "456",
            "--wait",
        ]);
        sent.expect_code(0);
        let eml =
            fs::read_to_string(host.root().join(sent.json()["path"].as_str().unwrap())).unwrap();
        assert!(
            eml.contains("report-456.csv"),
            "the CSV is attached:\n{eml}"
        );
    }

    /// `SendNotification@send` with positional params appends the notification.
    pub fn notification_takes_positional_params(host: &Host) {
        host.run(&[
            "run",
            r"App\Jobs\SendNotification",
            "send",
            "789",
            "Welcome!",
            "--wait",
        ])
        .expect_code(0);
        let line =
            fs::read_to_string(host.storage_dir().join("notifications").join("789.jsonl")).unwrap();
        let notification: Value = serde_json::from_str(line.trim()).unwrap();
        assert_eq!(notification["user_id"], 789);
        assert_eq!(notification["message"], "Welcome!");
    }
}
