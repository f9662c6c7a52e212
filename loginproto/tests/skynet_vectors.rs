//! Every case of skynet's crypt vectors (`testdata/vectors/*.json`, produced by
//! skynet's own `crypt` module) against `loginproto::skynet`.
//!
//! Each test also checks how many cases it saw, so a vector file that grows or
//! a case that gets skipped does not go unnoticed. Error cases only assert
//! that an error occurs; skynet's message text is informative.

use std::path::PathBuf;

use md5::Md5;
use serde_json::Value;
use sha1::{Digest, Sha1};

use loginproto::skynet::{
    self, CryptError, Key, Padding, base64_decode, base64_encode, base64_encode_into,
    compat::{hexdecode, hexencode, xor_str},
    desdecode, desencode, dhexchange, dhsecret, hashkey, hmac_hash, hmac64, key_from_slice,
};

// ---------------------------------------------------------------- helpers

fn load(name: &str) -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../testdata/vectors")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).expect("vector file is JSON")
}

fn section<'a>(file: &'a Value, name: &str) -> &'a [Value] {
    file[name]
        .as_array()
        .unwrap_or_else(|| panic!("no array {name:?}"))
}

fn field<'a>(case: &'a Value, name: &str) -> &'a str {
    case[name]
        .as_str()
        .unwrap_or_else(|| panic!("no string {name:?} in {case}"))
}

/// Strict lowercase-hex parser, independent of the code under test.
fn unhex(text: &str) -> Vec<u8> {
    assert!(text.len() % 2 == 0, "odd hex {text:?}");
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("vector hex"))
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A case's 8-byte argument, which must be well-formed in a success case.
fn key(case: &Value, name: &str) -> Key {
    key_from_slice(&unhex(field(case, name)), "key").expect("8-byte key in a success case")
}

fn is_error(case: &Value) -> bool {
    case.get("error").is_some()
}

fn note(case: &Value) -> &str {
    case["note"].as_str().unwrap_or("")
}

// ---------------------------------------------------------------- DH

#[test]
fn dhexchange_cases() {
    let file = load("dhexchange.json");
    let cases = section(&file, "cases");
    for case in cases {
        let k = key(case, "key");
        assert_eq!(
            u64::from_le_bytes(k).to_string(),
            field(case, "key_u64"),
            "{}",
            note(case)
        );
        let got = dhexchange(&k).unwrap();
        assert_eq!(hex(&got), field(case, "result"), "{}", note(case));
        assert_eq!(
            u64::from_le_bytes(got).to_string(),
            field(case, "result_u64")
        );
    }
    assert_eq!(cases.len(), 38);
}

#[test]
fn dhexchange_errors() {
    let file = load("dhexchange.json");
    let cases = section(&file, "errors");
    for case in cases {
        let result = key_from_slice(&unhex(field(case, "key")), "key").and_then(|k| dhexchange(&k));
        assert!(result.is_err(), "{}: {result:?}", note(case));
    }
    assert_eq!(cases.len(), 4);
    assert_eq!(dhexchange(&[0; 8]), Err(CryptError::ZeroKey));
}

#[test]
fn dhsecret_cases() {
    let file = load("dhsecret.json");
    let cases = section(&file, "cases");
    for case in cases {
        let (private_a, private_b) = (key(case, "private_a"), key(case, "private_b"));
        let (public_a, public_b) = (key(case, "public_a"), key(case, "public_b"));
        assert_eq!(dhexchange(&private_a).unwrap(), public_a);
        assert_eq!(dhexchange(&private_b).unwrap(), public_b);
        let secret = field(case, "secret");
        assert_eq!(hex(&dhsecret(&public_b, &private_a).unwrap()), secret);
        assert_eq!(hex(&dhsecret(&public_a, &private_b).unwrap()), secret);
    }
    assert_eq!(cases.len(), 24);
}

#[test]
fn dhsecret_raw() {
    let file = load("dhsecret.json");
    let cases = section(&file, "raw");
    let mut errors = 0;
    for case in cases {
        // x is checked before y, as in skynet.
        let result = key_from_slice(&unhex(field(case, "x")), "x").and_then(|x| {
            let y = key_from_slice(&unhex(field(case, "y")), "y")?;
            dhsecret(&x, &y)
        });
        if is_error(case) {
            errors += 1;
            assert!(result.is_err(), "{}: {result:?}", note(case));
        } else {
            assert_eq!(
                hex(&result.unwrap()),
                field(case, "result"),
                "{}",
                note(case)
            );
        }
    }
    assert_eq!((cases.len(), errors), (27, 4));
}

// ---------------------------------------------------------------- hmac64, hashkey

#[test]
fn hmac64_cases() {
    let file = load("hmac64.json");
    let cases = section(&file, "cases");
    let mut errors = 0;
    for case in cases {
        let result = key_from_slice(&unhex(field(case, "x")), "x").and_then(|x| {
            let y = key_from_slice(&unhex(field(case, "y")), "y")?;
            Ok(hmac64(&x, &y))
        });
        if is_error(case) {
            errors += 1;
            assert!(result.is_err(), "{}: {result:?}", note(case));
        } else {
            assert_eq!(
                hex(&result.unwrap()),
                field(case, "result"),
                "{}",
                note(case)
            );
        }
    }
    assert_eq!((cases.len(), errors), (30, 2));
}

/// skynet's `hmac64_md5` (spec §3.4); only needed to check the vectors.
fn hmac64_md5(x: &Key, y: &Key) -> (Key, Vec<u8>) {
    let block = [&x[..], &y[..]].concat().repeat(3);
    let digest = Md5::digest(&block).to_vec();
    let mut out = [0u8; 8];
    for (i, o) in out.iter_mut().enumerate() {
        *o = digest[i] ^ digest[i + 8];
    }
    (out, digest)
}

#[test]
fn hmac64_md5_cases() {
    let file = load("hmac64_md5.json");
    let cases = section(&file, "cases");
    for case in cases {
        let (got, md5) = hmac64_md5(&key(case, "x"), &key(case, "y"));
        assert_eq!(hex(&md5), field(case, "md5_of_xy_x3"));
        assert_eq!(hex(&got), field(case, "result"));
    }
    assert_eq!(cases.len(), 20);
}

#[test]
fn hashkey_cases() {
    let file = load("hashkey.json");
    let cases = section(&file, "cases");
    for case in cases {
        let input = unhex(field(case, "input"));
        if let Some(text) = case["input_text"].as_str() {
            assert_eq!(text.as_bytes(), input.as_slice());
        }
        assert_eq!(
            hex(&hashkey(&input)),
            field(case, "result"),
            "{}",
            note(case)
        );
    }
    assert_eq!(cases.len(), 25);
}

#[test]
fn hmac_hash_cases() {
    let file = load("hmac_hash.json");
    let cases = section(&file, "cases");
    let mut errors = 0;
    for case in cases {
        let text = unhex(field(case, "text"));
        let result =
            key_from_slice(&unhex(field(case, "key")), "key").map(|k| (k, hmac_hash(&k, &text)));
        if is_error(case) {
            errors += 1;
            assert!(result.is_err(), "{}: {result:?}", note(case));
            continue;
        }
        let (k, got) = result.unwrap();
        assert_eq!(
            hex(&hashkey(&text)),
            field(case, "hashkey_text"),
            "{}",
            note(case)
        );
        assert_eq!(hex(&got), field(case, "result"), "{}", note(case));
        assert_eq!(got, hmac64(&hashkey(&text), &k));
    }
    assert_eq!((cases.len(), errors), (23, 1));
}

// ---------------------------------------------------------------- DES

const PADDINGS: [(Padding, &str); 2] =
    [(Padding::Iso7816_4, "iso7816_4"), (Padding::Pkcs7, "pkcs7")];

#[test]
fn des_cases() {
    let file = load("des.json");
    let cases = section(&file, "cases");
    for case in cases {
        let k = key(case, "key");
        let plain = unhex(field(case, "plaintext"));
        for (padding, name) in PADDINGS {
            let expected = field(case, &format!("ciphertext_{name}"));
            let sealed = desencode(&k, &plain, padding);
            assert_eq!(hex(&sealed), expected, "{} bytes, {name}", plain.len());
            assert_eq!(desdecode(&k, &sealed, padding).unwrap(), plain, "{name}");
        }
    }
    assert_eq!(cases.len(), 35);
}

#[test]
fn des_blocks() {
    let file = load("des.json");
    let cases = section(&file, "blocks");
    for case in cases {
        let plain = unhex(field(case, "plain"));
        assert_eq!(plain.len(), 8);
        // A raw ECB block is the first block of encoding exactly one block.
        let sealed = desencode(&key(case, "key"), &plain, Padding::default());
        assert_eq!(hex(&sealed[..8]), field(case, "cipher"), "{}", note(case));
    }
    assert_eq!(cases.len(), 15);
}

#[test]
fn des_decode() {
    let file = load("des.json");
    let cases = section(&file, "decode");
    let mut results = 0;
    for case in cases {
        let k = key(case, "key");
        let data = unhex(field(case, "ciphertext"));
        // Check the stated decryption by encrypting it back (ECB: block-wise).
        let blocks = unhex(field(case, "decrypted_blocks"));
        assert_eq!(
            desencode(&k, &blocks, Padding::default())[..data.len()],
            data[..],
            "{}",
            note(case)
        );
        for (padding, name) in PADDINGS {
            let expected = &case[name];
            let got = desdecode(&k, &data, padding);
            if expected.get("error").is_some() {
                assert_eq!(
                    got,
                    Err(CryptError::InvalidDesText),
                    "{} / {name}",
                    note(case)
                );
            } else {
                results += 1;
                assert_eq!(
                    hex(&got.unwrap()),
                    field(expected, "result"),
                    "{} / {name}",
                    note(case)
                );
            }
        }
    }
    assert_eq!((cases.len(), results), (23, 15));
}

#[test]
fn des_errors() {
    let file = load("des.json");
    let cases = section(&file, "errors");
    for case in cases {
        let args = case["args"].as_array().unwrap();
        let result = (|| {
            // skynet checks the key first, then the data length, then the mode.
            let k = key_from_slice(&unhex(args[0].as_str().unwrap()), "key")?;
            let data = unhex(args[1].as_str().unwrap());
            let padding = match args.get(2) {
                Some(mode) => Padding::try_from(mode.as_i64().unwrap())?,
                None => Padding::default(),
            };
            match field(case, "function") {
                "desencode" => Ok(desencode(&k, &data, padding)),
                "desdecode" => desdecode(&k, &data, padding),
                other => panic!("unknown function {other}"),
            }
        })();
        assert!(result.is_err(), "{}: {result:?}", note(case));
    }
    assert_eq!(cases.len(), 9);
}

// ---------------------------------------------------------------- base64

#[test]
fn base64_cases() {
    let file = load("base64.json");
    let cases = section(&file, "cases");
    for case in cases {
        let data = unhex(field(case, "input"));
        let text = field(case, "output");
        assert_eq!(base64_encode(&data), text, "{}", note(case));
        let mut into = b"prefix".to_vec();
        base64_encode_into(&data, &mut into);
        assert_eq!(into, [b"prefix", text.as_bytes()].concat());
        assert_eq!(base64_decode(text.as_bytes()).unwrap(), data);
    }
    assert_eq!(cases.len(), 27);
}

#[test]
fn base64_decode_cases() {
    let file = load("base64.json");
    let cases = section(&file, "decode");
    let mut errors = 0;
    for case in cases {
        // input_hex is authoritative; `input` is the same text JSON-escaped.
        let input = unhex(field(case, "input_hex"));
        let chars: Vec<u32> = field(case, "input").chars().map(u32::from).collect();
        assert_eq!(
            chars,
            input.iter().map(|&b| u32::from(b)).collect::<Vec<_>>()
        );
        let got = base64_decode(&input);
        if is_error(case) {
            errors += 1;
            assert_eq!(got, Err(CryptError::InvalidBase64), "{}", note(case));
        } else {
            assert_eq!(hex(&got.unwrap()), field(case, "output"), "{}", note(case));
        }
    }
    assert_eq!((cases.len(), errors), (40, 18));
}

// ---------------------------------------------------------------- compat

#[test]
fn hex_cases() {
    let file = load("hex.json");
    let cases = section(&file, "cases");
    for case in cases {
        assert_eq!(
            hexencode(&unhex(field(case, "input"))),
            field(case, "output")
        );
    }
    assert_eq!(cases.len(), 6);
}

#[test]
fn hex_decode_cases() {
    let file = load("hex.json");
    let cases = section(&file, "decode");
    let mut errors = 0;
    for case in cases {
        let input = unhex(field(case, "input_hex"));
        let got = hexdecode(&input);
        if is_error(case) {
            errors += 1;
            assert!(got.is_err(), "{:?}: {got:?}", field(case, "input"));
        } else {
            assert_eq!(
                hex(&got.unwrap()),
                field(case, "output"),
                "{:?}",
                field(case, "input")
            );
        }
    }
    assert_eq!((cases.len(), errors), (27, 9));
}

/// RFC 2104 HMAC-SHA1 with 64-byte blocks, as skynet's `hmac_sha1`.
fn hmac_sha1(key: &[u8], text: &[u8]) -> Vec<u8> {
    let mut block = [0u8; 64];
    if key.len() > 64 {
        block[..20].copy_from_slice(&Sha1::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| block.iter().map(|b| b ^ byte).collect::<Vec<u8>>();
    let inner = Sha1::new()
        .chain_update(pad(0x36))
        .chain_update(text)
        .finalize();
    Sha1::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .to_vec()
}

#[test]
fn sha1_cases() {
    let file = load("sha1.json");
    let cases = section(&file, "cases");
    for case in cases {
        assert_eq!(
            hex(&Sha1::digest(unhex(field(case, "input")))),
            field(case, "sha1")
        );
    }
    let macs = section(&file, "hmac_sha1");
    for case in macs {
        let got = hmac_sha1(&unhex(field(case, "key")), &unhex(field(case, "text")));
        assert_eq!(hex(&got), field(case, "hmac_sha1"), "{}", note(case));
    }
    assert_eq!((cases.len(), macs.len()), (4, 6));
}

#[test]
fn xor_str_cases() {
    let file = load("xor_str.json");
    let cases = section(&file, "cases");
    for case in cases {
        let got = xor_str(&unhex(field(case, "a")), &unhex(field(case, "b")));
        if is_error(case) {
            assert_eq!(got, Err(CryptError::EmptyXorKey), "{}", note(case));
        } else {
            assert_eq!(hex(&got.unwrap()), field(case, "result"), "{}", note(case));
        }
    }
    assert_eq!(cases.len(), 4);
}

// ---------------------------------------------------------------- cross-checks

#[test]
fn random_key_feeds_dhexchange() {
    for bytes in [[0u8; 8], [1, 1, 0, 0, 0, 0, 0, 0], [0xff; 8]] {
        assert!(dhexchange(&skynet::random_key(bytes)).is_ok());
    }
}
