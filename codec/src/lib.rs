//! Wire formats of the login server and the message gate, byte-compatible
//! with skynet's `snax.loginserver` / `snax.msgserver`
//! (`spec/skynet-wire.md` §2, §4.3, §5.2, §5.4).
//!
//! * [`package`]: the gate's BE16 length-prefixed packages ([`PackageCodec`]).
//! * [`line`](mod@line): the login server's LF-terminated lines with skynet's 8 KiB
//!   buffer limit ([`LineCodec`]).
//! * [`handshake`]: the gate handshake, zero copy over [`bytes::Bytes`].
//! * [`lua_number`]: the handshake index read as skynet reads it, a Lua
//!   number.
//! * [`message`]: requests and responses, zero copy over [`bytes::Bytes`]
//!   (and the two above re-exported, where they were first written).
//! * [`status`]: login and gate status codes with their exact wire text.
//! * `websocket` (feature `websocket`): the same lines and packages carried
//!   as WebSocket messages, for browsers.
//! * [`ext`]: the handshake extension field a client opts in to the gate's
//!   extensions with (push, kick reasons, heartbeat).
//!
//! This crate only turns bytes into frames and frames into fields: no crypto,
//! no sockets, no clock. The codecs implement tokio-util's `Decoder` and
//! `Encoder`, so drivers use them with `Framed`; everything else is plain
//! functions usable from sans-IO state machines.
//!
//! ```
//! use bytes::BytesMut;
//! use codec::{PackageCodec, Request, Response, ResponseFlag};
//! use tokio_util::codec::Decoder;
//!
//! // Client side: a request package. Server side: decode and split it.
//! let mut wire = BytesMut::new();
//! Request::encode(b"echo", 7, &mut wire)?;
//! let payload = PackageCodec.decode(&mut wire)?.expect("a whole package");
//! let request = Request::parse(payload).expect("at least 4 bytes");
//! assert_eq!((&request.content[..], request.number), (&b"echo"[..], 7));
//!
//! // The answer, exactly as skynet frames it: content ‖ 01 ‖ BE32(number).
//! Response::encode(&request.content, ResponseFlag::OK, request.number, &mut wire)?;
//! assert_eq!(&wire[..], b"\x00\x09echo\x01\x00\x00\x00\x07");
//! # Ok::<(), codec::FrameError>(())
//! ```

pub mod ext;
pub mod handshake;
pub mod line;
pub mod lua_number;
pub mod message;
pub mod package;
pub mod status;
#[cfg(feature = "websocket")]
pub mod websocket;

pub use ext::{Ext, ExtError, Welcome};
pub use line::{LineCodec, LineError, encode_line};
pub use message::{
    Handshake, LuaNumber, MAX_REQUEST_CONTENT, MAX_RESPONSE_CONTENT, Request, Response,
    ResponseFlag,
};
pub use package::{
    FrameError, HEADER_LEN, MAX_PAYLOAD, PackageCodec, decode_package, encode_package,
};
pub use status::{GateStatus, LoginStatus};
