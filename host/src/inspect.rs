//! `jobhost list`, `show` and `stats`: the queue for people (tables) and scripts (`--json`).

use jobhost::{
    store::{JobRecord, JobState, ListFilter, Millis},
    Client,
};

use crate::{
    cli::ListArgs,
    output::{Stdout, StdoutError},
};

/// A time for people, in the local time zone, as the logs write it.
fn when(millis: Option<Millis>) -> String {
    millis
        .and_then(jobhost::text::local_time)
        .unwrap_or_else(|| "-".into())
}

pub fn list(client: &mut Client, args: &ListArgs, out: &mut Stdout) -> anyhow::Result<u8> {
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
            job.name()
        )?;
    }
    Ok(0)
}

pub fn show(client: &mut Client, id: i64, json: bool, out: &mut Stdout) -> anyhow::Result<u8> {
    let (job, attempts) = client
        .job(id)?
        .ok_or(jobhost::store::StoreError::NotFound(id))?;
    if json {
        let value = serde_json::json!({ "job": job, "attempts": attempts });
        writeln!(out, "{}", serde_json::to_string_pretty(&value)?)?;
        return Ok(0);
    }
    print_job(&job, out)?;
    for a in &attempts {
        let duration = match a.finished_at {
            Some(end) => format!("{:.3}s", (end - a.started_at) as f64 / 1000.0),
            None => "running".into(),
        };
        writeln!(
            out,
            "\nattempt {}: {} after {duration}, started {}, pid {}, plugin blake3 {}",
            a.attempt,
            a.outcome.as_deref().unwrap_or("running"),
            when(Some(a.started_at)),
            a.pid.map_or_else(|| "-".into(), |p| p.to_string()),
            a.plugin_hash
                .as_deref()
                .map_or("-", |h| &h[..h.len().min(16)]),
        )?;
        if let Some(error) = &a.error {
            writeln!(out, "  error: {error}")?;
        }
        if let Some(path) = &a.output_path {
            let output = std::fs::read_to_string(path).unwrap_or_default();
            writeln!(out, "  output ({}):", path.display())?;
            for line in output.lines() {
                writeln!(out, "  | {line}")?;
            }
        }
    }
    Ok(0)
}

fn print_job(job: &JobRecord, out: &mut Stdout) -> Result<(), StdoutError> {
    writeln!(out, "job {}: {}", job.id, job.name())?;
    writeln!(out, "  state:     {}", job.state)?;
    writeln!(out, "  priority:  {}", job.priority)?;
    writeln!(out, "  attempts:  {} of {}", job.attempts, job.max_attempts)?;
    writeln!(
        out,
        "  params:    {}",
        serde_json::to_string_pretty(&job.params)
            .unwrap_or_default()
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
    writeln!(out, "  plugin:    {}", job.plugin.display())?;
    if let Some(result) = &job.result {
        writeln!(out, "  result:    {result}")?;
    }
    if let Some(error) = &job.last_error {
        writeln!(out, "  error:     {error}")?;
    }
    Ok(())
}

pub fn stats(client: &mut Client, json: bool, out: &mut Stdout) -> anyhow::Result<u8> {
    let stats = client.store().stats()?;
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&stats)?)?;
        return Ok(0);
    }
    for state in JobState::ALL {
        writeln!(
            out,
            "{:<10} {}",
            state.as_str(),
            stats.by_state.get(state.as_str()).copied().unwrap_or(0)
        )?;
    }
    Ok(0)
}
