//! `eda::resilience`: retry, time-out, circuit breaker, bulkhead and their
//! composition, on tokio's paused clock (pauses and time-outs happen at once and
//! exactly), with the operation's calls counted by atomics.

#![allow(missing_docs)]

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use eda::resilience::{
    BreakerState, Bulkhead, CircuitBreaker, Jitter, Resilience, ResilienceError, Retry, Timeout,
};
use proptest::prelude::*;
use tokio::sync::oneshot;
use tokio::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
enum Fault {
    /// The dependency is unhealthy: worth a retry, a breaker failure.
    #[error("dependency down")]
    Down,
    /// The dependency answered no: neither.
    #[error("request refused")]
    Refused,
}

const MS: Duration = Duration::from_millis(1);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Calls of an operation, counted.
#[derive(Clone, Default)]
struct Calls(Arc<AtomicUsize>);

impl Calls {
    fn get(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }

    /// An operation that counts its call and returns `result`.
    fn returning<T>(
        &self,
        result: Result<T, Fault>,
    ) -> impl FnMut() -> Pin<Box<dyn Future<Output = Result<T, Fault>> + Send>>
    where
        T: Clone + Send + 'static,
    {
        let calls = self.0.clone();
        move || {
            let calls = calls.clone();
            let result = result.clone();
            Box::pin(async move {
                calls.fetch_add(1, Ordering::SeqCst);
                result
            })
        }
    }
}

/// `n` calls through `breaker` that fail with [`Fault::Down`].
async fn fail_n(
    breaker: &CircuitBreaker<Fault>,
    calls: &Calls,
    n: usize,
) -> Vec<ResilienceError<Fault>> {
    let mut errors = Vec::new();
    for _ in 0..n {
        match breaker.call(calls.returning::<()>(Err(Fault::Down))).await {
            Ok(_) => panic!("a failing call succeeded"),
            Err(e) => errors.push(e),
        }
    }
    errors
}

/// Lets spawned tasks run until `done` holds (at most 100 turns, so a bug fails
/// the assertion after it instead of hanging).
async fn run_others_until(done: impl Fn() -> bool) {
    for _ in 0..100 {
        if done() {
            return;
        }
        tokio::task::yield_now().await;
    }
}

// ---- circuit breaker ----------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn breaker_opens_after_exactly_the_threshold_of_consecutive_failures() {
    let breaker = CircuitBreaker::new("payments").failure_threshold(3);
    let calls = Calls::default();

    // A success in between resets the count: failures must be consecutive.
    fail_n(&breaker, &calls, 2).await;
    breaker.call(calls.returning(Ok(()))).await.unwrap();
    fail_n(&breaker, &calls, 2).await;
    assert_eq!(
        breaker.state(),
        BreakerState::Closed,
        "2 consecutive failures"
    );

    let errors = fail_n(&breaker, &calls, 1).await;
    assert!(matches!(errors[0], ResilienceError::Inner(Fault::Down)));
    assert_eq!(
        breaker.state(),
        BreakerState::Open,
        "3 consecutive failures"
    );
    assert_eq!(calls.get(), 6);
}

#[tokio::test(start_paused = true)]
async fn open_breaker_rejects_without_calling_the_operation() {
    let breaker = CircuitBreaker::new("payments")
        .failure_threshold(3)
        .break_duration(Duration::from_secs(30));
    let calls = Calls::default();

    // Control: while closed, every call reaches the operation.
    fail_n(&breaker, &calls, 3).await;
    assert_eq!(calls.get(), 3);
    assert_eq!(breaker.state(), BreakerState::Open);

    for _ in 0..5 {
        let err = breaker.call(calls.returning(Ok(()))).await.unwrap_err();
        match err {
            ResilienceError::Open { name, retry_in } => {
                assert_eq!(&*name, "payments");
                assert_eq!(retry_in, Duration::from_secs(30));
            }
            other => panic!("expected Open, got {other:?}"),
        }
    }
    assert_eq!(calls.get(), 3, "an open breaker called the operation");

    // The error counts down to the next probe.
    tokio::time::advance(Duration::from_secs(10)).await;
    let err = breaker.call(calls.returning(Ok(()))).await.unwrap_err();
    assert!(
        matches!(err, ResilienceError::Open { retry_in, .. } if retry_in == Duration::from_secs(20)),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "circuit breaker `payments` is open: next probe in 20s"
    );
    assert_eq!(calls.get(), 3);
}

#[tokio::test(start_paused = true)]
async fn after_the_break_one_probe_runs_and_its_success_closes_the_breaker() {
    let breaker = CircuitBreaker::new("payments")
        .failure_threshold(2)
        .break_duration(Duration::from_secs(5));
    let calls = Calls::default();
    fail_n(&breaker, &calls, 2).await;
    assert_eq!(breaker.state(), BreakerState::Open);

    tokio::time::advance(Duration::from_secs(5)).await;
    assert_eq!(breaker.state(), BreakerState::HalfOpen);

    // The probe waits for a signal, so that a second call is made while it runs.
    let (release, released) = oneshot::channel::<()>();
    let probe = tokio::spawn({
        let breaker = breaker.clone();
        let calls = calls.clone();
        async move {
            breaker
                .call(|| async move {
                    calls.0.fetch_add(1, Ordering::SeqCst);
                    released.await.map_err(|_| Fault::Down)
                })
                .await
        }
    });
    run_others_until(|| calls.get() == 3).await;
    assert_eq!(calls.get(), 3, "the probe did not run");
    assert_eq!(breaker.state(), BreakerState::HalfOpen);

    let second = breaker.call(calls.returning(Ok(()))).await;
    assert!(
        matches!(second, Err(ResilienceError::Open { retry_in, .. }) if retry_in.is_zero()),
        "a second call went through while the probe ran: {second:?}"
    );
    assert_eq!(calls.get(), 3, "exactly one probe runs");

    release.send(()).unwrap();
    probe.await.unwrap().unwrap();
    assert_eq!(breaker.state(), BreakerState::Closed);

    breaker.call(calls.returning(Ok(()))).await.unwrap();
    assert_eq!(calls.get(), 4, "a closed breaker lets calls through");
}

#[tokio::test(start_paused = true)]
async fn a_failed_probe_opens_the_breaker_for_another_full_break() {
    let breaker = CircuitBreaker::new("payments")
        .failure_threshold(2)
        .break_duration(Duration::from_secs(5));
    let calls = Calls::default();
    fail_n(&breaker, &calls, 2).await;

    tokio::time::advance(Duration::from_secs(5)).await;
    let probe = breaker.call(calls.returning::<()>(Err(Fault::Down))).await;
    assert!(matches!(probe, Err(ResilienceError::Inner(Fault::Down))));
    assert_eq!(calls.get(), 3);
    assert_eq!(breaker.state(), BreakerState::Open);

    let err = breaker.call(calls.returning(Ok(()))).await.unwrap_err();
    assert!(
        matches!(err, ResilienceError::Open { retry_in, .. } if retry_in == Duration::from_secs(5)),
        "{err:?}"
    );
    tokio::time::advance(Duration::from_secs(5) - MS).await;
    assert_eq!(breaker.state(), BreakerState::Open);
    assert!(breaker.call(calls.returning(Ok(()))).await.is_err());
    assert_eq!(calls.get(), 3);

    tokio::time::advance(MS).await;
    breaker.call(calls.returning(Ok(()))).await.unwrap();
    assert_eq!(calls.get(), 4);
    assert_eq!(breaker.state(), BreakerState::Closed);
}

#[tokio::test(start_paused = true)]
async fn errors_not_counted_as_failures_do_not_open_the_breaker() {
    let breaker = CircuitBreaker::new("payments")
        .failure_threshold(3)
        .failure_if(|e: &Fault| *e == Fault::Down);
    let calls = Calls::default();

    for _ in 0..10 {
        let err = breaker
            .call(calls.returning::<()>(Err(Fault::Refused)))
            .await
            .unwrap_err();
        assert!(matches!(err, ResilienceError::Inner(Fault::Refused)));
    }
    assert_eq!(breaker.state(), BreakerState::Closed);
    assert_eq!(calls.get(), 10);

    // Control: the errors the predicate counts do open it.
    fail_n(&breaker, &calls, 3).await;
    assert_eq!(breaker.state(), BreakerState::Open);
}

#[tokio::test(start_paused = true)]
async fn a_probe_dropped_before_it_ends_lets_the_next_call_probe() {
    let breaker = CircuitBreaker::new("payments")
        .failure_threshold(1)
        .break_duration(Duration::from_secs(5));
    let calls = Calls::default();
    fail_n(&breaker, &calls, 1).await;
    tokio::time::advance(Duration::from_secs(5)).await;

    // The probe's caller gives up after 1 s; the probe never ends by itself.
    let dropped = tokio::time::timeout(
        Duration::from_secs(1),
        breaker.call(std::future::pending::<Result<(), Fault>>),
    )
    .await;
    assert!(dropped.is_err());
    assert_eq!(breaker.state(), BreakerState::HalfOpen);

    breaker.call(calls.returning(Ok(()))).await.unwrap();
    assert_eq!(calls.get(), 2);
    assert_eq!(breaker.state(), BreakerState::Closed);
}

#[tokio::test(start_paused = true)]
async fn breaker_clones_share_their_state_across_tasks() {
    let breaker = CircuitBreaker::new("payments").failure_threshold(4);
    let calls = Calls::default();
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let breaker = breaker.clone();
            let calls = calls.clone();
            tokio::spawn(async move { fail_n(&breaker, &calls, 1).await })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(breaker.state(), BreakerState::Open);
}

// ---- retry ----------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn retry_stops_after_max_attempts_with_the_last_error() {
    let retry = Retry::new().max_attempts(4);
    let calls = Calls::default();
    let err = retry
        .call(calls.returning::<()>(Err(Fault::Down)))
        .await
        .unwrap_err();
    assert_eq!(calls.get(), 4);
    match &err {
        ResilienceError::Exhausted { attempts, last } => {
            assert_eq!(*attempts, 4);
            assert!(matches!(**last, ResilienceError::Inner(Fault::Down)));
        }
        other => panic!("expected Exhausted, got {other:?}"),
    }
    assert_eq!(err.inner(), Some(&Fault::Down));
}

#[tokio::test(start_paused = true)]
async fn retry_pauses_grow_exponentially_up_to_the_max_delay() {
    let retry = Retry::new()
        .initial_delay(ms(100))
        .factor(2.0)
        .max_delay(ms(1000))
        .max_attempts(7)
        .jitter(Jitter::None);
    let starts = Arc::new(std::sync::Mutex::new(Vec::new()));
    let _ = retry
        .call(|| {
            starts.lock().unwrap().push(Instant::now());
            async { Err::<(), _>(Fault::Down) }
        })
        .await;
    let starts = starts.lock().unwrap();
    let pauses: Vec<Duration> = starts.windows(2).map(|w| w[1] - w[0]).collect();
    let expected = [100, 200, 400, 800, 1000, 1000].map(ms);
    assert_eq!(pauses.len(), expected.len());
    for (pause, expected) in pauses.iter().zip(expected) {
        // tokio's timer has millisecond ticks; backon's factor is an f32.
        assert!(
            *pause >= expected - MS && *pause <= expected + MS,
            "pauses {pauses:?}, expected {expected:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn retry_pauses_with_jitter_stay_between_zero_and_the_max_delay() {
    for jitter in [Jitter::Full, Jitter::Half] {
        let retry = Retry::<Fault>::new()
            .initial_delay(ms(100))
            .max_delay(ms(500))
            .max_attempts(10)
            .jitter(jitter);
        let mut drawn = Vec::new();
        for _ in 0..200 {
            drawn.extend(retry.delays());
        }
        assert!(drawn.iter().all(|d| *d <= ms(500)), "{jitter:?}: {drawn:?}");
        // Random, not constant: the draws differ.
        let first = drawn[0];
        assert!(drawn.iter().any(|d| *d != first), "{jitter:?}");
        if jitter == Jitter::Half {
            // The first ceiling is 100 ms, so a half-jittered first pause is ≥ 50 ms.
            let firsts = drawn.iter().step_by(9);
            assert!(firsts.clone().all(|d| *d >= ms(50)), "{drawn:?}");
        }

        // The pauses really made are within the same bounds.
        let start = Instant::now();
        let calls = Calls::default();
        let _ = retry.call(calls.returning::<()>(Err(Fault::Down))).await;
        assert_eq!(calls.get(), 10);
        assert!(start.elapsed() <= 9 * (ms(500) + MS));
    }
}

#[tokio::test(start_paused = true)]
async fn non_retryable_errors_are_returned_at_once() {
    let retry = Retry::new()
        .max_attempts(5)
        .retry_if(|e: &Fault| *e == Fault::Down);
    let calls = Calls::default();
    let start = Instant::now();
    let err = retry
        .call(calls.returning::<()>(Err(Fault::Refused)))
        .await
        .unwrap_err();
    assert!(
        matches!(err, ResilienceError::Inner(Fault::Refused)),
        "{err:?}"
    );
    assert_eq!(calls.get(), 1);
    assert_eq!(start.elapsed(), Duration::ZERO);

    // Control: the retryable error is retried.
    let calls = Calls::default();
    let _ = retry.call(calls.returning::<()>(Err(Fault::Down))).await;
    assert_eq!(calls.get(), 5);
}

#[tokio::test(start_paused = true)]
async fn success_after_k_failures_returns_the_value_after_k_plus_one_calls() {
    for k in 0..5 {
        let retry = Retry::new().max_attempts(5);
        let calls = Calls::default();
        let value = retry
            .call(|| {
                let n = calls.0.fetch_add(1, Ordering::SeqCst);
                async move {
                    if n < k {
                        Err(Fault::Down)
                    } else {
                        Ok(n)
                    }
                }
            })
            .await
            .unwrap();
        assert_eq!(value, k);
        assert_eq!(calls.get(), k + 1);
    }
}

#[tokio::test(start_paused = true)]
async fn max_elapsed_stops_the_retries_before_a_pause_that_would_end_too_late() {
    let retry = Retry::new()
        .initial_delay(Duration::from_secs(1))
        .factor(1.0)
        .max_attempts(100)
        .max_elapsed(Some(Duration::from_millis(3500)))
        .jitter(Jitter::None);
    let calls = Calls::default();
    let start = Instant::now();
    let err = retry
        .call(calls.returning::<()>(Err(Fault::Down)))
        .await
        .unwrap_err();
    // Attempts at 0, 1, 2 and 3 s; a fifth would start at 4 s.
    assert_eq!(calls.get(), 4);
    assert!(
        matches!(err, ResilienceError::Exhausted { attempts: 4, .. }),
        "{err:?}"
    );
    assert_eq!(start.elapsed(), Duration::from_secs(3));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn every_pause_is_at_most_the_max_delay_and_attempts_are_bounded(
        initial_ms in 0u64..20_000,
        factor in 1.0f32..10.0,
        max_ms in 0u64..60_000,
        attempts in 1u32..30,
        jitter in prop_oneof![Just(Jitter::None), Just(Jitter::Full), Just(Jitter::Half)],
    ) {
        let max_delay = ms(max_ms);
        let retry = Retry::<Fault>::new()
            .initial_delay(ms(initial_ms))
            .factor(factor)
            .max_delay(max_delay)
            .max_attempts(attempts)
            .jitter(jitter);

        let delays: Vec<Duration> = retry.delays().collect();
        prop_assert_eq!(delays.len(), attempts as usize - 1);
        prop_assert!(delays.iter().all(|d| *d <= max_delay), "{:?}", delays);
        if jitter == Jitter::None {
            prop_assert!(delays.windows(2).all(|w| w[0] <= w[1]), "{:?}", delays);
        }

        // The loop calls at most `attempts` times and pauses no longer than that.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        let calls = Calls::default();
        let elapsed = runtime.block_on(async {
            let start = Instant::now();
            let _ = retry.call(calls.returning::<()>(Err(Fault::Down))).await;
            start.elapsed()
        });
        prop_assert_eq!(calls.get(), attempts as usize);
        prop_assert!(elapsed <= (max_delay + MS) * (attempts - 1), "{:?}", elapsed);
    }
}

// ---- time-out -------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_slow_call_times_out_at_the_configured_duration() {
    let timeout = Timeout::new(Duration::from_secs(2));
    let finished = Calls::default();
    let start = Instant::now();
    let result = timeout
        .call(|| async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            finished.0.fetch_add(1, Ordering::SeqCst);
            Ok::<_, Fault>(())
        })
        .await;
    match result {
        Err(ResilienceError::TimedOut { after }) => assert_eq!(after, Duration::from_secs(2)),
        other => panic!("expected TimedOut, got {other:?}"),
    }
    assert_eq!(start.elapsed(), Duration::from_secs(2));
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(finished.get(), 0, "the timed-out call was not dropped");
}

#[tokio::test(start_paused = true)]
async fn a_fast_call_passes_the_timeout() {
    let timeout = Timeout::new(Duration::from_secs(2));
    let result = timeout
        .call(|| async {
            tokio::time::sleep(Duration::from_millis(1999)).await;
            Ok::<_, Fault>(7)
        })
        .await;
    assert_eq!(result.unwrap(), 7);

    let failed = timeout
        .call(|| async { Err::<(), _>(Fault::Refused) })
        .await;
    assert!(matches!(
        failed,
        Err(ResilienceError::Inner(Fault::Refused))
    ));
}

// ---- bulkhead -------------------------------------------------------------------

/// Calls in progress now and at most.
#[derive(Clone, Default)]
struct Concurrency {
    now: Arc<AtomicUsize>,
    max: Arc<AtomicUsize>,
}

impl Concurrency {
    async fn hold(&self, duration: Duration) -> Result<(), Fault> {
        let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.max.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(duration).await;
        self.now.fetch_sub(1, Ordering::SeqCst);
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn bulkhead_concurrency_never_exceeds_its_limit() {
    let bulkhead = Bulkhead::new("search")
        .max_concurrent(3)
        .max_wait(Duration::from_secs(3600));
    let concurrency = Concurrency::default();
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let bulkhead = bulkhead.clone();
            let concurrency = concurrency.clone();
            tokio::spawn(async move { bulkhead.call(|| concurrency.hold(ms(10))).await })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    // Equal, not only at most: the calls did overlap up to the limit.
    assert_eq!(concurrency.max.load(Ordering::SeqCst), 3);
    assert_eq!(bulkhead.available(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_full_bulkhead_rejects_without_calling() {
    let bulkhead = Bulkhead::new("search").max_concurrent(2);
    let concurrency = Concurrency::default();
    let holders: Vec<_> = (0..2)
        .map(|_| {
            let bulkhead = bulkhead.clone();
            let concurrency = concurrency.clone();
            tokio::spawn(async move { bulkhead.call(|| concurrency.hold(ms(100))).await })
        })
        .collect();
    run_others_until(|| concurrency.now.load(Ordering::SeqCst) == 2).await;
    assert_eq!(bulkhead.available(), 0);

    let calls = Calls::default();
    let err = bulkhead.call(calls.returning(Ok(()))).await.unwrap_err();
    match &err {
        ResilienceError::Full {
            name,
            max_concurrent,
        } => {
            assert_eq!(&**name, "search");
            assert_eq!(*max_concurrent, 2);
        }
        other => panic!("expected Full, got {other:?}"),
    }
    assert!(err.is_rejected());
    assert_eq!(
        err.to_string(),
        "bulkhead `search` is full: 2 calls in progress"
    );
    assert_eq!(calls.get(), 0);

    for holder in holders {
        holder.await.unwrap().unwrap();
    }
    // Control: with a free slot the same call runs.
    bulkhead.call(calls.returning(Ok(()))).await.unwrap();
    assert_eq!(calls.get(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_bulkhead_call_waits_up_to_max_wait_for_a_slot() {
    let bulkhead = Bulkhead::new("search")
        .max_concurrent(1)
        .max_wait(Duration::from_secs(1));
    let concurrency = Concurrency::default();
    let calls = Calls::default();

    // The slot frees after 500 ms: the waiting call runs then.
    let holder = tokio::spawn({
        let (bulkhead, concurrency) = (bulkhead.clone(), concurrency.clone());
        async move { bulkhead.call(|| concurrency.hold(ms(500))).await }
    });
    run_others_until(|| concurrency.now.load(Ordering::SeqCst) == 1).await;
    let start = Instant::now();
    bulkhead.call(calls.returning(Ok(()))).await.unwrap();
    assert_eq!(start.elapsed(), ms(500));
    assert_eq!(calls.get(), 1);
    holder.await.unwrap().unwrap();

    // The slot frees only after 2 s: the waiting call gives up after 1 s.
    let holder = tokio::spawn({
        let (bulkhead, concurrency) = (bulkhead.clone(), concurrency.clone());
        async move {
            bulkhead
                .call(|| concurrency.hold(Duration::from_secs(2)))
                .await
        }
    });
    run_others_until(|| concurrency.now.load(Ordering::SeqCst) == 1).await;
    let start = Instant::now();
    let err = bulkhead.call(calls.returning(Ok(()))).await.unwrap_err();
    assert!(matches!(err, ResilienceError::Full { .. }), "{err:?}");
    assert_eq!(start.elapsed(), Duration::from_secs(1));
    assert_eq!(calls.get(), 1);
    holder.await.unwrap().unwrap();
}

// ---- composition ----------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn retry_stops_calling_once_the_breaker_opens() {
    let retry = Retry::new().max_attempts(10).jitter(Jitter::None);
    let breaker = CircuitBreaker::new("payments")
        .failure_threshold(3)
        .break_duration(Duration::from_secs(30));
    let policy = Resilience::new()
        .retry(retry.clone())
        .circuit_breaker(breaker.clone());

    let calls = Calls::default();
    let err = policy
        .call(calls.returning::<()>(Err(Fault::Down)))
        .await
        .unwrap_err();
    assert_eq!(calls.get(), 3, "calls after the breaker opened");
    // The fourth attempt, after the third pause (400 ms), is rejected and ends
    // the call: the retry neither sleeps through the break nor spins.
    assert!(
        matches!(err, ResilienceError::Open { retry_in, .. }
            if retry_in < Duration::from_secs(30) && retry_in >= ms(29_590)),
        "{err:?}"
    );
    assert_eq!(breaker.state(), BreakerState::Open);

    // Later calls are rejected at once, without a pause or a call.
    let start = Instant::now();
    let err = policy.call(calls.returning(Ok(()))).await.unwrap_err();
    assert!(err.is_rejected());
    assert_eq!(calls.get(), 3);
    assert_eq!(start.elapsed(), Duration::ZERO);

    // Control: the same retry without the breaker makes all its attempts.
    let calls = Calls::default();
    let _ = Resilience::new()
        .retry(retry)
        .call(calls.returning::<()>(Err(Fault::Down)))
        .await;
    assert_eq!(calls.get(), 10);
}

#[tokio::test(start_paused = true)]
async fn timed_out_attempts_are_retried_and_count_as_breaker_failures() {
    let breaker = CircuitBreaker::new("slow").failure_threshold(3);
    let policy = Resilience::new()
        .retry(
            Retry::new()
                .max_attempts(2)
                .initial_delay(ms(100))
                .jitter(Jitter::None),
        )
        .circuit_breaker(breaker.clone())
        .timeout(Duration::from_secs(1));
    let calls = Calls::default();
    let slow = || {
        calls.0.fetch_add(1, Ordering::SeqCst);
        async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Ok::<_, Fault>(())
        }
    };

    let start = Instant::now();
    let err = policy.call(slow).await.unwrap_err();
    match &err {
        ResilienceError::Exhausted { attempts: 2, last } => {
            assert!(
                matches!(**last, ResilienceError::TimedOut { after } if after == Duration::from_secs(1))
            );
        }
        other => panic!("expected Exhausted after time-outs, got {other:?}"),
    }
    assert_eq!(calls.get(), 2);
    // Two attempts of 1 s each, and one pause of 100 ms between them.
    assert_eq!(start.elapsed(), ms(2100));
    assert_eq!(breaker.state(), BreakerState::Closed);

    // The third time-out in a row opens the breaker.
    let _ = policy.call(slow).await;
    assert_eq!(breaker.state(), BreakerState::Open);
    assert_eq!(calls.get(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_full_bulkhead_is_not_retried_and_the_composed_call_is_send() {
    let policy = Resilience::new()
        .bulkhead(Bulkhead::new("search").max_concurrent(1))
        .retry(Retry::new().max_attempts(5))
        .circuit_breaker(CircuitBreaker::new("search"))
        .timeout(Duration::from_secs(10));
    let concurrency = Concurrency::default();
    let holder = tokio::spawn({
        let (policy, concurrency) = (policy.clone(), concurrency.clone());
        async move { policy.call(|| concurrency.hold(ms(100))).await }
    });
    run_others_until(|| concurrency.now.load(Ordering::SeqCst) == 1).await;

    let calls = Calls::default();
    let start = Instant::now();
    let err = policy.call(calls.returning(Ok(()))).await.unwrap_err();
    assert!(matches!(err, ResilienceError::Full { .. }), "{err:?}");
    assert_eq!(calls.get(), 0);
    assert_eq!(start.elapsed(), Duration::ZERO);
    holder.await.unwrap().unwrap();
}

#[test]
fn errors_keep_the_operations_error_as_source() {
    use std::error::Error as _;

    let exhausted: ResilienceError<Fault> = ResilienceError::Exhausted {
        attempts: 3,
        last: Box::new(ResilienceError::Inner(Fault::Down)),
    };
    assert_eq!(exhausted.to_string(), "gave up after 3 attempts");
    let source = exhausted.source().expect("the last error is the source");
    assert_eq!(source.to_string(), "dependency down");
    assert_eq!(exhausted.into_inner(), Some(Fault::Down));

    let timed_out: ResilienceError<Fault> = ResilienceError::TimedOut { after: ms(250) };
    assert_eq!(timed_out.to_string(), "call timed out after 250ms");
    assert_eq!(timed_out.inner(), None);
    assert!(!timed_out.is_rejected());
}
