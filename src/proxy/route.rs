//! Routing: listener -> (host, path prefix) -> upstream or direct response.
//! Each worker builds its own from the roster in force (routes change with
//! an in-place reload); a request holds what it was routed to.

use crate::config::{Action, DirectResponse, ListenerConfig};
use std::rc::Rc;

/// A pre-rendered direct response.
#[derive(Debug)]
pub struct Direct {
    pub status: u16,
    /// Full response for a persistent connection.
    pub keep_alive: Rc<Box<[u8]>>,
    /// Full response with `Connection: close`.
    pub close: Rc<Box<[u8]>>,
    /// Head lengths of the two, for HEAD requests.
    pub keep_alive_head: usize,
    pub close_head: usize,
}

impl Direct {
    /// Renders once per roster (freed with the last request holding it).
    pub fn render(r: &DirectResponse) -> Direct {
        let head = |close: bool| {
            format!(
                "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n{}\r\n",
                r.status,
                reason_phrase(r.status),
                r.content_type,
                r.body.len(),
                if close { "Connection: close\r\n" } else { "" }
            )
        };
        let full = |h: String| -> (Rc<Box<[u8]>>, usize) {
            let len = h.len();
            let mut bytes = h.into_bytes();
            bytes.extend_from_slice(r.body.as_bytes());
            (Rc::new(bytes.into_boxed_slice()), len)
        };
        let (keep_alive, keep_alive_head) = full(head(false));
        let (close, close_head) = full(head(true));
        Direct {
            status: r.status,
            keep_alive,
            close,
            keep_alive_head,
            close_head,
        }
    }
}

#[derive(Debug, Clone)]
pub enum RouteAction {
    Proxy(usize),
    Respond(Rc<Direct>),
    /// ringlb answers itself (Max-Forwards: 0); the answer is already rendered.
    Local,
}

#[derive(Debug)]
struct Route {
    host: Option<Box<[u8]>>,
    path_prefix: Box<str>,
    action: RouteAction,
}

#[derive(Debug)]
pub struct ListenerRoutes {
    /// False once the listener left the configuration: its connections
    /// finish their requests with `Connection: close`.
    pub open: bool,
    routes: Vec<Route>,
    default: RouteAction,
    /// The listener's bound address, the Host for requests that carry none.
    authority: Box<[u8]>,
}

fn action(a: &Action) -> RouteAction {
    match a {
        Action::Proxy(i) => RouteAction::Proxy(*i),
        Action::Respond(r) => RouteAction::Respond(Rc::new(Direct::render(r))),
    }
}

impl ListenerRoutes {
    /// Routes of one listener; `bound` is its actual address (port 0 resolved).
    pub fn new(cfg: &ListenerConfig, bound: std::net::SocketAddr) -> ListenerRoutes {
        ListenerRoutes {
            open: true,
            authority: bound.to_string().into_bytes().into(),
            routes: cfg
                .routes
                .iter()
                .map(|r| Route {
                    host: r.host.as_ref().map(|h| h.as_bytes().into()),
                    path_prefix: r.path_prefix.as_str().into(),
                    action: action(&r.action),
                })
                .collect(),
            default: action(&cfg.default_action),
        }
    }

    /// For an id no listener has held: routes nothing (never consulted).
    pub fn none() -> ListenerRoutes {
        ListenerRoutes {
            open: false,
            routes: Vec::new(),
            default: RouteAction::Local,
            authority: Box::default(),
        }
    }

    pub fn authority(&self) -> &[u8] {
        &self.authority
    }

    /// First matching route (its index), else the listener's default (None).
    pub fn select(&self, host_name: &[u8], path: &str) -> (Option<usize>, RouteAction) {
        for (i, r) in self.routes.iter().enumerate() {
            if let Some(h) = &r.host {
                if !h.eq_ignore_ascii_case(host_name) {
                    continue;
                }
            }
            if path.starts_with(&*r.path_prefix) {
                return (Some(i), r.action.clone());
            }
        }
        (None, self.default.clone())
    }
}

pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        301 => "Moved Permanently",
        302 => "Found",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        410 => "Gone",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn first_match_wins_then_default() {
        let c = Config::parse(
            r#"
[[listener]]
listen = "127.0.0.1:0"
upstream = "a"
[[listener.route]]
host = "API.example"
path_prefix = "/v1"
upstream = "b"
[[listener.route]]
path_prefix = "/healthz"
status = 200
body = "ok"
[[upstream]]
name = "a"
servers = ["127.0.0.1:1"]
[[upstream]]
name = "b"
servers = ["127.0.0.1:2"]
"#,
            "t",
        )
        .unwrap();
        let r = ListenerRoutes::new(&c.listeners[0], "127.0.0.1:80".parse().unwrap());
        assert!(matches!(
            r.select(b"api.example", "/v1/x"),
            (Some(0), RouteAction::Proxy(1))
        ));
        assert!(matches!(
            r.select(b"other", "/v1/x"),
            (None, RouteAction::Proxy(0))
        ));
        match r.select(b"other", "/healthz").1 {
            RouteAction::Respond(d) => {
                assert_eq!(
                    &d.keep_alive[..],
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"
                );
                assert_eq!(&d.close[d.close_head..], b"ok");
            }
            other => panic!("{other:?}"),
        }
    }
}
