//! The hand-off between the submitting threads, the group writer and the checkpointer: one
//! mutex-protected queue and one condition variable, with the writer's wake-ups kept to the ones
//! that change what it does.
//!
//! A submitter wakes the writer only when the writer sleeps waiting for work, past any hold, and
//! this submission is the first one queued, or when the writer holds the next group open
//! (coalescing until a deadline, whether or not anything is queued yet) and this submission makes
//! the queue `enough`. Every other submission only queues, under a lock held for a push. At a
//! steady moderate rate the writer thus sleeps once per group (until the hold's deadline) and no
//! submitter wakes it.
//! The writer never spins or yields: it takes the lock, looks, and either drains or sleeps on the
//! condition variable (a futex wait) until a deadline. The checkpointer reports its results through
//! the same lock, so the writer waits on one thing only.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

/// Why [`Handoff::push`] refused; the job comes back so its callback can be defused.
#[derive(Debug)]
pub(super) enum Refused<T> {
    Full(T),
    Closed(T),
}

/// What the writer is blocked on, so that a submitter knows whether to wake it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Waiting {
    /// Not waiting: running, or about to look at the queue again.
    No,
    /// The queue was empty: the first submission wakes it.
    Idle,
    /// A group is held open until a deadline or until `enough` submissions wait.
    Coalescing,
    /// Only a checkpoint result (or the stop flag) matters.
    Checkpoint,
}

struct State<T, R> {
    jobs: VecDeque<T>,
    waiting: Waiting,
    stop: bool,
    closed: bool,
    /// Results of finished checkpoints, oldest first.
    results: VecDeque<R>,
    /// The checkpointer thread is gone: no more results will come.
    checkpointer_gone: bool,
    /// Times a submitter woke the writer.
    wakeups: u64,
}

/// The shared queue. `T` is a submission, `R` a checkpoint result.
pub(super) struct Handoff<T, R> {
    state: Mutex<State<T, R>>,
    cv: Condvar,
    capacity: usize,
    enough: usize,
}

/// What the writer wants from [`Handoff::next`].
#[derive(Debug, Clone, Copy)]
pub(super) struct Plan {
    /// Hold queued submissions until this instant unless `enough` wait (coalescing); `None`:
    /// take them at once.
    pub(super) hold_until: Option<Instant>,
    /// Wake at this instant even if nothing arrives (a checkpoint falls due).
    pub(super) timer: Option<Instant>,
    /// Stop draining once the taken jobs weigh this much (a job is never split).
    pub(super) max_weight: usize,
}

/// What [`Handoff::next`] found.
#[derive(Debug)]
pub(super) enum Next<R> {
    /// Jobs were moved into the batch (at least one).
    Batch,
    /// A checkpoint finished.
    Checkpoint(R),
    /// The checkpointer thread ended; no result will come.
    CheckpointerGone,
    /// The plan's timer passed with nothing to take.
    Timer,
    /// A stop was requested and the queue is empty: it is now closed, later pushes are refused.
    Closed,
}

impl<T, R> Handoff<T, R> {
    /// A queue holding at most `capacity` submissions (at least 1); a coalescing writer is woken
    /// when `enough` (at least 1) wait.
    pub(super) fn new(capacity: usize, enough: usize) -> Handoff<T, R> {
        Handoff {
            state: Mutex::new(State {
                jobs: VecDeque::with_capacity(capacity.clamp(1, 4096)),
                waiting: Waiting::No,
                stop: false,
                closed: false,
                results: VecDeque::new(),
                checkpointer_gone: false,
                wakeups: 0,
            }),
            cv: Condvar::new(),
            capacity: capacity.max(1),
            enough: enough.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<T, R>> {
        // Nothing panics while holding the lock (no callbacks run under it): a poisoned lock
        // still holds consistent data.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues a submission; wakes the writer only if it waits for exactly this.
    pub(super) fn push(&self, job: T) -> Result<(), Refused<T>> {
        let mut s = self.lock();
        if s.closed || s.stop {
            return Err(Refused::Closed(job));
        }
        if s.jobs.len() >= self.capacity {
            return Err(Refused::Full(job));
        }
        s.jobs.push_back(job);
        let wake = match s.waiting {
            Waiting::Idle => true,
            Waiting::Coalescing => s.jobs.len() >= self.enough,
            Waiting::No | Waiting::Checkpoint => false,
        };
        if wake {
            // Only one wake-up per wait: later submitters see `No` and just queue.
            s.waiting = Waiting::No;
            s.wakeups += 1;
        }
        drop(s);
        if wake {
            self.cv.notify_one();
        }
        Ok(())
    }

    /// Submissions queued now.
    pub(super) fn len(&self) -> usize {
        self.lock().jobs.len()
    }

    /// Times a submitter woke the writer so far.
    pub(super) fn wakeups(&self) -> u64 {
        self.lock().wakeups
    }

    /// Asks the writer to take everything queued and close. Later pushes are refused.
    pub(super) fn request_stop(&self) {
        let mut s = self.lock();
        s.stop = true;
        s.waiting = Waiting::No;
        drop(s);
        self.cv.notify_one();
    }

    /// The checkpointer reports a finished checkpoint.
    pub(super) fn report(&self, result: R) {
        let mut s = self.lock();
        s.results.push_back(result);
        s.waiting = Waiting::No;
        drop(s);
        self.cv.notify_one();
    }

    /// The checkpointer thread is ending (also on a panic): no more results.
    pub(super) fn checkpointer_gone(&self) {
        let mut s = self.lock();
        s.checkpointer_gone = true;
        s.waiting = Waiting::No;
        drop(s);
        self.cv.notify_one();
    }

    /// A checkpoint result if one is there; with `block`, waits for one (or for the checkpointer
    /// to end). `None` only without `block`, when nothing was reported yet.
    pub(super) fn checkpoint(&self, block: bool) -> Option<Next<R>> {
        let mut s = self.lock();
        loop {
            if let Some(r) = s.results.pop_front() {
                return Some(Next::Checkpoint(r));
            }
            if s.checkpointer_gone {
                return Some(Next::CheckpointerGone);
            }
            if !block {
                return None;
            }
            s.waiting = Waiting::Checkpoint;
            s = self.cv.wait(s).unwrap_or_else(PoisonError::into_inner);
            s.waiting = Waiting::No;
        }
    }

    /// The writer's wait: returns the first of a checkpoint result, a batch to commit (moved into
    /// `batch`, weighed by `weigh`), the timer, or the close after a stop. Never spins: between
    /// looks it sleeps on the condition variable until the nearest deadline.
    pub(super) fn next(
        &self,
        plan: Plan,
        batch: &mut Vec<T>,
        weigh: impl Fn(&T) -> usize,
    ) -> Next<R> {
        let mut s = self.lock();
        loop {
            s.waiting = Waiting::No;
            if let Some(r) = s.results.pop_front() {
                return Next::Checkpoint(r);
            }
            let now = Instant::now();
            // Within the hold, an empty queue is held too: a submission arriving now would wait
            // for the deadline anyway, so it need not wake us — only `enough` does.
            let holding = plan
                .hold_until
                .filter(|&t| !s.stop && now < t && s.jobs.len() < self.enough);
            let empty = s.jobs.is_empty();
            if holding.is_none() && !empty {
                let mut weight = 0;
                while weight < plan.max_weight {
                    let Some(job) = s.jobs.pop_front() else { break };
                    weight += weigh(&job);
                    batch.push(job);
                }
                return Next::Batch;
            }
            if empty && s.stop {
                s.closed = true;
                return Next::Closed;
            }
            // The timer matters only while nothing is queued (a commit comes first otherwise).
            let timer = plan.timer.filter(|_| empty);
            if timer.is_some_and(|t| now >= t) {
                return Next::Timer;
            }
            let (waiting, deadline) = match holding {
                Some(h) => (Waiting::Coalescing, Some(timer.map_or(h, |t| t.min(h)))),
                None => (Waiting::Idle, timer),
            };
            s.waiting = waiting;
            s = match deadline {
                Some(d) => self
                    .cv
                    .wait_timeout(s, d.saturating_duration_since(now))
                    .map_or_else(|p| p.into_inner().0, |(g, _)| g),
                None => self.cv.wait(s).unwrap_or_else(PoisonError::into_inner),
            };
        }
    }

    /// After [`Next::Closed`]: takes whatever raced in (nothing, since pushes are refused once
    /// stopping; kept for robustness) so the caller can fail it.
    pub(super) fn drain_closed(&self) -> Vec<T> {
        let mut s = self.lock();
        s.closed = true;
        s.jobs.drain(..).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    type H = Handoff<u32, &'static str>;

    fn plan(hold: Option<Duration>, timer: Option<Duration>) -> Plan {
        let now = Instant::now();
        Plan {
            hold_until: hold.map(|d| now + d),
            timer: timer.map(|d| now + d),
            max_weight: usize::MAX,
        }
    }

    #[test]
    fn full_and_closed_hand_the_job_back() {
        let h = H::new(1, 1);
        assert!(h.push(1).is_ok());
        assert!(matches!(h.push(2), Err(Refused::Full(2))));
        h.request_stop();
        assert!(matches!(h.push(3), Err(Refused::Closed(3))));
        let mut batch = Vec::new();
        assert!(matches!(
            h.next(plan(None, None), &mut batch, |_| 1),
            Next::Batch
        ));
        assert_eq!(batch, vec![1]);
        assert!(matches!(
            h.next(plan(None, None), &mut batch, |_| 1),
            Next::Closed
        ));
        assert!(h.drain_closed().is_empty());
    }

    #[test]
    fn drains_up_to_the_weight_without_splitting_a_job() {
        let h = H::new(10, 10);
        for j in [3, 3, 3] {
            assert!(h.push(j).is_ok());
        }
        let mut batch = Vec::new();
        let p = Plan {
            max_weight: 4,
            ..plan(None, None)
        };
        assert!(matches!(
            h.next(p, &mut batch, |j| *j as usize),
            Next::Batch
        ));
        assert_eq!(batch, vec![3, 3]);
        assert_eq!(h.len(), 1);
    }

    #[test]
    fn only_the_first_submission_wakes_an_idle_writer() {
        let h = Arc::new(H::new(100, 100));
        let writer = {
            let h = h.clone();
            std::thread::spawn(move || {
                let mut batch = Vec::new();
                let got = h.next(plan(None, None), &mut batch, |_| 1);
                (matches!(got, Next::Batch), batch.len())
            })
        };
        // Wait until the writer sleeps idle, then queue several.
        while h.lock().waiting != Waiting::Idle {
            std::thread::yield_now();
        }
        for j in 0..5 {
            assert!(h.push(j).is_ok());
        }
        let (batch, n) = writer.join().expect("writer");
        assert!(batch);
        assert!(n >= 1);
        assert_eq!(h.wakeups(), 1, "one wake-up for five submissions");
    }

    #[test]
    fn a_held_group_ends_when_enough_wait_and_only_then_wakes() {
        let h = Arc::new(H::new(100, 3));
        assert!(h.push(0).is_ok());
        let writer = {
            let h = h.clone();
            std::thread::spawn(move || {
                let mut batch = Vec::new();
                // A hold far longer than the test: only `enough` can end it.
                let got = h.next(
                    plan(Some(Duration::from_secs(600)), None),
                    &mut batch,
                    |_| 1,
                );
                (matches!(got, Next::Batch), batch)
            })
        };
        while h.lock().waiting != Waiting::Coalescing {
            std::thread::yield_now();
        }
        assert!(h.push(1).is_ok());
        assert_eq!(h.wakeups(), 0, "below `enough`: no wake-up");
        assert!(h.push(2).is_ok());
        let (batch, got) = writer.join().expect("writer");
        assert!(batch);
        assert_eq!(got, vec![0, 1, 2]);
        assert_eq!(h.wakeups(), 1);
    }

    #[test]
    fn within_the_hold_an_empty_queue_is_not_woken_by_its_first_submission() {
        let h = Arc::new(H::new(100, 3));
        let writer = {
            let h = h.clone();
            std::thread::spawn(move || {
                let mut batch = Vec::new();
                let got = h.next(
                    plan(Some(Duration::from_secs(600)), None),
                    &mut batch,
                    |_| 1,
                );
                (matches!(got, Next::Batch), batch)
            })
        };
        while h.lock().waiting != Waiting::Coalescing {
            std::thread::yield_now();
        }
        assert!(h.push(0).is_ok());
        assert!(h.push(1).is_ok());
        assert_eq!(h.wakeups(), 0, "held: the first submissions only queue");
        assert!(h.push(2).is_ok());
        let (batch, got) = writer.join().expect("writer");
        assert!(batch);
        assert_eq!(got, vec![0, 1, 2]);
        assert_eq!(h.wakeups(), 1);
    }

    #[test]
    fn the_hold_deadline_and_the_timer_end_waits() {
        let h = H::new(10, 10);
        assert!(h.push(7).is_ok());
        let mut batch = Vec::new();
        assert!(matches!(
            h.next(
                plan(Some(Duration::from_millis(5)), None),
                &mut batch,
                |_| 1
            ),
            Next::Batch
        ));
        assert_eq!(batch, vec![7]);
        assert!(matches!(
            h.next(
                plan(None, Some(Duration::from_millis(5))),
                &mut batch,
                |_| 1
            ),
            Next::Timer
        ));
    }

    #[test]
    fn checkpoint_results_come_first_and_a_gone_checkpointer_is_seen() {
        let h = Arc::new(H::new(10, 10));
        assert!(h.checkpoint(false).is_none());
        assert!(h.push(1).is_ok());
        h.report("done");
        let mut batch = Vec::new();
        assert!(matches!(
            h.next(plan(None, None), &mut batch, |_| 1),
            Next::Checkpoint("done")
        ));
        let waiter = {
            let h = h.clone();
            std::thread::spawn(move || matches!(h.checkpoint(true), Some(Next::CheckpointerGone)))
        };
        h.checkpointer_gone();
        assert!(waiter.join().expect("waiter"));
    }
}
