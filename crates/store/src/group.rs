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

/// The same for a backend whose calls block (an embedded database): it runs on a thread of its own.
pub trait BlockingWriter: Send + 'static {
    fn write_now(&mut self, items: &[&WriteItem]) -> Result<Vec<IssuanceOutcome>>;
}

struct Job {
    items: Vec<WriteItem>,
    reply: oneshot::Sender<Result<Vec<IssuanceOutcome>>>,
}

enum Message {
    Job(Job),
    /// Stop: the committer drops its writer (and so its connection), then answers.
    Close(oneshot::Sender<()>),
}

/// Queues batches and commits whatever has queued while the previous commit ran, as one batch.
pub struct GroupCommit {
    queue: mpsc::Sender<Message>,
}

/// Items in one transaction at most: bounds the time a commit holds the write lock.
const MAX_ITEMS: usize = 512;
/// Batches waiting for the committer; a caller beyond this waits for room (backpressure, not loss).
const QUEUE: usize = 4096;

impl GroupCommit {
    /// Starts the committer task (on the current tokio runtime); it ends when the `GroupCommit` is dropped.
    pub fn start(writer: Arc<dyn BatchWriter>) -> GroupCommit {
        let (queue, mut rx) = mpsc::channel(QUEUE);
        tokio::spawn(async move {
            while let Some((jobs, close)) = next_batch(rx.recv().await, &mut rx) {
                commit(writer.as_ref(), jobs).await;
                if let Some(ack) = close {
                    drop(writer);
                    let _ = ack.send(());
                    return;
                }
            }
        });
        GroupCommit { queue }
    }

    /// Starts the committer on a thread of its own, which owns `writer`: a batch costs one hand-off to it and
    /// one back, however many statements it takes. The thread ends when the `GroupCommit` is dropped or closed.
    pub fn start_blocking(
        name: &str,
        mut writer: impl BlockingWriter,
    ) -> std::io::Result<GroupCommit> {
        let (queue, mut rx) = mpsc::channel(QUEUE);
        std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                while let Some((jobs, close)) = next_batch(rx.blocking_recv(), &mut rx) {
                    commit_blocking(&mut writer, jobs);
                    if let Some(ack) = close {
                        drop(writer);
                        let _ = ack.send(());
                        return;
                    }
                }
            })?;
        Ok(GroupCommit { queue })
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
        self.queue
            .send(Message::Job(job))
            .await
            .map_err(|_| closed())?;
        answer.await.map_err(|_| closed())?
    }

    /// Commits what is queued, then stops the committer and drops its writer; later writes fail.
    pub async fn close(&self) {
        let (ack, done) = oneshot::channel();
        if self.queue.send(Message::Close(ack)).await.is_ok() {
            let _ = done.await;
        }
    }
}

fn closed() -> StoreError {
    StoreError::Unavailable("the store is shutting down".into())
}

type Batch = (Vec<Job>, Option<oneshot::Sender<()>>);

/// The first message and whatever else is queued behind it, up to `MAX_ITEMS` items; none once the queue is
/// closed.
fn next_batch(first: Option<Message>, rx: &mut mpsc::Receiver<Message>) -> Option<Batch> {
    let mut jobs = Vec::new();
    let mut count = 0;
    let mut next = first?;
    loop {
        match next {
            Message::Job(job) => {
                count += job.items.len();
                jobs.push(job);
            }
            Message::Close(ack) => return Some((jobs, Some(ack))),
        }
        if count >= MAX_ITEMS {
            return Some((jobs, None));
        }
        match rx.try_recv() {
            Ok(message) => next = message,
            Err(_) => return Some((jobs, None)),
        }
    }
}

async fn commit(writer: &dyn BatchWriter, jobs: Vec<Job>) {
    let result = match jobs.as_slice() {
        [] => Ok(Vec::new()),
        [job] => writer.write_now(&job.items).await,
        _ => {
            let items: Vec<WriteItem> = jobs.iter().flat_map(|j| j.items.iter().cloned()).collect();
            writer.write_now(&items).await
        }
    };
    for job in answer(jobs, result) {
        let _ = job.reply.send(writer.write_now(&job.items).await);
    }
}

/// `commit` for a blocking writer, which takes the jobs' items by reference (no copies).
fn commit_blocking(writer: &mut impl BlockingWriter, jobs: Vec<Job>) {
    let items: Vec<&WriteItem> = jobs.iter().flat_map(|j| &j.items).collect();
    let result = if items.is_empty() {
        Ok(Vec::new())
    } else {
        writer.write_now(&items)
    };
    for job in answer(jobs, result) {
        let items: Vec<&WriteItem> = job.items.iter().collect();
        let _ = job.reply.send(writer.write_now(&items));
    }
}

/// Answers a batch's jobs from the result of writing all their items in one transaction. Returns the jobs to
/// be written again, each on its own: those of a batch that one job's items may have failed.
fn answer(jobs: Vec<Job>, result: Result<Vec<IssuanceOutcome>>) -> Vec<Job> {
    let count: usize = jobs.iter().map(|j| j.items.len()).sum();
    match result {
        Ok(outcomes) if outcomes.len() == count => {
            let mut outcomes = outcomes.into_iter();
            for job in jobs {
                let mine = outcomes.by_ref().take(job.items.len()).collect();
                let _ = job.reply.send(Ok(mine));
            }
            Vec::new()
        }
        Ok(_) => {
            let e = StoreError::Backend("a batch answered the wrong number of outcomes".into());
            for job in jobs {
                let _ = job.reply.send(Err(e.clone()));
            }
            Vec::new()
        }
        // A job alone gets its own answer; and when the database is away, every job would fail the same way:
        // do not hammer it job by job.
        Err(e) if jobs.len() == 1 || matches!(e, StoreError::Unavailable(_)) => {
            for job in jobs {
                let _ = job.reply.send(Err(e.clone()));
            }
            Vec::new()
        }
        // One job's items may have failed the batch (a duplicate serial, say): nothing was written, so each job
        // is retried on its own and only the culprit fails.
        Err(_) => jobs,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::AuditEvent;
    use std::sync::mpsc as std_mpsc;

    fn item(resource: &str) -> WriteItem {
        WriteItem::Audit(AuditEvent {
            resource: resource.into(),
            ..Default::default()
        })
    }

    fn resource(item: &WriteItem) -> &str {
        match item {
            WriteItem::Audit(e) => &e.resource,
            _ => "",
        }
    }

    /// Fails any write holding `bad` (Backend) or `away` (Unavailable); reports each write's items, and waits
    /// for a go before answering its first write, so that the jobs sent meanwhile queue up as one batch.
    struct Fake {
        writes: std_mpsc::Sender<Vec<String>>,
        go: Option<std_mpsc::Receiver<()>>,
    }

    impl BlockingWriter for Fake {
        fn write_now(&mut self, items: &[&WriteItem]) -> Result<Vec<IssuanceOutcome>> {
            if let Some(go) = self.go.take() {
                go.recv().unwrap();
            }
            let names: Vec<String> = items.iter().map(|i| resource(i).to_string()).collect();
            self.writes.send(names.clone()).unwrap();
            if names.iter().any(|n| n == "away") {
                return Err(StoreError::Unavailable("away".into()));
            }
            if names.iter().any(|n| n == "bad") {
                return Err(StoreError::Backend("bad".into()));
            }
            Ok(vec![IssuanceOutcome::Recorded; items.len()])
        }
    }

    async fn run_batch(names: &[&str]) -> (Vec<Result<Vec<IssuanceOutcome>>>, Vec<Vec<String>>) {
        let (writes, written) = std_mpsc::channel();
        let (go, wait) = std_mpsc::channel();
        let group = Arc::new(
            GroupCommit::start_blocking(
                "test-writer",
                Fake {
                    writes,
                    go: Some(wait),
                },
            )
            .unwrap(),
        );
        // The first job holds the writer until the others are queued.
        let first = tokio::spawn({
            let group = group.clone();
            async move { group.write(&[item("first")]).await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let mut others = Vec::new();
        for name in names {
            let group = group.clone();
            let name = name.to_string();
            others.push(tokio::spawn(
                async move { group.write(&[item(&name)]).await },
            ));
            tokio::task::yield_now().await;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        go.send(()).unwrap();
        let mut results = vec![first.await.unwrap()];
        for job in others {
            results.push(job.await.unwrap());
        }
        group.close().await;
        assert!(
            group.write(&[item("late")]).await.is_err(),
            "a closed committer takes no more writes"
        );
        (results, written.try_iter().collect())
    }

    #[tokio::test]
    async fn queued_jobs_commit_as_one_batch() {
        let (results, writes) = run_batch(&["a", "b", "c"]).await;
        assert!(results.iter().all(|r| r.as_ref().unwrap().len() == 1));
        assert_eq!(writes, vec![vec!["first"], vec!["a", "b", "c"]]);
    }

    #[tokio::test]
    async fn a_failing_job_fails_alone_after_its_batch() {
        let (results, writes) = run_batch(&["a", "bad", "c"]).await;
        assert!(results[1].is_ok() && results[3].is_ok(), "{results:?}");
        assert!(matches!(results[2], Err(StoreError::Backend(_))));
        assert_eq!(
            writes,
            vec![
                vec!["first"],
                vec!["a", "bad", "c"],
                vec!["a"],
                vec!["bad"],
                vec!["c"]
            ]
        );
    }

    #[tokio::test]
    async fn an_unavailable_database_fails_the_batch_without_retries() {
        let (results, writes) = run_batch(&["a", "away"]).await;
        assert!(matches!(results[1], Err(StoreError::Unavailable(_))));
        assert!(matches!(results[2], Err(StoreError::Unavailable(_))));
        assert_eq!(writes, vec![vec!["first"], vec!["a", "away"]]);
    }
}
