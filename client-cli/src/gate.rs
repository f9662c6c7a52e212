//! The gate side of a client: the handshake [`Ticket`] a login yields, and
//! [`GateConn`], one user's connection to the message gate.
//!
//! A `GateConn` knows the user's ticket and the last handshake index it
//! tried, so it can drop its TCP connection and come back with index + 1
//! (the gate then resends cached responses), or with any chosen index (an
//! old one gets `403 Index Expired`). Requests and responses travel as
//! packages (`PackageCodec`); requests are encoded straight into the
//! connection's write buffer.
//!
//! # Gate extensions
//!
//! [`Extensions`] says whether the handshake opts in to the gate's
//! extensions (server push with replay, kick reasons, heartbeat; the gate's
//! `gate::players` docs and the README's protocol section have the wire
//! format). An opted-in connection remembers the sequence number of the last
//! push (or push-gap notice) it received and sends it with every later
//! handshake (`v=1,push=N`), so after a reconnect the gate replays exactly
//! the pushes it missed. The gate confirms the opt-in with a welcome
//! package right after `200 OK` ([`GateConn::welcome`]); a skynet gate
//! ignores the field and sends none, so a client sends heartbeats only once
//! welcomed (skynet closes a connection on one). [`GateConn::new`] starts [`Extensions::Plain`]:
//! the library behaves exactly like skynet's client unless asked; the
//! `client` subcommands opt in by default (`--plain` to not).
//!
//! # Sealed channel
//!
//! An opted-in connection of an x25519 session asks for the sealed channel
//! (`seal=1`, `docs/PROTOCOL.md` §3.2) unless told not to
//! ([`GateConn::set_seal`]): after the `200 OK` every package both ways is
//! sealed with ChaCha20-Poly1305 under keys of this connection's index. A
//! package from the gate that fails to open ends the connection with
//! [`ClientError::Io`] (`InvalidData`); a reconnect derives fresh keys.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use codec::websocket::Mapping;
use futures::{SinkExt, StreamExt};

use crate::net::Stream;
use tokio_util::codec::Framed;

use codec::{Ext, GateStatus, Handshake, PackageCodec, Request, Response, ResponseFlag, Welcome};
use loginproto::handshake::{self, SessionSecret};
use loginproto::login::LoginSuccess;
use loginproto::seal::{self, Channel, Direction};
use tokio_util::codec::{Decoder, Encoder};

use crate::error::ClientError;
use crate::text;

/// Where the gate is and how to handshake; shared by `shell` and `run`.
#[derive(Debug, Clone, clap::Args)]
pub struct GateArgs {
    /// Address of the message gate: `host:port` for TCP, `tls://host:port`
    /// for its TLS listener (with `--tls-ca-file`), or `ws://host:port`
    /// (`wss://` with `--tls-ca-file`) for its WebSocket listener.
    #[arg(
        long = "gate",
        value_name = "HOST:PORT",
        default_value = "127.0.0.1:8888"
    )]
    pub gate: String,
    /// Handshake like a plain skynet client: no extension field, so no
    /// pushes, no kick reasons, no heartbeat (the gate then sends exactly
    /// what skynet would). By default the client opts in with
    /// `v=1,push=<last seen>`.
    #[arg(long, conflicts_with = "handshake_ext")]
    pub plain: bool,
    /// Send this extension field verbatim after a third `:` of every
    /// handshake instead (not signed, unless it asks for `seal=1`; for
    /// testing the gate's parser).
    #[arg(long, value_name = "TEXT")]
    pub handshake_ext: Option<String>,
    /// Do not ask for the sealed channel. By default an x25519 session's
    /// opted-in handshakes ask for it (`seal=1`): every package after the
    /// handshake is then encrypted and authenticated (ChaCha20-Poly1305).
    #[arg(long)]
    pub no_seal: bool,
    /// Once the gate welcomed the opt-in, send a heartbeat (an empty
    /// package) when nothing was sent for this long (or a third of the
    /// gate's idle timeout, if shorter), so a quiet session is never closed
    /// as idle; 0 = never.
    #[arg(long, value_name = "SECS", default_value = "20", value_parser = text::parse_duration)]
    pub heartbeat: Duration,
}

impl GateArgs {
    /// The [`Extensions`] these options ask for.
    pub fn extensions(&self) -> Extensions {
        match (&self.handshake_ext, self.plain) {
            (Some(raw), _) => Extensions::Raw(raw.as_bytes().to_vec()),
            (None, true) => Extensions::Plain,
            (None, false) => Extensions::OptIn,
        }
    }
}

/// How a connection's handshakes treat the gate's extensions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Extensions {
    /// A plain skynet handshake: no extension field. The gate then never
    /// sends a push, a kick package or a heartbeat answer.
    #[default]
    Plain,
    /// Opt in: the field `v=1,push=<last push seen>`, tracked across
    /// reconnects.
    OptIn,
    /// This field, verbatim (QA: malformed fields, future keys). Pushes are
    /// still tracked, but not sent.
    Raw(Vec<u8>),
}

/// What [`GateConn::recv_inbound`] returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound {
    /// A response, push, push-gap notice or kick package.
    Response(Response),
    /// The gate accepted the opt-in (right after `200 OK`).
    Welcome {
        /// What it serves.
        welcome: Welcome,
        /// The sequence number of the session's last push.
        last_push: u32,
    },
    /// The answer to a heartbeat (an empty package).
    Pong,
}

/// What a client needs to handshake with the gate after a login.
#[derive(Debug, Clone)]
pub struct Ticket {
    /// The uid the user logged in as.
    pub uid: Vec<u8>,
    /// The gate's server name.
    pub server: Vec<u8>,
    /// The subid the login server answered.
    pub subid: Vec<u8>,
    /// The secret handshakes are signed with.
    pub secret: SessionSecret,
}

impl Ticket {
    /// The ticket of a successful login of `uid` to gate `server`.
    pub fn new(uid: &[u8], server: &[u8], login: &LoginSuccess) -> Ticket {
        Ticket {
            uid: uid.to_vec(),
            server: server.to_vec(),
            subid: login.subid.clone(),
            secret: login.secret.clone(),
        }
    }

    /// The gate username `b64(uid)@b64(server)#b64(subid)`.
    pub fn username(&self) -> Vec<u8> {
        handshake::username(&self.uid, &self.server, &self.subid)
    }

    /// The handshake payload for `index` (decimal text, signed as sent).
    /// A field asking for the sealed channel (`seal=1`) is signed so:
    /// the MAC covers `username ":" index ":seal"`.
    pub fn handshake(&self, index: &[u8], ext: Option<&[u8]>) -> Vec<u8> {
        let username = self.username();
        let sealed = ext.is_some_and(|ext| matches!(Ext::parse(ext), Ok(Some(e)) if e.seal));
        match ext {
            Some(ext) if sealed => handshake::sign_sealed(&self.secret, &username, index, ext),
            Some(ext) => handshake::sign_with_ext(&self.secret, &username, index, ext),
            None => handshake::sign(&self.secret, &username, index),
        }
    }
}

/// One user's connection to the message gate.
#[derive(Debug)]
pub struct GateConn {
    addr: String,
    ticket: Ticket,
    timeout: Duration,
    /// The index of the last handshake sent (0 before the first).
    last_index: u64,
    /// Whether handshakes opt in to the gate's extensions.
    ext: Extensions,
    /// Whether opted-in handshakes of an x25519 session ask for the
    /// sealed channel.
    seal: bool,
    /// The current connection's sealing direction, if it is sealed.
    send_seal: Option<Direction>,
    /// Sequence number of the last push (or push gap) received in this
    /// session, across connections.
    last_push: u32,
    /// The current connection's handshake carried a valid extension field.
    opted_in: bool,
    /// The current connection's welcome, once received.
    welcome: Option<Welcome>,
    /// The local address to dial from (default: the system's choice).
    source: Option<std::net::IpAddr>,
    link: Option<Framed<Stream, GateCodec>>,
}

impl GateConn {
    /// A connection object for `ticket` on the gate at `addr`; nothing is
    /// dialled yet. `timeout` bounds connecting plus handshaking.
    pub fn new(addr: impl Into<String>, ticket: Ticket, timeout: Duration) -> GateConn {
        GateConn {
            addr: addr.into(),
            ticket,
            timeout,
            last_index: 0,
            ext: Extensions::Plain,
            seal: true,
            send_seal: None,
            last_push: 0,
            opted_in: false,
            welcome: None,
            source: None,
            link: None,
        }
    }

    /// Dials from this local address from now on (`None`: the system's
    /// choice); see [`crate::net`].
    pub fn set_source(&mut self, source: Option<std::net::IpAddr>) {
        self.source = source;
    }

    /// Dials and handshakes with `index`; `Ok` only on `200 OK`.
    pub async fn open(
        addr: impl Into<String>,
        ticket: Ticket,
        index: u64,
        timeout: Duration,
    ) -> Result<GateConn, ClientError> {
        let mut conn = GateConn::new(addr, ticket, timeout);
        conn.connect(index).await?;
        Ok(conn)
    }

    /// The ticket this connection signs with.
    pub fn ticket(&self) -> &Ticket {
        &self.ticket
    }

    /// The gate address.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The index of the last handshake sent (0 before the first).
    pub fn last_index(&self) -> u64 {
        self.last_index
    }

    /// Whether a handshaken connection is open (as far as we know: a close
    /// by the gate is noticed by [`GateConn::recv`]).
    pub fn is_connected(&self) -> bool {
        self.link.is_some()
    }

    /// Changes the connect + handshake deadline.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// Sets the handshake extension field sent with every later handshake,
    /// verbatim (`None`: a plain handshake). See [`GateConn::set_extensions`].
    pub fn set_handshake_ext(&mut self, ext: Option<Vec<u8>>) {
        self.ext = ext.map_or(Extensions::Plain, Extensions::Raw);
    }

    /// Chooses how later handshakes treat the gate's extensions.
    pub fn set_extensions(&mut self, ext: Extensions) {
        self.ext = ext;
    }

    /// How handshakes treat the gate's extensions.
    pub fn extensions(&self) -> &Extensions {
        &self.ext
    }

    /// Whether opted-in handshakes of an x25519 session ask for the
    /// sealed channel (the default) or not.
    pub fn set_seal(&mut self, seal: bool) {
        self.seal = seal;
    }

    /// Whether the current connection is sealed.
    pub fn is_sealed(&self) -> bool {
        self.send_seal.is_some() && self.link.is_some()
    }

    /// The extension field the next handshake sends (without the `:`).
    pub fn handshake_ext(&self) -> Option<Vec<u8>> {
        let x25519 = matches!(self.ticket.secret, SessionSecret::X25519(_));
        match &self.ext {
            Extensions::Plain => None,
            Extensions::OptIn => Some(
                Ext::new(self.last_push)
                    .sealed(self.seal && x25519)
                    .encode()
                    .into_bytes(),
            ),
            Extensions::Raw(raw) => Some(raw.clone()),
        }
    }

    /// The sequence number of the last push (or push-gap notice) received
    /// in this session; 0 before the first.
    pub fn last_push(&self) -> u32 {
        self.last_push
    }

    /// Whether the current connection opted in to the extensions (its
    /// handshake carried a valid extension field).
    pub fn is_opted_in(&self) -> bool {
        self.opted_in && self.link.is_some()
    }

    /// The gate's welcome on the current connection, once received: the
    /// gate speaks the extensions, and this is its idle timeout.
    pub fn welcome(&self) -> Option<&Welcome> {
        self.welcome.as_ref().filter(|_| self.link.is_some())
    }

    /// Closes the current connection (if any) without logging out: the gate
    /// keeps the session and its response cache for a reconnect.
    pub fn disconnect(&mut self) {
        self.link = None;
        self.send_seal = None;
    }

    /// Drops the current connection and handshakes with `index` on a new
    /// one. `Err(HandshakeRefused)` when the gate answers anything but
    /// `200 OK` (it then closes the connection).
    pub async fn connect(&mut self, index: u64) -> Result<(), ClientError> {
        let ext = self.handshake_ext();
        let payload = self
            .ticket
            .handshake(index.to_string().as_bytes(), ext.as_deref());
        self.last_index = index;
        match self.connect_with(&payload).await? {
            GateStatus::OK => Ok(()),
            status => Err(ClientError::HandshakeRefused(status)),
        }
    }

    /// Reconnects with the index after the last one sent.
    pub async fn reconnect(&mut self) -> Result<(), ClientError> {
        self.connect(self.last_index.saturating_add(1)).await
    }

    /// Drops the current connection, dials, sends `payload` as the handshake
    /// package (any bytes: QA uses it for malformed handshakes) and returns
    /// the gate's status. The connection is kept only on `200 OK`.
    ///
    /// A handshake that asks for the sealed channel (`seal=1`) of an
    /// x25519 session makes a sealed connection.
    pub async fn connect_with(&mut self, payload: &[u8]) -> Result<GateStatus, ClientError> {
        self.link = None;
        self.send_seal = None;
        self.welcome = None;
        let hs = Handshake::parse(&Bytes::copy_from_slice(payload));
        let ext = hs
            .as_ref()
            .and_then(|hs| hs.ext.as_ref())
            .and_then(|ext| Ext::parse(ext).ok().flatten());
        self.opted_in = ext.is_some();
        let channel = match (&self.ticket.secret, &hs) {
            (SessionSecret::X25519(key), Some(hs)) if ext.is_some_and(|e| e.seal) => {
                Some(Channel::client(key, &hs.index))
            }
            _ => None,
        };
        let timeout = self.timeout;
        let sealed = channel.is_some();
        let (mut link, status) =
            tokio::time::timeout(timeout, dial(&self.addr, self.source, payload, sealed))
                .await
                .map_err(|_| ClientError::Timeout {
                    what: "gate handshake",
                    after: timeout,
                })??;
        if status == GateStatus::OK {
            if let Some(Channel { send, recv }) = channel {
                link.codec_mut().open = Some(recv);
                self.send_seal = Some(send);
            }
            self.link = Some(link);
        }
        Ok(status)
    }

    /// Sends one request (`content ‖ BE32 number`) with request number
    /// `number`.
    pub async fn send(&mut self, content: &[u8], number: u32) -> Result<(), ClientError> {
        self.queue(content, number)?;
        self.flush().await
    }

    /// Appends a request to the write buffer without sending it yet (for
    /// pipelining several requests in one write); see [`GateConn::flush`].
    pub fn queue(&mut self, content: &[u8], number: u32) -> Result<(), ClientError> {
        let link = self.link.as_mut().ok_or(ClientError::NotConnected)?;
        let buf = link.write_buffer_mut();
        let start = buf.len();
        Request::encode(content, number, buf)?;
        seal_written(self.send_seal.as_mut(), buf, start)
    }

    /// Sends a heartbeat: an empty package, which an opted-in connection's
    /// gate answers with an empty package ([`Inbound::Pong`]). (A gate
    /// closes a plain connection for it, as skynet does.)
    pub async fn ping(&mut self) -> Result<(), ClientError> {
        let link = self.link.as_mut().ok_or(ClientError::NotConnected)?;
        let buf = link.write_buffer_mut();
        let start = buf.len();
        buf.extend_from_slice(&[0, 0]);
        seal_written(self.send_seal.as_mut(), buf, start)?;
        self.flush().await
    }

    /// Writes everything queued.
    pub async fn flush(&mut self) -> Result<(), ClientError> {
        let link = self.link.as_mut().ok_or(ClientError::NotConnected)?;
        if let Err(err) = SinkExt::<Bytes>::flush(link).await {
            self.link = None;
            return Err(err.into());
        }
        Ok(())
    }

    /// The next response, push, push-gap notice or kick from the gate;
    /// heartbeat answers and the welcome are skipped (the welcome is kept:
    /// [`GateConn::welcome`]). `Ok(None)` when the gate closed the
    /// connection (the connection is then dropped).
    ///
    /// Cancel safe: a package is either returned or stays buffered, so this
    /// can sit in a `select!` next to other inputs. Without a connection it
    /// never completes.
    pub async fn recv(&mut self) -> Result<Option<Response>, ClientError> {
        loop {
            match self.recv_inbound().await? {
                Some(Inbound::Response(response)) => return Ok(Some(response)),
                Some(Inbound::Pong | Inbound::Welcome { .. }) => {}
                None => return Ok(None),
            }
        }
    }

    /// Like [`GateConn::recv`], with heartbeat answers
    /// ([`Inbound::Pong`]) and the welcome. Pushes and push-gap notices
    /// update [`GateConn::last_push`]. Cancel safe.
    pub async fn recv_inbound(&mut self) -> Result<Option<Inbound>, ClientError> {
        let Some(link) = self.link.as_mut() else {
            return std::future::pending().await;
        };
        match link.next().await {
            Some(Ok(package)) if package.is_empty() && self.opted_in => Ok(Some(Inbound::Pong)),
            Some(Ok(package)) => {
                let len = package.len();
                match Response::parse(package) {
                    Some(response) if response.flag == ResponseFlag::WELCOME && self.opted_in => {
                        let welcome = Welcome::parse(&response.content).map_err(|_| {
                            ClientError::BadWelcome(text::payload(&response.content))
                        })?;
                        self.welcome = Some(welcome);
                        Ok(Some(Inbound::Welcome {
                            welcome,
                            last_push: response.number,
                        }))
                    }
                    Some(response) => {
                        if matches!(response.flag, ResponseFlag::PUSH | ResponseFlag::PUSH_GAP) {
                            // Each push (and gap) carries the number of the
                            // last push it accounts for.
                            self.last_push = response.number;
                        }
                        Ok(Some(Inbound::Response(response)))
                    }
                    None => Err(ClientError::MalformedResponse(len)),
                }
            }
            Some(Err(err)) => {
                self.link = None;
                Err(err.into())
            }
            None => {
                self.link = None;
                Ok(None)
            }
        }
    }

    /// Takes the socket out for a caller that drives it itself (the load
    /// generator), with any bytes already read but not yet decoded, and
    /// the channel if the connection is sealed.
    pub fn into_parts(self) -> Option<(Stream, BytesMut, Option<Channel>)> {
        let send = self.send_seal;
        self.link.map(|link| {
            let parts = link.into_parts();
            let channel = send
                .zip(parts.codec.open)
                .map(|(send, recv)| Channel { send, recv });
            (parts.io, parts.read_buf, channel)
        })
    }
}

/// Seals what was just written to `buf[start..]` (whole packages) if the
/// connection is sealed.
fn seal_written(
    send: Option<&mut Direction>,
    buf: &mut BytesMut,
    start: usize,
) -> Result<(), ClientError> {
    match send {
        Some(send) => seal::seal_packages(send, buf, start).map_err(|e| {
            buf.truncate(start);
            ClientError::Io(std::io::Error::new(std::io::ErrorKind::InvalidData, e))
        }),
        None => Ok(()),
    }
}

/// The gate connection's framing: packages, and once the connection is
/// sealed (`open` set, after the `200 OK`), sealed packages opened on the
/// way in. Writes are packages (the handshake); requests are sealed as
/// they are queued.
#[derive(Debug, Default)]
pub struct GateCodec {
    /// Opens the gate's packages of a sealed connection.
    pub open: Option<Direction>,
}

impl Decoder for GateCodec {
    type Item = Bytes;
    type Error = std::io::Error;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, std::io::Error> {
        match &mut self.open {
            None => Ok(codec::package::decode_package(src)),
            Some(open) => match seal::decode_sealed(src) {
                Some(body) => open
                    .open_body(body)
                    .map(Some)
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
                None => Ok(None),
            },
        }
    }
}

impl<'a> Encoder<&'a [u8]> for GateCodec {
    type Error = std::io::Error;

    fn encode(&mut self, item: &'a [u8], dst: &mut BytesMut) -> Result<(), std::io::Error> {
        PackageCodec
            .encode(item, dst)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
    }
}

impl Encoder<Bytes> for GateCodec {
    type Error = std::io::Error;

    fn encode(&mut self, item: Bytes, dst: &mut BytesMut) -> Result<(), std::io::Error> {
        self.encode(&item[..], dst)
    }
}

async fn dial(
    addr: &str,
    source: Option<std::net::IpAddr>,
    payload: &[u8],
    sealed: bool,
) -> Result<(Framed<Stream, GateCodec>, GateStatus), ClientError> {
    // Requests are small and latency matters more than packet count: the
    // dial sets TCP_NODELAY.
    let mapping = if sealed {
        Mapping::SealedPackages
    } else {
        Mapping::Packages
    };
    let stream = crate::net::dial(addr, source, mapping)
        .await
        .map_err(|source| ClientError::Connect {
            addr: addr.to_owned(),
            source,
        })?;
    let mut link = Framed::new(stream, GateCodec::default());
    link.send(payload).await?;
    let reply = match link.next().await {
        Some(reply) => reply?,
        None => return Err(ClientError::Closed),
    };
    let status = GateStatus::from_payload(&reply)
        .ok_or_else(|| ClientError::BadHandshakeReply(text::payload(&reply)))?;
    Ok((link, status))
}
