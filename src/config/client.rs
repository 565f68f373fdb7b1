//! Validating the `[client]` table: timeouts, limits, request rules.

use super::raw;
use super::*;

impl Ctx<'_> {
    pub(super) fn client(&self, c: raw::RawClient) -> Result<ClientSettings, ConfigError> {
        let d = ClientSettings::default();
        Ok(ClientSettings {
            head_timeout: self.duration(&c.head_timeout, "head_timeout", d.head_timeout)?,
            idle_timeout: self.duration(&c.idle_timeout, "idle_timeout", d.idle_timeout)?,
            body_timeout: self.duration(&c.body_timeout, "body_timeout", d.body_timeout)?,
            write_timeout: self.duration(&c.write_timeout, "write_timeout", d.write_timeout)?,
            tunnel_idle_timeout: self.duration(
                &c.tunnel_idle_timeout,
                "tunnel_idle_timeout",
                d.tunnel_idle_timeout,
            )?,
            max_head_bytes: self.int(
                &c.max_head_bytes,
                "max_head_bytes",
                1024,
                1 << 20,
                d.max_head_bytes as i64,
            )? as usize,
            max_request_line_bytes: self.int(
                &c.max_request_line_bytes,
                "max_request_line_bytes",
                64,
                1 << 20,
                d.max_request_line_bytes as i64,
            )? as usize,
            max_chunk_bytes: self.int(
                &c.max_chunk_bytes,
                "max_chunk_bytes",
                1,
                1 << 31,
                d.max_chunk_bytes as i64,
            )? as u64,
            request_id: match &c.request_id {
                None => d.request_id,
                Some(s) => match s.get_ref().as_str() {
                    "keep" => RequestIds::Keep,
                    "replace" => RequestIds::Replace,
                    "off" => RequestIds::Off,
                    other => {
                        return Err(self.err(
                            s.span(),
                            "request_id",
                            format!("`{other}` is not one of \"keep\", \"replace\", \"off\""),
                        ))
                    }
                },
            },
            headers_with_underscores: match &c.headers_with_underscores {
                None => d.headers_with_underscores,
                Some(s) => match s.get_ref().as_str() {
                    "drop" => Underscores::Drop,
                    "pass" => Underscores::Pass,
                    "reject" => Underscores::Reject,
                    other => {
                        return Err(self.err(
                            s.span(),
                            "headers_with_underscores",
                            format!("`{other}` is not one of \"drop\", \"pass\", \"reject\""),
                        ))
                    }
                },
            },
        })
    }
}
