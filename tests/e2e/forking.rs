//! The fork server (`dispatcher.runner = "fork"`, the default on Linux): workers forked from
//! one small helper process (`jobhost __zygote`), set up exactly as executed ones, and jobs that
//! survive the helper's death.
//!
//! The rest of the suite runs with both runners (`scripts/test` runs the worker, fixture,
//! queue, recovery, hot-swap and PostgreSQL tests again with `JOBHOST_RUNNER=exec`); these are
//! about the fork server itself, so each first checks that there is one.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
    time::Duration,
};

use jobhost_e2e::{alive, blake3_hex, built_library, kill_9, proc_stat, wait_for, Host, MISBEHAVE};

/// The installation's fork server, once its dispatcher started one.
fn zygote_of(host: &Host) -> u32 {
    wait_for(
        "the dispatcher's fork server",
        Duration::from_secs(30),
        || host.zygote(),
    )
}

/// Where each of `/proc/PID/fd/*` leads, by descriptor number.
fn open_files(pid: u32) -> BTreeMap<u32, String> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|entry| {
            let fd = entry.file_name().to_str()?.parse().ok()?;
            let target = std::fs::read_link(entry.path()).ok()?;
            Some((fd, target.to_string_lossy().into_owned()))
        })
        .collect()
}

/// The lines of the fork server's `/proc/PID/maps` that name a file of `host`'s state
/// directory (where plugin snapshots are): the plugins it has loaded.
fn loaded_snapshots(zygote: u32, host: &Host) -> Vec<String> {
    let state_dir = host.state_dir().to_string_lossy().into_owned();
    std::fs::read_to_string(format!("/proc/{zygote}/maps"))
        .unwrap()
        .lines()
        .filter(|line| line.contains(&state_dir))
        .map(str::to_owned)
        .collect()
}

/// Runs six jobs of `class@ok` (no retries, a minute each at most) and waits for each to end;
/// each must have completed. What `show` says of each.
fn six_ok_jobs_complete(host: &Host, class: &str) -> Vec<serde_json::Value> {
    let ids: Vec<i64> = (0..6)
        .map(|_| host.enqueue(&[class, "ok", "--timeout", "60", "--retries", "0"]))
        .collect();
    ids.into_iter()
        .map(|id| {
            let shown = host.wait_state(id, &["completed", "failed"]);
            assert_eq!(shown["job"]["state"], "completed", "{shown:#}");
            shown
        })
        .collect()
}

fn thread_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .count()
}

#[test]
fn workers_are_forked_by_a_one_thread_fork_server_and_set_up_as_executed_ones() {
    let host = Host::standard();
    let mut serve = host.serve();
    host.run(&["run", r"Tests\Misbehave", "ok", "--wait"])
        .expect_code(0);
    let zygote = zygote_of(&host);
    let dispatcher = host.dispatcher_pid().unwrap();
    assert_eq!(
        proc_stat(zygote).unwrap().1,
        dispatcher,
        "its dispatcher started it"
    );
    assert_eq!(
        thread_count(zygote),
        1,
        "a forking process must have one thread"
    );
    // The fixture declares itself fork-safe: the fork server loaded its snapshot (never the
    // watched file), so that its workers start with it loaded.
    let loaded = loaded_snapshots(zygote, &host);
    assert!(
        !loaded.is_empty() && loaded.iter().all(|line| !line.contains(MISBEHAVE)),
        "the fork server loaded the fork-safe plugin's snapshot: {loaded:#?}"
    );

    let id = host.enqueue(&[r"Tests\Misbehave", "hang_cooperative", "--retries", "0"]);
    let marker = format!(r#""job_id":"{id}""#);
    let worker = wait_for(
        "the forked worker to take its go-ahead",
        Duration::from_secs(30),
        || {
            let (pid, _) = host
                .workers()
                .into_iter()
                .find(|(_, cmd)| cmd.contains(&marker))?;
            let stdin = open_files(pid).get(&0).cloned()?;
            (stdin == "/dev/null").then_some(pid)
        },
    );
    // Its session, terminal, core limit and environment are the worker tests' (run with each
    // runner); here, what is the fork server's own.
    assert_eq!(
        proc_stat(worker).unwrap().1,
        zygote,
        "forked by the fork server"
    );
    let state_dir = host.state_dir().to_string_lossy().into_owned();
    let files = open_files(worker);
    let output = files[&1].clone();
    assert!(
        output.starts_with("pipe:"),
        "its output is a pipe: {output}"
    );
    assert_eq!(files[&2], output, "stdout and stderr are one pipe");
    for (fd, target) in &files {
        assert!(
            *target == "/dev/null" || target.starts_with(&state_dir) || *target == output,
            "the worker holds only its own files, nothing of the fork server's: fd {fd} is \
             {target} in {files:#?}"
        );
    }

    host.run(&["cancel", &id.to_string()]).expect_code(0);
    let shown = host.wait_state(id, &["cancelled"]);
    assert_eq!(shown["attempts"][0]["pid"], worker);
    assert!(host.stop_serve(&mut serve));
    wait_for(
        "the fork server to leave with its dispatcher",
        Duration::from_secs(30),
        || (!alive(zygote)).then_some(()),
    );
}

/// The trace lines of `path` (`JOB ATTEMPT PID`), counted by job.
fn runs_by_job(path: &Path) -> BTreeMap<i64, usize> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut runs = BTreeMap::new();
    for line in text.lines() {
        let job: i64 = line.split_whitespace().next().unwrap().parse().unwrap();
        *runs.entry(job).or_default() += 1;
    }
    runs
}

#[test]
fn a_fork_server_killed_mid_drain_is_started_again_and_every_job_runs_once() {
    let host = Host::standard();
    let trace = host.root().join("runs.trace");
    let path = format!("path={}", trace.display());
    let mut serve = host.serve();
    let ids: Vec<i64> = (0..30)
        .map(|_| {
            host.enqueue(&[
                r"Tests\Misbehave",
                "trace",
                &path,
                "seconds=0.2",
                "--retries",
                "0",
            ])
        })
        .collect();
    wait_for("a few jobs to have run", Duration::from_secs(60), || {
        (runs_by_job(&trace).len() >= 4).then_some(())
    });
    let first = zygote_of(&host);
    kill_9(first);

    for &id in &ids {
        let shown = host.wait_state(id, &["completed", "failed"]);
        assert_eq!(shown["job"]["state"], "completed", "job {id}: {shown:#}");
    }
    let runs = runs_by_job(&trace);
    assert_eq!(runs.len(), ids.len(), "every job ran: {runs:?}");
    assert!(
        runs.values().all(|&n| n == 1),
        "and each once, however the fork server's death caught it: {runs:?}"
    );
    let second = zygote_of(&host);
    assert_ne!(second, first, "a new fork server serves the rest");
    assert_eq!(proc_stat(second).unwrap().1, host.dispatcher_pid().unwrap());
    assert!(host.stop_serve(&mut serve));
}

#[test]
fn a_plugin_whose_constructor_starts_a_thread_runs_in_forked_workers_without_deadlock() {
    const FIXTURE: &str = "constructor_thread_fixture";
    let host = Host::with_plugins(&[FIXTURE]);
    host.write(
        "allowlist.toml",
        "[jobs]\n'Tests\\ConstructorThread' = [\"ok\"]\n",
    );
    let mut serve = host.serve();
    assert!(built_library(FIXTURE).exists());
    // Its `ok` takes a lock that only the thread its constructor started ever lets go of: in a
    // worker forked from a process that had loaded the plugin it would wait forever (and time
    // out), with neither the thread nor the release.
    for shown in six_ok_jobs_complete(&host, r"Tests\ConstructorThread") {
        assert_eq!(shown["job"]["result"], serde_json::json!({ "ok": true }));
    }
    let zygote = zygote_of(&host);
    assert_eq!(
        thread_count(zygote),
        1,
        "the fork server never loaded the plugin"
    );
    let listed = host.run(&["plugins"]);
    listed.expect_code(0);
    assert!(
        listed.stdout.contains("constructor_thread_fixture")
            && !listed.stdout.contains("fork-safe"),
        "it does not declare itself fork-safe: {}",
        listed.stdout
    );
    assert_eq!(
        loaded_snapshots(zygote, &host),
        Vec::<String>::new(),
        "a plugin that does not declare itself fork-safe is not loaded before forking"
    );
    assert!(host.stop_serve(&mut serve));
}

#[test]
fn a_plugin_that_declares_itself_fork_safe_but_starts_a_thread_when_loaded_is_loaded_by_its_workers_instead(
) {
    const FIXTURE: &str = "fork_safe_liar_fixture";
    let host = Host::with_plugins(&[FIXTURE]);
    host.write(
        "allowlist.toml",
        "[jobs]\n'Tests\\ForkSafeLiar' = [\"ok\"]\n",
    );
    let mut serve = host.serve();
    // The plugins page says what it declares.
    let listed = host.run(&["plugins"]);
    listed.expect_code(0);
    assert!(listed.stdout.contains("fork-safe"), "{}", listed.stdout);
    // Were the workers forked from the fork server that loaded it, `ok` would wait forever
    // for the lock its thread holds (and time out).
    for shown in six_ok_jobs_complete(&host, r"Tests\ForkSafeLiar") {
        assert_eq!(
            shown["attempts"].as_array().map(Vec::len),
            Some(1),
            "{shown:#}"
        );
    }
    let warned = host.wait_log("background_jobs.log", "declares itself fork-safe");
    assert!(
        warned.contains("WARNING") && warned.contains("started a thread"),
        "{warned}"
    );
    let warnings = host
        .log("background_jobs.log")
        .into_iter()
        .filter(|l| l.contains("declares itself fork-safe"))
        .count();
    assert_eq!(warnings, 1, "found out once, not for every worker");
    let zygote = zygote_of(&host);
    assert_eq!(
        thread_count(zygote),
        1,
        "the fork server that serves is clean"
    );
    assert_eq!(
        loaded_snapshots(zygote, &host),
        Vec::<String>::new(),
        "and has not loaded the plugin that lied"
    );
    assert!(host.stop_serve(&mut serve));
}

#[test]
fn a_fork_server_that_has_loaded_its_most_libraries_is_replaced_by_a_fresh_one() {
    use jobhost::platform::fork_server::MAX_PRELOADED;
    let host = Host::standard();
    let mut serve = host.serve();
    let original = std::fs::read(built_library(MISBEHAVE)).unwrap();
    let installed = host
        .plugin_dir()
        .join(built_library(MISBEHAVE).file_name().unwrap());
    // The distinct snapshot files the fork server has mapped.
    let preloaded = |zygote: u32| -> BTreeSet<String> {
        loaded_snapshots(zygote, &host)
            .iter()
            .filter_map(|line| line.split_whitespace().nth(5).map(str::to_owned))
            .collect()
    };
    let mut first = None;
    // The installed build, then builds that differ by trailing bytes (another hash, so another
    // snapshot), each run once: the fork server loads each before forking its first worker.
    for version in 0..=MAX_PRELOADED {
        if version > 0 {
            let mut build = original.clone();
            build.extend_from_slice(format!("jobhost-test-build-{version}").as_bytes());
            let staged = host.write("staged.so", &build);
            std::fs::rename(&staged, &installed).unwrap();
            host.wait_catalog(r"Tests\Misbehave", Some(&blake3_hex(&build)));
        }
        host.run(&["run", r"Tests\Misbehave", "ok", "--wait"])
            .expect_code(0);
        let zygote = zygote_of(&host);
        let loaded = preloaded(zygote);
        if version < MAX_PRELOADED {
            let first = *first.get_or_insert(zygote);
            assert_eq!(zygote, first, "version {version}: the same fork server");
            assert_eq!(loaded.len(), version + 1, "version {version}: {loaded:#?}");
        } else {
            let first = first.unwrap();
            assert_ne!(
                zygote,
                first,
                "the {}th library is loaded by a fresh fork server",
                MAX_PRELOADED + 1
            );
            assert_eq!(
                loaded.len(),
                1,
                "the fresh one loaded it alone: {loaded:#?}"
            );
            wait_for(
                "the full fork server to leave",
                Duration::from_secs(30),
                || (!alive(first)).then_some(()),
            );
        }
    }
    assert!(host.stop_serve(&mut serve));
}

#[test]
fn a_worker_that_cannot_be_forked_is_executed_with_a_warning() {
    let host = Host::standard();
    // A jobhost whose fork server cannot start: every worker has to be executed.
    let jobhost = jobhost_e2e::artifacts_dir().join("jobhost");
    let program = host.write(
        "no-fork-server",
        format!(
            "#!/bin/sh\nif [ \"$1\" = __zygote ]; then echo 'no fork server here' >&2; exit 1; fi\n\
             exec {} \"$@\"\n",
            jobhost.display()
        ),
    );
    std::fs::set_permissions(
        &program,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let mut serve = host
        .jobhost()
        .env("JOBHOST_BIN", &program)
        .args(["serve"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for("the dispatcher", Duration::from_secs(30), || {
        host.dispatcher_pid().filter(|&pid| pid == serve.id())
    });
    for n in 0..3 {
        let run = host.run(&[
            "run",
            r"Tests\Misbehave",
            "echo",
            &format!("n={n}"),
            "--wait",
        ]);
        run.expect_code(0);
    }
    let warned = host.wait_log("background_jobs.log", "Workers cannot be forked");
    assert!(warned.contains("WARNING"), "{warned}");
    let warnings = host
        .log("background_jobs.log")
        .into_iter()
        .filter(|l| l.contains("Workers cannot be forked"))
        .count();
    assert_eq!(warnings, 1, "said once, not for every worker");
    assert_eq!(host.zygote(), None);
    assert!(host.stop_serve(&mut serve));
}
