//! The login server's long-term key on disk: base64 of the 32 private
//! bytes, one line, made by `gate keygen`, which also prints the public key
//! clients pin (`client --server-key`).

use std::path::Path;

use loginproto::login::StaticKey;
use loginproto::skynet::{base64_decode, base64_encode};

/// A fresh key: the file's contents and the public key's text.
pub fn generate() -> (String, String) {
    let private: [u8; 32] = rand::random();
    let key = StaticKey::from_private(private);
    (base64_encode(&private), public_text(&key))
}

/// The public key as clients pin it (base64).
pub fn public_text(key: &StaticKey) -> String {
    base64_encode(key.public())
}

/// Reads a key file.
pub fn load(path: &Path) -> Result<StaticKey, String> {
    let text = zeroize::Zeroizing::new(
        std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read server key file {}: {e}", path.display()))?,
    );
    let bytes = zeroize::Zeroizing::new(
        base64_decode(text.trim().as_bytes())
            .map_err(|_| format!("server key file {} is not base64", path.display()))?,
    );
    let private: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
        format!(
            "server key file {} holds {} bytes; a key is 32",
            path.display(),
            bytes.len()
        )
    })?;
    Ok(StaticKey::from_private(private))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_load_back() {
        let (file, public) = generate();
        let path = std::env::temp_dir().join(format!("server-key-{}", std::process::id()));
        std::fs::write(&path, format!("{file}\n")).unwrap();
        let key = load(&path).unwrap();
        assert_eq!(public_text(&key), public);
        std::fs::write(&path, "bm90IGEga2V5").unwrap();
        assert!(load(&path).unwrap_err().contains("a key is 32"));
        std::fs::remove_file(&path).unwrap();
        assert!(load(&path).is_err());
    }
}
