//! The hand-off between the submitting threads, the group writer and the checkpointer: a
//! lock-free bounded queue, an atomic word saying what the writer waits for, and park/unpark, with
//! the writer's wake-ups kept to the ones that change what it does.
//!
//! A submitter wakes the writer only when the writer sleeps waiting for work, past any hold, and
//! this submission is the first one queued, or when the writer holds the next group open
//! (coalescing until a deadline, whether or not anything is queued yet) and this submission makes
//! the queue `enough`. Every other submission is one push on the lock-free queue and one atomic
//! load: no lock is shared with the writer, so a preempted writer never stalls a submitter. At a
//! steady moderate rate the writer sleeps once per group (until the hold's deadline) and no
//! submitter wakes it. The writer never spins or yields.
//!
//! No wake-up is lost: the writer publishes what it waits for (a sequentially consistent store)
//! and only then looks at the queue a last time before parking; a submitter pushes and only then
//! (after a sequentially consistent fence) reads what the writer waits for. One of the two sees
//! the other, and `unpark` before `park` makes the park return at once.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering, fence};
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};
use std::thread::Thread;
use std::time::Instant;

use crossbeam::queue::ArrayQueue;

/// Why [`Handoff::push`] refused; the job comes back so its callback can be defused.
#[derive(Debug)]
pub(super) enum Refused<T> {
    Full(T),
    Closed(T),
}

/// What the writer is blocked on (the values of [`Handoff::waiting`]).
/// Not waiting: running, or about to look at the queue again.
const RUNNING: u8 = 0;
/// The queue was empty past any hold: the first submission wakes it.
const IDLE: u8 = 1;
/// The next group is held open until a deadline or until `enough` submissions wait.
const COALESCING: u8 = 2;
/// Only a checkpoint result (or the stop) matters.
const CHECKPOINT: u8 = 3;

/// The shared queue. `T` is a submission, `R` a checkpoint result.
pub(super) struct Handoff<T, R> {
    jobs: ArrayQueue<T>,
    waiting: AtomicU8,
    stop: AtomicBool,
    closed: AtomicBool,
    /// Results of finished checkpoints, oldest first (about one a second: a lock is fine).
    results: Mutex<VecDeque<R>>,
    /// The checkpointer thread is gone: no more results will come.
    checkpointer_gone: AtomicBool,
    /// The writer thread, known from its first wait on.
    writer: OnceLock<Thread>,
    /// Times a submitter woke the writer.
    wakeups: AtomicU64,
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
            jobs: ArrayQueue::new(capacity.max(1)),
            waiting: AtomicU8::new(RUNNING),
            stop: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            results: Mutex::new(VecDeque::new()),
            checkpointer_gone: AtomicBool::new(false),
            writer: OnceLock::new(),
            wakeups: AtomicU64::new(0),
            enough: enough.max(1),
        }
    }

    fn results(&self) -> MutexGuard<'_, VecDeque<R>> {
        // Nothing panics while holding the lock: a poisoned lock still holds consistent data.
        self.results.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Wakes the writer if it is known (before its first wait it is not waiting either).
    fn unpark_writer(&self) {
        if let Some(t) = self.writer.get() {
            t.unpark();
        }
    }

    /// Queues a submission; wakes the writer only if it waits for exactly this.
    pub(super) fn push(&self, job: T) -> Result<(), Refused<T>> {
        if self.stop.load(Ordering::Acquire) || self.closed.load(Ordering::Acquire) {
            return Err(Refused::Closed(job));
        }
        if let Err(job) = self.jobs.push(job) {
            return Err(Refused::Full(job));
        }
        // Pairs with the writer's fence between publishing `waiting` and its last look.
        fence(Ordering::SeqCst);
        // Only one wake-up per wait: whoever swaps the state back to RUNNING wakes; later
        // submitters see RUNNING and just queue.
        let swap = |from: u8| {
            self.waiting
                .compare_exchange(from, RUNNING, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
        };
        let wake = match self.waiting.load(Ordering::SeqCst) {
            IDLE => swap(IDLE),
            COALESCING => self.jobs.len() >= self.enough && swap(COALESCING),
            _ => false,
        };
        if wake {
            self.wakeups.fetch_add(1, Ordering::Relaxed);
            self.unpark_writer();
        }
        Ok(())
    }

    /// Submissions queued now.
    pub(super) fn len(&self) -> usize {
        self.jobs.len()
    }

    /// Times a submitter woke the writer so far.
    pub(super) fn wakeups(&self) -> u64 {
        self.wakeups.load(Ordering::Relaxed)
    }

    /// Asks the writer to take everything queued and close. Later pushes are refused.
    pub(super) fn request_stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        self.unpark_writer();
    }

    /// The checkpointer reports a finished checkpoint.
    pub(super) fn report(&self, result: R) {
        self.results().push_back(result);
        self.unpark_writer();
    }

    /// The checkpointer thread is ending (also on a panic): no more results.
    pub(super) fn checkpointer_gone(&self) {
        self.checkpointer_gone.store(true, Ordering::SeqCst);
        self.unpark_writer();
    }

    /// A checkpoint result if one is there; with `block`, waits for one (or for the checkpointer
    /// to end). `None` only without `block`, when nothing was reported yet. Writer thread only.
    pub(super) fn checkpoint(&self, block: bool) -> Option<Next<R>> {
        self.writer.get_or_init(std::thread::current);
        loop {
            if let Some(r) = self.results().pop_front() {
                return Some(Next::Checkpoint(r));
            }
            if self.checkpointer_gone.load(Ordering::SeqCst) {
                return Some(Next::CheckpointerGone);
            }
            if !block {
                return None;
            }
            self.waiting.store(CHECKPOINT, Ordering::SeqCst);
            // `report` pushes before it unparks: a result that came after the look above has
            // left an unpark token, and this park returns at once.
            std::thread::park();
            self.waiting.store(RUNNING, Ordering::SeqCst);
        }
    }

    /// The writer's wait: returns the first of a checkpoint result, a batch to commit (moved into
    /// `batch`, weighed by `weigh`), the timer, or the close after a stop. Never spins: between
    /// looks it parks until the nearest deadline. Writer thread only.
    pub(super) fn next(
        &self,
        plan: Plan,
        batch: &mut Vec<T>,
        weigh: impl Fn(&T) -> usize,
    ) -> Next<R> {
        self.writer.get_or_init(std::thread::current);
        loop {
            self.waiting.store(RUNNING, Ordering::SeqCst);
            if let Some(r) = self.results().pop_front() {
                return Next::Checkpoint(r);
            }
            let now = Instant::now();
            let stop = self.stop.load(Ordering::SeqCst);
            let len = self.jobs.len();
            // Within the hold, an empty queue is held too: a submission arriving now would wait
            // for the deadline anyway, so it need not wake us — only `enough` does.
            let holding = plan
                .hold_until
                .filter(|&t| !stop && now < t && len < self.enough);
            if holding.is_none() && len > 0 {
                let mut weight = 0;
                while weight < plan.max_weight {
                    let Some(job) = self.jobs.pop() else { break };
                    weight += weigh(&job);
                    batch.push(job);
                }
                return Next::Batch;
            }
            if len == 0 && stop {
                self.closed.store(true, Ordering::SeqCst);
                return Next::Closed;
            }
            // The timer matters only while nothing is queued (a commit comes first otherwise).
            let timer = plan.timer.filter(|_| len == 0);
            if timer.is_some_and(|t| now >= t) {
                return Next::Timer;
            }
            let (waiting, deadline) = match holding {
                Some(h) => (COALESCING, Some(timer.map_or(h, |t| t.min(h)))),
                None => (IDLE, timer),
            };
            self.waiting.store(waiting, Ordering::SeqCst);
            // Pairs with the submitters' fence: after publishing what we wait for, one last look
            // at what a submitter may have queued without seeing it.
            fence(Ordering::SeqCst);
            let now_len = self.jobs.len();
            let woken = match waiting {
                IDLE => now_len > 0,
                _ => now_len >= self.enough,
            };
            if woken || self.stop.load(Ordering::SeqCst) {
                continue;
            }
            match deadline {
                Some(d) => std::thread::park_timeout(d.saturating_duration_since(now)),
                None => std::thread::park(),
            }
        }
    }

    /// After [`Next::Closed`]: takes whatever raced in (a push that passed the stop check just
    /// before the stop) so the caller can fail it; anything later is dropped with the queue.
    pub(super) fn drain_closed(&self) -> Vec<T> {
        self.closed.store(true, Ordering::SeqCst);
        std::iter::from_fn(|| self.jobs.pop()).collect()
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
    fn no_wake_up_is_lost_under_racing_submitters() {
        // The writer parks without a timeout whenever the queue looks empty: a lost wake-up
        // would hang it, which the watchdog turns into a failure.
        const PER: u32 = 5000;
        const THREADS: u32 = 4;
        let h = Arc::new(H::new(64, 8));
        let (tx, rx) = std::sync::mpsc::channel();
        let writer = {
            let h = h.clone();
            std::thread::spawn(move || {
                let mut got = 0u32;
                let mut batch = Vec::new();
                let mut hold = None;
                while got < PER * THREADS {
                    let p = Plan {
                        hold_until: hold,
                        timer: None,
                        max_weight: 16,
                    };
                    if let Next::Batch = h.next(p, &mut batch, |_| 1) {
                        got += u32::try_from(batch.len()).unwrap_or(0);
                        // Alternate between held and unheld waits.
                        hold =
                            (batch.len() > 1).then(|| Instant::now() + Duration::from_micros(200));
                        batch.clear();
                    }
                }
                let _ = tx.send(got);
            })
        };
        let pushers: Vec<_> = (0..THREADS)
            .map(|_| {
                let h = h.clone();
                std::thread::spawn(move || {
                    for i in 0..PER {
                        let mut job = i;
                        loop {
                            match h.push(job) {
                                Ok(()) => break,
                                Err(Refused::Full(j) | Refused::Closed(j)) => {
                                    job = j;
                                    std::thread::yield_now();
                                }
                            }
                        }
                        if i % 64 == 0 {
                            std::thread::sleep(Duration::from_micros(50));
                        }
                    }
                })
            })
            .collect();
        for p in pushers {
            p.join().expect("pusher");
        }
        let got = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the writer hung: a wake-up was lost");
        assert_eq!(got, PER * THREADS);
        writer.join().expect("writer");
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
        while h.waiting.load(Ordering::SeqCst) != IDLE {
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

    /// A writer waiting in a hold far longer than the test (only `enough` can end it), started
    /// and seen coalescing; it returns whether it got a batch, and the batch.
    fn held_writer(h: &Arc<H>) -> std::thread::JoinHandle<(bool, Vec<u32>)> {
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
        while h.waiting.load(Ordering::SeqCst) != COALESCING {
            std::thread::yield_now();
        }
        writer
    }

    #[test]
    fn a_held_group_ends_when_enough_wait_and_only_then_wakes() {
        let h = Arc::new(H::new(100, 3));
        assert!(h.push(0).is_ok());
        let writer = held_writer(&h);
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
        let writer = held_writer(&h);
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
        // The blocking wait on a queue of its own: the writer is whichever thread looked first
        // (this test's thread above), and only the writer is unparked.
        let h = Arc::new(H::new(10, 10));
        let waiter = {
            let h = h.clone();
            std::thread::spawn(move || matches!(h.checkpoint(true), Some(Next::CheckpointerGone)))
        };
        while h.waiting.load(Ordering::SeqCst) != CHECKPOINT {
            std::thread::yield_now();
        }
        h.checkpointer_gone();
        assert!(waiter.join().expect("waiter"));
    }
}
