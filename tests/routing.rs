//! Routes match the normalised path: no spelling of a path a backend treats
//! as the same reaches a route meant to stop it. The request goes upstream
//! with its target unchanged.

mod common;

use common::client::{get, Client};
use common::origin::Origin;
use common::Ringlb;

#[test]
fn a_blocked_prefix_cannot_be_bypassed_by_spelling() {
    let origin = Origin::start();
    let lb = Ringlb::start(&format!(
        "workers = 1\n[[listener]]\nlisten = \"127.0.0.1:0\"\nupstream = \"app\"\n\
         [[listener.route]]\npath_prefix = \"/admin\"\nstatus = 403\nbody = \"no\"\n\
         [[upstream]]\nname = \"app\"\nservers = [\"{}\"]\n",
        origin.addr
    ));
    for path in [
        "/admin",
        "/admin/users",
        "/%61dmin",
        "/%61%64%6d%69%6e/users",
        "//admin",
        "///admin/x",
        "/./admin",
        "/x/../admin",
        "/x/y/../../admin",
        "/%2e/admin",
        "/x/%2E%2E/admin",
        "/../admin",
        "/public/%2e%2e%2fadmin",
        "/public/..%2F..%2Fadmin/x",
    ] {
        let r = get(lb.addr(), path);
        assert_eq!(r.status, 403, "{path} reached the backend");
    }
    assert_eq!(origin.requests(), 0);
    // Paths that only look alike still pass, case-sensitively, with the
    // original target forwarded.
    for path in [
        "/Admin",
        "/administrator/../public",
        "/public/%2e%2e%3fadmin",
    ] {
        let r = get(lb.addr(), path);
        assert_eq!(
            r.status, 404,
            "{path}: the test origin's 404 for an unknown path"
        );
        let head = origin.heads().pop().unwrap();
        assert!(
            head.starts_with(&format!("GET {path} HTTP/1.1\r\n")),
            "{head}"
        );
    }
}

#[test]
fn path_hashing_uses_the_normalised_path() {
    let origins: Vec<Origin> = (0..4).map(|_| Origin::start()).collect();
    let servers = origins
        .iter()
        .map(|o| format!("\"{}\"", o.addr))
        .collect::<Vec<_>>()
        .join(", ");
    let lb = Ringlb::start(&format!(
        "workers = 1\n[[listener]]\nlisten = \"127.0.0.1:0\"\nupstream = \"app\"\n\
         [[upstream]]\nname = \"app\"\nservers = [{servers}]\nbalance = \"maglev\"\nhash_key = \"path\"\n"
    ));
    for base in ["/a", "/b", "/c", "/d", "/e"] {
        let before: Vec<usize> = origins.iter().map(|o| o.requests()).collect();
        for spelling in [
            base.to_string(),
            format!("/.{base}"),
            format!("/x/..{base}"),
            format!("/{base}"),
        ] {
            let mut c = Client::connect(lb.addr());
            c.send(format!("GET {spelling} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes());
            c.read_response(false);
        }
        let hits: Vec<usize> = origins
            .iter()
            .zip(&before)
            .map(|(o, b)| o.requests() - b)
            .collect();
        assert!(
            hits.contains(&4),
            "{base}: spellings spread over servers: {hits:?}"
        );
    }
}
