//! `jobhost list`, `show` and `stats`: the queue for people (tables) and scripts (`--json`).
//!
//! They only read: the store is opened with [`store::open_existing`], so a directory where
//! nothing was ever queued gets no state directory or database, only a note saying where they
//! looked; and they open no logs.

use crate::{
    config::settings::Settings,
    shared::text::{visible, Escape},
    store::{self, Attempt, JobRecord, JobState, ListFilter, Millis, Stats, Store, StoreError},
};

use crate::{
    cli::args::ListArgs,
    cli::output::{note, Stdout, StdoutError},
};

/// A time for people, in the local time zone, as the logs write it.
fn when(millis: Option<Millis>) -> String {
    millis
        .and_then(crate::shared::text::local_time)
        .unwrap_or_else(|| "-".into())
}

/// The store `settings` name, or `None` (with a note saying where nothing was found) when it
/// does not exist yet.
fn open(settings: &Settings) -> anyhow::Result<Option<Box<dyn Store>>> {
    let store = store::open_existing(&settings.store)?;
    if store.is_none() {
        match &settings.store {
            store::StoreLocation::Sqlite(_) => note!(
                "state directory {} holds no jobs: nothing was queued there",
                settings.state_dir.display()
            ),
            #[cfg(feature = "postgres")]
            postgres @ store::StoreLocation::Postgres(_) => {
                note!("job database {postgres} holds no jobs: nothing was queued there")
            }
        }
    }
    Ok(store)
}

pub fn list(settings: &Settings, args: &ListArgs, out: &mut Stdout) -> anyhow::Result<u8> {
    let state = match &args.status {
        None => None,
        Some(name) => Some(
            JobState::parse(name).ok_or_else(|| crate::job::ParamsError::Name {
                what: "status (use queued, scheduled, running, completed, failed or cancelled)",
                name: name.clone(),
            })?,
        ),
    };
    let filter = ListFilter {
        state,
        class: args.class.clone(),
        priority: args.priority,
        limit: args.limit,
        offset: args.offset,
    };
    let jobs = match open(settings)? {
        Some(mut store) => store.list(&filter)?,
        None if args.json => Vec::new(),
        None => return Ok(0),
    };
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&jobs)?)?;
        return Ok(0);
    }
    writeln!(
        out,
        "{:>6}  {:<9}  {:<6}  {:>8}  {:<19}  {:<19}  JOB",
        "ID", "STATE", "PRIO", "ATTEMPTS", "CREATED", "FINISHED"
    )?;
    for job in &jobs {
        writeln!(
            out,
            "{:>6}  {:<9}  {:<6}  {:>8}  {:<19}  {:<19}  {}",
            job.id,
            job.state.as_str(),
            job.priority.as_str(),
            format!("{}/{}", job.attempts, job.max_attempts),
            when(Some(job.created_at)),
            when(job.finished_at),
            visible(&job.name(), Escape::Text)
                + if job.problem.is_some() {
                    "  (unreadable row: see jobhost show)"
                } else {
                    ""
                }
        )?;
    }
    Ok(0)
}

pub fn show(settings: &Settings, id: i64, json: bool, out: &mut Stdout) -> anyhow::Result<u8> {
    let found = match open(settings)? {
        Some(mut store) => store.job(id)?,
        None => None,
    };
    let (job, attempts) = found.ok_or(StoreError::NotFound(id))?;
    if json {
        let value = serde_json::json!({ "job": job, "attempts": attempts });
        writeln!(out, "{}", serde_json::to_string_pretty(&value)?)?;
        return Ok(0);
    }
    print_job(&job, &attempts, out)?;
    let now = store::now_millis();
    for a in &attempts {
        writeln!(out, "\n{}", attempt_sentence(a, now))?;
        if let Some(error) = &a.error {
            writeln!(out, "  error: {}", visible(error, Escape::Text))?;
        }
        if let Some(path) = &a.output_path {
            // Capped like the capture that wrote it (a file put there later may be anything).
            let output = match crate::shared::files::read_capped(
                path,
                crate::runner::supervisor::capture::max_file_bytes(
                    settings.limits.max_output_bytes,
                ),
                "an attempt's output",
            ) {
                Ok(output) => output,
                // An attempt that printed nothing has no output file.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => format!("(cannot be shown: {e})").into_bytes(),
            };
            writeln!(out, "  output ({}):", path.display())?;
            for line in String::from_utf8_lossy(&output).lines() {
                writeln!(out, "  | {}", visible(line, Escape::Text))?;
            }
        }
    }
    Ok(0)
}

/// `n attempt(s)`.
fn attempts(n: u32) -> String {
    match n {
        1 => "1 attempt".into(),
        n => format!("{n} attempts"),
    }
}

/// Seconds between two times, as shown.
fn secs(from: Millis, to: Millis) -> String {
    format!("{:.3}s", (to - from) as f64 / 1000.0)
}

/// What the job's state means for it: one sentence for each state.
fn state_sentence(job: &JobRecord, recorded: &[Attempt]) -> String {
    let tries = job.attempts;
    match job.state {
        JobState::Queued if tries == 0 => format!("queued, due since {}", when(Some(job.run_at))),
        JobState::Queued => format!(
            "queued again after {}, due since {}",
            attempts(tries),
            when(Some(job.run_at))
        ),
        JobState::Scheduled if tries == 0 => {
            format!("scheduled, first attempt at {}", when(Some(job.run_at)))
        }
        JobState::Scheduled => format!(
            "scheduled, attempt {} of {} at {}",
            tries + 1,
            job.max_attempts,
            when(Some(job.run_at))
        ),
        JobState::Running => {
            let since = recorded
                .iter()
                .find(|a| a.attempt == tries)
                .map(|a| a.started_at)
                .or(job.started_at);
            let cancel = if job.cancel_requested {
                ", cancel requested"
            } else {
                ""
            };
            format!(
                "running attempt {tries} of {} since {}{cancel}",
                job.max_attempts,
                when(since)
            )
        }
        JobState::Completed | JobState::Failed | JobState::Cancelled => {
            let how = match (job.state, tries) {
                (JobState::Failed, 0) => "failed without an attempt".into(),
                (JobState::Cancelled, 0) => "cancelled before it ran,".into(),
                (JobState::Completed, _) => format!("completed on attempt {tries}"),
                (state, n) => format!("{state} after {}", attempts(n)),
            };
            format!("{how} at {}", when(job.finished_at))
        }
    }
}

/// One attempt: how it ended (or that it runs, or is starting), when it started, and its
/// worker.
fn attempt_sentence(a: &Attempt, now: Millis) -> String {
    let n = a.attempt;
    let started = when(Some(a.started_at));
    let how = match (a.finished_at, a.outcome.as_deref(), a.pid) {
        (None, _, None) => {
            return format!("attempt {n}: starting, claimed {started}, no worker yet")
        }
        (None, _, Some(_)) => format!("running for {}", secs(a.started_at, now.max(a.started_at))),
        (Some(end), outcome, _) => format!(
            "{} after {}",
            outcome.unwrap_or("ended"),
            secs(a.started_at, end)
        ),
    };
    let pid = a.pid.map_or_else(|| "-".into(), |p| p.to_string());
    let hash = a.plugin_hash.as_deref().unwrap_or("-");
    format!(
        "attempt {n}: {how}, started {started}, pid {pid}, plugin blake3 {}",
        hash.get(..16).unwrap_or(hash),
    )
}

fn print_job(job: &JobRecord, recorded: &[Attempt], out: &mut Stdout) -> Result<(), StdoutError> {
    writeln!(
        out,
        "job {}: {}",
        job.id,
        visible(&job.name(), Escape::Text)
    )?;
    if let Some(problem) = &job.problem {
        let problem = visible(problem, Escape::Text);
        writeln!(out, "  PROBLEM:   its stored row cannot be read: {problem}")?;
    }
    writeln!(out, "  state:     {}", state_sentence(job, recorded))?;
    writeln!(out, "  priority:  {}", job.priority)?;
    writeln!(out, "  attempts:  {} of {}", job.attempts, job.max_attempts)?;
    writeln!(
        out,
        "  params:    {}",
        visible(
            &serde_json::to_string_pretty(&job.params).unwrap_or_default(),
            Escape::Json
        )
        .replace('\n', "\n             ")
    )?;
    writeln!(out, "  created:   {}", when(Some(job.created_at)))?;
    writeln!(out, "  run at:    {}", when(Some(job.run_at)))?;
    writeln!(out, "  started:   {}", when(job.started_at))?;
    writeln!(out, "  finished:  {}", when(job.finished_at))?;
    if let (Some(start), Some(end)) = (job.started_at, job.finished_at) {
        writeln!(out, "  took:      {:.3}s", (end - start) as f64 / 1000.0)?;
    }
    writeln!(
        out,
        "  timeout:   {}s, retry delay {}s",
        job.timeout.as_secs_f64(),
        job.retry_delay.as_secs_f64()
    )?;
    let plugin = job.plugin.display().to_string();
    writeln!(out, "  plugin:    {}", visible(&plugin, Escape::Text))?;
    if let Some(result) = &job.result {
        writeln!(
            out,
            "  result:    {}",
            visible(&result.to_string(), Escape::Json)
        )?;
    }
    if let Some(error) = &job.last_error {
        writeln!(out, "  error:     {}", visible(error, Escape::Text))?;
    }
    Ok(())
}

/// `jobhost stats --json`: the counts, and what the dispatcher reports about itself.
#[derive(serde::Serialize)]
struct StatsReport {
    #[serde(flatten)]
    stats: Stats,
    /// None when no dispatcher serves the state directory.
    dispatcher: Option<crate::queue::health::Health>,
}

pub fn stats(settings: &Settings, json: bool, out: &mut Stdout) -> anyhow::Result<u8> {
    let paths = crate::queue::StatePaths::new(&settings.state_dir);
    // Read first: it holds even when the store does not answer.
    let dispatcher = crate::queue::health::current(&paths.lock, &paths.health);
    // Without an answer from the store, what the dispatcher reports is still said first.
    let stats = open(settings).and_then(|store| match store {
        Some(mut store) => Ok(store.stats()?),
        None => Ok(Stats::empty()),
    });
    if json {
        let report = StatsReport {
            stats: stats?,
            dispatcher,
        };
        writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
        return Ok(0);
    }
    match &dispatcher {
        None => writeln!(out, "dispatcher: none running")?,
        Some(health) if health.problems.is_empty() => {
            writeln!(out, "dispatcher: pid {}, healthy", health.pid)?;
        }
        Some(health) => {
            writeln!(out, "dispatcher: pid {}, in trouble:", health.pid)?;
            for problem in &health.problems {
                writeln!(
                    out,
                    "  {} since {}: {}",
                    problem.what,
                    when(Some(problem.since)),
                    problem.error
                )?;
            }
        }
    }
    let stats = stats?;
    for state in JobState::ALL {
        writeln!(
            out,
            "{:<10} {}",
            state.as_str(),
            stats.by_state.get(state.as_str()).copied().unwrap_or(0)
        )?;
    }
    // Rows in a state jobhost does not know (a hand edit): counted, not hidden.
    for (state, count) in &stats.by_state {
        if JobState::parse(state).is_none() {
            writeln!(
                out,
                "{:<10} {count}  (not a job state: see jobhost list)",
                format!("{state:?}")
            )?;
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::{job::Priority, store::Attempt};
    use serde_json::json;

    use super::*;

    fn job(state: JobState, attempts: u32) -> JobRecord {
        JobRecord {
            id: 7,
            class: r"App\Jobs\SendWelcomeEmail".into(),
            method: "handle".into(),
            params: json!({"user_id": 1}),
            priority: Priority::Normal,
            state,
            attempts,
            max_attempts: 4,
            retries: 3,
            retry_delay: Duration::from_secs(5),
            timeout: Duration::from_secs(60),
            plugin: "/plugins/libwelcome_email.so".into(),
            run_at: 1_000,
            created_at: 1_000,
            started_at: (attempts > 0).then_some(2_000),
            finished_at: state.is_terminal().then_some(9_000),
            cancel_requested: false,
            last_error: None,
            result: None,
            problem: None,
        }
    }

    fn attempt(n: u32, pid: Option<u32>, end: Option<(Millis, &str)>) -> Attempt {
        Attempt {
            job_id: 7,
            attempt: n,
            started_at: 2_000,
            finished_at: end.map(|(at, _)| at),
            outcome: end.map(|(_, outcome)| outcome.to_owned()),
            error: None,
            output_path: None,
            output_bytes: None,
            pid,
            plugin_hash: pid.map(|_| "0123456789abcdef0123".into()),
            dispatcher: Some(1),
        }
    }

    /// No word twice in a row ("running after running"), and the state named first.
    fn assert_reads_well(sentence: &str, starts: &str) {
        assert!(sentence.starts_with(starts), "{sentence}");
        let words: Vec<&str> = sentence
            .split([' ', ','])
            .filter(|w| !w.is_empty())
            .collect();
        assert!(
            words.windows(2).all(|w| w[0] != w[1]),
            "repeats a word: {sentence}"
        );
        let mut after = words.iter().skip_while(|w| **w != "after");
        assert_ne!(after.nth(1), Some(&"running"), "{sentence}");
    }

    #[test]
    fn every_state_has_its_own_sentence() {
        let cases = [
            (JobState::Queued, 0, "queued, due since"),
            (
                JobState::Queued,
                1,
                "queued again after 1 attempt, due since",
            ),
            (JobState::Scheduled, 0, "scheduled, first attempt at"),
            (JobState::Scheduled, 2, "scheduled, attempt 3 of 4 at"),
            (JobState::Running, 2, "running attempt 2 of 4 since"),
            (JobState::Completed, 1, "completed on attempt 1 at"),
            (JobState::Failed, 4, "failed after 4 attempts at"),
            (JobState::Failed, 0, "failed without an attempt at"),
            (JobState::Cancelled, 0, "cancelled before it ran, at"),
            (JobState::Cancelled, 1, "cancelled after 1 attempt at"),
        ];
        for (state, tries, starts) in cases {
            let recorded: Vec<Attempt> = (1..=tries).map(|n| attempt(n, Some(9), None)).collect();
            assert_reads_well(&state_sentence(&job(state, tries), &recorded), starts);
        }
        let mut cancelling = job(JobState::Running, 1);
        cancelling.cancel_requested = true;
        assert!(state_sentence(&cancelling, &[]).ends_with(", cancel requested"));
    }

    #[test]
    fn a_running_attempt_says_for_how_long_not_running_after_running() {
        let running = attempt_sentence(&attempt(2, Some(42), None), 5_500);
        assert_reads_well(&running, "attempt 2: running for 3.500s, started ");
        assert!(
            running.ends_with(", pid 42, plugin blake3 0123456789abcdef"),
            "{running}"
        );
        let starting = attempt_sentence(&attempt(3, None, None), 5_500);
        assert_reads_well(&starting, "attempt 3: starting, claimed ");
        assert!(starting.ends_with(", no worker yet"), "{starting}");
        for outcome in ["ok", "error", "timed out", "lost", "crashed: SIGSEGV"] {
            let ended = attempt_sentence(&attempt(1, Some(42), Some((3_250, outcome))), 9_999);
            assert_reads_well(
                &ended,
                &format!("attempt 1: {outcome} after 1.250s, started "),
            );
        }
        let lost = attempt_sentence(&attempt(1, None, Some((3_000, "lost"))), 9_999);
        assert_reads_well(&lost, "attempt 1: lost after 1.000s, started ");
        assert!(lost.contains(", pid -, "), "{lost}");
    }
}
