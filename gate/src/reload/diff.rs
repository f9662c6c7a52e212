//! Which fields of two configurations differ, by their dotted names
//! (`gate.maxclient`), and which of them may change while the process
//! runs ([`LIVE`]).

use crate::config::Config;

/// The fields a reload applies to a running process (besides `accounts`,
/// `log.level`, `log.format`, `web.tls_cert_file`, `web.tls_key_file`,
/// `tls.cert_file` and `tls.key_file`,
/// which may change under conditions: see [`super`]). Every other field
/// that differs is refused.
pub const LIVE: &[&str] = &[
    "gate.maxclient",
    "gate.max_connections_per_source",
    "gate.max_connections_per_network",
    "gate.new_connections_per_source",
    "gate.handshake_timeout",
    "gate.send_queue_bytes",
    "gate.max_inflight_per_user",
    "gate.expired_number",
    "gate.cache_bytes",
    "gate.reconnect_window",
    "gate.push_backlog",
    "gate.push_backlog_bytes",
    "gate.idle_timeout",
    "gate.plain_idle_timeout",
    "gate.require_sealed",
    "login.max_connections",
    "login.max_connections_per_source",
    "login.max_connections_per_network",
    "login.new_connections_per_source",
    "login.dialogue_timeout",
    "login.first_line_timeout",
    "login.auth_timeout",
    "login.evict_silent_after",
    "login.admission_rate",
    "login.admission_burst",
    "login.queue_max",
    "login.queue_timeout",
];

/// The dotted names of the fields whose values differ between `old` and
/// `new`, in the order of the configuration (a field set in one and not
/// in the other differs too).
pub fn differences(old: &Config, new: &Config) -> Vec<String> {
    let (Ok(old), Ok(new)) = (toml::Table::try_from(old), toml::Table::try_from(new)) else {
        // Every configuration serializes (a test keeps it so); should one
        // not, it is as if everything changed.
        return vec!["(the whole configuration)".to_owned()];
    };
    let mut found = Vec::new();
    walk("", &old, &new, &mut found);
    found
}

fn walk(prefix: &str, old: &toml::Table, new: &toml::Table, found: &mut Vec<String>) {
    let mut keys: Vec<&String> = old.keys().collect();
    keys.extend(new.keys().filter(|k| !old.contains_key(*k)));
    for key in keys {
        let name = format!("{prefix}{key}");
        match (old.get(key), new.get(key)) {
            (Some(toml::Value::Table(a)), Some(toml::Value::Table(b))) => {
                walk(&format!("{name}."), a, b, found);
            }
            (a, b) if a != b => found.push(name),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn differing_fields_are_named_with_their_section() {
        let old = Config::default();
        let mut new = Config::default();
        assert!(differences(&old, &new).is_empty());
        new.gate.maxclient = 10;
        new.login.dialogue_timeout = Duration::from_secs(1);
        new.accounts = Some("accounts.txt".into());
        new.web.tls_cert_file = Some("cert.pem".into());
        new.log.level = Some("debug".to_owned());
        let mut found = differences(&old, &new);
        found.sort();
        assert_eq!(
            found,
            [
                "accounts",
                "gate.maxclient",
                "log.level",
                "login.dialogue_timeout",
                "web.tls_cert_file"
            ]
        );
        // Removed again: the other direction differs the same.
        let mut back = differences(&new, &old);
        back.sort();
        assert_eq!(back, found);
    }

    #[test]
    fn every_live_field_exists() {
        let table = toml::Table::try_from(Config::default()).unwrap();
        for field in LIVE {
            let (section, key) = field.split_once('.').unwrap();
            assert!(
                table[section].as_table().unwrap().contains_key(key),
                "{field} is not a field"
            );
        }
    }
}
