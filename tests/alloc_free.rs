//! The hot path allocates nothing in steady state: ringlb runs in-process under a
//! counting allocator that counts only on worker threads; after warm-up, N more
//! proxied requests must not allocate at all. The same allocator tracks live
//! heap bytes, which bounds what an idle keep-alive connection costs.

mod common;

use common::client::Client;
use common::origin::{dead_addr, Origin};
use ringlb::config::Config;
use ringlb::runtime::{self, Shutdown};
use std::alloc::{GlobalAlloc, Layout, System};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);
/// Heap bytes allocated minus freed on worker threads.
static LIVE: AtomicI64 = AtomicI64::new(0);
/// Highest `LIVE` seen since the last reset.
static PEAK: AtomicI64 = AtomicI64::new(0);
/// Like `LIVE`, counting only blocks under `SMALL` bytes: what one connection
/// allocates, without the pages of the runtime's tables (whose growing and
/// shrinking would blur a per-connection figure by tens of bytes).
static SMALL_LIVE: AtomicI64 = AtomicI64::new(0);
const SMALL: usize = 4096;

fn grow_live(by: i64) {
    let now = LIVE.fetch_add(by, Ordering::Relaxed) + by;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

fn track_small(old: usize, new: usize) {
    let size = |n: usize| if n < SMALL { n as i64 } else { 0 };
    SMALL_LIVE.fetch_add(size(new) - size(old), Ordering::Relaxed);
}

// SAFETY: delegates to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if runtime::in_worker() {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
            grow_live(layout.size() as i64);
            track_small(0, layout.size());
        }
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if runtime::in_worker() {
            LIVE.fetch_sub(layout.size() as i64, Ordering::Relaxed);
            track_small(layout.size(), 0);
        }
        System.dealloc(ptr, layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if runtime::in_worker() {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
            grow_live(layout.size() as i64);
            track_small(0, layout.size());
        }
        System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if runtime::in_worker() {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
            grow_live(new_size as i64 - layout.size() as i64);
            track_small(layout.size(), new_size);
        }
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// One ringlb for all cases (tests in this file run one at a time through this lock).
static SERIAL: Mutex<()> = Mutex::new(());

fn start(config: &str) -> (Arc<Shutdown>, runtime::Running) {
    let config = Config::parse(config, "alloc-test").unwrap();
    let shutdown = Arc::new(Shutdown::default());
    let running = runtime::start(config, shutdown.clone(), Vec::new()).unwrap();
    (shutdown, running)
}

fn count_over(
    addr: SocketAddr,
    request: &[u8],
    head_request: bool,
    expect: u16,
    warmup: usize,
    n: usize,
) -> u64 {
    let mut c = Client::connect(addr);
    for _ in 0..warmup {
        c.send(request);
        assert_eq!(c.read_response(head_request).status, expect);
    }
    let before = ALLOCS.load(Ordering::SeqCst);
    for _ in 0..n {
        c.send(request);
        assert_eq!(c.read_response(head_request).status, expect);
    }
    ALLOCS.load(Ordering::SeqCst) - before
}

fn proxied(servers: &str) -> String {
    proxied_with(servers, "")
}

/// Metrics are always on; every case also writes a JSON access log, so the
/// counts cover both.
fn proxied_with(servers: &str, upstream_extra: &str) -> String {
    let log = common::temp_path("alloc-access.json");
    format!(
        "workers = 1\n[[listener]]\nlisten = \"127.0.0.1:0\"\nupstream = \"app\"\n\
         access_log = {{ path = \"{}\", format = \"json\" }}\n\
         [[listener.route]]\npath_prefix = \"/direct\"\nstatus = 200\nbody = \"direct\"\n\
         [[upstream]]\nname = \"app\"\nservers = [{servers}]\n{upstream_extra}\n",
        log.display()
    )
}

#[test]
fn steady_state_requests_do_not_allocate() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let origin = Origin::start();
    let (shutdown, running) = start(&proxied(&format!("\"{}\"", origin.addr)));
    let addr = running.bound[0];
    let big = format!("GET /bytes/{} HTTP/1.1\r\nHost: x\r\n\r\n", 64 * 1024);
    // Larger than one buffer: the body streams upstream while the response is relayed.
    let mut upload = format!(
        "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        100 * 1024
    )
    .into_bytes();
    upload.resize(upload.len() + 100 * 1024, b'u');
    let cases: Vec<(&str, Vec<u8>, bool)> = vec![
        ("13 B GET, Content-Length", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), false),
        ("64 KiB response", big.into_bytes(), false),
        ("chunked response", b"GET /chunked HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), false),
        ("HEAD", b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), true),
        ("POST with Content-Length body", b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello".to_vec(), false),
        (
            "POST with chunked body",
            b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n".to_vec(),
            false,
        ),
        ("direct response", b"GET /direct HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), false),
        ("POST 100 KiB body, streamed", upload, false),
    ];
    let mut report = Vec::new();
    for (name, req, head) in &cases {
        let n = count_over(addr, req, *head, 200, 200, 1000);
        report.push(format!("{name}: {n} allocations in 1000 requests"));
    }
    // A path that routing must normalise (the origin does not know it: 404).
    let escaped = b"GET /a%2Fb/./%63//d/../e HTTP/1.1\r\nHost: x\r\n\r\n";
    let n = count_over(addr, escaped, false, 404, 200, 1000);
    report.push(format!(
        "path normalised for routing: {n} allocations in 1000 requests"
    ));
    shutdown.request();
    running.wait();
    let text = report.join("\n");
    eprintln!("{text}");
    assert!(
        report.iter().all(|l| l.contains(": 0 allocations")),
        "{text}"
    );
}

#[test]
fn bad_gateway_path_does_not_allocate() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // Passive ejection off: every request tries the dead server and gets 502.
    let config = proxied_with(
        &format!("\"{}\"", dead_addr()),
        "[upstream.outlier]\nconsecutive_failures = 0",
    );
    let (shutdown, running) = start(&config);
    let n = count_over(
        running.bound[0],
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        false,
        502,
        200,
        1000,
    );
    shutdown.request();
    running.wait();
    assert_eq!(n, 0, "allocations on the 502 path: {n}");
}

#[test]
fn fast_503_when_no_server_is_up_does_not_allocate() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // Active checks take the dead server down (the checker's thread is not a
    // worker: its allocations are not counted).
    let config = proxied_with(
        &format!("\"{}\"", dead_addr()),
        "[upstream.health_check]\ntype = \"tcp\"\ninterval = \"100ms\"\ntimeout = \"50ms\"\nfall = 1",
    );
    let (shutdown, running) = start(&config);
    let addr = running.bound[0];
    let mut c = Client::connect(addr);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        c.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        if c.read_response(false).status == 503 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the server never went down"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // Past any refusal hold: only the checks keep the server out now.
    std::thread::sleep(ringlb::upstream::outlier::REFUSED_HOLD);
    let n = count_over(
        addr,
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        false,
        503,
        200,
        1000,
    );
    shutdown.request();
    running.wait();
    assert_eq!(n, 0, "allocations on the 503 path: {n}");
}

#[test]
fn shed_503_path_does_not_allocate() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let origin = Origin::start();
    let config = proxied_with(
        &format!("\"{}\"", origin.addr),
        "max_in_flight = 1\nresponse_timeout = \"30s\"",
    );
    let (shutdown, running) = start(&config);
    let addr = running.bound[0];
    // One slow request holds the pool's only slot while the others are shed.
    let holder = std::thread::spawn(move || {
        let mut c = Client::connect(addr);
        c.send(b"GET /slow/2500 HTTP/1.1\r\nHost: x\r\n\r\n");
        c.read_response(false).status
    });
    common::eventually(
        "the slow request at the origin",
        std::time::Duration::from_secs(10),
        || origin.requests() > 0,
    );
    let n = count_over(
        addr,
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        false,
        503,
        200,
        1000,
    );
    assert_eq!(holder.join().unwrap(), 200);
    shutdown.request();
    running.wait();
    assert_eq!(n, 0, "allocations on the shed path: {n}");
}

#[test]
fn queued_requests_do_not_allocate() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let origin = Origin::start();
    let config = format!(
        "{}\n[admin]\nlisten = \"127.0.0.1:0\"\n",
        proxied_with(
            &format!("\"{}\"", origin.addr),
            "max_in_flight = 1\nqueue_size = 4\nqueue_timeout = \"10s\"",
        )
    );
    let (shutdown, running) = start(&config);
    let addr = running.bound[0];
    let admin = running.admin.expect("admin listener");
    // Two clients against a limit of one: while one request is at the
    // (1 ms) origin, the other's waits in the queue. The connections are
    // opened once, before counting (a connection's setup allocates).
    let both = |clients: [Client; 2], n: usize| -> [Client; 2] {
        clients
            .map(|mut c| {
                std::thread::spawn(move || {
                    for _ in 0..n {
                        c.send(b"GET /slow/1 HTTP/1.1\r\nHost: x\r\n\r\n");
                        assert_eq!(c.read_response(false).status, 200);
                    }
                    c
                })
            })
            .map(|t| t.join().unwrap())
    };
    let waited = || {
        common::metric(
            admin,
            "ringlb_upstream_queued_requests_total{upstream=\"app\"}",
        )
    };
    let clients = both([Client::connect(addr), Client::connect(addr)], 300);
    let (before, waited_before) = (ALLOCS.load(Ordering::SeqCst), waited());
    let _clients = both(clients, 500);
    let n = ALLOCS.load(Ordering::SeqCst) - before;
    let queued = waited() - waited_before;
    shutdown.request();
    running.wait();
    assert!(
        queued >= 200.0,
        "only {queued} of 1000 requests waited in the queue"
    );
    assert_eq!(n, 0, "allocations with {queued} requests queued: {n}");
}

/// Opens `n` keep-alive connections, one request each, and leaves them idle.
fn idle_connections(addr: SocketAddr, n: usize) -> Vec<Client> {
    let mut conns: Vec<Client> = (0..n).map(|_| Client::connect(addr)).collect();
    for c in &mut conns {
        c.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    }
    for c in &mut conns {
        assert_eq!(c.read_response(false).status, 200);
    }
    conns
}

/// A proxy in front of a test origin, warmed up by `n` idle clients that came
/// and went (growing the per-worker tables: ring op slab, timer wheel, pools).
fn proxy_warmed_by_idle_clients(n: usize) -> (Origin, Arc<Shutdown>, runtime::Running, SocketAddr) {
    let origin = Origin::start();
    let (shutdown, running) = start(&proxied(&format!("\"{}\"", origin.addr)));
    let addr = running.bound[0];
    drop(idle_connections(addr, n));
    (origin, shutdown, running, addr)
}

/// Waits (bounded) until the worker's live heap has not changed for 400 ms
/// (past the worker's post-burst trim, which comes ~150 ms after it goes quiet).
fn settled_live_bytes() -> i64 {
    settled(&LIVE)
}

/// `settled_live_bytes` for any of the counters.
fn settled(counter: &AtomicI64) -> i64 {
    let mut last = counter.load(Ordering::SeqCst);
    let mut stable = 0;
    for _ in 0..50 {
        std::thread::sleep(std::time::Duration::from_millis(100));
        let now = counter.load(Ordering::SeqCst);
        stable = if now == last { stable + 1 } else { 0 };
        if stable == 4 {
            break;
        }
        last = now;
    }
    last
}

#[test]
fn an_idle_keep_alive_connection_holds_under_512_bytes_of_heap() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    const N: usize = 500;
    // Warmed by twice as many, so the tables do not grow while N connections
    // come: a grown page could be freed again while they close (see below).
    let (_origin, shutdown, running, addr) = proxy_warmed_by_idle_clients(2 * N);
    // Small blocks only (see SMALL_LIVE): the runtime's tables grow and shrink
    // by whole pages (monoio's op slab drops an empty page every 2048
    // removals), which would move any one figure by ~50 bytes per connection.
    let mut cycles = Vec::new();
    let start = settled(&SMALL_LIVE);
    let mut closed = start;
    for _ in 0..3 {
        let before = closed;
        let conns = idle_connections(addr, N);
        let after = settled(&SMALL_LIVE);
        drop(conns);
        closed = settled(&SMALL_LIVE);
        let per = |bytes: i64| bytes as f64 / N as f64;
        // (added by opening, given back by closing, left over after closing)
        cycles.push((
            per(after - before),
            per(after - closed),
            per(closed - before),
        ));
    }
    let left_in_all = (closed - start) as f64 / N as f64;
    shutdown.request();
    running.wait();
    eprintln!(
        "per idle keep-alive connection, 3 cycles (opened, given back on close, left over): \
         {cycles:.0?}; left over after all three: {left_in_all:.1}"
    );
    for &(opened, given_back, left) in &cycles {
        // 448 bytes today: the task (296) and its socket (96 + 56); timer
        // entries and ring op slots are reused from the warm-up. An `async fn`
        // connection task measures 536.
        assert!(
            given_back > 256.0 && given_back <= 512.0,
            "{given_back:.0} bytes per idle connection given back on close"
        );
        assert!(
            opened > 256.0 && opened <= 512.0,
            "{opened:.0} bytes added per connection opened"
        );
        // Closing returns to the baseline.
        assert!(
            left.abs() < 4.0,
            "{left:.1} bytes per connection left after closing"
        );
    }
    assert!(
        left_in_all.abs() < 4.0,
        "{left_in_all:.1} bytes per connection leaked"
    );
}

#[test]
fn clients_closing_at_once_do_not_each_take_a_buffer() {
    use ringlb::buf::outstanding;
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    const N: usize = 500;
    let (_origin, shutdown, running, addr) = proxy_warmed_by_idle_clients(N);
    let conns = idle_connections(addr, N);
    let before = settled_live_bytes();
    let out_before = outstanding::now();
    outstanding::reset_high_water();
    drop(conns); // every connection becomes readable (EOF) in the same instant
    let after = settled_live_bytes();
    let most_out = outstanding::high_water() - out_before;
    shutdown.request();
    running.wait();
    eprintln!(
        "{N} idle clients closing at once: at most {most_out} more buffers out at a time \
         ({out_before} out before)"
    );
    assert!(after < before, "closed connections were freed");
    // Each connection takes a buffer for the direct read of its EOF and gives
    // it back at once. A read posted per readable connection would lend each
    // of them a 64 KiB buffer at the same time.
    assert!(
        most_out <= 8,
        "{most_out} buffers out at once for {N} closing clients"
    );
}
