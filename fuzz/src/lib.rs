//! Helpers shared by the fuzz targets.

/// Splits fuzzer input into TCP-like reads: the first byte says how many
/// of the following bytes are chunk lengths (0–15); those lengths (1–256,
/// used cyclically) then cut the rest of the input. With no lengths the
/// whole rest is one read.
pub fn reads(data: &[u8]) -> Vec<&[u8]> {
    let Some((&first, rest)) = data.split_first() else {
        return Vec::new();
    };
    let n = usize::from(first % 16).min(rest.len());
    let (lengths, mut stream) = rest.split_at(n);
    if lengths.is_empty() {
        return vec![stream];
    }
    let mut out = Vec::new();
    let mut i = 0;
    while !stream.is_empty() {
        let len = (usize::from(lengths[i % lengths.len()]) + 1).min(stream.len());
        let (head, tail) = stream.split_at(len);
        out.push(head);
        stream = tail;
        i += 1;
    }
    out
}
