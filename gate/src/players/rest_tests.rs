//! Unit tests of the rest set's watcher.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::*;
use crate::agent::EchoAgent;
use crate::config::GateConfig;
use crate::login::placement::LoginLink;

struct NoLogin;

impl LoginLink for NoLogin {
    fn session_ended(&self, _: &[u8], _: &[u8], _: &[u8], _: &End) {}
}

/// Connections may rest from the moment the watcher is made, before its
/// task first runs (a connection served before then never rested, as
/// one did in a test under load), and no longer once it returned or was
/// dropped unrun.
#[tokio::test]
async fn connections_may_rest_from_the_watchers_making_to_its_end() {
    let core = Arc::new(GateCore::new(
        GateConfig::default(),
        Arc::new(EchoAgent),
        Arc::new(NoLogin),
    ));
    assert_eq!(core.rest.after(), None, "nobody watches yet");
    let stop = CancellationToken::new();
    let watcher = watch(Arc::clone(&core), stop.clone());
    assert!(core.rest.after().is_some(), "before the watcher ran");
    let task = tokio::spawn(watcher);
    stop.cancel();
    task.await.expect("the watcher");
    assert_eq!(core.rest.after(), None, "after it returned");
    let unrun = watch(Arc::clone(&core), CancellationToken::new());
    assert!(core.rest.after().is_some());
    drop(unrun);
    assert_eq!(core.rest.after(), None, "dropped without running");
}
