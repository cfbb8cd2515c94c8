//! Group commit: the writes of concurrent requests go to the database together, one transaction and one fsync
//! for the lot, instead of one each. Durability is unchanged: a caller's `write_batch` returns only after the
//! transaction holding its items has committed.

use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot};

use crate::{IssuanceOutcome, Result, StoreError, WriteItem};

/// What a backend does to write one batch now, in one transaction (the contract of `Store::write_batch`).
#[async_trait]
pub trait BatchWriter: Send + Sync + 'static {
    async fn write_now(&self, items: &[WriteItem]) -> Result<Vec<IssuanceOutcome>>;
}

struct Job {
    items: Vec<WriteItem>,
    reply: oneshot::Sender<Result<Vec<IssuanceOutcome>>>,
}

/// Queues batches and commits whatever has queued while the previous commit ran, as one batch.
pub struct GroupCommit {
    queue: mpsc::Sender<Job>,
}

/// Items in one transaction at most: bounds the time a commit holds the write lock.
const MAX_ITEMS: usize = 512;
/// Batches waiting for the committer; a caller beyond this waits for room (backpressure, not loss).
const QUEUE: usize = 4096;

impl GroupCommit {
    /// Starts the committer task (on the current tokio runtime); it ends when the `GroupCommit` is dropped.
    pub fn start(writer: Arc<dyn BatchWriter>) -> GroupCommit {
        let (queue, rx) = mpsc::channel(QUEUE);
        tokio::spawn(run(writer, rx));
        GroupCommit { queue }
    }

    /// Writes `items` as part of the next group; returns once they are committed (or failed).
    pub async fn write(&self, items: &[WriteItem]) -> Result<Vec<IssuanceOutcome>> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let (reply, answer) = oneshot::channel();
        let job = Job {
            items: items.to_vec(),
            reply,
        };
        let closed = || StoreError::Unavailable("the store is shutting down".into());
        self.queue.send(job).await.map_err(|_| closed())?;
        answer.await.map_err(|_| closed())?
    }
}

async fn run(writer: Arc<dyn BatchWriter>, mut rx: mpsc::Receiver<Job>) {
    while let Some(first) = rx.recv().await {
        let mut jobs = vec![first];
        let mut count = jobs[0].items.len();
        while count < MAX_ITEMS {
            match rx.try_recv() {
                Ok(job) => {
                    count += job.items.len();
                    jobs.push(job);
                }
                Err(_) => break,
            }
        }
        commit(writer.as_ref(), jobs).await;
    }
}

async fn commit(writer: &dyn BatchWriter, mut jobs: Vec<Job>) {
    if jobs.len() == 1 {
        let job = jobs.remove(0);
        let _ = job.reply.send(writer.write_now(&job.items).await);
        return;
    }
    let items: Vec<WriteItem> = jobs.iter().flat_map(|j| j.items.iter().cloned()).collect();
    match writer.write_now(&items).await {
        Ok(outcomes) if outcomes.len() == items.len() => {
            let mut outcomes = outcomes.into_iter();
            for job in jobs {
                let mine = outcomes.by_ref().take(job.items.len()).collect();
                let _ = job.reply.send(Ok(mine));
            }
        }
        Ok(_) => {
            let e = StoreError::Backend("a batch answered the wrong number of outcomes".into());
            for job in jobs {
                let _ = job.reply.send(Err(e.clone()));
            }
        }
        // The database is away: every job would fail the same way; do not hammer it job by job.
        Err(e @ StoreError::Unavailable(_)) => {
            for job in jobs {
                let _ = job.reply.send(Err(e.clone()));
            }
        }
        // One job's items may have failed the batch (a duplicate serial, say): nothing was written, so each job
        // is retried on its own and only the culprit fails.
        Err(_) => {
            for job in jobs {
                let _ = job.reply.send(writer.write_now(&job.items).await);
            }
        }
    }
}
