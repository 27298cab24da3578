use super::*;

fn line(buf: &mut Vec<u8>, json: &str, seq: u64, prev: &Hash) -> Hash {
    let start = buf.len();
    buf.extend_from_slice(json.as_bytes());
    seal(buf, start, seq, prev)
}

#[test]
fn a_sealed_line_parses_back_and_links_to_its_predecessor() {
    let mut buf = Vec::new();
    let c1 = line(&mut buf, r#"{"ts":"t","kind":"exec"}"#, 1, &[0; 32]);
    let c2 = line(&mut buf, r#"{"ts":"t","kind":"open","run":"r-1"}"#, 2, &c1);
    let text = String::from_utf8(buf.clone()).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].ends_with(&format!(",\"seq\":1,\"chain\":\"{}\"}}", hash_hex(&c1))), "{}", lines[0]);
    let (a, b) = (parse_line(lines[0].as_bytes()).unwrap(), parse_line(lines[1].as_bytes()).unwrap());
    assert_eq!((a.fields.seq, a.chain, b.fields.seq, b.chain), (1, c1, 2, c2));
    assert_eq!(link(&[0; 32], &a.digest), c1);
    assert_eq!(link(&c1, &b.digest), c2);
    assert_eq!(b.fields.run.as_deref(), Some("r-1"));
    // Any edit changes the digest.
    let edited = lines[1].replace("r-1", "r-2");
    assert_ne!(parse_line(edited.as_bytes()).unwrap().digest, b.digest);
}

#[test]
fn lines_that_are_not_chained_are_told_apart() {
    assert_eq!(parse_line(b"{\"ts\":\"t\"}").unwrap_err(), LineError::Unchained);
    assert_eq!(parse_line(b"").unwrap_err(), LineError::Unchained);
    let mut buf = Vec::new();
    line(&mut buf, r#"{"ts":"t"}"#, 7, &[1; 32]);
    buf.pop();
    // Broken JSON with the chain still at the end.
    let mut broken = buf.clone();
    broken[1] = b'x';
    assert!(matches!(parse_line(&broken), Err(LineError::Json(_))));
    // A seq that is not the last field before the chain.
    let moved = String::from_utf8(buf).unwrap().replace(r#"{"ts":"t","seq":7"#, r#"{"seq":7,"ts":"t""#);
    assert!(matches!(parse_line(moved.as_bytes()), Err(LineError::Json(_))), "{moved}");
}

#[test]
fn signatures_verify_only_for_what_was_signed() {
    let key = SigningKey::from_bytes(&[7; 32]);
    let sig = sign(&key, 5, &[3; 32]);
    assert!(signature_ok(&key.verifying_key(), 5, &[3; 32], &sig));
    assert!(!signature_ok(&key.verifying_key(), 6, &[3; 32], &sig));
    assert!(!signature_ok(&key.verifying_key(), 5, &[4; 32], &sig));
    assert!(!signature_ok(&SigningKey::from_bytes(&[8; 32]).verifying_key(), 5, &[3; 32], &sig));
    assert!(!signature_ok(&key.verifying_key(), 5, &[3; 32], "zz"));
}

#[test]
fn the_key_is_made_once_with_mode_0600_and_its_public_half_is_readable() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let (k1, made) = load_or_create_key(&dir).unwrap();
    assert!(made);
    assert_eq!(std::fs::metadata(key_path(&dir)).unwrap().permissions().mode() & 0o777, 0o600);
    let (k2, made) = load_or_create_key(&dir).unwrap();
    assert!(!made);
    assert_eq!(k1.to_bytes(), k2.to_bytes());
    assert_eq!(host_pubkey(&dir).unwrap(), k1.verifying_key());
    assert_eq!(read_pubkey(&pubkey_path(&dir)).unwrap(), k1.verifying_key());
    let e = read_pubkey(&dir.join("nope")).unwrap_err();
    assert!(e.contains("nope"), "{e}");
    std::fs::write(dir.join("bad"), "xyz\n").unwrap();
    assert!(read_pubkey(&dir.join("bad")).unwrap_err().contains("bad"));
}

#[test]
fn resume_goes_on_from_the_log_and_reports_what_does_not_add_up() {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("events.jsonl");
    // Nothing at all: the chain starts.
    let r = resume(&log, None).unwrap();
    assert_eq!((r.seq, r.chain, r.gap, r.partial), (0, [0; 32], None, false));
    let mut buf = Vec::new();
    let c1 = line(&mut buf, r#"{"ts":"t"}"#, 1, &[0; 32]);
    let c2 = line(&mut buf, r#"{"ts":"u"}"#, 2, &c1);
    std::fs::write(&log, &buf).unwrap();
    // The head lags the log (a crash after the write): no gap.
    let r = resume(&log, Some((1, c1))).unwrap();
    assert_eq!((r.seq, r.chain, r.gap), (2, c2, None));
    // The head is ahead of the log: lines were lost.
    let r = resume(&log, Some((5, [9; 32]))).unwrap();
    assert_eq!((r.seq, r.chain), (5, [9; 32]));
    let g = r.gap.unwrap();
    assert_eq!((g.head_seq, g.log_seq), (Some(5), Some(2)));
    assert!(g.reason.contains("3 lines are missing"), "{}", g.reason);
    // Same seq, other content.
    assert!(resume(&log, Some((2, [9; 32]))).unwrap().gap.unwrap().reason.contains("chain differs"));
    // No head.
    assert!(resume(&log, None).unwrap().gap.unwrap().reason.contains("no chain head"));
    // A rotated log: the newest rotation's end counts.
    std::fs::rename(&log, tmp.path().join("events.jsonl.1")).unwrap();
    std::fs::write(&log, "").unwrap();
    assert_eq!(resume(&log, Some((2, c2))).unwrap().gap, None);
    // Half a line at the end.
    std::fs::write(&log, [&buf[..], b"{\"ts\":"].concat()).unwrap();
    let r = resume(&log, Some((2, c2))).unwrap();
    assert!(r.partial && r.gap.unwrap().reason.contains("incomplete"));
}

#[test]
fn last_line_reads_past_its_first_chunk() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("f");
    let long = "x".repeat(200_000);
    std::fs::write(&p, format!("a\n{long}\n")).unwrap();
    assert_eq!(last_line(&p).unwrap(), (Some(long.into_bytes()), false));
    std::fs::write(&p, "only").unwrap();
    assert_eq!(last_line(&p).unwrap(), (None, true));
}
