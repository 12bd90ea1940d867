//! Hot swapping the plugin directory under a running `jobhost serve`: running jobs finish on
//! the version they started on, new jobs get the new one, and a broken file never replaces a
//! working version.

use std::{fs, time::Duration};

use jobhost::Job;
use jobhost_e2e::{blake3_hex, versioned_build, wait_for, Host, MISBEHAVE};
use serde_json::Value;

const VERSIONED_CLASS: &str = r"Tests\Versioned";
const PLUGIN_FILE: &str = "libversioned_fixture.so";

/// An installation with the versioned fixture (as "v1") beside the misbehaving one, both
/// approved.
fn versioned_host() -> Host {
    let host = Host::with_plugins(&[MISBEHAVE]);
    host.write(&format!("plugins/{PLUGIN_FILE}"), versioned_build("v1"));
    host.write(
        "allowlist.toml",
        format!(
            "{}'Tests\\Versioned' = [\"version\", \"hold\"]\n",
            jobhost_e2e::SPEC_ALLOWLIST
        ),
    );
    host
}

/// How a deploy puts the new version in place.
#[derive(Debug, Clone, Copy)]
enum Deploy {
    /// Overwrites the file in place (same inode), as `cp` does.
    CopyOver,
    /// Writes a hidden temporary file and renames it over the old one.
    WriteAndRename,
    /// Builds a whole new directory and swaps it in by renames.
    SwapDirectory,
}

fn deploy(host: &Host, how: Deploy, bytes: &[u8]) {
    let dir = host.plugin_dir();
    match how {
        Deploy::CopyOver => fs::write(dir.join(PLUGIN_FILE), bytes).unwrap(),
        Deploy::WriteAndRename => {
            let tmp = dir.join(format!(".{PLUGIN_FILE}.tmp"));
            fs::write(&tmp, bytes).unwrap();
            fs::rename(&tmp, dir.join(PLUGIN_FILE)).unwrap();
        }
        Deploy::SwapDirectory => {
            let new = host.root().join("plugins.new");
            fs::create_dir(&new).unwrap();
            for entry in fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                fs::copy(&path, new.join(path.file_name().unwrap())).unwrap();
            }
            fs::write(new.join(PLUGIN_FILE), bytes).unwrap();
            let old = host.root().join("plugins.old");
            fs::rename(&dir, &old).unwrap();
            fs::rename(&new, &dir).unwrap();
            fs::remove_dir_all(&old).unwrap();
        }
    }
}

/// Enqueues `Tests\Versioned@version` and returns its result's version once it completed,
/// with the plugin hash its attempt recorded.
fn run_version(host: &Host) -> (String, String) {
    let id = host.enqueue(&[VERSIONED_CLASS, "version"]);
    let shown = host.wait_state(id, &["completed", "failed"]);
    assert_eq!(shown["job"]["state"], "completed", "{shown:#}");
    (
        shown["job"]["result"]["version"]
            .as_str()
            .unwrap()
            .to_owned(),
        shown["attempts"][0]["plugin_hash"]
            .as_str()
            .unwrap()
            .to_owned(),
    )
}

/// Starts a job that runs until the file it names exists; returns its id and that file, once
/// it runs.
fn start_holder(host: &Host) -> (i64, std::path::PathBuf) {
    let release = host.root().join("release");
    let holder = host.enqueue(&[
        VERSIONED_CLASS,
        "hold",
        &format!("release={}", release.display()),
    ]);
    host.wait_state(holder, &["running"]);
    (holder, release)
}

fn snapshot_exists(host: &Host, hash: &str) -> bool {
    host.state_dir()
        .join("plugins/snapshots")
        .join(format!("{hash}.so"))
        .exists()
}

/// The whole check for one way of deploying: a job holding on v1 survives the swap and
/// finishes on v1, a job enqueued after the swap runs v2, and v1's snapshot goes once nothing
/// needs it.
fn running_job_keeps_v1_while_new_jobs_get_v2(how: Deploy) {
    let host = versioned_host();
    let (v1, v2) = (versioned_build("v1"), versioned_build("v2"));
    let (v1_hash, v2_hash) = (blake3_hex(&v1), blake3_hex(&v2));
    let mut serve = host.serve();
    host.wait_catalog(VERSIONED_CLASS, Some(&v1_hash));

    let (holder, release) = start_holder(&host);

    deploy(&host, how, &v2);
    // The dispatcher's watcher takes it in: nobody else looked at the directory.
    host.wait_catalog(VERSIONED_CLASS, Some(&v2_hash));
    assert_eq!(run_version(&host), ("v2".to_owned(), v2_hash.clone()));

    fs::write(&release, "").unwrap();
    let held = host.wait_state(holder, &["completed", "failed"]);
    assert_eq!(held["job"]["state"], "completed", "{held:#}");
    assert_eq!(held["job"]["result"]["version"], "v1");
    assert_eq!(held["job"]["result"]["finished_on"], "v1");
    assert_eq!(held["attempts"][0]["plugin_hash"], v1_hash.as_str());
    assert_eq!(held["attempts"].as_array().unwrap().len(), 1);

    wait_for(
        "v1's snapshot to be removed",
        Duration::from_secs(60),
        || (!snapshot_exists(&host, &v1_hash)).then_some(()),
    );
    assert!(snapshot_exists(&host, &v2_hash));
    assert!(host.stop_serve(&mut serve));
    let log = host.log("background_jobs.log").join("\n");
    assert!(
        log.contains(&format!(
            r#"Plugin version active: {}"#,
            host.plugin_dir().join(PLUGIN_FILE).display()
        )),
        "{log}"
    );
    assert!(
        log.contains(&format!(r#""previous_hash":"{v1_hash}""#)),
        "{log}"
    );
}

#[test]
fn copy_over_in_place_while_a_job_runs() {
    running_job_keeps_v1_while_new_jobs_get_v2(Deploy::CopyOver);
}

#[test]
fn write_and_rename_while_a_job_runs() {
    running_job_keeps_v1_while_new_jobs_get_v2(Deploy::WriteAndRename);
}

#[test]
fn swap_the_whole_directory_while_a_job_runs() {
    running_job_keeps_v1_while_new_jobs_get_v2(Deploy::SwapDirectory);
}

/// The `Plugin rejected` lines of the errors log.
fn rejections(host: &Host) -> Vec<String> {
    host.log("background_jobs_errors.log")
        .into_iter()
        .filter(|l| l.contains("Plugin rejected"))
        .collect()
}

#[test]
fn broken_files_never_replace_the_working_version() {
    let host = versioned_host();
    let v1_hash = blake3_hex(&versioned_build("v1"));
    let mut serve = host.serve();
    host.wait_catalog(VERSIONED_CLASS, Some(&v1_hash));

    let v2 = versioned_build("v2");
    let bad: [(&str, Vec<u8>, &str); 3] = [
        (
            "not a plugin",
            fs::read(jobhost_e2e::built_library("not_a_plugin_fixture")).unwrap(),
            "does not export job-sdk's root module:",
        ),
        (
            "another SDK",
            fs::read(jobhost_e2e::built_library("other_sdk_fixture")).unwrap(),
            "incompatible SDK layout:",
        ),
        (
            "truncated",
            v2[..64 * 1024].to_vec(),
            "truncated: the file has 65536 bytes but its ELF headers and segments need",
        ),
    ];
    for (n, (what, bytes, reason)) in bad.iter().enumerate() {
        deploy(&host, Deploy::WriteAndRename, bytes);
        let lines = wait_for(
            &format!("the {what} file to be rejected"),
            Duration::from_secs(60),
            || {
                let lines = rejections(&host);
                (lines.len() > n).then_some(lines)
            },
        );
        let line = &lines[n];
        assert!(line.contains(reason), "{what}: {line}");
        assert!(
            line.contains(&format!(r#""serving_hash":"{v1_hash}""#)),
            "{what}: {line}"
        );
        assert_eq!(
            run_version(&host),
            ("v1".to_owned(), v1_hash.clone()),
            "{what}"
        );

        let listed = host.run(&["plugins", "--json"]);
        listed.expect_code(0);
        let listing = listed.json();
        let file = listing["files"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["path"].as_str().unwrap().ends_with(PLUGIN_FILE))
            .unwrap()
            .clone();
        assert_eq!(file["status"], "rejected", "{what}: {file:#}");
        assert_eq!(file["active"]["hash"], v1_hash.as_str(), "{what}");
        let text = host.run(&["plugins"]);
        assert!(
            text.stdout
                .contains("still serving its previous version, blake3"),
            "{}",
            text.stdout
        );
    }
    assert!(host.stop_serve(&mut serve));
    // One clear line each, however many processes looked at the directory.
    let lines = rejections(&host);
    assert_eq!(lines.len(), 3, "{lines:#?}");
}

#[test]
fn a_new_plugin_approved_at_run_time_runs_without_a_restart_and_a_bad_allowlist_changes_nothing() {
    let host = Host::with_plugins(&[MISBEHAVE]);
    let mut serve = host.serve();
    let notify = [
        r"App\Jobs\SendNotification",
        "send",
        "user_id=7",
        "message=hello",
    ];
    let mut run = vec!["run"];
    run.extend_from_slice(&notify);
    // Not there yet, and not approved: refused.
    host.write(
        "allowlist.toml",
        "[jobs]\n'Tests\\Misbehave' = [\"echo\"]\n",
    );
    host.run(&run).expect_code(3);

    let source = jobhost_e2e::built_library("notifications");
    let tmp = host.plugin_dir().join(".incoming");
    fs::copy(&source, &tmp).unwrap();
    fs::rename(&tmp, host.plugin_dir().join(source.file_name().unwrap())).unwrap();
    let hash = blake3_hex(&fs::read(&source).unwrap());
    host.wait_catalog(r"App\Jobs\SendNotification", Some(&hash));
    // Offered now, still not approved.
    host.run(&run).expect_code(3);

    host.write(
        "allowlist.toml",
        "[jobs]\n'Tests\\Misbehave' = [\"echo\"]\n'App\\Jobs\\SendNotification' = [\"send\"]\n",
    );
    host.wait_log("background_jobs.log", "Allowlist reloaded");
    let id = host.enqueue(&notify);
    let done = host.wait_state(id, &["completed", "failed"]);
    assert_eq!(done["job"]["state"], "completed", "{done:#}");
    assert_eq!(done["attempts"][0]["plugin_hash"], hash.as_str());

    // A broken edit: logged once, and the version in force stays in force.
    host.write("allowlist.toml", "[jobs]\n'Tests\\Misbehave' = \"echo\"\n");
    host.wait_log("background_jobs_errors.log", "Allowlist rejected");
    let id = host.enqueue(&notify);
    assert_eq!(
        host.wait_state(id, &["completed", "failed"])["job"]["state"],
        "completed"
    );
    host.run(&["run", r"Tests\Misbehave", "segfault"])
        .expect_code(3);
    let listed = host.run(&["plugins"]);
    assert!(
        listed
            .stdout
            .contains("REJECTED CHANGE, the version above stays in force"),
        "{}",
        listed.stdout
    );
    assert!(host.stop_serve(&mut serve));
    let rejected: Vec<String> = host
        .log("background_jobs_errors.log")
        .into_iter()
        .filter(|l| l.contains("Allowlist rejected"))
        .collect();
    assert_eq!(rejected.len(), 1, "{rejected:#?}");
    assert!(rejected[0].contains("allowlist.toml:2:"), "{}", rejected[0]);
}

#[test]
fn five_hundred_jobs_while_v1_v2_and_v3_are_swapped_in() {
    let host = versioned_host();
    let mut serve = host.serve();
    let mut client = host.client();
    let mut ids = Vec::new();
    let mut enqueue = |count: usize| {
        for _ in 0..count {
            ids.push(
                client
                    .dispatch(Job::new(VERSIONED_CLASS, "version"))
                    .unwrap(),
            );
        }
    };
    enqueue(150);
    deploy(&host, Deploy::WriteAndRename, &versioned_build("v2"));
    enqueue(150);
    deploy(&host, Deploy::CopyOver, &versioned_build("v3"));
    enqueue(200);

    let mut versions = Vec::new();
    for id in &ids {
        let shown = host.wait_state(*id, &["completed", "failed", "cancelled"]);
        assert_eq!(shown["job"]["state"], "completed", "{shown:#}");
        let attempts = shown["attempts"].as_array().unwrap();
        assert_eq!(attempts.len(), 1, "{shown:#}");
        assert_eq!(attempts[0]["outcome"], "ok", "{shown:#}");
        versions.push(
            shown["job"]["result"]["version"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    assert!(host.stop_serve(&mut serve));
    // Jobs are claimed in id order, each on the version active then: never an older one after
    // a newer one. The last ones were enqueued after v3 was in place.
    let rank = |v: &str| ["v1", "v2", "v3"].iter().position(|x| *x == v).unwrap();
    assert!(
        versions.windows(2).all(|w| rank(&w[0]) <= rank(&w[1])),
        "{versions:?}"
    );
    assert_eq!(versions.last().map(String::as_str), Some("v3"));
    let distinct: std::collections::BTreeSet<&String> = versions.iter().collect();
    assert!(distinct.len() >= 2, "{distinct:?}");
}

#[test]
fn jobs_waiting_for_a_removed_plugin_still_run_on_their_version_and_new_ones_are_refused() {
    let host = versioned_host();
    host.settings("dispatcher.slots = 1");
    let v1_hash = blake3_hex(&versioned_build("v1"));
    let mut serve = host.serve();
    let (_, release) = start_holder(&host);
    let waiting = host.enqueue(&[VERSIONED_CLASS, "version"]);
    assert_eq!(host.show(waiting)["job"]["state"], "queued");

    fs::remove_file(host.plugin_dir().join(PLUGIN_FILE)).unwrap();
    host.wait_catalog(VERSIONED_CLASS, None);
    let refused = host.run(&["run", VERSIONED_CLASS, "version"]);
    refused.expect_code(3);
    assert!(
        refused.stderr.contains("no plugin in"),
        "{}",
        refused.stderr
    );

    fs::write(&release, "").unwrap();
    let done = host.wait_state(waiting, &["completed", "failed"]);
    assert_eq!(done["job"]["state"], "completed", "{done:#}");
    assert_eq!(done["job"]["result"]["version"], "v1");
    assert_eq!(done["attempts"][0]["plugin_hash"], v1_hash.as_str());
    // Nothing needs v1 any more.
    wait_for(
        "v1's snapshot to be removed",
        Duration::from_secs(60),
        || (!snapshot_exists(&host, &v1_hash)).then_some(()),
    );
    assert!(host.stop_serve(&mut serve));
    assert!(host
        .log("background_jobs.log")
        .iter()
        .any(|l| l.contains("Plugin removed") && l.contains(PLUGIN_FILE)));
}

#[test]
fn two_files_offering_one_class_the_first_by_name_serves_with_a_warning() {
    let host = versioned_host();
    host.write("plugins/a_versioned.so", versioned_build("first"));
    host.write("plugins/z_versioned.so", versioned_build("last"));
    let listed = host.run(&["plugins", "--json"]);
    listed.expect_code(0);
    let listing: Value = listed.json();
    let class = listing["classes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["class"] == VERSIONED_CLASS)
        .unwrap()
        .clone();
    assert!(
        class["file"].as_str().unwrap().ends_with("a_versioned.so"),
        "{class:#}"
    );
    assert_eq!(run_version(&host).0, "first");
    let warnings: Vec<String> = host
        .log("background_jobs_errors.log")
        .into_iter()
        .filter(|l| l.contains("Plugin class offered twice"))
        .collect();
    assert_eq!(warnings.len(), 1, "{warnings:#?}");
    assert!(warnings[0].contains("a_versioned.so") && warnings[0].contains(PLUGIN_FILE));
    let text = host.run(&["plugins"]).stdout;
    assert!(
        text.contains("is offered by a_versioned.so, libversioned_fixture.so, z_versioned.so; the first serves"),
        "{text}"
    );
}
