//! What a service link's reader does with the frames it reads: answers
//! matched to their requests in batches, pushes, kicks, logouts, pings.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures::{FutureExt, StreamExt};
use proto::backend::service_frame::Kind;
use proto::backend::{Pong, ServiceFrame, push};
use proto::framing::GateCodec;
use tokio_util::codec::FramedRead;
use tracing::{debug, info, warn};

use super::instance::{Answers, Instance};
use super::metrics::bump;
use super::serve::{LinkEnd, LinkRead, Serving};
use crate::logging::esc;

/// Most frames one turn of a link's loop dispatches; then its other duties
/// (stopping, timers, heartbeats) get a look.
const FRAMES_PER_TURN: usize = 256;

/// Dispatches `first` and every further frame already readable without
/// waiting, up to [`FRAMES_PER_TURN`], as one batch: one clock read, and the
/// answers among them matched to their requests under one lock. Returns
/// how the link ended if reading shows it did.
pub(super) fn dispatch_ready(
    serve: &Arc<Serving>,
    link: &Arc<Instance>,
    first: ServiceFrame,
    reader: &mut FramedRead<LinkRead, GateCodec>,
    answers: &mut Answers,
) -> Option<LinkEnd> {
    crate::clock::batch(|| {
        let mut frame = first;
        let mut turns = 1;
        let end = loop {
            dispatch(serve, link, frame, answers);
            if turns == FRAMES_PER_TURN {
                break None;
            }
            turns += 1;
            frame = match reader.next().now_or_never() {
                Some(Some(Ok(frame))) => frame,
                Some(Some(Err(err))) => break Some(LinkEnd::Lost(format!("bad frame: {err}"))),
                Some(None) => break Some(LinkEnd::Lost("closed by the service".into())),
                None => break None,
            };
        };
        answer_all(serve, link, answers);
        end
    })
}

/// Delivers the answers gathered so far.
fn answer_all(serve: &Arc<Serving>, link: &Arc<Instance>, answers: &mut Answers) {
    let metrics = &serve.state.metrics;
    let (answered, late) = link.answer_all(answers);
    if answered > 0 {
        metrics.answered.fetch_add(answered, Ordering::Relaxed);
    }
    if late > 0 {
        metrics.late.fetch_add(late, Ordering::Relaxed);
        debug!(
            late,
            "answers to requests no longer waiting (deadline passed): dropped"
        );
    }
}

/// Handles one frame from the service, without waiting for anything.
/// Answers wait in `answers` (delivered when it fills, before any other
/// kind of frame, and at the end of the batch), so that everything the
/// service sent reaches the players in the order it was sent.
fn dispatch(
    serve: &Arc<Serving>,
    link: &Arc<Instance>,
    frame: ServiceFrame,
    answers: &mut Answers,
) {
    let metrics = &serve.state.metrics;
    let kind = match frame.kind {
        Some(Kind::Response(response)) => {
            if answers.push(response) {
                answer_all(serve, link, answers);
            }
            return;
        }
        kind => {
            answer_all(serve, link, answers);
            kind
        }
    };
    match kind {
        // Gathered above.
        Some(Kind::Response(_)) => {}
        Some(Kind::AuthReply(reply)) => {
            if !link.auth_reply(reply) {
                debug!("auth reply nobody waits for (deadline passed): dropped");
            }
        }
        Some(Kind::Push(p)) => {
            bump(&metrics.pushes);
            match p.target {
                Some(push::Target::User(uid)) => {
                    let _ = serve.gate.push(&uid, p.payload);
                }
                Some(push::Target::Users(list)) => {
                    for uid in &list.uids {
                        let _ = serve.gate.push(uid, p.payload.clone());
                    }
                }
                Some(push::Target::All(_)) => {
                    let reached = serve.gate.push_all(p.payload);
                    debug!(reached, "push to all users");
                }
                None => debug!("push without a target: ignored"),
            }
        }
        Some(Kind::Kick(kick)) => {
            bump(&metrics.kicks);
            let subid = if kick.subid.is_empty() {
                serve.state.sessions.subid(&kick.uid)
            } else {
                Some(kick.subid)
            };
            let Some(subid) = subid else {
                debug!(uid = %esc(&kick.uid), "kick of a user without a session: ignored");
                return;
            };
            info!(uid = %esc(&kick.uid), reason = %esc(kick.reason.as_bytes()), "service kicks a user");
            let gate = serve.gate.clone();
            // `kick` waits for the connection to close: not on the reader.
            tokio::spawn(async move {
                gate.kick(&kick.uid, &subid, gate_core::End::Kicked(kick.reason))
                    .await;
            });
        }
        Some(Kind::Logout(logout)) => {
            debug!(uid = %esc(&logout.uid), "service logs a user out");
            serve.state.sessions.logout(&logout.uid, &logout.subid);
        }
        Some(Kind::Ping(ping)) => {
            link.send(Pong::answer(&ping).into());
        }
        Some(Kind::Pong(_)) => {}
        Some(Kind::Goodbye(goodbye)) => {
            info!(reason = %esc(goodbye.reason.as_bytes()), "service says goodbye: no new work goes to it");
            link.goodbye.store(true, Ordering::Release);
            serve.state.registry.touch();
        }
        Some(Kind::Register(_)) => warn!("second registration on a link: ignored"),
        // A frame kind newer than this gate: additive changes keep the
        // protocol version, so skip it.
        None => debug!("frame of an unknown kind: ignored"),
    }
}
