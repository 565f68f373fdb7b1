//! HTTP/1.1 wire handling: parsing and validating heads, body framing, header
//! rewriting and canned responses. Pure functions over byte slices: no sockets here.

pub mod canned;
pub mod chunked;
pub mod fields;
pub mod path;
pub mod reframe;
pub mod request;
pub mod response;
pub mod rewrite;

/// Most header fields accepted in one head (more is 431 for requests, 502 for responses).
pub const MAX_HEADERS: usize = 100;

/// Room for the fields of one head, left uninitialised: httparse writes the
/// ones it parses (zeroing 100 empty fields per head measured as a visible memset).
pub type HeaderSlots<'b> = [std::mem::MaybeUninit<httparse::Header<'b>>; MAX_HEADERS];

/// Fresh, uninitialised `HeaderSlots` (costs nothing at run time).
#[inline]
pub fn header_slots<'b>() -> HeaderSlots<'b> {
    [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS]
}

/// How a message body is delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body at all.
    None,
    /// Exactly this many bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Until the sender closes (responses only).
    UntilClose,
}

impl Framing {
    pub fn has_body(self) -> bool {
        !matches!(self, Framing::None | Framing::Length(0))
    }
}
