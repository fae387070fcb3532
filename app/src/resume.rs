//! The store's resume rule, without the UI (so it is tested natively, without a browser):
//! which events of a batch a page has not shown yet.
//!
//! Every transport resumes from the store's cursor (the highest id shown), and anything at
//! or below it is dropped: a resume overlap, a reconnect or a transport switch can neither
//! repeat nor lose an event. The cursor only moves forward, except on an explicit reset
//! from the server (see [`Cursor::reset`]).

use crate::protocol::Event;

/// The highest event id a page has shown.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cursor(pub u64);

/// What [`Cursor::take`] kept of a batch.
#[derive(Debug, Default, PartialEq)]
pub struct Fresh {
    /// The events not shown yet, in the order received.
    pub events: Vec<Event>,
    /// For each of them, how long it took from publish (`ts`) to `now_ms` (never negative:
    /// the browser's clock may be behind the server's).
    pub latencies_ms: Vec<f64>,
}

impl Cursor {
    /// Keeps the events above the cursor, moving it to the last one kept. `now_ms` is the
    /// page's clock (passed in so the rule can be tested without a browser).
    pub fn take(&mut self, events: Vec<Event>, now_ms: f64) -> Fresh {
        let mut fresh = Fresh::default();
        for e in events {
            if e.id <= self.0 {
                continue;
            }
            self.0 = e.id;
            fresh.latencies_ms.push((now_ms - e.ts as f64).max(0.0));
            fresh.events.push(e);
        }
        fresh
    }

    /// Moves past events of streams this page does not show: never backwards.
    pub fn advance(&mut self, to: u64) {
        self.0 = self.0.max(to);
    }

    /// The server could not resume from this cursor (too old, or ahead of a wiped store):
    /// continue from the one it gives, even if that is lower.
    pub fn reset(&mut self, to: u64) {
        self.0 = to;
    }
}

/// Applies to `online` (a list as of event `at`) the presence changes newer than `at`, in
/// order, and moves `at` past them; whether anything was newer. Changes at or below `at` are
/// already in the list, and applying an old join over a newer list could bring back someone
/// who left.
pub fn apply_presence(
    online: &mut Vec<String>,
    at: &mut u64,
    changes: Vec<(u64, crate::protocol::PresenceChange)>,
) -> bool {
    let mut changed = false;
    for (id, p) in changes {
        if id <= *at {
            continue;
        }
        *at = id;
        changed = true;
        online.retain(|u| *u != p.user);
        if p.online {
            online.push(p.user);
        }
    }
    online.sort();
    changed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{ChatMessage, Payload};

    fn ev(id: u64, ts: u64) -> Event {
        Event {
            id,
            ts,
            payload: Payload::Chat(ChatMessage {
                author: "a".into(),
                body: format!("{id}"),
                user: None,
            }),
        }
    }

    fn ids(f: &Fresh) -> Vec<u64> {
        f.events.iter().map(|e| e.id).collect()
    }

    #[test]
    fn overlapping_batches_are_shown_once_in_order() {
        let mut c = Cursor(0);
        assert_eq!(
            ids(&c.take((1..=5).map(|i| ev(i, 0)).collect(), 0.0)),
            vec![1, 2, 3, 4, 5]
        );
        // A reconnect that resumes from 3 (another transport's older cursor) overlaps.
        assert_eq!(
            ids(&c.take((4..=8).map(|i| ev(i, 0)).collect(), 0.0)),
            vec![6, 7, 8]
        );
        // The same batch again (a retried poll whose answer was already seen): nothing.
        assert_eq!(
            ids(&c.take((4..=8).map(|i| ev(i, 0)).collect(), 0.0)),
            Vec::<u64>::new()
        );
        assert_eq!(c, Cursor(8));
    }

    #[test]
    fn the_cursor_never_moves_back_except_on_a_reset() {
        let mut c = Cursor(10);
        // Out of order within a batch: the lower one is at or below the cursor by then.
        assert_eq!(
            ids(&c.take(vec![ev(12, 0), ev(11, 0), ev(13, 0)], 0.0)),
            vec![12, 13]
        );
        c.advance(5);
        assert_eq!(c, Cursor(13));
        c.advance(20);
        assert_eq!(c, Cursor(20));
        // A reset lowers it (the store was wiped): ids above the new cursor are new again.
        c.reset(3);
        assert_eq!(ids(&c.take(vec![ev(4, 0), ev(5, 0)], 0.0)), vec![4, 5]);
    }

    #[test]
    fn latency_is_measured_against_the_given_clock_and_never_negative() {
        let mut c = Cursor(0);
        let f = c.take(vec![ev(1, 1_000), ev(2, 5_000)], 1_250.0);
        assert_eq!(f.latencies_ms, vec![250.0, 0.0]);
    }

    fn change(id: u64, user: &str, online: bool) -> (u64, crate::protocol::PresenceChange) {
        let user = user.to_owned();
        (id, crate::protocol::PresenceChange { user, online })
    }

    #[test]
    fn a_presence_list_takes_only_newer_changes_whatever_the_arrival_order() {
        // Live events 5 (ann joins) and 9 (bob joins, then 11 ann leaves) arrive; then a list
        // taken at 9 ("ann", "bob") answers late. Applying everything received over the list
        // skips 5 and 9 and ends with bob alone, as the server has it.
        let received = vec![
            change(5, "ann", true),
            change(9, "bob", true),
            change(11, "ann", false),
        ];
        let (mut online, mut at) = (vec!["ann".to_owned(), "bob".to_owned()], 9);
        assert!(apply_presence(&mut online, &mut at, received.clone()));
        assert_eq!((online, at), (vec!["bob".to_owned()], 11));
        // Replaying the same events again changes nothing (a resume overlap).
        let (mut online, mut at) = (vec!["bob".to_owned()], 11);
        assert!(!apply_presence(&mut online, &mut at, received));
        assert_eq!(online, vec!["bob"]);
        // A list from before all of them: each applies, in order.
        let (mut online, mut at) = (vec!["carl".to_owned()], 2);
        apply_presence(
            &mut online,
            &mut at,
            vec![
                change(5, "ann", true),
                change(7, "carl", false),
                change(8, "ann", true),
            ],
        );
        assert_eq!((online, at), (vec!["ann".to_owned()], 8));
    }
}
