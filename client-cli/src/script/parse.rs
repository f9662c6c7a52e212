//! The QA script format: one command per line, parsed into [`Step`]s.
//!
//! `SCRIPTS.md` in the crate is the user documentation; this module is its
//! implementation. A line is a command word, then `key=value` options and
//! flag words, then (for commands that take one) free text up to the end of
//! the line. Whole-line comments start with `#`, and so does a trailing
//! comment after whitespace outside quotes. Quoted strings (`"…"`) take the
//! escapes `\n \r \t \0 \\ \" \xHH`. Text payloads and expected text may use
//! `${i}`, the iteration number of the innermost `repeat` (from 0).
//!
//! Splitting a line into words is the private `words` module's job; the
//! types built here are in [`super::steps`] and re-exported, so
//! `script::parse::Command` and the rest keep their paths.

use std::path::PathBuf;

use loginproto::login::Suite;

pub use super::steps::{
    Command, ExpectKind, Expectation, Matcher, ParseError, Payload, Script, Step, Template,
};
use super::words::{Token, rest_bytes, split, tokenize, trimmed_source, value_bytes, value_string};
use crate::session::{ConnectSpec, IndexSpec};
use crate::text;

impl Script {
    /// Parses script text; `name` is used in messages, `base_dir` for
    /// `file=` paths.
    pub fn parse(name: &str, source: &str, base_dir: PathBuf) -> Result<Script, ParseError> {
        let error = |line: usize, message: String| ParseError {
            name: name.to_owned(),
            line,
            message,
        };
        // A stack of open `repeat` blocks: (line, count, steps so far).
        let mut stack: Vec<(usize, u32, Vec<Step>)> = vec![(0, 1, Vec::new())];
        for (number, raw) in source.lines().enumerate() {
            let line = number + 1;
            let trimmed = raw.trim();
            let tokens = tokenize(trimmed).map_err(|m| error(line, m))?;
            let Some(first) = tokens.first() else {
                continue;
            };
            let word = first.raw.as_str();
            if word == "end" {
                if tokens.len() > 1 {
                    return Err(error(line, "`end` takes nothing after it".into()));
                }
                if stack.len() == 1 {
                    return Err(error(line, "`end` without `repeat`".into()));
                }
                let (start, count, body) = stack.pop().unwrap_or_default();
                let step = Step {
                    line: start,
                    source: format!("repeat {count}"),
                    command: Command::Repeat { count, body },
                };
                if let Some(parent) = stack.last_mut() {
                    parent.2.push(step);
                }
                continue;
            }
            let command = parse_command(trimmed, &tokens).map_err(|m| error(line, m))?;
            if let Command::Repeat { count, .. } = command {
                stack.push((line, count, Vec::new()));
                continue;
            }
            let step = Step {
                line,
                source: trimmed_source(trimmed, &tokens),
                command,
            };
            if let Some(top) = stack.last_mut() {
                top.2.push(step);
            }
        }
        if stack.len() > 1 {
            let (start, _, _) = stack.last().cloned().unwrap_or_default();
            return Err(error(start, "`repeat` without `end`".into()));
        }
        let steps = stack.pop().map(|(_, _, steps)| steps).unwrap_or_default();
        Ok(Script {
            name: name.to_owned(),
            base_dir,
            steps,
        })
    }
}

fn parse_command(line: &str, tokens: &[Token]) -> Result<Command, String> {
    let word = tokens[0].raw.as_str();
    match word {
        "login" => {
            let p = split(
                line,
                tokens,
                &["user", "password", "server", "suite", "expect", "within"],
                &[],
                true,
            )?;
            p.no_rest(word)?;
            let suite = p
                .string("suite")?
                .map(|s| s.parse::<Suite>().map_err(|e| e.to_string()))
                .transpose()?;
            Ok(Command::Login {
                user: p.string("user")?,
                password: p.string("password")?,
                server: p.string("server")?,
                suite,
                expect: p.code(&[200, 401, 403, 406, 429, 503])?,
                within: p.duration("within")?,
            })
        }
        "connect" | "reconnect" => {
            let p = split(
                line,
                tokens,
                &["index", "user", "subid", "ext", "expect"],
                &["badmac"],
                true,
            )?;
            p.no_rest(word)?;
            let index = match p.string("index")?.as_deref() {
                None | Some("next") => IndexSpec::Next,
                Some("last") => IndexSpec::Last,
                Some(text) => match text.parse::<u64>() {
                    Ok(n) => IndexSpec::Number(n),
                    Err(_) => IndexSpec::Text(text.to_owned()),
                },
            };
            Ok(Command::Connect {
                spec: ConnectSpec {
                    index,
                    user: p.string("user")?,
                    subid: p.string("subid")?,
                    bad_mac: p.has("badmac"),
                    ext: p.option("ext").map(value_bytes).transpose()?,
                },
                expect: p.code(&[200, 400, 401, 403, 404])?,
                reconnect: word == "reconnect",
            })
        }
        "drop" => {
            split(line, tokens, &[], &[], true)?.no_rest(word)?;
            Ok(Command::Drop)
        }
        "send" => {
            let p = split(line, tokens, &["session", "hex", "file"], &[], false)?;
            let given = [
                p.option("hex").is_some(),
                p.option("file").is_some(),
                p.rest.is_some(),
            ];
            if given.iter().filter(|g| **g).count() > 1 {
                return Err("give one of: text, hex=, file=".into());
            }
            let payload = if let Some(hex) = p.option("hex") {
                Payload::Bytes(text::parse_hex(&value_string(hex)?)?)
            } else if let Some(path) = p.string("file")? {
                Payload::File(PathBuf::from(path))
            } else {
                Payload::Text(Template(
                    p.rest.map(rest_bytes).transpose()?.unwrap_or_default(),
                ))
            };
            Ok(Command::Send {
                number: p.number()?,
                payload,
            })
        }
        "expect" => {
            let p = split(
                line,
                tokens,
                &["session", "seq", "within", "prefix", "regex", "hex"],
                &["ok", "error", "push", "gap", "kick", "closed"],
                true,
            )?;
            let kinds = [
                ExpectKind::Ok,
                ExpectKind::Error,
                ExpectKind::Push,
                ExpectKind::Gap,
                ExpectKind::Kick,
                ExpectKind::Closed,
            ];
            let mut chosen = kinds.iter().filter(|k| p.has(k.word()));
            let kind = chosen.next().copied().unwrap_or(ExpectKind::Ok);
            if let Some(other) = chosen.next() {
                return Err(format!("both {} and {}", kind.word(), other.word()));
            }
            let given = [
                p.option("prefix").is_some(),
                p.option("regex").is_some(),
                p.option("hex").is_some(),
                p.rest.is_some(),
            ];
            if given.iter().filter(|g| **g).count() > 1 {
                return Err("give one of: text, prefix=, regex=, hex=".into());
            }
            let matcher = if let Some(prefix) = p.option("prefix") {
                Matcher::Prefix(Template(value_bytes(prefix)?))
            } else if let Some(regex) = p.option("regex") {
                let pattern = value_string(regex)?;
                // Checked now (with ${i} filled in) so a typo fails at parse time.
                regex::bytes::Regex::new(&pattern.replace("${i}", "0"))
                    .map_err(|e| format!("regex={regex}: {e}"))?;
                Matcher::Regex(pattern)
            } else if let Some(hex) = p.option("hex") {
                Matcher::Exact(Template(text::parse_hex(&value_string(hex)?)?))
            } else if let Some(rest) = p.rest {
                Matcher::Exact(Template(rest_bytes(rest)?))
            } else {
                Matcher::Any
            };
            if kind == ExpectKind::Closed && (matcher != Matcher::Any || p.number()?.is_some()) {
                return Err("`expect closed` takes only within=".into());
            }
            if matches!(kind, ExpectKind::Push | ExpectKind::Gap | ExpectKind::Kick)
                && p.number()?.is_some()
            {
                return Err(format!("`expect {}` takes no session=", kind.word()));
            }
            let seq = p
                .option("seq")
                .map(|v| {
                    v.parse::<u32>()
                        .map_err(|_| format!("seq={v}: expected a number 0..4294967295"))
                })
                .transpose()?;
            if seq.is_some() && !matches!(kind, ExpectKind::Push | ExpectKind::Gap) {
                return Err("seq= goes with `expect push` or `expect gap`".into());
            }
            if kind == ExpectKind::Gap && matcher != Matcher::Any {
                return Err("`expect gap` has no content to match (give seq=)".into());
            }
            Ok(Command::Expect(Expectation {
                number: p.number()?,
                within: p.duration("within")?,
                seq,
                kind,
                matcher,
            }))
        }
        "ping" => {
            let p = split(line, tokens, &["within"], &[], true)?;
            p.no_rest(word)?;
            Ok(Command::Ping {
                within: p.duration("within")?,
            })
        }
        "sleep" | "timeout" => {
            let p = split(line, tokens, &[], &[], true)?;
            let rest = p.rest.ok_or_else(|| format!("`{word}` needs a duration"))?;
            let duration = text::parse_duration(rest)?;
            Ok(if word == "sleep" {
                Command::Sleep(duration)
            } else {
                Command::Timeout(duration)
            })
        }
        "repeat" => {
            let p = split(line, tokens, &[], &[], true)?;
            let rest = p.rest.ok_or("`repeat` needs a count")?;
            let count = rest
                .parse::<u32>()
                .map_err(|_| format!("repeat {rest}: expected a count"))?;
            Ok(Command::Repeat {
                count,
                body: Vec::new(),
            })
        }
        "print" => {
            let p = split(line, tokens, &[], &[], false)?;
            Ok(Command::Print(Template(
                p.rest.map(rest_bytes).transpose()?.unwrap_or_default(),
            )))
        }
        other => Err(format!(
            "unknown command {other:?} (known: login connect reconnect drop send expect ping sleep timeout repeat end print)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn parse(source: &str) -> Result<Vec<Step>, ParseError> {
        Script::parse("t.script", source, PathBuf::from(".")).map(|s| s.steps)
    }

    fn one(line: &str) -> Command {
        let steps = parse(line).unwrap();
        assert_eq!(steps.len(), 1, "{line}");
        steps.into_iter().next().unwrap().command
    }

    fn err(source: &str) -> String {
        parse(source).unwrap_err().to_string()
    }

    fn exact(text: &str) -> Matcher {
        Matcher::Exact(Template(text.as_bytes().to_vec()))
    }

    #[test]
    fn comments_and_blank_lines_are_skipped() {
        let steps = parse("# a comment\n\n   \nconnect   # index 1\n  drop\n").unwrap();
        assert_eq!(steps.len(), 2);
        assert_eq!(steps[0].line, 4);
        assert_eq!(steps[0].source, "connect");
        assert_eq!(steps[1].command, Command::Drop);
        assert_eq!(steps[1].line, 5);
    }

    #[test]
    fn send_forms() {
        assert_eq!(
            one("send hello world"),
            Command::Send {
                number: None,
                payload: Payload::Text(Template(b"hello world".to_vec())),
            }
        );
        assert_eq!(
            one(r#"send session=7 "a \"b\"\n # not a comment""#),
            Command::Send {
                number: Some(7),
                payload: Payload::Text(Template(b"a \"b\"\n # not a comment".to_vec())),
            }
        );
        assert_eq!(
            one("send hex=00ff"),
            Command::Send {
                number: None,
                payload: Payload::Bytes(vec![0, 0xff]),
            }
        );
        assert_eq!(
            one("send file=data/x.bin"),
            Command::Send {
                number: None,
                payload: Payload::File(PathBuf::from("data/x.bin")),
            }
        );
        assert_eq!(
            one("send"),
            Command::Send {
                number: None,
                payload: Payload::Text(Template(Vec::new())),
            }
        );
        // Unknown key=value is just text for send.
        assert_eq!(
            one("send a=b"),
            Command::Send {
                number: None,
                payload: Payload::Text(Template(b"a=b".to_vec())),
            }
        );
        assert!(err("send hex=0 text").contains("give one of"));
        assert!(err("send session=x hi").contains("session=x"));
        assert!(err("send hex=zz").contains("not hex"));
    }

    #[test]
    fn expect_forms() {
        let e = |line: &str| match one(line) {
            Command::Expect(e) => e,
            other => panic!("{other:?}"),
        };
        let plain = e("expect hello");
        assert_eq!(plain.kind, ExpectKind::Ok);
        assert_eq!(plain.number, None);
        assert_eq!(plain.matcher, exact("hello"));

        let full = e("expect session=3 within=250ms ok prefix=hel");
        assert_eq!(full.number, Some(3));
        assert_eq!(full.within, Some(Duration::from_millis(250)));
        assert_eq!(full.matcher, Matcher::Prefix(Template(b"hel".to_vec())));

        assert_eq!(e("expect error").kind, ExpectKind::Error);
        assert_eq!(e("expect error").matcher, Matcher::Any);
        assert_eq!(e("expect").matcher, Matcher::Any);
        assert_eq!(e(r#"expect "ok""#).matcher, exact("ok"));
        assert_eq!(e(r#"expect """#).matcher, exact(""));
        assert_eq!(
            e("expect regex=^h.*o$").matcher,
            Matcher::Regex("^h.*o$".into())
        );
        assert_eq!(
            e(r#"expect regex="a b+""#).matcher,
            Matcher::Regex("a b+".into())
        );
        assert_eq!(e("expect hex=0001").matcher, exact("\0\x01"));
        assert_eq!(e("expect push news").kind, ExpectKind::Push);
        let push = e("expect push seq=3 within=1s prefix=[lobby]");
        assert_eq!(
            (push.kind, push.seq, push.within),
            (ExpectKind::Push, Some(3), Some(Duration::from_secs(1)))
        );
        assert_eq!(push.matcher, Matcher::Prefix(Template(b"[lobby]".to_vec())));
        let gap = e("expect gap seq=6");
        assert_eq!((gap.kind, gap.seq), (ExpectKind::Gap, Some(6)));
        assert_eq!(e("expect kick afk").matcher, exact("afk"));
        assert_eq!(e("expect closed within=1s").kind, ExpectKind::Closed);

        assert!(err("expect sesion=1 x").contains("unknown option sesion="));
        assert!(err("expect ok error").contains("both ok and error"));
        assert!(err("expect regex=(").contains("regex=("));
        assert!(err("expect closed x").contains("takes only within"));
        assert!(err("expect push session=1").contains("no session"));
        assert!(err("expect seq=1 x").contains("seq= goes with"));
        assert!(err("expect gap x").contains("no content"));
        assert!(err("expect push seq=-1").contains("seq=-1"));
        assert_eq!(one("ping"), Command::Ping { within: None });
        assert_eq!(
            one("ping within=2s"),
            Command::Ping {
                within: Some(Duration::from_secs(2))
            }
        );
        assert!(err("ping now").contains("takes no text"));
        assert!(err("expect prefix=a b").contains("give one of"));
        assert!(err(r#"expect "a" b"#).contains("after the closing quote"));
    }

    #[test]
    fn connect_and_login_forms() {
        assert_eq!(
            one("connect"),
            Command::Connect {
                spec: ConnectSpec::default(),
                expect: 200,
                reconnect: false,
            }
        );
        assert_eq!(
            one("reconnect index=last expect=403"),
            Command::Connect {
                spec: ConnectSpec {
                    index: IndexSpec::Last,
                    ..ConnectSpec::default()
                },
                expect: 403,
                reconnect: true,
            }
        );
        assert_eq!(
            one("connect index=abc badmac subid=9 user=x expect=400"),
            Command::Connect {
                spec: ConnectSpec {
                    index: IndexSpec::Text("abc".into()),
                    user: Some("x".into()),
                    subid: Some("9".into()),
                    bad_mac: true,
                    ext: None,
                },
                expect: 400,
                reconnect: false,
            }
        );
        assert_eq!(
            one("connect index=5").clone(),
            Command::Connect {
                spec: ConnectSpec {
                    index: IndexSpec::Number(5),
                    ..ConnectSpec::default()
                },
                expect: 200,
                reconnect: false,
            }
        );
        assert_eq!(
            one(r#"login user=bob password="wrong pw" suite=skynet expect=401"#),
            Command::Login {
                user: Some("bob".into()),
                password: Some("wrong pw".into()),
                server: None,
                suite: Some(Suite::Skynet),
                expect: 401,
                within: None,
            }
        );
        assert_eq!(
            one(r#"connect ext="push=3""#),
            Command::Connect {
                spec: ConnectSpec {
                    ext: Some(b"push=3".to_vec()),
                    ..ConnectSpec::default()
                },
                expect: 200,
                reconnect: false,
            }
        );
        assert!(err("connect expect=402").contains("expected one of 200, 400"));
        assert!(err("login suite=tls").contains("unknown suite"));
        assert!(err("connect now").contains("takes no text"));
        assert!(err("drop it").contains("takes no text"));
        assert!(err("connect index=1 index=2").contains("twice"));
    }

    #[test]
    fn repeat_blocks_nest() {
        let steps =
            parse("repeat 2\n send a${i}\n repeat 3\n  expect a${i}\n end\nend\ndrop").unwrap();
        assert_eq!(steps.len(), 2);
        let Command::Repeat { count, body } = &steps[0].command else {
            panic!()
        };
        assert_eq!(*count, 2);
        assert_eq!(steps[0].line, 1);
        assert_eq!(body.len(), 2);
        let Command::Repeat { count, body } = &body[1].command else {
            panic!()
        };
        assert_eq!((*count, body.len()), (3, 1));
        assert!(err("repeat 2\nsend x").contains("t.script:1: `repeat` without `end`"));
        assert!(err("end").contains("without `repeat`"));
        assert!(err("repeat many").contains("expected a count"));
    }

    #[test]
    fn other_commands_and_errors() {
        assert_eq!(
            one("sleep 100ms"),
            Command::Sleep(Duration::from_millis(100))
        );
        assert_eq!(one("timeout 2"), Command::Timeout(Duration::from_secs(2)));
        assert_eq!(
            one("print hi there"),
            Command::Print(Template(b"hi there".to_vec()))
        );
        assert!(err("sleep").contains("needs a duration"));
        assert!(err("sleep forever").contains("not a duration"));
        assert_eq!(
            err("fly away"),
            "t.script:1: unknown command \"fly\" (known: login connect reconnect drop send expect ping sleep timeout repeat end print)"
        );
        assert!(err("send \"open").contains("unterminated"));
        assert!(err("\n\nsend \"\\q\"").starts_with("t.script:3: unknown escape"));
    }

    #[test]
    fn templates_expand() {
        let t = Template(b"a${i}b${i}".to_vec());
        assert_eq!(t.expand(Some(12)), b"a12b12");
        assert_eq!(t.expand(None), b"a${i}b${i}");
        assert_eq!(Template(b"${".to_vec()).expand(Some(1)), b"${");
    }
}
