//! Replaying the live skynet transcript
//! (`testdata/vectors/msgserver_transcript.json`) against a test gate: load
//! it, pick a scenario, and step through it on [`Client`]s, comparing the
//! gate's bytes with skynet's.

use std::collections::HashMap;
use std::net::SocketAddr;

use serde_json::Value;

use crate::msg::{Client, preview, unhex};

/// The gate transcript (`testdata/vectors/msgserver_transcript.json`).
pub fn msg_transcript() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../testdata/vectors/msgserver_transcript.json"
    );
    let text = std::fs::read_to_string(path).expect("transcript");
    serde_json::from_str(&text).expect("json")
}

/// One scenario of the gate transcript, by name.
pub fn scenario<'a>(doc: &'a Value, name: &str) -> &'a Value {
    doc["scenarios"]
        .as_array()
        .expect("scenarios")
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no scenario {name}"))
}

/// The bytes of a transcript step: `hex`, or a long one rebuilt from
/// `hex_prefix`, `hex_suffix` and `length` (the middle repeats the last
/// byte of the prefix, as every long step of the transcript does).
pub fn step_bytes(step: &Value) -> Vec<u8> {
    if let Some(hex) = step["hex"].as_str() {
        return unhex(hex);
    }
    let prefix = unhex(step["hex_prefix"].as_str().expect("hex or hex_prefix"));
    let suffix = unhex(step["hex_suffix"].as_str().expect("hex_suffix"));
    let length = usize::try_from(step["length"].as_u64().expect("length")).expect("usize");
    let fill = *prefix.last().expect("prefix");
    let mut bytes = prefix.clone();
    bytes.resize(length - suffix.len(), fill);
    bytes.extend_from_slice(&suffix);
    bytes
}

/// Replays a transcript scenario step by step against a gate.
///
/// `connect`, `C->S`, `S->C` (exact bytes), `client_close` and
/// `server_closed` are replayed as recorded. `nothing_received` is checked
/// by the next exact `S->C` step of that connection (anything sent in
/// between would not match), so it costs no waiting. Steps on the login
/// port are skipped (tests register users with [`gate::players::MsgGate::login`]).
#[derive(Debug)]
pub struct Replay<'a> {
    steps: &'a [Value],
    pos: usize,
    addr: SocketAddr,
    conns: HashMap<String, Client>,
    /// Per connection: the last bulk request number (`fast-<n>` is request
    /// `n`), for filling the gaps of bulk runs recorded only at both ends.
    bulk: HashMap<String, u32>,
    /// Fill gaps of bulk runs (cache_retirement).
    pub fill_bulk_gaps: bool,
}

impl<'a> Replay<'a> {
    /// A replay of `scenario` against the gate at `addr`.
    pub fn new(scenario: &'a Value, addr: SocketAddr) -> Replay<'a> {
        Replay {
            steps: scenario["steps"].as_array().expect("steps"),
            pos: 0,
            addr,
            conns: HashMap::new(),
            bulk: HashMap::new(),
            fill_bulk_gaps: false,
        }
    }

    /// A replay that continues with connections of an earlier one (a
    /// scenario that goes on on a connection opened before).
    pub fn with_conns(mut self, conns: HashMap<String, Client>) -> Replay<'a> {
        self.conns.extend(conns);
        self
    }

    /// The open connections, to hand to the next scenario.
    pub fn into_conns(self) -> HashMap<String, Client> {
        self.conns
    }

    /// The next step, if any.
    pub fn peek(&self) -> Option<&'a Value> {
        self.steps.get(self.pos)
    }

    /// Whether every step ran.
    pub fn done(&self) -> bool {
        self.pos >= self.steps.len()
    }

    /// The client of connection `name`.
    pub fn conn(&mut self, name: &str) -> &mut Client {
        self.conns
            .get_mut(name)
            .unwrap_or_else(|| panic!("no connection {name}"))
    }

    /// Skips the next step (for steps a fixed behaviour replaces).
    pub fn skip(&mut self) -> &'a Value {
        let step = &self.steps[self.pos];
        self.pos += 1;
        step
    }

    /// Runs the next step.
    pub async fn step(&mut self) {
        let step = &self.steps[self.pos];
        self.pos += 1;
        let conn = step["conn"].as_str().unwrap_or("").to_owned();
        if conn == "login" {
            return;
        }
        let what = format!("step {} of conn {conn}: {step}", self.pos - 1);
        match (step["event"].as_str(), step["dir"].as_str()) {
            (Some("connect"), _) => {
                let client = Client::connect(self.addr).await;
                self.conns.insert(conn, client);
            }
            (Some("client_close"), _) => {
                self.conns.remove(&conn);
            }
            (Some("server_closed"), _) => self.conn(&conn).expect_closed().await,
            (Some("nothing_received" | "still_open"), _) => {}
            (_, Some("C->S")) => {
                if self.fill_bulk_gaps {
                    self.fill_gap(&conn, step).await;
                }
                let bytes = step_bytes(step);
                self.conn(&conn).send(&bytes).await;
            }
            (_, Some("S->C")) => {
                let bytes = step_bytes(step);
                let client = self.conn(&conn);
                let got = client.recv_exact(bytes.len()).await;
                assert!(got == bytes, "{what}: got {}", preview(&got));
            }
            _ => panic!("unknown step {what}"),
        }
    }

    /// Sends the bulk requests a recording left out (`fast-<n>` is request
    /// `n`, each answered before the next) between the last bulk request of
    /// `conn` and this one.
    async fn fill_gap(&mut self, conn: &str, step: &Value) {
        let decoded = &step["decoded"];
        let (Some(content), Some(number)) =
            (decoded["content"].as_str(), decoded["session"].as_u64())
        else {
            return;
        };
        let Ok(number) = u32::try_from(number) else {
            return;
        };
        if content != format!("fast-{number}") {
            return;
        }
        if let Some(&last) = self.bulk.get(conn) {
            for s in last + 1..number {
                let text = format!("fast-{s}");
                self.conn(conn).echo(text.as_bytes(), s).await;
            }
        }
        self.bulk.insert(conn.to_owned(), number);
    }

    /// Runs steps until the next one is an `S->C` response whose decoded
    /// content is `content` (not run).
    pub async fn run_until_response(&mut self, content: &str) {
        while let Some(step) = self.peek() {
            if step["dir"] == "S->C" && step["decoded"]["content"] == content {
                return;
            }
            self.step().await;
        }
        panic!("no response {content:?} left in the scenario");
    }

    /// Runs steps until the next one satisfies `pred` (not run).
    pub async fn run_until(&mut self, pred: impl Fn(&Value) -> bool) {
        while let Some(step) = self.peek() {
            if pred(step) {
                return;
            }
            self.step().await;
        }
        panic!("no such step left in the scenario");
    }

    /// Runs every remaining step.
    pub async fn run_to_end(&mut self) {
        while !self.done() {
            self.step().await;
        }
    }
}
