//! Redrives: letters handed back to their topics as a resumable, rate-limited job.

use std::num::NonZeroU32;

use eddy_core::envelope::to_micros;
use eddy_core::Error;
use eddy_sql::classify;
use futures::StreamExt;
use governor::{Quota, RateLimiter};
use serde::Serialize;
use sqlx::Row;

use crate::store::{DeadLetter, DeadLetters, Filter};

/// What to redrive, and how.
#[derive(Debug, Clone)]
pub struct RedriveRequest {
    /// The letters: a selection of ids, a fingerprint, a filter (open letters only).
    pub filter: Filter,
    /// Letters per second at most (a token bucket with a burst of one second's worth).
    pub rate_per_sec: NonZeroU32,
    /// Keys redriven at once at most; one key's letters always go one after another,
    /// in the order they failed.
    pub concurrency: usize,
    /// Count what would be redriven (and what the loop guard would hold back) without
    /// changing anything.
    pub dry_run: bool,
    /// Continue this job from its checkpoint instead of starting one (its own filter,
    /// rate and concurrency apply; this request's are ignored).
    pub resume: Option<String>,
    /// Who asks (audited).
    pub actor: String,
}

/// Where a redrive job stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Running,
    Paused,
    Cancelled,
    Done,
}

impl JobState {
    fn as_str(self) -> &'static str {
        match self {
            JobState::Running => "running",
            JobState::Paused => "paused",
            JobState::Cancelled => "cancelled",
            JobState::Done => "done",
        }
    }

    fn parse(text: &str) -> Result<Self, Error> {
        Ok(match text {
            "running" => JobState::Running,
            "paused" => JobState::Paused,
            "cancelled" => JobState::Cancelled,
            "done" => JobState::Done,
            other => return Err(Error::permanent(format!("unknown redrive state {other:?}"))),
        })
    }
}

/// A redrive as it goes (after each step) and as it ended.
#[derive(Debug, Clone, Serialize)]
pub struct RedriveProgress {
    pub job: String,
    pub state: JobState,
    /// Open letters the selection held when the job started (or resumed).
    pub total: u64,
    /// Letters handed back so far (over the job's life).
    pub redriven: u64,
    /// Letters the loop guard held back, or resolved by someone else meanwhile.
    pub skipped: u64,
    /// The arrival order (`seq`) up to which every selected letter is dealt with.
    pub checkpoint_seq: i64,
}

/// How a redrive ended.
pub type RedriveReport = RedriveProgress;

/// A job's row.
struct Job {
    id: String,
    filter: Filter,
    state: JobState,
    checkpoint_seq: i64,
    /// The newest letter when the job started: letters that arrive later (one of its
    /// own, failed again) are not this job's.
    until_seq: i64,
    rate_per_sec: NonZeroU32,
    concurrency: usize,
    redriven: u64,
    skipped: u64,
}

/// Adds one to job `job`'s `column` (`redriven` or `skipped`) in `tx`.
async fn count(tx: &mut eddy_sql::Tx, job: &str, column: &str) -> Result<(), Error> {
    let sql =
        format!("UPDATE eddy_dead_letter_redrives SET {column} = {column} + 1 WHERE job_id = $1");
    sqlx::query(&sql)
        .bind(job)
        .execute(tx.conn())
        .await
        .map_err(|e| classify("cannot count a redrive", e))?;
    Ok(())
}

impl DeadLetters {
    /// Runs a redrive job to its end (or until it is paused or cancelled), calling
    /// `progress` after each step. See the crate documentation for its guarantees.
    pub async fn redrive(
        &self,
        request: RedriveRequest,
        progress: impl Fn(&RedriveProgress),
    ) -> Result<RedriveReport, Error> {
        if request.concurrency == 0 {
            return Err(Error::permanent("redrive concurrency must be at least 1"));
        }
        if request.dry_run {
            return self.dry_run(&request).await;
        }
        let mut job = match &request.resume {
            Some(id) => {
                let mut job = self.job(id).await?;
                if job.state == JobState::Done || job.state == JobState::Cancelled {
                    return Err(Error::permanent(format!(
                        "redrive {id} is {} and cannot resume",
                        job.state.as_str()
                    )));
                }
                self.set_state(id, JobState::Running).await?;
                job.state = JobState::Running;
                job
            }
            None => self.start_job(&request).await?,
        };
        // Only open letters are redriven, whatever the filter says.
        job.filter.status = Some("open".into());
        let total = job.redriven
            + job.skipped
            + self
                .count_between(&job.filter, job.checkpoint_seq, job.until_seq)
                .await?;
        let limiter = RateLimiter::direct(Quota::per_second(job.rate_per_sec));
        let concurrency = job.concurrency;
        let report = |job: &Job| RedriveProgress {
            job: job.id.clone(),
            state: job.state,
            total,
            redriven: job.redriven,
            skipped: job.skipped,
            checkpoint_seq: job.checkpoint_seq,
        };
        loop {
            // Paused or cancelled from elsewhere (another request, the CLI): seen here.
            job.state = self.job(&job.id).await?.state;
            if job.state != JobState::Running {
                break;
            }
            let page = self
                .list_between(
                    &job.filter,
                    job.checkpoint_seq,
                    job.until_seq,
                    self.config.page_len,
                )
                .await?;
            let Some(last) = page.last().map(|l| l.seq) else {
                job.state = JobState::Done;
                self.save(&job).await?;
                break;
            };
            // One key's letters in order, one after another; keys side by side.
            let mut keys: Vec<Vec<DeadLetter>> = Vec::new();
            for letter in page {
                match keys.iter_mut().find(|k| k[0].key == letter.key) {
                    Some(letters) => letters.push(letter),
                    None => keys.push(vec![letter]),
                }
            }
            let (limiter, actor, id) = (&limiter, request.actor.as_str(), job.id.as_str());
            let outcomes: Vec<Result<(), Error>> =
                futures::stream::iter(keys.into_iter().map(|letters| async move {
                    for letter in &letters {
                        limiter.until_ready().await;
                        self.redrive_one(id, letter, actor).await?;
                    }
                    Ok(())
                }))
                .buffer_unordered(concurrency)
                .collect()
                .await;
            for outcome in outcomes {
                outcome?;
            }
            job.checkpoint_seq = last;
            self.save(&job).await?;
            let counted = self.job(&job.id).await?;
            (job.redriven, job.skipped) = (counted.redriven, counted.skipped);
            progress(&report(&job));
        }
        let finished = report(&job);
        let mut tx = self.db.begin().await?;
        self.record(
            &mut tx,
            &request.actor,
            "redrive",
            &job.id,
            i64::try_from(job.redriven).unwrap_or(i64::MAX),
            &format!(
                "{}: {} redriven, {} skipped, checkpoint {}",
                job.state.as_str(),
                job.redriven,
                job.skipped,
                job.checkpoint_seq
            ),
        )
        .await?;
        tx.commit().await?;
        progress(&finished);
        Ok(finished)
    }

    /// Asks running job `id` to stop after its current step; `resume` continues it.
    pub async fn pause(&self, id: &str) -> Result<(), Error> {
        self.job(id).await?;
        self.set_state(id, JobState::Paused).await
    }

    /// Stops job `id` for good after its current step.
    pub async fn cancel(&self, id: &str) -> Result<(), Error> {
        self.job(id).await?;
        self.set_state(id, JobState::Cancelled).await
    }

    /// Where job `id` stands.
    pub async fn job_progress(&self, id: &str) -> Result<RedriveProgress, Error> {
        let job = self.job(id).await?;
        Ok(RedriveProgress {
            job: job.id,
            state: job.state,
            total: job.redriven + job.skipped,
            redriven: job.redriven,
            skipped: job.skipped,
            checkpoint_seq: job.checkpoint_seq,
        })
    }

    /// Hands `letter` back to its topic through the outbox, in the transaction that
    /// resolves it and counts it in job `job` — unless the loop guard holds it (counted
    /// as skipped) or it was resolved meanwhile (not this job's to count).
    async fn redrive_one(&self, job: &str, letter: &DeadLetter, actor: &str) -> Result<(), Error> {
        let mut tx = self.db.begin().await?;
        if letter.redrive_count >= i64::from(self.config.redrive_count_max) {
            tracing::warn!(letter = %letter.id, redrives = letter.redrive_count, "dead letter redriven too often already; left open (fix or edit it)");
            count(&mut tx, job, "skipped").await?;
            return tx.commit().await;
        }
        let event = crate::store::redriven(letter)?;
        if !self.resolve(&mut tx, letter, "redriven", actor).await? {
            return tx.rollback().await;
        }
        self.outbox
            .append(&mut tx, &letter.origin_topic, std::slice::from_ref(&event))
            .await?;
        count(&mut tx, job, "redriven").await?;
        tx.commit().await
    }

    async fn dry_run(&self, request: &RedriveRequest) -> Result<RedriveReport, Error> {
        let mut redriven = 0u64;
        let mut skipped = 0u64;
        let mut after = 0;
        loop {
            let page = self
                .list(&request.filter, after, self.config.page_len)
                .await?;
            let Some(last) = page.last().map(|l| l.seq) else {
                break;
            };
            for letter in &page {
                if letter.redrive_count >= i64::from(self.config.redrive_count_max) {
                    skipped += 1;
                } else {
                    redriven += 1;
                }
            }
            after = last;
        }
        let target = serde_json::to_string(&request.filter).unwrap_or_default();
        let mut tx = self.db.begin().await?;
        self.record(
            &mut tx,
            &request.actor,
            "redrive-dry-run",
            &target,
            i64::try_from(redriven).unwrap_or(i64::MAX),
            &format!("{redriven} would be redriven, {skipped} held by the loop guard"),
        )
        .await?;
        tx.commit().await?;
        Ok(RedriveProgress {
            job: String::new(),
            state: JobState::Done,
            total: redriven + skipped,
            redriven,
            skipped,
            checkpoint_seq: after,
        })
    }

    async fn start_job(&self, request: &RedriveRequest) -> Result<Job, Error> {
        let id = uuid::Uuid::now_v7().to_string();
        let now = to_micros(self.clock.now());
        let selection = serde_json::to_string(&request.filter)
            .map_err(|e| Error::permanent("cannot record the redrive's filter").with_source(e))?;
        let until_seq: i64 =
            sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) FROM eddy_dead_letters")
                .fetch_one(self.db.pool())
                .await
                .map_err(|e| classify("cannot start a redrive", e))?;
        sqlx::query(
            "INSERT INTO eddy_dead_letter_redrives (job_id, created_at_us, updated_at_us, actor, selection, rate_per_sec, concurrency, state, checkpoint_seq, until_seq, redriven, skipped) VALUES ($1, $2, $2, $3, $4, $5, $6, 'running', 0, $7, 0, 0)",
        )
        .bind(&id)
        .bind(now)
        .bind(&request.actor)
        .bind(selection)
        .bind(i64::from(request.rate_per_sec.get()))
        .bind(i64::try_from(request.concurrency).unwrap_or(i64::MAX))
        .bind(until_seq)
        .execute(self.db.pool())
        .await
        .map_err(|e| classify("cannot start a redrive", e))?;
        Ok(Job {
            id,
            filter: request.filter.clone(),
            state: JobState::Running,
            checkpoint_seq: 0,
            until_seq,
            rate_per_sec: request.rate_per_sec,
            concurrency: request.concurrency,
            redriven: 0,
            skipped: 0,
        })
    }

    async fn job(&self, id: &str) -> Result<Job, Error> {
        let row = sqlx::query(
            "SELECT job_id, selection, state, checkpoint_seq, until_seq, rate_per_sec, concurrency, redriven, skipped FROM eddy_dead_letter_redrives WHERE job_id = $1",
        )
        .bind(id)
        .fetch_optional(self.db.pool())
        .await
        .map_err(|e| classify("cannot read a redrive", e))?
        .ok_or_else(|| Error::permanent(format!("no redrive {id}")))?;
        let read = |e| classify("cannot read a redrive", e);
        let selection: String = row.try_get("selection").map_err(read)?;
        let count = |name: &str| -> Result<u64, Error> {
            let n: i64 = row.try_get(name).map_err(read)?;
            Ok(u64::try_from(n).unwrap_or(0))
        };
        Ok(Job {
            id: row.try_get("job_id").map_err(read)?,
            filter: serde_json::from_str(&selection).map_err(|e| {
                Error::permanent(format!("redrive {id}'s filter is unreadable")).with_source(e)
            })?,
            state: JobState::parse(&row.try_get::<String, _>("state").map_err(read)?)?,
            checkpoint_seq: row.try_get("checkpoint_seq").map_err(read)?,
            until_seq: row.try_get("until_seq").map_err(read)?,
            rate_per_sec: u32::try_from(count("rate_per_sec")?)
                .ok()
                .and_then(NonZeroU32::new)
                .unwrap_or(NonZeroU32::MIN),
            concurrency: usize::try_from(count("concurrency")?).unwrap_or(1).max(1),
            redriven: count("redriven")?,
            skipped: count("skipped")?,
        })
    }

    async fn save(&self, job: &Job) -> Result<(), Error> {
        // A pause or cancel that arrived during the step stays: only the checkpoint is
        // this run's to write (the counts move with each letter), and `done` ends any
        // state.
        let state = if job.state == JobState::Done {
            ", state = 'done'"
        } else {
            ""
        };
        let sql = format!(
            "UPDATE eddy_dead_letter_redrives SET checkpoint_seq = $1, updated_at_us = $2{state} WHERE job_id = $3"
        );
        sqlx::query(&sql)
            .bind(job.checkpoint_seq)
            .bind(to_micros(self.clock.now()))
            .bind(&job.id)
            .execute(self.db.pool())
            .await
            .map_err(|e| classify("cannot save a redrive's checkpoint", e))?;
        Ok(())
    }

    async fn set_state(&self, id: &str, state: JobState) -> Result<(), Error> {
        sqlx::query(
            "UPDATE eddy_dead_letter_redrives SET state = $1, updated_at_us = $2 WHERE job_id = $3 AND state <> 'done'",
        )
        .bind(state.as_str())
        .bind(to_micros(self.clock.now()))
        .bind(id)
        .execute(self.db.pool())
        .await
        .map_err(|e| classify("cannot change a redrive's state", e))?;
        Ok(())
    }
}
