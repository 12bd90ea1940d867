//! Every kind of hostile file at once, in one plugin directory: system libraries, another
//! application's abi_stable plugin, plugins whose static constructors crash, exit, sleep or
//! fork a process into a session of its own, a Windows file, a named pipe, a link to
//! `/dev/zero`, a 1 GB sparse file, a symlink loop, a dangling link, a directory and two
//! identical copies of a good plugin. `jobhost plugins` answers within the inspection limit
//! (far inside the sleeping constructor's minute), names every file with its reason, leaves no
//! process behind, and the good plugins serve.

use std::{
    fs,
    os::unix::fs::symlink,
    path::PathBuf,
    time::{Duration, Instant},
};

use jobhost_e2e::{processes_matching, wait_for, Host};
use serde_json::Value;

use crate::{
    hostile_files::{assert_starts, bounded, entry, reason, welcome_email_runs, Fifo, HANG},
    inspection::{
        forked_pids, wait_gone, CONSTRUCTOR_CRASH, CONSTRUCTOR_EXIT, CONSTRUCTOR_FORK,
        CONSTRUCTOR_SLEEP, CONSTRUCTOR_SLEEPS, FORKED_PIDS,
    },
};

/// The system library `name` (`libm.so.6`) where this machine keeps it.
fn system_library(name: &str) -> PathBuf {
    let multiarch = format!("{}-linux-gnu", std::env::consts::ARCH);
    [
        format!("/lib/{multiarch}"),
        format!("/usr/lib/{multiarch}"),
        "/lib64".to_owned(),
        "/usr/lib64".to_owned(),
        "/usr/lib".to_owned(),
    ]
    .iter()
    .map(|dir| PathBuf::from(dir).join(name))
    .find(|path| path.is_file())
    .unwrap_or_else(|| panic!("no {name} on this machine"))
}

/// `jobhost plugins --json` in `host`, with the fork fixture writing its child's pid to
/// `pids`; what it printed and how long it took.
fn listing(host: &Host, pids: &std::path::Path) -> (Value, Duration) {
    let mut command = host.jobhost();
    command.args(["plugins", "--json"]).env(FORKED_PIDS, pids);
    let started = Instant::now();
    let listed = bounded("jobhost plugins", command);
    let took = started.elapsed();
    listed.expect_code(0);
    (listed.json(), took)
}

#[test]
fn a_directory_of_every_hostile_file_at_once_is_listed_in_time_leaves_nothing_and_serves() {
    let host = Host::standard();
    let dir = host.plugin_dir();
    // Three system libraries: two linked, as a careless install does, one copied.
    symlink(system_library("libc.so.6"), dir.join("libc.so")).unwrap();
    symlink(system_library("libm.so.6"), dir.join("libm.so")).unwrap();
    fs::copy(system_library("libpthread.so.0"), dir.join("libpthread.so")).unwrap();
    host.install_plugin("foreign_app_fixture");
    for fixture in [
        CONSTRUCTOR_CRASH,
        CONSTRUCTOR_EXIT,
        CONSTRUCTOR_SLEEP,
        CONSTRUCTOR_FORK,
    ] {
        host.install_plugin(fixture);
    }
    let mut pe = b"MZ\x90\x00".to_vec();
    pe.resize(4096, 0);
    fs::write(dir.join("windows.so"), pe).unwrap();
    let _fifo = Fifo::new(dir.join("pipe.so"));
    symlink("/dev/zero", dir.join("zero.so")).unwrap();
    fs::File::create(dir.join("big.so"))
        .unwrap()
        .set_len(1024 * 1024 * 1024)
        .unwrap();
    symlink("loop-b.so", dir.join("loop-a.so")).unwrap();
    symlink("loop-a.so", dir.join("loop-b.so")).unwrap();
    symlink(dir.join("libgone-1.0.so"), dir.join("libgone.so")).unwrap();
    fs::create_dir(dir.join("dir.so")).unwrap();
    fs::copy(
        dir.join("libnotifications.so"),
        dir.join("libnotifications-copy.so"),
    )
    .unwrap();

    let pids = host.root().join("forked.pids");
    let (cold, cold_took) = listing(&host, &pids);
    eprintln!("jobhost plugins, cold: {cold_took:?}");
    // The sleeping constructor was cut off at the limit, not waited for.
    assert!(
        cold_took < CONSTRUCTOR_SLEEPS,
        "jobhost plugins took {cold_took:?}"
    );

    let no_export = "does not export job-sdk's root module";
    for name in ["libc.so", "libm.so", "libpthread.so"] {
        assert_starts(&reason(&cold, name), no_export);
    }
    let foreign = reason(&cold, "libforeign_app_fixture.so");
    assert_starts(&foreign, "another application's abi_stable plugin");
    assert_starts(
        &reason(&cold, "libconstructor_crash_fixture.so"),
        "loading it crashed the process: SIGSEGV",
    );
    assert_starts(
        &reason(&cold, "libconstructor_exit_fixture.so"),
        "loading it ended the process with code 1",
    );
    assert_starts(
        &reason(&cold, "libconstructor_sleep_fixture.so"),
        "loading it hung for more than 5s",
    );
    // Its constructor only forks: the library itself is a good plugin.
    assert_eq!(
        entry(&cold, "libconstructor_fork_fixture.so")["status"],
        "plugin"
    );
    assert_starts(
        &reason(&cold, "windows.so"),
        "built for another platform: a Windows (PE) file",
    );
    assert_starts(&reason(&cold, "pipe.so"), "a named pipe (FIFO)");
    assert_starts(
        &reason(&cold, "zero.so"),
        "a device, not a library: /dev/zero",
    );
    assert_starts(&reason(&cold, "big.so"), "too big: 1073741824 bytes");
    assert_starts(&reason(&cold, "loop-a.so"), "symlink loop");
    assert_starts(&reason(&cold, "loop-b.so"), "symlink loop");
    assert_starts(&reason(&cold, "libgone.so"), "dangling symlink");
    assert_starts(&reason(&cold, "dir.so"), "a directory, not a library");
    for good in [
        "libwelcome_email.so",
        "libuser_reports.so",
        "libnotifications.so",
        "libnotifications-copy.so",
        "libmisbehave_fixture.so",
    ] {
        assert_eq!(entry(&cold, good)["status"], "plugin", "{good}: {cold:#}");
    }
    // Each rejection is logged; the copies are the same code, so no class is offered twice.
    let log = host.log("background_jobs.log");
    assert!(
        log.iter().any(|l| l.contains("Plugin rejected: "))
            && log
                .iter()
                .all(|l| !l.contains("Plugin class offered twice")),
        "{log:#?}"
    );
    let listed = cold["files"].as_array().unwrap().len();
    assert_eq!(listed, 21, "every entry named like a library: {cold:#}");

    // Nothing the inspections started is left: not the process the constructor forked into a
    // session of its own, not an inspector.
    wait_gone(&forked_pids(&pids, 1));
    let root = host.root().display().to_string();
    wait_for("every inspection's process to end", HANG, || {
        processes_matching(&root).is_empty().then_some(())
    });

    // Warm: nothing changed, nothing is loaded again (the hang is not tried again yet).
    let (warm, warm_took) = listing(&host, &pids);
    eprintln!("jobhost plugins, warm: {warm_took:?}");
    assert_eq!(warm["files"], cold["files"]);

    // The good plugins serve, the copy's class among them.
    welcome_email_runs(&host);
    jobhost_e2e::examples::notification_takes_positional_params(&host);
    host.run(&["run", r"Tests\Misbehave", "ok", "--wait"])
        .expect_code(0);
}
