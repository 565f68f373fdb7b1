//! The built-in demo run by `ringlb` with no arguments: two direct-response
//! "backends" served by ringlb itself, fronted by a balancing listener.

/// Demo configuration text; `ringlb --print-demo-config` prints it.
pub const DEMO_CONFIG: &str = r#"# ringlb built-in demo: ringlb balances :8080 over two backends that it
# serves itself (direct-response listeners on :8081 and :8082).
workers = 2

[[listener]]
listen = "127.0.0.1:8080"
upstream = "demo"

[[listener.route]]
path_prefix = "/healthz"
status = 200
body = "ok\n"

[[listener]]
listen = "127.0.0.1:8081"
status = 200
body = "hello from backend 1\n"

[[listener]]
listen = "127.0.0.1:8082"
status = 200
body = "hello from backend 2\n"

[[upstream]]
name = "demo"
servers = ["127.0.0.1:8081", "127.0.0.1:8082"]
"#;
