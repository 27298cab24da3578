//! The daemon's recent events: a bounded in-memory buffer (for `agent-guard events` and for
//! evidence, such as a run's last events when it is held for review) and a broadcast to
//! `events --follow` clients.
//!
//! Followers never slow the daemon down: the broadcast does not wait for them, and one that
//! falls more than [`FOLLOW_QUEUE`] events behind is told how many it missed (a `drop` event
//! with stage `follower`) while every other follower and the log lose nothing.
use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
};

use tokio::sync::broadcast;

use crate::output::event::Event;

/// Events kept in memory.
pub const BUFFER: usize = 10_000;
/// Events a follower may fall behind before it is told it lost some.
pub const FOLLOW_QUEUE: usize = 16384;

pub struct Feed {
    recent: Mutex<VecDeque<Arc<Event>>>,
    tx: broadcast::Sender<Arc<Event>>,
    capacity: usize,
}

impl Default for Feed {
    fn default() -> Self {
        Self::new(BUFFER, FOLLOW_QUEUE)
    }
}

impl Feed {
    pub fn new(capacity: usize, follow_queue: usize) -> Self {
        let (tx, _) = broadcast::channel(follow_queue.max(1));
        Self { recent: Mutex::new(VecDeque::with_capacity(capacity.min(BUFFER))), tx, capacity: capacity.max(1) }
    }

    /// Adds an event: into the buffer (dropping the oldest when full) and to followers.
    pub fn push(&self, e: Arc<Event>) {
        let mut recent = self.recent.lock().expect("feed lock");
        if recent.len() == self.capacity {
            recent.pop_front();
        }
        recent.push_back(e.clone());
        // Under the lock, so `follow` sees each event exactly once: in its snapshot or on the
        // channel. No receivers is not an error.
        let _ = self.tx.send(e);
    }

    /// The buffered events, oldest first.
    pub fn snapshot(&self) -> Vec<Arc<Event>> {
        self.recent.lock().expect("feed lock").iter().cloned().collect()
    }

    /// The buffered events and a receiver for every later one, with no gap and no overlap.
    pub fn follow(&self) -> (Vec<Arc<Event>>, broadcast::Receiver<Arc<Event>>) {
        let recent = self.recent.lock().expect("feed lock");
        let rx = self.tx.subscribe();
        (recent.iter().cloned().collect(), rx)
    }

    /// The last `n` buffered events of run `run` (by run id), oldest first.
    pub fn last_of_run(&self, run: &str, n: usize) -> Vec<Arc<Event>> {
        let recent = self.recent.lock().expect("feed lock");
        let mut v: Vec<Arc<Event>> = recent.iter().rev().filter(|e| e.run.as_deref() == Some(run)).take(n).cloned().collect();
        v.reverse();
        v
    }

    /// Connected followers.
    pub fn followers(&self) -> usize {
        self.tx.receiver_count()
    }

    pub fn len(&self) -> usize {
        self.recent.lock().expect("feed lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(run: &str, n: u32) -> Arc<Event> {
        Arc::new(Event { run: Some(run.into()), pid: Some(n), ..Event::new(crate::output::event::Kind::Exec) })
    }

    #[test]
    fn keeps_the_last_events_and_a_runs_tail() {
        let f = Feed::new(5, 8);
        for i in 0..8 {
            f.push(ev(if i % 2 == 0 { "a" } else { "b" }, i));
        }
        let pids: Vec<_> = f.snapshot().iter().map(|e| e.pid.unwrap()).collect();
        assert_eq!(pids, vec![3, 4, 5, 6, 7]);
        let a: Vec<_> = f.last_of_run("a", 2).iter().map(|e| e.pid.unwrap()).collect();
        assert_eq!(a, vec![4, 6]);
        assert!(f.last_of_run("zzz", 3).is_empty());
    }

    #[test]
    fn a_follower_sees_each_event_once_and_a_slow_one_learns_what_it_lost() {
        let f = Feed::new(100, 4);
        f.push(ev("a", 1));
        let (before, mut rx) = f.follow();
        assert_eq!(before.len(), 1);
        for i in 2..12 {
            f.push(ev("a", i));
        }
        // 10 sent, room for 4: the first recv reports the 6 it missed, then the last 4.
        match rx.try_recv() {
            Err(broadcast::error::TryRecvError::Lagged(n)) => assert_eq!(n, 6),
            other => panic!("{other:?}"),
        }
        let rest: Vec<_> = std::iter::from_fn(|| rx.try_recv().ok()).map(|e| e.pid.unwrap()).collect();
        assert_eq!(rest, vec![8, 9, 10, 11]);
        // The buffer itself lost nothing.
        assert_eq!(f.len(), 11);
    }
}
