//! Tests of the configuration: defaults, parsing and `Config::check`.

use super::*;

#[test]
fn empty_file_gives_defaults() {
    let config: Config = toml::from_str("").unwrap();
    assert_eq!(
        config.login.listen,
        SocketAddr::from(([127, 0, 0, 1], 8001))
    );
    assert_eq!(config.gate.name, "sample");
    assert_eq!(config.gate.expired_number, 128);
}

#[test]
fn zero_deadlines_and_bounds_that_shut_everyone_out_are_refused() {
    assert_eq!(Config::default().check(), Ok(()));
    let mut config = Config::default();
    config.gate.handshake_timeout = Duration::ZERO;
    config.gate.maxclient = 0;
    config.gate.idle_timeout = Duration::ZERO; // "none": fine
    let err = config.check().unwrap_err();
    assert!(
        err.contains("gate.handshake_timeout, gate.maxclient"),
        "{err}"
    );
    assert!(!err.contains("idle_timeout"), "{err}");
}

#[test]
fn throttle_intervals_that_would_not_throttle_are_refused() {
    let mut config = Config::default();
    config.login.throttle_user_interval = Duration::ZERO;
    let err = config.check().unwrap_err();
    assert!(err.contains("login.throttle_user_interval"), "{err}");
    // With its bucket off, a zero interval means nothing: accepted.
    config.login.throttle_user_failures = 0;
    assert_eq!(config.check(), Ok(()));
    let mut config = Config::default();
    config.login.throttle_user_login_interval = Duration::from_secs(366 * 24 * 3600);
    let err = config.check().unwrap_err();
    assert!(err.contains("login.throttle_user_login_interval"), "{err}");
    config.login.throttle_user_login_interval = Duration::from_secs(365 * 24 * 3600);
    assert_eq!(config.check(), Ok(()));
}

#[test]
fn unknown_fields_are_refused() {
    assert!(toml::from_str::<Config>("[gate]\nmaxclients = 3\n").is_err());
}

#[test]
fn partial_sections_keep_other_defaults() {
    let config: Config = toml::from_str("[gate]\nname = \"world\"\nmaxclient = 10\n").unwrap();
    assert_eq!(config.gate.name, "world");
    assert_eq!(config.gate.maxclient, 10);
    assert_eq!(config.gate.send_queue_bytes, 1 << 20);
}

#[test]
fn backend_section_parses() {
    let config: Config = toml::from_str(
        "[login]\nauth = \"service\"\n[backend]\nlisten = \"127.0.0.1:8899\"\nroute_mode = true\n",
    )
    .unwrap();
    assert_eq!(config.login.auth, AuthSource::Service);
    assert_eq!(
        config.backend.listen,
        Some(SocketAddr::from(([127, 0, 0, 1], 8899)))
    );
    assert!(config.backend.route_mode);
    assert_eq!(config.backend.agent_service, "agent");
    assert_eq!(config.backend.request_timeout, Duration::from_secs(5));
    let default = Config::default();
    assert_eq!(default.login.auth, AuthSource::Accounts);
    assert!(default.backend.listen.is_none());
}

#[test]
fn push_and_idle_defaults() {
    let gate = GateConfig::default();
    assert_eq!((gate.push_backlog, gate.push_backlog_bytes), (64, 65536));
    assert_eq!(gate.idle_timeout(true), Some(Duration::from_secs(60)));
    assert_eq!(gate.idle_timeout(false), None);
    let config: Config =
        toml::from_str("[gate]\nidle_timeout = \"0s\"\nplain_idle_timeout = \"5ms\"\n").unwrap();
    assert_eq!(config.gate.idle_timeout(true), None);
    assert_eq!(
        config.gate.idle_timeout(false),
        Some(Duration::from_millis(5))
    );
}

#[test]
fn durations_are_written_with_units() {
    let config: Config = toml::from_str(
        "shutdown_grace = \"250ms\"\n[gate]\nreconnect_window = \"2m 30s\"\n[login]\ndialogue_timeout = \"1h\"\n",
    )
    .unwrap();
    assert_eq!(config.shutdown_grace, Duration::from_millis(250));
    assert_eq!(config.gate().shutdown_grace, Duration::from_millis(250));
    assert_eq!(config.gate.reconnect_window, Duration::from_secs(150));
    assert_eq!(config.login.dialogue_timeout, Duration::from_secs(3600));
    let err = toml::from_str::<Config>("shutdown_grace = \"soon\"\n").unwrap_err();
    assert!(err.to_string().contains("not a duration"), "{err}");
    // The gate section has no grace of its own.
    assert!(toml::from_str::<Config>("[gate]\nshutdown_grace = \"1s\"\n").is_err());
    // What is written reads back the same.
    let text = toml::to_string(&Config::default()).unwrap();
    let back: Config = toml::from_str(&text).unwrap();
    assert_eq!(back.gate.reconnect_window, Duration::from_secs(300));
}
