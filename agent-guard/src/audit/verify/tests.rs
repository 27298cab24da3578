use super::*;
use ed25519_dalek::SigningKey;

/// A log of `n` events with a checkpoint after every 4th, as the writer makes it.
fn log(n: u64) -> (Vec<String>, SigningKey, (u64, Hash)) {
    let key = SigningKey::from_bytes(&[5; 32]);
    let (mut seq, mut prev) = (0u64, [0u8; 32]);
    let mut lines = Vec::new();
    let mut push = |json: String, seq: &mut u64, prev: &mut Hash| {
        let mut buf = json.into_bytes();
        *seq += 1;
        *prev = chain::seal(&mut buf, 0, *seq, prev);
        buf.pop();
        lines.push(String::from_utf8(buf).unwrap());
    };
    for i in 0..n {
        push(format!(r#"{{"ts":"t{i}","kind":"open","path":"/f{i}"}}"#), &mut seq, &mut prev);
        if i % 4 == 3 {
            let sig = chain::sign(&key, seq, &prev);
            let cp = format!(
                r#"{{"ts":"c","kind":"checkpoint","covers_seq":{seq},"covers_chain":"{}","pubkey":"{}","signature":"{sig}"}}"#,
                chain::hash_hex(&prev),
                hex::encode(key.verifying_key().as_bytes())
            );
            push(cp, &mut seq, &mut prev);
        }
    }
    (lines, key, (seq, prev))
}

fn check(lines: &[String], key: &SigningKey, head: Option<(u64, Hash)>) -> Result<Report, Problem> {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("events.jsonl");
    std::fs::write(&p, lines.iter().map(|l| format!("{l}\n")).collect::<String>()).unwrap();
    verify(&[p], &key.verifying_key(), head).map_err(|mut e| {
        e.file = PathBuf::from("events.jsonl");
        e
    })
}

#[test]
fn an_intact_log_verifies_and_says_what_is_not_signed_yet() {
    let (lines, key, head) = log(10);
    let r = check(&lines, &key, Some(head)).unwrap();
    assert_eq!((r.lines, r.first_seq, r.last_seq, r.checkpoints, r.unsigned, r.anchored), (12, Some(1), Some(12), 2, 2, false));
    // Rotated away at the start: anchored at the first line kept.
    let r = check(&lines[3..], &key, None).unwrap();
    assert!(r.anchored && r.first_seq == Some(4), "{r:?}");
}

#[test]
fn each_tampering_is_named_at_its_line() {
    let (lines, key, head) = log(10);
    let at = |l: Vec<String>, head| check(&l, &key, head).unwrap_err();
    let mut edited = lines.clone();
    edited[2] = edited[2].replace("/f2", "/g2");
    let e = at(edited, None);
    assert_eq!((e.line, e.what.starts_with("edited")), (3, true), "{e}");

    let mut deleted = lines.clone();
    deleted.remove(2);
    let e = at(deleted, None);
    assert_eq!(e.line, 3, "{e}");
    assert!(e.what.contains("deleted: seq 3 is missing"), "{e}");

    let mut swapped = lines.clone();
    swapped.swap(1, 2);
    let e = at(swapped, None);
    assert_eq!(e.line, 2, "{e}");
    assert!(e.what.starts_with("reordered"), "{e}");

    let e = at(lines[..8].to_vec(), Some(head));
    assert_eq!(e.line, 9, "{e}");
    assert!(e.what.starts_with("truncated"), "{e}");

    // A checkpoint's signature replaced (line 5 is the first checkpoint).
    let mut forged = lines.clone();
    let other = chain::sign(&SigningKey::from_bytes(&[6; 32]), 4, &[0; 32]);
    let sig = forged[4].split("\"signature\":\"").nth(1).unwrap()[..128].to_string();
    forged[4] = forged[4].replace(&sig, &other);
    let e = at(forged, None);
    assert_eq!(e.line, 5, "{e}");
    assert!(e.what.contains("bad checkpoint signature"), "{e}");

    // Another key.
    let e = check(&lines, &SigningKey::from_bytes(&[9; 32]), None).unwrap_err();
    assert_eq!(e.line, 5, "{e}");
    assert!(e.what.contains("not the trusted key"), "{e}");
}

#[test]
fn garbage_and_half_lines_are_errors_with_a_line_not_panics() {
    let (lines, key, _) = log(3);
    let e = check(&["not json at all".to_string(), lines[1].clone()], &key, None).unwrap_err();
    assert_eq!(e.to_string(), "events.jsonl:2: the chain does not begin here (seq 2, not 1) after lines that are not chained");
    let e = check(&[lines[0].clone(), "not json at all".to_string()], &key, None).unwrap_err();
    assert_eq!(e.to_string(), "events.jsonl:2: not a chained log line (no \"chain\" field at its end)");
    // A log from before the chain (an upgrade), then the chain from its start.
    let mut upgraded = vec!["{\"ts\":\"old\"}".to_string(); 2];
    upgraded.extend(lines.iter().cloned());
    let r = check(&upgraded, &key, None).unwrap();
    assert_eq!((r.before_chain, r.lines), (2, lines.len() as u64));
    assert!(r.to_string().contains("2 earlier line(s) from before the chain began are not verified"), "{r}");
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("half");
    std::fs::write(&p, format!("{}\n{}", lines[0], &lines[1][..20])).unwrap();
    let e = verify(std::slice::from_ref(&p), &key.verifying_key(), None).unwrap_err();
    assert_eq!((e.line, e.what.starts_with("truncated")), (2, true), "{e}");
    std::fs::write(&p, [0xff, 0xfe, b'\n', 0]).unwrap();
    assert_eq!(verify(std::slice::from_ref(&p), &key.verifying_key(), None).unwrap_err().line, 2);
    std::fs::write(&p, "a\nb\n").unwrap();
    let e = verify(&[p], &key.verifying_key(), None).unwrap_err();
    assert_eq!((e.line, e.what.starts_with("not a chained log line")), (1, true), "{e}");
    let e = verify(&[tmp.path().join("missing")], &key.verifying_key(), None).unwrap_err();
    assert!(e.to_string().contains("missing: cannot read"), "{e}");
}

#[test]
fn the_chain_runs_across_files() {
    let (lines, key, head) = log(10);
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("log.1"), tmp.path().join("log"));
    let text = |l: &[String]| l.iter().map(|l| format!("{l}\n")).collect::<String>();
    std::fs::write(&a, text(&lines[..6])).unwrap();
    std::fs::write(&b, text(&lines[6..])).unwrap();
    assert_eq!(verify(&[a.clone(), b.clone()], &key.verifying_key(), Some(head)).unwrap().files, 2);
    std::fs::write(&a, text(&lines[..5])).unwrap();
    let e = verify(&[a, b.clone()], &key.verifying_key(), Some(head)).unwrap_err();
    assert_eq!((&e.file, e.line), (&b, 1));
    assert!(e.what.contains("deleted or truncated"), "{e}");
}

#[test]
fn the_live_logs_half_written_last_line_is_left_to_the_head() {
    let (lines, key, head) = log(3);
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("events.jsonl");
    let n = lines.len();
    // The daemon is writing line n as we read: the head says n-1.
    let prev = check(&lines[..n - 1], &key, None).unwrap().last_seq.unwrap();
    let text: String = lines[..n - 1].iter().map(|l| format!("{l}\n")).collect::<String>() + &lines[n - 1][..10];
    std::fs::write(&p, &text).unwrap();
    let at = |seq| Some((seq, chain::parse_line(lines[seq as usize - 1].as_bytes()).unwrap().chain));
    assert_eq!(verify(std::slice::from_ref(&p), &key.verifying_key(), at(prev)).unwrap().lines, n as u64 - 1);
    // The head says line n was written: cut.
    let e = verify(std::slice::from_ref(&p), &key.verifying_key(), Some(head)).unwrap_err();
    assert_eq!((e.line, e.what.starts_with("truncated")), (n, true), "{e}");
}
