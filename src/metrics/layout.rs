//! The label values of every metric and how they map to cell indexes, fixed
//! when the config is loaded.
//!
//! Route slots: each listener has one slot per route (in config order), one
//! for its default action, and one for requests rejected before they could
//! be routed. A route's label is its `name`, or its position when unnamed;
//! the default is `default` and the unrouted slot `-`.

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
    /// Each listener's bound address.
    pub listeners: Vec<String>,
    pub upstreams: Vec<UpstreamLabels>,
    pub slots: Vec<SlotLabels>,
    /// Per listener, its first slot.
    first_slot: Vec<usize>,
    /// Per listener, its route count.
    routes: Vec<usize>,
    pub workers: usize,
    /// Server cells per worker: one per member id the roster may hand out.
    server_cells: usize,
}

impl Layout {
    pub fn new(
        listeners: Vec<ListenerSpec>,
        upstreams: Vec<UpstreamSpec>,
        (workers, server_cells): (usize, usize),
    ) -> Layout {
        let mut slots = Vec::new();
        let mut first_slot = Vec::new();
        let mut routes = Vec::new();
        let mut names = Vec::new();
        for (li, l) in listeners.into_iter().enumerate() {
            first_slot.push(slots.len());
            routes.push(l.routes.len());
            for (route, upstream) in l.routes {
                slots.push(SlotLabels {
                    listener: li,
                    route,
                    upstream,
                });
            }
            slots.push(SlotLabels {
                listener: li,
                route: "default".into(),
                upstream: l.default_upstream,
            });
            slots.push(SlotLabels {
                listener: li,
                route: "-".into(),
                upstream: None,
            });
            names.push(l.name);
        }
        let upstreams = upstreams
            .into_iter()
            .map(|u| UpstreamLabels { name: u.name })
            .collect();
        Layout {
            listeners: names,
            upstreams,
            slots,
            first_slot,
            routes,
            workers,
            server_cells,
        }
    }

    /// The slot of route `route` of `listener` (None: its default action).
    #[inline]
    pub fn route_slot(&self, listener: usize, route: Option<usize>) -> RouteSlot {
        let offset = route.unwrap_or(self.routes[listener]);
        (self.first_slot[listener] + offset) as RouteSlot
    }

    /// The slot for requests of `listener` rejected before routing.
    #[inline]
    pub fn unrouted_slot(&self, listener: usize) -> RouteSlot {
        (self.first_slot[listener] + self.routes[listener] + 1) as RouteSlot
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
            ListenerSpec {
                name: "127.0.0.1:80".into(),
                routes: vec![("api".into(), Some(1)), ("1".into(), None)],
                default_upstream: Some(0),
            },
            ListenerSpec {
                name: "127.0.0.1:81".into(),
                routes: vec![],
                default_upstream: Some(1),
            },
        ];
        let upstreams = vec![
            UpstreamSpec { name: "a".into() },
            UpstreamSpec { name: "b".into() },
        ];
        let l = Layout::new(listeners, upstreams, (2, 3));
        let labels = |s: RouteSlot| {
            let s = &l.slots[s as usize];
            (s.listener, s.route.as_str(), s.upstream)
        };
        assert_eq!(labels(l.route_slot(0, Some(0))), (0, "api", Some(1)));
        assert_eq!(labels(l.route_slot(0, Some(1))), (0, "1", None));
        assert_eq!(labels(l.route_slot(0, None)), (0, "default", Some(0)));
        assert_eq!(labels(l.unrouted_slot(0)), (0, "-", None));
        assert_eq!(labels(l.route_slot(1, None)), (1, "default", Some(1)));
        assert_eq!(labels(l.unrouted_slot(1)), (1, "-", None));
        assert_eq!(l.route_slots(), 6);
        assert_eq!(l.server_count(), 3);
    }
}
