//! Validating `[[listener]]` tables: addresses (and their collisions),
//! routes, direct answers, access logs.

use super::raw::{self, RawListener, RawRoute};
use super::*;

impl Ctx<'_> {
    /// Two listening addresses that `run` could not both bind: the same
    /// port in the same family, on the same address or one of them on every
    /// address (`0.0.0.0`, `[::]`). Port 0 (a free port, chosen at start) never
    /// collides.
    pub(super) fn no_collision(
        &self,
        addr: SocketAddr,
        other: SocketAddr,
        span: Range<usize>,
        other_span: Range<usize>,
    ) -> Result<(), ConfigError> {
        let collides = addr.port() != 0
            && addr.port() == other.port()
            && addr.is_ipv4() == other.is_ipv4()
            && (addr.ip() == other.ip()
                || addr.ip().is_unspecified()
                || other.ip().is_unspecified());
        if !collides {
            return Ok(());
        }
        let (line, _) = self.position(other_span.start);
        let why = if addr.ip() == other.ip() {
            "the same address".to_string()
        } else {
            let every = if addr.ip().is_unspecified() {
                addr
            } else {
                other
            };
            format!("{} covers every address", every.ip())
        };
        Err(self.err(
            span,
            "listen",
            format!(
                "{addr} collides with {other} (line {line}): {why} on port {}",
                addr.port()
            ),
        ))
    }

    pub(super) fn action(
        &self,
        upstream: &Option<Spanned<String>>,
        status: &Option<Spanned<i64>>,
        body: &Option<String>,
        content_type: &Option<String>,
        upstreams: &[UpstreamConfig],
        anchor: Range<usize>,
    ) -> Result<Action, ConfigError> {
        match (upstream, status) {
            (Some(_), Some(s)) => Err(self.err(
                s.span(),
                "status",
                "set either `upstream` or `status`, not both",
            )),
            (Some(u), None) => {
                let idx = upstreams
                    .iter()
                    .position(|x| &x.name == u.get_ref())
                    .ok_or_else(|| {
                        self.err(
                            u.span(),
                            "upstream",
                            format!("no [[upstream]] is named `{}`", u.get_ref()),
                        )
                    })?;
                Ok(Action::Proxy(idx))
            }
            (None, Some(s)) => {
                let code = *s.get_ref();
                if !(200..=599).contains(&code) || code == 204 || code == 304 {
                    return Err(self.err(s.span(), "status", format!("{code} is not a status a direct response can send (200-599, not 204/304)")));
                }
                Ok(Action::Respond(DirectResponse {
                    status: code as u16,
                    body: body.clone().unwrap_or_default(),
                    content_type: content_type
                        .clone()
                        .unwrap_or_else(|| "text/plain".to_string()),
                }))
            }
            (None, None) => Err(self.err(
                anchor,
                "upstream",
                "needs `upstream = \"NAME\"` or a direct response (`status`, `body`)",
            )),
        }
    }

    pub(super) fn listener(
        &self,
        l: &RawListener,
        upstreams: &[UpstreamConfig],
    ) -> Result<ListenerConfig, ConfigError> {
        let addr = self.addr(&l.listen, "listen")?;
        let default_action = self.action(
            &l.upstream,
            &l.status,
            &l.body,
            &l.content_type,
            upstreams,
            l.listen.span(),
        )?;
        let mut routes: Vec<RouteConfig> = Vec::with_capacity(l.route.len());
        for r in &l.route {
            let route = self.route(r, upstreams, l.listen.span())?;
            if let (Some(name), Some(span)) = (&route.name, r.name.as_ref().map(|n| n.span())) {
                if routes.iter().any(|o| o.name.as_ref() == Some(name)) {
                    return Err(self.err(
                        span,
                        "name",
                        format!("two routes of this listener are named `{name}`"),
                    ));
                }
            }
            routes.push(route);
        }
        let access_log = match &l.access_log {
            None => None,
            Some(a) => Some(self.access_log(a)?),
        };
        Ok(ListenerConfig {
            addr,
            routes,
            default_action,
            access_log,
        })
    }

    pub(super) fn access_log(
        &self,
        a: &Spanned<raw::RawAccessLog>,
    ) -> Result<AccessLogConfig, ConfigError> {
        use crate::access_log::{writer::Target, Format};
        let r = a.get_ref();
        let path = r.path.get_ref().trim();
        if path.is_empty() {
            return Err(self.err(r.path.span(), "path", "must not be empty"));
        }
        let target = Target::parse(path);
        if let Target::File(p) = &target {
            let dir = p.parent().filter(|d| !d.as_os_str().is_empty());
            if dir.is_some_and(|d| !d.is_dir()) {
                return Err(self.err(
                    r.path.span(),
                    "path",
                    format!("`{path}`: its directory does not exist"),
                ));
            }
        }
        let format = match r.format.as_ref().map(|f| (f, f.get_ref().as_str())) {
            None | Some((_, "combined")) => Format::Combined,
            Some((_, "json")) => Format::Json,
            Some((f, other)) => {
                return Err(self.err(
                    f.span(),
                    "format",
                    format!("`{other}` is not \"combined\" or \"json\""),
                ))
            }
        };
        Ok(AccessLogConfig { target, format })
    }

    pub(super) fn route(
        &self,
        r: &RawRoute,
        upstreams: &[UpstreamConfig],
        anchor: Range<usize>,
    ) -> Result<RouteConfig, ConfigError> {
        let anchor = r
            .host
            .as_ref()
            .map(|h| h.span())
            .or_else(|| r.path_prefix.as_ref().map(|p| p.span()))
            .unwrap_or(anchor);
        let path_prefix = match &r.path_prefix {
            None => "/".to_string(),
            Some(p) if !p.get_ref().starts_with('/') => {
                return Err(self.err(p.span(), "path_prefix", "must start with `/`"))
            }
            Some(p) => p.get_ref().clone(),
        };
        let host = r.host.as_ref().map(|h| h.get_ref().to_ascii_lowercase());
        let name = match &r.name {
            None => None,
            Some(n) => {
                let v = n.get_ref().trim();
                let reserved = v == "default" || v == "-" || v.parse::<usize>().is_ok();
                if v.is_empty() || reserved {
                    return Err(self.err(
                        n.span(),
                        "name",
                        "must be non-empty, not a number, not `default` or `-` (those label unnamed routes)",
                    ));
                }
                Some(v.to_string())
            }
        };
        let action = self.action(
            &r.upstream,
            &r.status,
            &r.body,
            &r.content_type,
            upstreams,
            anchor,
        )?;
        Ok(RouteConfig {
            name,
            host,
            path_prefix,
            action,
        })
    }
}
