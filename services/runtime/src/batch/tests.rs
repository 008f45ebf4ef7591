use std::sync::Mutex as StdMutex;

use super::*;

#[derive(Debug, thiserror::Error)]
enum TestError {
    #[error("job {0} is poison")]
    Poison(u32),
    #[error("the database is down")]
    Down,
}

/// Doubles numbers; a batch containing a poison number fails as a whole
/// (as a transaction would); `down` fails every batch.
#[derive(Default)]
struct Doubler {
    batches: StdMutex<Vec<Vec<u32>>>,
    poison: Option<u32>,
    panics_on: Option<u32>,
    down: bool,
    delay: Duration,
}

impl BatchWork for Doubler {
    type Job = u32;
    type Output = u32;
    type Error = TestError;

    async fn run(&self, jobs: &[u32]) -> Result<Vec<u32>, TestError> {
        self.batches.lock().unwrap().push(jobs.to_vec());
        tokio::time::sleep(self.delay).await;
        if self.down {
            return Err(TestError::Down);
        }
        if let Some(job) = self.panics_on.filter(|job| jobs.contains(job)) {
            panic!("job {job} panics");
        }
        if let Some(poison) = self.poison.filter(|poison| jobs.contains(poison)) {
            return Err(TestError::Poison(poison));
        }
        Ok(jobs.iter().map(|job| job * 2).collect())
    }

    fn retry_alone(error: &TestError) -> bool {
        matches!(error, TestError::Poison(_))
    }
}

fn batcher(work: &Arc<Doubler>, settings: BatchSettings) -> Arc<Batcher<Doubler>> {
    Arc::new(Batcher::new(
        "test",
        work.clone(),
        settings,
        &BatchMetrics::default(),
    ))
}

async fn submit_all(
    batcher: &Arc<Batcher<Doubler>>,
    jobs: u32,
) -> Vec<Result<u32, BatchError<TestError>>> {
    let calls: Vec<_> = (1..=jobs)
        .map(|job| {
            let batcher = batcher.clone();
            tokio::spawn(async move { batcher.submit(job).await })
        })
        .collect();
    let mut results = Vec::new();
    for call in calls {
        results.push(call.await.unwrap());
    }
    results
}

#[tokio::test]
async fn concurrent_jobs_share_batches_and_each_gets_its_own_output() {
    let work = Arc::new(Doubler {
        delay: Duration::from_millis(20),
        ..Doubler::default()
    });
    let batcher = batcher(&work, BatchSettings::default());
    let results = submit_all(&batcher, 200).await;
    for (job, result) in (1..=200).zip(results) {
        assert_eq!(result.unwrap(), job * 2);
    }
    let batches = work.batches.lock().unwrap();
    assert_eq!(
        batches.iter().map(Vec::len).sum::<usize>(),
        200,
        "every job ran once"
    );
    assert!(
        batches.len() < 200,
        "jobs queued while a batch ran went together: {} batches",
        batches.len()
    );
}

#[tokio::test]
async fn a_job_alone_is_run_at_once() {
    let work = Arc::new(Doubler::default());
    let batcher = batcher(
        &work,
        BatchSettings {
            window: Duration::from_secs(3600),
            ..BatchSettings::default()
        },
    );
    let answered = tokio::time::timeout(Duration::from_secs(10), batcher.submit(21)).await;
    assert_eq!(
        answered
            .expect("no writer was busy: no window wait")
            .unwrap(),
        42
    );
}

#[tokio::test]
async fn a_poison_job_fails_alone() {
    let work = Arc::new(Doubler {
        poison: Some(7),
        delay: Duration::from_millis(20),
        ..Doubler::default()
    });
    let batcher = batcher(&work, BatchSettings::default());
    let results = submit_all(&batcher, 50).await;
    for (job, result) in (1..=50).zip(results) {
        match result {
            Ok(output) => assert_eq!(output, job * 2),
            Err(BatchError::Failed(error)) => {
                assert_eq!(job, 7, "only the poison job fails: {error}");
                assert!(matches!(*error, TestError::Poison(7)));
            }
            Err(other) => panic!("job {job}: {other}"),
        }
    }
    let batches = work.batches.lock().unwrap();
    assert!(
        batches
            .iter()
            .any(|batch| batch.len() > 1 && batch.contains(&7)),
        "the poison job was batched with others first: {batches:?}"
    );
}

#[tokio::test]
async fn a_shared_failure_reaches_every_job_without_a_retry_alone() {
    let work = Arc::new(Doubler {
        down: true,
        delay: Duration::from_millis(10),
        ..Doubler::default()
    });
    let batcher = batcher(&work, BatchSettings::default());
    let results = submit_all(&batcher, 40).await;
    assert!(results.iter().all(|result| matches!(result, Err(BatchError::Failed(error)) if matches!(**error, TestError::Down))));
    let runs: usize = work.batches.lock().unwrap().iter().map(Vec::len).sum();
    assert_eq!(runs, 40, "each job was tried once, not again alone");
    let error = HandleError::from(BatchError::<sqlx::Error>::Failed(Arc::new(
        sqlx::Error::PoolTimedOut,
    )));
    assert!(
        matches!(error, HandleError::Retryable(_)),
        "an unreachable database is retried"
    );
}

#[tokio::test]
async fn a_batch_that_does_not_finish_is_abandoned() {
    let work = Arc::new(Doubler {
        delay: Duration::from_secs(3600),
        ..Doubler::default()
    });
    let batcher = batcher(
        &work,
        BatchSettings {
            timeout: Duration::from_millis(50),
            ..BatchSettings::default()
        },
    );
    let result = tokio::time::timeout(Duration::from_secs(10), batcher.submit(1))
        .await
        .expect("the batch timeout answers");
    assert!(
        matches!(result, Err(BatchError::TimedOut { .. })),
        "{result:?}"
    );
}

#[tokio::test]
async fn a_job_whose_caller_left_before_it_was_taken_is_not_run() {
    let work = Arc::new(Doubler {
        delay: Duration::from_millis(200),
        ..Doubler::default()
    });
    let batcher = batcher(
        &work,
        BatchSettings {
            writers: 1,
            ..BatchSettings::default()
        },
    );
    // The only writer is busy with job 1; job 2's caller gives up meanwhile.
    let first = {
        let batcher = batcher.clone();
        tokio::spawn(async move { batcher.submit(1).await })
    };
    while work.batches.lock().unwrap().is_empty() {
        tokio::task::yield_now().await;
    }
    let abandoned = tokio::time::timeout(Duration::from_millis(10), batcher.submit(2)).await;
    assert!(abandoned.is_err(), "job 2 was still waiting");
    assert_eq!(first.await.unwrap().unwrap(), 2);
    assert_eq!(batcher.submit(3).await.unwrap(), 6);
    let ran: Vec<u32> = work
        .batches
        .lock()
        .unwrap()
        .iter()
        .flatten()
        .copied()
        .collect();
    assert_eq!(ran, vec![1, 3], "job 2 was never run");
}

#[tokio::test]
async fn a_panicking_job_fails_alone_and_the_writers_live_on() {
    let work = Arc::new(Doubler {
        panics_on: Some(3),
        delay: Duration::from_millis(20),
        ..Doubler::default()
    });
    let batcher = batcher(&work, BatchSettings::default());
    for _ in 0..3 {
        let results = submit_all(&batcher, 30).await;
        for (job, result) in (1..=30).zip(results) {
            match result {
                Ok(output) => assert_eq!(output, job * 2),
                Err(BatchError::Panicked { message, .. }) => {
                    assert_eq!(job, 3, "only the panicking job fails: {message}");
                    let error = HandleError::from(BatchError::<sqlx::Error>::Panicked {
                        batch: "test",
                        message,
                    });
                    assert!(
                        matches!(error, HandleError::Fatal(_)),
                        "a lone panic is poison"
                    );
                }
                Err(other) => panic!("job {job}: {other}"),
            }
        }
    }
    assert_eq!(
        batcher.submit(21).await.unwrap(),
        42,
        "the writers still run"
    );
}
