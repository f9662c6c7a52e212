//! The chat service: rooms that users join, talk in and leave; every line
//! said is pushed to every member of the room.
//!
//! It answers both ways a request can arrive:
//!
//! - route mode, routes `chat.join` (body: room name, empty for `lobby`),
//!   `chat.say` (body: the text) and `chat.leave`;
//! - agent mode (when the gate's agent service is `chat`), a text command as
//!   the payload: `join <room>`, `say <text>`, `leave`.
//!
//! Pushes are UTF-8 text lines: `[room] user: text`, `* user joined room`,
//! `* user left room`. It asks for every user's session events, so a user
//! who logs out or is kicked leaves their room (one who is only away stays,
//! and gets the lines they missed from the gate's push backlog).
//!
//! ```text
//! cargo run -p service --example chat -- --gate 127.0.0.1:8899 --link-secret-file link.secret
//! ```

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

use bytes::Bytes;
use clap::Parser;
use service::{CancellationToken, Context, Handler, Request, Service, SessionEvent};
use tracing::warn;

/// Chat room service for the gate.
#[derive(Debug, Parser)]
struct Args {
    /// Backend address of a gate to serve; repeat for several gates. In a
    /// cluster one is enough: the gates announce the others.
    #[arg(long = "gate", default_value = "127.0.0.1:8899")]
    gates: Vec<String>,
    /// Instance id (default: `chat-<pid>-<random>`).
    #[arg(long)]
    instance: Option<String>,
    /// File with the link secret the gates were given (their
    /// `backend.secret_file`).
    #[arg(long, env = "GATE_LINK_SECRET_FILE", value_name = "FILE")]
    link_secret_file: std::path::PathBuf,
    /// Dial the gates over TLS, trusting the CA certificates in this PEM
    /// file (gates with `backend.tls_cert_file`) [default: plain TCP].
    #[arg(long, value_name = "FILE")]
    tls_ca_file: Option<std::path::PathBuf>,
}

/// The room a user joins when they name none.
const LOBBY: &str = "lobby";

/// What a request asks for, whichever mode it came in.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Command {
    Join(String),
    Say(String),
    Leave,
}

impl Command {
    fn parse(route: &str, payload: &[u8]) -> Result<Command, String> {
        let text = std::str::from_utf8(payload).map_err(|_| "payload is not UTF-8".to_owned())?;
        match route {
            "chat.join" => Ok(Command::Join(room_name(text))),
            "chat.say" => Ok(Command::Say(text.to_owned())),
            "chat.leave" => Ok(Command::Leave),
            // Agent mode: the whole payload is a text command.
            "" => {
                let (verb, rest) = text.trim().split_once(' ').unwrap_or((text.trim(), ""));
                match verb {
                    "join" => Ok(Command::Join(room_name(rest))),
                    "say" => Ok(Command::Say(rest.to_owned())),
                    "leave" => Ok(Command::Leave),
                    _ => Err(format!("unknown command {verb:?}: try join, say, leave")),
                }
            }
            other => Err(format!("unknown route {other:?}")),
        }
    }
}

fn room_name(text: &str) -> String {
    match text.trim() {
        "" => LOBBY.to_owned(),
        name => name.to_owned(),
    }
}

/// Who is in which room. One lock for all: every operation is a few map
/// updates, and pushes happen after it is released.
#[derive(Debug, Default)]
struct Rooms {
    members: HashMap<String, BTreeSet<Bytes>>,
    room_of: HashMap<Bytes, String>,
}

impl Rooms {
    /// Puts `uid` in `room` (leaving any other). Returns the room left with
    /// its remaining members, and the members of `room` now.
    fn join(&mut self, uid: &Bytes, room: &str) -> (Option<(String, Vec<Bytes>)>, Vec<Bytes>) {
        let left = match self.room_of.get(uid) {
            Some(current) if current == room => None,
            Some(_) => self.leave(uid),
            None => None,
        };
        self.room_of.insert(uid.clone(), room.to_owned());
        let members = self.members.entry(room.to_owned()).or_default();
        members.insert(uid.clone());
        (left, members.iter().cloned().collect())
    }

    /// Takes `uid` out of its room; the room and who is still in it.
    fn leave(&mut self, uid: &Bytes) -> Option<(String, Vec<Bytes>)> {
        let room = self.room_of.remove(uid)?;
        let rest = match self.members.get_mut(&room) {
            Some(members) => {
                members.remove(uid);
                let rest: Vec<Bytes> = members.iter().cloned().collect();
                if rest.is_empty() {
                    self.members.remove(&room);
                }
                rest
            }
            None => Vec::new(),
        };
        Some((room, rest))
    }

    /// The user's room and its members.
    fn room_of(&self, uid: &Bytes) -> Option<(String, Vec<Bytes>)> {
        let room = self.room_of.get(uid)?;
        let members = self.members.get(room)?;
        Some((room.clone(), members.iter().cloned().collect()))
    }
}

// `pub` so the workspace's backend tests can run this very handler.
#[derive(Debug, Default)]
pub struct Chat {
    rooms: Mutex<Rooms>,
}

impl Chat {
    fn rooms(&self) -> std::sync::MutexGuard<'_, Rooms> {
        // The maps stay consistent even if a holder panicked mid-way
        // (each update is a few inserts/removes), so keep serving.
        self.rooms.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn tell(ctx: &Context, members: Vec<Bytes>, line: String) -> Result<(), String> {
        if members.is_empty() {
            return Ok(());
        }
        // One frame for the whole room; each gate delivers to the members it has.
        ctx.gates()
            .push_many(members, line)
            .await
            .map(|_| ())
            .map_err(|err| format!("cannot push: {err}"))
    }
}

fn name(uid: &Bytes) -> String {
    String::from_utf8_lossy(uid).into_owned()
}

impl Handler for Chat {
    async fn request(&self, ctx: Context, req: Request) -> Result<Bytes, String> {
        let who = name(&req.uid);
        match Command::parse(&req.route, &req.payload)? {
            Command::Join(room) => {
                let (left, members) = self.rooms().join(&req.uid, &room);
                if let Some((old, rest)) = left {
                    Self::tell(&ctx, rest, format!("* {who} left {old}")).await?;
                }
                let count = members.len();
                Self::tell(&ctx, members, format!("* {who} joined {room}")).await?;
                Ok(Bytes::from(format!("joined {room} ({count} members)")))
            }
            Command::Say(text) => {
                let (room, members) = self
                    .rooms()
                    .room_of(&req.uid)
                    .ok_or_else(|| "join a room first".to_owned())?;
                Self::tell(&ctx, members, format!("[{room}] {who}: {text}")).await?;
                Ok(Bytes::from_static(b"sent"))
            }
            Command::Leave => {
                let (room, rest) = self
                    .rooms()
                    .leave(&req.uid)
                    .ok_or_else(|| "not in a room".to_owned())?;
                Self::tell(&ctx, rest, format!("* {who} left {room}")).await?;
                Ok(Bytes::from(format!("left {room}")))
            }
        }
    }

    async fn session(&self, ctx: Context, event: SessionEvent) {
        if !event.kind.is_end() {
            return;
        }
        let left = self.rooms().leave(&event.uid);
        if let Some((room, rest)) = left {
            let line = format!("* {} left {room} ({:?})", name(&event.uid), event.kind);
            if let Err(err) = Self::tell(&ctx, rest, line).await {
                warn!(%err, "cannot announce a departure");
            }
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).init();
    let args = Args::parse();

    let mut builder = Service::builder("chat")
        .routes(["chat.join", "chat.say", "chat.leave"])
        .all_session_events(true);
    builder = builder.link_secret(service::LinkSecret::from_file(&args.link_secret_file)?);
    if let Some(ca) = &args.tls_ca_file {
        builder = builder.tls(service::LinkTls::from_ca_file(ca)?);
    }
    for gate in args.gates {
        builder = builder.gate(gate);
    }
    if let Some(id) = args.instance {
        builder = builder.instance_id(id);
    }
    let service = builder.build(Chat::default())?;

    let shutdown = CancellationToken::new();
    let on_signal = shutdown.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        on_signal.cancel();
    });
    service.run(shutdown).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uid(s: &'static str) -> Bytes {
        Bytes::from_static(s.as_bytes())
    }

    #[test]
    fn commands_parse_in_both_modes() {
        assert_eq!(
            Command::parse("chat.join", b"tavern"),
            Ok(Command::Join("tavern".into()))
        );
        assert_eq!(
            Command::parse("chat.join", b""),
            Ok(Command::Join(LOBBY.into()))
        );
        assert_eq!(
            Command::parse("chat.say", b"hi all"),
            Ok(Command::Say("hi all".into()))
        );
        assert_eq!(Command::parse("chat.leave", b""), Ok(Command::Leave));
        assert_eq!(
            Command::parse("", b"say hi all"),
            Ok(Command::Say("hi all".into()))
        );
        assert_eq!(Command::parse("", b"join"), Ok(Command::Join(LOBBY.into())));
        assert_eq!(Command::parse("", b"leave\n"), Ok(Command::Leave));
        assert!(Command::parse("", b"dance").is_err());
        assert!(Command::parse("chat.dance", b"").is_err());
        assert!(Command::parse("chat.say", &[0xff]).is_err());
    }

    #[test]
    fn rooms_track_members() {
        let mut rooms = Rooms::default();
        assert_eq!(rooms.join(&uid("a"), "x"), (None, vec![uid("a")]));
        assert_eq!(rooms.join(&uid("b"), "x"), (None, vec![uid("a"), uid("b")]));
        // Moving rooms leaves the old one, and says who is still there.
        assert_eq!(
            rooms.join(&uid("a"), "y"),
            (Some(("x".into(), vec![uid("b")])), vec![uid("a")])
        );
        // Joining the room one is in changes nothing.
        assert_eq!(rooms.join(&uid("a"), "y"), (None, vec![uid("a")]));
        assert_eq!(rooms.room_of(&uid("b")), Some(("x".into(), vec![uid("b")])));
        assert_eq!(rooms.leave(&uid("b")), Some(("x".into(), vec![])));
        assert!(!rooms.members.contains_key("x"), "empty rooms are dropped");
        assert_eq!(rooms.leave(&uid("b")), None);
        assert_eq!(rooms.room_of(&uid("b")), None);
    }
}
