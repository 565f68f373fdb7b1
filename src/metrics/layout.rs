//! The label values of every metric and how they map to cell indexes.
//!
//! Route slots: each listener has one slot per route, one for its default
//! action, and one for requests rejected before they could be routed. A
//! route's label is its `name`, or its position when unnamed; the default is
//! `default` and the unrouted slot `-`. Routes change with an in-place
//! reload, so slots are handles, not positions: a layout made from the one
//! before keeps the slot of every (listener, route, upstream) that stays,
//! and gives new ones slots never used yet, then freed ones. The number of
//! slots (the cells each worker holds) is fixed when the process starts.

/// One listener as metrics label it.
pub struct ListenerSpec {
    /// The bound address.
    pub name: String,
    /// Each route's name (its position when unnamed) and upstream (None: a
    /// direct answer).
    pub routes: Vec<(String, Option<usize>)>,
    /// The upstream of the listener's default action.
    pub default_upstream: Option<usize>,
}

/// One upstream as metrics label it (its servers come and go: their labels
/// are the roster's, see `expose`).
pub struct UpstreamSpec {
    pub name: String,
}

/// Index of a route slot in `WorkerMetrics::requests`.
pub type RouteSlot = u16;

pub struct SlotLabels {
    pub listener: usize,
    pub route: String,
    /// The upstream the slot sends to (None: a direct or local answer).
    pub upstream: Option<usize>,
}

pub struct UpstreamLabels {
    pub name: String,
}

pub struct Layout {
    /// Each listener's bound address, by listener id (empty: no listener).
    pub listeners: Vec<String>,
    pub upstreams: Vec<UpstreamLabels>,
    /// Per route slot: its labels (None: free).
    pub slots: Vec<Option<SlotLabels>>,
    /// Per listener: the slot of each route, then of its default action,
    /// then its unrouted slot.
    listener_slots: Vec<Vec<RouteSlot>>,
    /// Slots below this have been handed out at some point.
    high_water: usize,
    pub workers: usize,
    /// Server cells per worker: one per member id the roster may hand out.
    server_cells: usize,
}

impl Layout {
    /// The first layout: route cells for twice the slots it needs and some.
    pub fn new(
        listeners: Vec<Option<ListenerSpec>>,
        upstreams: Vec<UpstreamSpec>,
        (workers, server_cells): (usize, usize),
    ) -> Layout {
        let needed: usize = listeners.iter().flatten().map(|l| l.routes.len() + 2).sum();
        let cells = (2 * needed + 64).min(RouteSlot::MAX as usize - 1);
        Layout::build(listeners, upstreams, (workers, server_cells, cells), None)
            .expect("the first layout fits its own cells")
    }

    /// The layout after this one, for the same listeners and upstreams with
    /// other routes. Err when the new routes need more slots than exist.
    pub fn next(
        &self,
        listeners: Vec<Option<ListenerSpec>>,
        upstreams: Vec<UpstreamSpec>,
    ) -> Result<Layout, String> {
        let cells = (self.workers, self.server_cells, self.slots.len());
        Layout::build(listeners, upstreams, cells, Some(self))
    }

    fn build(
        listeners: Vec<Option<ListenerSpec>>,
        upstreams: Vec<UpstreamSpec>,
        (workers, server_cells, cells): (usize, usize, usize),
        before: Option<&Layout>,
    ) -> Result<Layout, String> {
        let mut slots: Vec<Option<SlotLabels>> = (0..cells).map(|_| None).collect();
        let mut high_water = before.map_or(0, |b| b.high_water);
        let mut fresh = Vec::new();
        let mut listener_slots = Vec::new();
        let mut names = Vec::new();
        for (li, l) in listeners.into_iter().enumerate() {
            // An id no listener holds: no slots, no name.
            let Some(l) = l else {
                listener_slots.push(Vec::new());
                names.push(String::new());
                continue;
            };
            let labels = l
                .routes
                .into_iter()
                .chain([
                    ("default".to_string(), l.default_upstream),
                    ("-".to_string(), None),
                ])
                .map(|(route, upstream)| SlotLabels {
                    listener: li,
                    route,
                    upstream,
                });
            let mut mine = Vec::new();
            for label in labels {
                let kept = before.and_then(|b| {
                    b.slots.iter().position(|s| {
                        s.as_ref().is_some_and(|s| {
                            s.listener == label.listener
                                && s.route == label.route
                                && s.upstream == label.upstream
                        })
                    })
                });
                match kept {
                    Some(i) if slots[i].is_none() => {
                        slots[i] = Some(label);
                        mine.push(i as RouteSlot);
                    }
                    _ => {
                        fresh.push((li, mine.len()));
                        mine.push(0);
                        slots.push(Some(label)); // parked past the cells for now
                    }
                }
            }
            listener_slots.push(mine);
            names.push(l.name);
        }
        // Place the new slots: never-used cells first, then freed ones (not
        // used by `before`, whose requests may still be counting).
        let parked: Vec<SlotLabels> = slots.drain(cells..).map(|s| s.expect("parked")).collect();
        let used_before = |i: usize| before.is_some_and(|b| b.slots[i].is_some());
        let mut freed = (0..high_water.min(cells)).filter(|&i| !used_before(i));
        let mut taken = vec![false; cells];
        for (i, s) in slots.iter().enumerate() {
            taken[i] = s.is_some();
        }
        for ((li, ri), label) in fresh.into_iter().zip(parked) {
            let i = if high_water < cells {
                high_water += 1;
                high_water - 1
            } else {
                loop {
                    match freed.next() {
                        Some(i) if !taken[i] => break i,
                        Some(_) => continue,
                        None => {
                            return Err(format!(
                                "the routes need more than the {cells} metrics slots fixed at start"
                            ))
                        }
                    }
                }
            };
            taken[i] = true;
            slots[i] = Some(label);
            listener_slots[li][ri] = i as RouteSlot;
        }
        let upstreams = upstreams
            .into_iter()
            .map(|u| UpstreamLabels { name: u.name })
            .collect();
        Ok(Layout {
            listeners: names,
            upstreams,
            slots,
            listener_slots,
            high_water,
            workers,
            server_cells,
        })
    }

    /// The slot of route `route` of `listener` (None: its default action).
    #[inline]
    pub fn route_slot(&self, listener: usize, route: Option<usize>) -> RouteSlot {
        match self.listener_slots.get(listener) {
            Some(slots) if slots.len() >= 2 => slots[route.unwrap_or(slots.len() - 2)],
            _ => self.unlisted_slot(),
        }
    }

    /// The slot for requests of `listener` rejected before routing.
    #[inline]
    pub fn unrouted_slot(&self, listener: usize) -> RouteSlot {
        match self.listener_slots.get(listener).and_then(|s| s.last()) {
            Some(&slot) => slot,
            None => self.unlisted_slot(),
        }
    }

    /// The cell past the route slots: counts the last requests of
    /// connections whose listener a reload removed (not exposed).
    #[inline]
    pub fn unlisted_slot(&self) -> RouteSlot {
        self.slots.len() as RouteSlot
    }

    pub fn route_slots(&self) -> usize {
        self.slots.len()
    }

    pub fn server_count(&self) -> usize {
        self.server_cells
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_per_listener() {
        let listeners = vec![
            Some(ListenerSpec {
                name: "127.0.0.1:80".into(),
                routes: vec![("api".into(), Some(1)), ("1".into(), None)],
                default_upstream: Some(0),
            }),
            Some(ListenerSpec {
                name: "127.0.0.1:81".into(),
                routes: vec![],
                default_upstream: Some(1),
            }),
        ];
        let upstreams = vec![
            UpstreamSpec { name: "a".into() },
            UpstreamSpec { name: "b".into() },
        ];
        let l = Layout::new(listeners, upstreams, (2, 3));
        let labels = |s: RouteSlot| {
            let s = l.slots[s as usize].as_ref().unwrap();
            (s.listener, s.route.as_str(), s.upstream)
        };
        assert_eq!(labels(l.route_slot(0, Some(0))), (0, "api", Some(1)));
        assert_eq!(labels(l.route_slot(0, Some(1))), (0, "1", None));
        assert_eq!(labels(l.route_slot(0, None)), (0, "default", Some(0)));
        assert_eq!(labels(l.unrouted_slot(0)), (0, "-", None));
        assert_eq!(labels(l.route_slot(1, None)), (1, "default", Some(1)));
        assert_eq!(labels(l.unrouted_slot(1)), (1, "-", None));
        assert_eq!(
            l.route_slots(),
            2 * 6 + 64,
            "cells for twice the slots and some"
        );
        assert_eq!(l.server_count(), 3);
    }
}

#[cfg(test)]
mod next_tests {
    use super::*;

    fn spec(routes: &[(&str, Option<usize>)]) -> Vec<Option<ListenerSpec>> {
        vec![Some(ListenerSpec {
            name: "127.0.0.1:80".into(),
            routes: routes.iter().map(|(r, u)| (r.to_string(), *u)).collect(),
            default_upstream: Some(0),
        })]
    }

    fn ups() -> Vec<UpstreamSpec> {
        vec![
            UpstreamSpec { name: "a".into() },
            UpstreamSpec { name: "b".into() },
        ]
    }

    /// A route that stays keeps its slot (its counters go on); a new one
    /// gets a cell no route used before; a removed one's cell is free.
    #[test]
    fn routes_that_stay_keep_their_slot() {
        let first = Layout::new(spec(&[("api", Some(1)), ("static", None)]), ups(), (1, 1));
        let api = first.route_slot(0, Some(0));
        let default = first.route_slot(0, None);
        let next = first
            .next(spec(&[("new", Some(0)), ("api", Some(1))]), ups())
            .unwrap();
        assert_eq!(next.route_slot(0, Some(1)), api, "api moved");
        assert_eq!(next.route_slot(0, None), default);
        assert_eq!(next.unrouted_slot(0), first.unrouted_slot(0));
        let new = next.route_slot(0, Some(0));
        assert!(
            first.slots[new as usize].is_none(),
            "a used cell for a new route"
        );
        let old_static = first.route_slot(0, Some(1));
        assert!(
            next.slots[old_static as usize].is_none(),
            "the removed route still labelled"
        );
        // The same name to another upstream is another series: a new slot.
        let moved = next
            .next(spec(&[("new", Some(0)), ("api", Some(0))]), ups())
            .unwrap();
        assert_ne!(moved.route_slot(0, Some(1)), api);
    }

    #[test]
    fn routes_beyond_the_cells_are_refused() {
        let first = Layout::new(spec(&[]), ups(), (1, 1));
        let cells = first.route_slots();
        let names: Vec<String> = (0..cells).map(|i| format!("r{i}")).collect();
        let many: Vec<(&str, Option<usize>)> = names.iter().map(|n| (n.as_str(), None)).collect();
        let e = first
            .next(spec(&many), ups())
            .err()
            .expect("too many routes");
        assert!(e.contains("metrics slots"), "{e}");
    }
}
