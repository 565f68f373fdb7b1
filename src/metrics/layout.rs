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

/// One upstream as metrics label it: its name and its servers' addresses.
pub struct UpstreamSpec {
    pub name: String,
    pub servers: Vec<String>,
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
    pub servers: Vec<String>,
    /// Index of its first server among all servers (pool slot order).
    pub first_server: usize,
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
}

impl Layout {
    pub fn new(
        listeners: Vec<ListenerSpec>,
        upstreams: Vec<UpstreamSpec>,
        workers: usize,
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
        let mut first_server = 0;
        let upstreams = upstreams
            .into_iter()
            .map(|u| {
                let labels = UpstreamLabels {
                    first_server,
                    name: u.name,
                    servers: u.servers,
                };
                first_server += labels.servers.len();
                labels
            })
            .collect();
        Layout {
            listeners: names,
            upstreams,
            slots,
            first_slot,
            routes,
            workers,
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
        self.upstreams.iter().map(|u| u.servers.len()).sum()
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
            UpstreamSpec {
                name: "a".into(),
                servers: vec!["127.0.0.1:1".into(), "127.0.0.1:2".into()],
            },
            UpstreamSpec {
                name: "b".into(),
                servers: vec!["127.0.0.1:3".into()],
            },
        ];
        let l = Layout::new(listeners, upstreams, 2);
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
        assert_eq!(l.upstreams[1].first_server, 2);
    }
}
