//! A player of the backend tests: a logged-in client on `client_cli`'s
//! connection that sends requests with fresh request numbers and matches
//! answers to them by number, whatever order they come in, keeping pushes
//! and unasked answers for later checks.

use std::collections::BTreeMap;

use bytes::Bytes;
use client_cli::GateConn;
use codec::{Response, ResponseFlag};
use prost::Message;
use proto::route::RouteEnvelope;

use crate::backend::within;

/// A logged-in, connected client.
///
/// Answers are matched to requests by request number, never by arrival
/// order: the gate may deliver them in any order (a service answers
/// when it likes), and an answer that completed after an earlier
/// connection of the login was gone comes to the newest one unasked
/// (`docs/PROTOCOL.md` §4.1 rule 5).
#[derive(Debug)]
pub struct Player {
    /// The connection (client_cli's).
    pub conn: GateConn,
    /// The uid it handshook as.
    pub uid: String,
    next_number: u32,
    /// Pushes received while waiting for a response.
    pub pushes: Vec<Bytes>,
    /// Answers that came while another was awaited, by request number,
    /// until a test asks for them.
    unclaimed: BTreeMap<u32, Response>,
}

impl Player {
    /// A player on `conn`, a connection that handshook as `uid`.
    pub(crate) fn new(conn: GateConn, uid: &str) -> Player {
        Player {
            conn,
            uid: uid.to_owned(),
            next_number: 0,
            pushes: Vec::new(),
            unclaimed: BTreeMap::new(),
        }
    }

    /// Sends `payload` with a fresh request number and returns that number.
    pub async fn send(&mut self, payload: &[u8]) -> u32 {
        self.next_number += 1;
        let number = self.next_number;
        within("a send", self.conn.send(payload, number))
            .await
            .expect("send");
        number
    }

    /// The next package from the gate (`None`: the gate closed).
    pub async fn recv(&mut self) -> Option<Response> {
        within("a package from the gate", self.conn.recv())
            .await
            .unwrap_or(None)
    }

    /// The answer to request `number`, whenever it comes: answers to other
    /// numbers meanwhile are kept for [`Player::response`],
    /// [`Player::responses`] and [`Player::take_unclaimed`], pushes in
    /// `pushes`. Panics if the gate closes first, or if another number is
    /// answered twice while waiting.
    pub async fn response(&mut self, number: u32) -> Response {
        let mut answers = self.responses([number]).await;
        match answers.remove(&number) {
            Some(answer) => answer,
            None => unreachable!("responses returns every number it was given"),
        }
    }

    /// The answers to every request in `numbers`, by number, in whatever
    /// order they come; each must be answered exactly once. Answers kept
    /// from earlier waits count. Answers to other numbers are kept (see
    /// [`Player::take_unclaimed`]).
    pub async fn responses(
        &mut self,
        numbers: impl IntoIterator<Item = u32>,
    ) -> BTreeMap<u32, Response> {
        let mut missing: Vec<u32> = numbers.into_iter().collect();
        let mut got = BTreeMap::new();
        missing.retain(|number| match self.unclaimed.remove(number) {
            Some(answer) => {
                got.insert(*number, answer);
                false
            }
            None => true,
        });
        while !missing.is_empty() {
            let Some(response) = self.recv().await else {
                panic!("{}: closed before the answers to {missing:?}", self.uid);
            };
            if response.flag == ResponseFlag::PUSH {
                self.pushes.push(response.content);
                continue;
            }
            let number = response.number;
            if let Some(at) = missing.iter().position(|n| *n == number) {
                missing.swap_remove(at);
                got.insert(number, response);
            } else if got.contains_key(&number) || self.unclaimed.contains_key(&number) {
                panic!("{}: request {number} answered twice", self.uid);
            } else {
                self.unclaimed.insert(number, response);
            }
        }
        got
    }

    /// The answers that came unasked (kept while others were awaited), by
    /// request number; they are forgotten here.
    pub fn take_unclaimed(&mut self) -> BTreeMap<u32, Response> {
        std::mem::take(&mut self.unclaimed)
    }

    /// Sends `payload` and returns `Ok(content)` or `Err(())` for an error
    /// response.
    pub async fn call(&mut self, payload: &[u8]) -> Result<Bytes, ()> {
        let number = self.send(payload).await;
        let response = self.response(number).await;
        match response.flag {
            ResponseFlag::OK => Ok(response.content),
            ResponseFlag::ERROR => Err(()),
            other => panic!("{}: unexpected flag {other:?}", self.uid),
        }
    }

    /// [`Player::call`] with a route envelope (route mode).
    pub async fn route(&mut self, route: &str, body: &[u8]) -> Result<Bytes, ()> {
        self.call(&envelope(route, body)).await
    }

    /// Like [`Player::call`], text in and out; panics on an error response.
    pub async fn ask(&mut self, payload: &str) -> String {
        let content = self
            .call(payload.as_bytes())
            .await
            .unwrap_or_else(|()| panic!("{}: error response to {payload:?}", self.uid));
        String::from_utf8_lossy(&content).into_owned()
    }

    /// Waits for a push whose content is `expected`. Other pushes are
    /// skipped; answers meanwhile are kept for [`Player::response`], since
    /// a push may overtake the answer to an earlier request.
    pub async fn expect_push(&mut self, expected: &[u8]) {
        if let Some(at) = self.pushes.iter().position(|p| p == expected) {
            self.pushes.remove(at);
            return;
        }
        loop {
            let response = self
                .recv()
                .await
                .unwrap_or_else(|| panic!("{}: closed before the push", self.uid));
            if response.flag == ResponseFlag::PUSH {
                if response.content == expected {
                    return;
                }
            } else if response.flag == ResponseFlag::OK || response.flag == ResponseFlag::ERROR {
                let number = response.number;
                if self.unclaimed.insert(number, response).is_some() {
                    panic!("{}: request {number} answered twice", self.uid);
                }
            }
        }
    }

    /// Reads until the gate closes the connection; returns what came.
    pub async fn until_closed(&mut self) -> Vec<Response> {
        let mut seen = Vec::new();
        while let Some(response) = self.recv().await {
            seen.push(response);
        }
        seen
    }
}

/// A route envelope's bytes.
pub fn envelope(route: &str, body: &[u8]) -> Vec<u8> {
    RouteEnvelope {
        route: route.to_owned(),
        body: Bytes::copy_from_slice(body),
    }
    .encode_to_vec()
}
