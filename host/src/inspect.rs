//! `jobhost list`, `show` and `stats`: the queue for people (tables) and scripts (`--json`).

use jobhost::{
    store::{JobRecord, JobState, ListFilter, Millis},
    Client,
};

use crate::cli::ListArgs;

/// A time for people, in the local time zone, as the logs write it.
fn when(millis: Option<Millis>) -> String {
    millis
        .and_then(jobhost::text::local_time)
        .unwrap_or_else(|| "-".into())
}

pub fn list(client: &mut Client, args: &ListArgs) -> anyhow::Result<u8> {
    let state = match &args.status {
        None => None,
        Some(name) => {
            Some(
                JobState::parse(name).ok_or_else(|| jobhost::job::ParamsError::Name {
                    what: "status (use queued, scheduled, running, completed, failed or cancelled)",
                    name: name.clone(),
                })?,
            )
        }
    };
    let filter = ListFilter {
        state,
        class: args.class.clone(),
        priority: args.priority,
        limit: args.limit,
        offset: args.offset,
    };
    let jobs = client.store().list(&filter)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&jobs)?);
        return Ok(0);
    }
    println!(
        "{:>6}  {:<9}  {:<6}  {:>8}  {:<19}  {:<19}  JOB",
        "ID", "STATE", "PRIO", "ATTEMPTS", "CREATED", "FINISHED"
    );
    for job in &jobs {
        println!(
            "{:>6}  {:<9}  {:<6}  {:>8}  {:<19}  {:<19}  {}",
            job.id,
            job.state.as_str(),
            job.priority.as_str(),
            format!("{}/{}", job.attempts, job.max_attempts),
            when(Some(job.created_at)),
            when(job.finished_at),
            job.name()
                + if job.problem.is_some() {
                    "  (unreadable row: see jobhost show)"
                } else {
                    ""
                }
        );
    }
    Ok(0)
}

pub fn show(client: &mut Client, id: i64, json: bool) -> anyhow::Result<u8> {
    let (job, attempts) = client
        .job(id)?
        .ok_or(jobhost::store::StoreError::NotFound(id))?;
    if json {
        let value = serde_json::json!({ "job": job, "attempts": attempts });
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(0);
    }
    print_job(&job);
    for a in &attempts {
        let duration = match a.finished_at {
            Some(end) => format!("{:.3}s", (end - a.started_at) as f64 / 1000.0),
            None => "running".into(),
        };
        println!(
            "\nattempt {}: {} after {duration}, started {}, pid {}, plugin blake3 {}",
            a.attempt,
            a.outcome.as_deref().unwrap_or("running"),
            when(Some(a.started_at)),
            a.pid.map_or_else(|| "-".into(), |p| p.to_string()),
            a.plugin_hash
                .as_deref()
                .map_or("-", |h| &h[..h.len().min(16)]),
        );
        if let Some(error) = &a.error {
            println!("  error: {error}");
        }
        if let Some(path) = &a.output_path {
            let output = std::fs::read_to_string(path).unwrap_or_default();
            println!("  output ({}):", path.display());
            for line in output.lines() {
                println!("  | {line}");
            }
        }
    }
    Ok(0)
}

fn print_job(job: &JobRecord) {
    println!("job {}: {}", job.id, job.name());
    if let Some(problem) = &job.problem {
        println!("  PROBLEM:   its stored row cannot be read: {problem}");
    }
    println!("  state:     {}", job.state);
    println!("  priority:  {}", job.priority);
    println!("  attempts:  {} of {}", job.attempts, job.max_attempts);
    println!(
        "  params:    {}",
        serde_json::to_string_pretty(&job.params)
            .unwrap_or_default()
            .replace('\n', "\n             ")
    );
    println!("  created:   {}", when(Some(job.created_at)));
    println!("  run at:    {}", when(Some(job.run_at)));
    println!("  started:   {}", when(job.started_at));
    println!("  finished:  {}", when(job.finished_at));
    if let (Some(start), Some(end)) = (job.started_at, job.finished_at) {
        println!("  took:      {:.3}s", (end - start) as f64 / 1000.0);
    }
    println!(
        "  timeout:   {}s, retry delay {}s",
        job.timeout.as_secs_f64(),
        job.retry_delay.as_secs_f64()
    );
    println!("  plugin:    {}", job.plugin.display());
    if let Some(result) = &job.result {
        println!("  result:    {result}");
    }
    if let Some(error) = &job.last_error {
        println!("  error:     {error}");
    }
}

pub fn stats(client: &mut Client, json: bool) -> anyhow::Result<u8> {
    let stats = client.store().stats()?;
    if json {
        println!("{}", serde_json::to_string_pretty(&stats)?);
        return Ok(0);
    }
    for state in JobState::ALL {
        println!(
            "{:<10} {}",
            state.as_str(),
            stats.by_state.get(state.as_str()).copied().unwrap_or(0)
        );
    }
    // Rows in a state jobhost does not know (a hand edit): counted, not hidden.
    for (state, count) in &stats.by_state {
        if JobState::parse(state).is_none() {
            println!(
                "{:<10} {count}  (not a job state: see jobhost list)",
                format!("{state:?}")
            );
        }
    }
    Ok(0)
}
