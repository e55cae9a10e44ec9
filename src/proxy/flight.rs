//! Single flight: identical misses in flight at once reach the upstream once.
//!
//! Owns the table of misses on their way upstream, by tenant and exact key.
//! The first such miss leads: it is forwarded and its answer is written as
//! usual. Identical requests that miss while it runs follow: they wait, within
//! a bound, for the leader's storable answer and replay it. It must never make
//! a follower wait for a leader that failed, hung up or got an answer the
//! cache would not store: the leader's guard says so when it is dropped, and
//! the follower is forwarded on its own. Tenants never share a flight.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::sync::watch;

#[derive(Clone, Debug)]
enum State {
    Running,
    Done(Arc<str>),
    Failed,
}

type Key = (String, String);

#[derive(Default)]
struct Table {
    flights: HashMap<Key, (u64, watch::Receiver<State>)>,
    next: u64,
}

/// The misses in flight, shared by every request of the gateway.
#[derive(Clone, Default)]
pub struct Flights {
    table: Arc<Mutex<Table>>,
}

/// What a miss does: lead the flight, or follow the one in the air.
pub enum Joined {
    /// No identical miss is in flight: forward, and finish the guard with the
    /// answer (or drop it).
    Leader(FlightGuard),
    /// An identical miss is in flight: wait for it with [`Follower::answer`].
    Follower(Follower),
}

/// A leader's promise to its followers. Dropped unfinished, it releases them
/// to forward on their own.
pub struct FlightGuard {
    table: Arc<Mutex<Table>>,
    key: Key,
    id: u64,
    tx: watch::Sender<State>,
    done: bool,
}

/// A request waiting for its leader.
pub struct Follower {
    rx: watch::Receiver<State>,
}

impl Flights {
    /// Joins the flight of `exact_hash` in `tenant`, or starts one.
    pub fn join(&self, tenant: &str, exact_hash: &str) -> Joined {
        let key = (tenant.to_string(), exact_hash.to_string());
        let mut t = match self.table.lock() {
            Ok(t) => t,
            Err(p) => p.into_inner(),
        };
        if let Some((_, rx)) = t.flights.get(&key) {
            if !matches!(*rx.borrow(), State::Failed) {
                return Joined::Follower(Follower { rx: rx.clone() });
            }
        }
        t.next += 1;
        let id = t.next;
        let (tx, rx) = watch::channel(State::Running);
        t.flights.insert(key.clone(), (id, rx));
        Joined::Leader(FlightGuard {
            table: self.table.clone(),
            key,
            id,
            tx,
            done: false,
        })
    }

    /// Misses in flight (and finished ones still lingering).
    pub fn len(&self) -> usize {
        self.table.lock().map_or(0, |t| t.flights.len())
    }

    /// True when nothing is in flight.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn remove(table: &Mutex<Table>, key: &Key, id: u64) {
    let mut t = match table.lock() {
        Ok(t) => t,
        Err(p) => p.into_inner(),
    };
    if t.flights.get(key).is_some_and(|(mine, _)| *mine == id) {
        t.flights.remove(key);
    }
}

impl FlightGuard {
    /// Hands `answer` (the stored form: one JSON document) to the followers.
    ///
    /// NOTE: the flight ends here, before the answer's write reaches the
    /// cache: an identical miss in between is forwarded again. Handing the
    /// answer on for longer would outlive an admin delete or flush of it.
    pub fn finish(mut self, answer: &str) {
        self.done = true;
        let _ = self.tx.send(State::Done(Arc::from(answer)));
        remove(&self.table, &self.key, self.id);
    }
}

impl Drop for FlightGuard {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.tx.send(State::Failed);
            remove(&self.table, &self.key, self.id);
        }
    }
}

impl Follower {
    /// The leader's answer, or None if it failed, was not storable, or took
    /// longer than `within`.
    pub async fn answer(mut self, within: Duration) -> Option<Arc<str>> {
        let settled =
            tokio::time::timeout(within, self.rx.wait_for(|s| !matches!(s, State::Running))).await;
        match settled {
            Ok(Ok(state)) => match &*state {
                State::Done(a) => Some(a.clone()),
                _ => None,
            },
            // NOTE: a closed channel is a leader dropped without a word.
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn followers_get_the_leaders_answer() {
        let f = Flights::default();
        let Joined::Leader(lead) = f.join("t", "h") else {
            panic!("the first miss leads")
        };
        let Joined::Follower(a) = f.join("t", "h") else {
            panic!("the second follows")
        };
        // Another tenant, or another key, never shares the flight.
        assert!(matches!(f.join("u", "h"), Joined::Leader(_)));
        assert!(matches!(f.join("t", "g"), Joined::Leader(_)));
        let waiting = tokio::spawn(a.answer(Duration::from_secs(5)));
        lead.finish("{\"answer\":1}");
        assert_eq!(waiting.await.unwrap().as_deref(), Some("{\"answer\":1}"));
        // A finished flight is over: the next identical miss leads anew.
        assert!(f.is_empty());
        assert!(matches!(f.join("t", "h"), Joined::Leader(_)));
    }

    #[tokio::test]
    async fn a_failed_leader_releases_its_followers_and_the_key() {
        let f = Flights::default();
        let Joined::Leader(lead) = f.join("t", "h") else {
            panic!()
        };
        let Joined::Follower(a) = f.join("t", "h") else {
            panic!()
        };
        drop(lead);
        assert!(a.answer(Duration::from_secs(5)).await.is_none());
        assert!(f.is_empty());
        assert!(matches!(f.join("t", "h"), Joined::Leader(_)));
    }

    #[tokio::test]
    async fn a_slow_leader_is_waited_for_within_the_bound_only() {
        let f = Flights::default();
        let Joined::Leader(_lead) = f.join("t", "h") else {
            panic!()
        };
        let Joined::Follower(a) = f.join("t", "h") else {
            panic!()
        };
        assert!(a.answer(Duration::from_millis(20)).await.is_none());
    }
}
