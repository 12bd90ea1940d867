//! Inspecting plugin files: every file is inspected on its own (identical copies never get in
//! each other's way), a failure of jobhost's own is reported and tried again rather than
//! remembered as the file's verdict, load-time code that hangs is stopped at
//! `limits.inspect_timeout` without holding up anything else, and whatever load-time code
//! starts is gone when the inspection ends, even a process that left its session.

use std::{
    fs,
    os::unix::fs::symlink,
    path::Path,
    time::{Duration, Instant},
};

use jobhost_e2e::{alive, blake3_hex, built_library, versioned_build, wait_for, Host};

use crate::hostile_files::welcome_email_runs;
use serde_json::Value;

/// The fixtures whose static constructor misbehaves (plugins/fixtures/constructor-*).
pub(crate) const CONSTRUCTOR_SLEEP: &str = "constructor_sleep_fixture";
pub(crate) const CONSTRUCTOR_FORK: &str = "constructor_fork_fixture";
pub(crate) const CONSTRUCTOR_CRASH: &str = "constructor_crash_fixture";
pub(crate) const CONSTRUCTOR_EXIT: &str = "constructor_exit_fixture";
/// The environment variable the fork fixture appends its forked child's pid to.
pub(crate) const FORKED_PIDS: &str = "JOBHOST_FIXTURE_FORKED_PIDS";
/// How long the sleep fixture's constructor sleeps: every bound asserted here is well below it.
pub(crate) const CONSTRUCTOR_SLEEPS: Duration = Duration::from_secs(60);

/// `jobhost plugins --json`, expected to succeed.
fn listing(host: &Host) -> Value {
    let run = host.run(&["plugins", "--json"]);
    run.expect_code(0);
    run.json()
}

/// The entry of the file named `name` in a listing.
fn file<'a>(listing: &'a Value, name: &str) -> &'a Value {
    listing["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| Path::new(f["path"].as_str().unwrap()).ends_with(name))
        .unwrap_or_else(|| panic!("{name} not listed: {listing:#}"))
}

fn reason(listing: &Value, name: &str) -> String {
    file(listing, name)["reason"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn identical_copies_and_a_symlink_to_one_all_serve_on_every_cold_start() {
    for round in 0..10 {
        let host = Host::with_plugins(&["welcome_email"]);
        let plugins = host.plugin_dir();
        let original = plugins.join("libwelcome_email.so");
        for copy in ["libwelcome_email-copy1.so", "libwelcome_email-copy2.so"] {
            fs::copy(&original, plugins.join(copy)).unwrap();
        }
        symlink(
            "libwelcome_email.so",
            plugins.join("libwelcome_email-1.0.so"),
        )
        .unwrap();

        let listing = listing(&host);
        let hash = blake3_hex(&fs::read(&original).unwrap());
        for name in [
            "libwelcome_email.so",
            "libwelcome_email-copy1.so",
            "libwelcome_email-copy2.so",
            "libwelcome_email-1.0.so",
        ] {
            let entry = file(&listing, name);
            assert_eq!(entry["status"], "plugin", "round {round}: {listing:#}");
            assert_eq!(entry["active"]["hash"], hash.as_str(), "round {round}");
        }
        if round == 0 {
            welcome_email_runs(&host);
        }
    }
}

/// An inspector that ends without a report (here `true`, standing in for jobhost's own
/// binary) and one that cannot be started are failures of jobhost's, not verdicts on the file:
/// each is reported as such, and the next refresh inspects the file again.
#[test]
fn a_failed_inspection_is_reported_and_tried_again_never_remembered() {
    let host = Host::with_plugins(&["welcome_email"]);
    for (inspector, says) in [
        ("/bin/true", "without a report"),
        ("/nonexistent/jobhost", "cannot start the inspector"),
    ] {
        let run = host.run_with_env(&["plugins", "--json"], &[("JOBHOST_BIN", inspector)]);
        run.expect_code(0);
        let listing = run.json();
        let reason = reason(&listing, "libwelcome_email.so");
        assert!(
            reason.starts_with("inspection failed:")
                && reason.contains(says)
                && reason.ends_with("(will retry)"),
            "{listing:#}"
        );
        let good = self::listing(&host);
        assert_eq!(
            file(&good, "libwelcome_email.so")["status"],
            "plugin",
            "{good:#}"
        );
        welcome_email_runs(&host);
        // Forget the good verdict, so the next round's failure happens to a file never judged.
        fs::remove_file(host.state_dir().join("plugins/catalog.json")).unwrap();
    }
}

/// A timeout is no verdict on the file either: an inspection stopped at the limit (one too
/// short for any plugin here) is reported as hung, and the same bytes installed again are
/// inspected again, and serve under a sensible limit.
#[test]
fn a_timed_out_inspection_is_retried_when_the_same_bytes_are_installed_again() {
    // Loading the fixture waits while `hold` exists: it hangs until the test says otherwise.
    let host = Host::with_plugins(&[CONSTRUCTOR_SLEEP]);
    let hold = host.write("hold", "");
    let hold = hold.to_str().unwrap();
    let listing = |host: &Host| {
        let run = host.run_with_env(&["plugins", "--json"], &[("CONSTRUCTOR_SLEEP_WHILE", hold)]);
        run.expect_code(0);
        run.json()
    };
    let name = "libconstructor_sleep_fixture.so";
    host.settings("limits.inspect_timeout = 0.5\n");
    let hung = listing(&host);
    assert!(
        reason(&hung, name).starts_with("loading it hung for more than"),
        "{hung:#}"
    );
    // The same bytes again, and now loading them ends: no verdict was kept from the hang.
    std::fs::remove_file(hold).unwrap();
    host.install_plugin(CONSTRUCTOR_SLEEP);
    let good = listing(&host);
    assert_eq!(file(&good, name)["status"], "plugin", "{good:#}");
    // And it serves: its worker loads it (with the hold gone, at once).
    host.write(
        "allowlist.toml",
        "[jobs]\n'Tests\\ConstructorSleep' = [\"ok\"]\n",
    );
    host.run_with_env(
        &["run", r"Tests\ConstructorSleep", "ok", "--wait"],
        &[("CONSTRUCTOR_SLEEP_WHILE", hold)],
    )
    .expect_code(0);
}

/// The pids the fork fixture wrote, once it wrote `count` of them.
pub(crate) fn forked_pids(list: &Path, count: usize) -> Vec<u32> {
    wait_for("the fork fixture's pids", Duration::from_secs(60), || {
        let text = fs::read_to_string(list).ok()?;
        let pids: Vec<u32> = text.lines().map(|l| l.trim().parse().unwrap()).collect();
        (pids.len() >= count).then_some(pids)
    })
}

/// Waits until every process in `pids` is gone, killing what is left when they are not.
pub(crate) fn wait_gone(pids: &[u32]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline && pids.iter().any(|&pid| alive(pid)) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let left: Vec<u32> = pids.iter().copied().filter(|&pid| alive(pid)).collect();
    for pid in &left {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
    }
    assert!(left.is_empty(), "left behind by an inspection: {left:?}");
}

#[test]
fn a_process_a_constructor_forks_into_a_session_of_its_own_does_not_outlive_the_inspection() {
    let host = Host::with_plugins(&["welcome_email"]);
    host.install_plugin(CONSTRUCTOR_FORK);
    host.install_plugin(CONSTRUCTOR_CRASH);
    let list = host.root().join("forked.pids");
    let run = host.run_with_env(
        &["plugins", "--json"],
        &[(FORKED_PIDS, list.to_str().unwrap())],
    );
    run.expect_code(0);
    let listing = run.json();
    assert_eq!(
        file(&listing, "libconstructor_fork_fixture.so")["status"],
        "plugin",
        "{listing:#}"
    );
    let crash = self::reason(&listing, "libconstructor_crash_fixture.so");
    assert!(crash.contains("SIGSEGV"), "{crash}");
    wait_gone(&forked_pids(&list, 1));
}

#[test]
fn a_constructor_that_hangs_is_stopped_at_the_limit_and_holds_up_nothing_else() {
    let host = Host::with_plugins(&["welcome_email"]);
    host.install_plugin(CONSTRUCTOR_SLEEP);
    host.install_plugin(CONSTRUCTOR_EXIT);
    host.settings("limits.inspect_timeout = 2\n");

    // Cold: the listing and an unrelated job, at the same time.
    let started = Instant::now();
    std::thread::scope(|scope| {
        let job = scope.spawn(|| welcome_email_runs(&host));
        let listing = listing(&host);
        let sleep = reason(&listing, "libconstructor_sleep_fixture.so");
        assert!(
            sleep.starts_with("loading it hung for more than 2s")
                && sleep.contains("static constructor"),
            "{sleep}"
        );
        let exit = reason(&listing, "libconstructor_exit_fixture.so");
        assert!(exit.contains("code 1"), "{exit}");
        assert_eq!(file(&listing, "libwelcome_email.so")["status"], "plugin");
        job.join().unwrap();
    });
    assert!(
        started.elapsed() < CONSTRUCTOR_SLEEPS,
        "{:?}",
        started.elapsed()
    );

    // Warm: the hung content is not loaded again on every refresh.
    let warm = listing(&host);
    assert!(reason(&warm, "libconstructor_sleep_fixture.so").starts_with("loading it hung"));
    assert!(
        started.elapsed() < CONSTRUCTOR_SLEEPS,
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn a_dispatcher_starts_serves_and_hot_swaps_while_a_constructor_hangs() {
    let host = Host::with_plugins(&["welcome_email"]);
    host.write("plugins/libversioned_fixture.so", versioned_build("v1"));
    host.write(
        "allowlist.toml",
        format!(
            "{}'Tests\\Versioned' = [\"version\", \"hold\"]\n",
            jobhost_e2e::SPEC_ALLOWLIST
        ),
    );
    host.install_plugin(CONSTRUCTOR_SLEEP);
    host.settings("limits.inspect_timeout = 2\ndispatcher.idle_exit = 600\n");
    let started = Instant::now();
    let mut serve = host.serve();
    welcome_email_runs(&host);
    assert!(
        started.elapsed() < CONSTRUCTOR_SLEEPS,
        "{:?}",
        started.elapsed()
    );

    // A hot swap of another plugin, while a new copy of the hanging one arrives beside it.
    let swapped = Instant::now();
    fs::copy(
        built_library(CONSTRUCTOR_SLEEP),
        host.plugin_dir().join("libconstructor_sleep_fixture-2.so"),
    )
    .unwrap();
    let v2 = versioned_build("v2");
    fs::write(host.plugin_dir().join("libversioned_fixture.so"), &v2).unwrap();
    host.wait_catalog(r"Tests\Versioned", Some(&blake3_hex(&v2)));
    let run = host.run(&["run", r"Tests\Versioned", "version", "--wait"]);
    run.expect_code(0);
    assert!(run.stdout.contains("v2"), "{run:?}");
    assert!(
        swapped.elapsed() < CONSTRUCTOR_SLEEPS,
        "{:?}",
        swapped.elapsed()
    );
    // The copy shares the verdict of the content it copies.
    let listing = listing(&host);
    let copy = reason(&listing, "libconstructor_sleep_fixture-2.so");
    assert!(
        copy.starts_with("loading it hung for more than 2s"),
        "{copy}"
    );
    assert!(host.stop_serve(&mut serve));
}

/// The Rust API: a client whose refresh met a failure of jobhost's own (here the state
/// directory's `inspect` directory is a file, so no inspector can be given a report path)
/// inspects the file again at its next dispatch, though the plugin directory did not change.
#[test]
fn a_client_inspects_again_after_a_failed_inspection_without_a_change() {
    let host = Host::with_plugins(&["welcome_email"]);
    host.settings("dispatcher.autostart = false\n");
    let obstacle = host.write("state/inspect", "not a directory");
    let mut client = host.client();
    let job = || jobhost::Job::new(r"App\Jobs\SendWelcomeEmail", "handle").param("user_id", 5);
    let refused = client.dispatch(job()).unwrap_err().to_string();
    assert!(refused.contains("SendWelcomeEmail"), "{refused}");
    let listing = jobhost::catalog::inventory::Inventory::read(
        &jobhost::catalog::inventory::CatalogPaths::new(&host.state_dir()).catalog,
    )
    .unwrap();
    let entry = &listing.files[0];
    assert!(
        matches!(&entry.status, jobhost::catalog::inventory::FileStatus::Rejected { reason }
            if reason.as_str().starts_with("inspection failed: cannot start the inspector")
                && reason.as_str().ends_with("(will retry)")),
        "{entry:?}"
    );
    fs::remove_file(obstacle).unwrap();
    client.dispatch(job()).unwrap();
}
