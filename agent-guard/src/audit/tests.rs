//! collect, summary and bundle on a log made here (the daemon-driven tests are in
//! tests/tests/evidence.rs).
use std::collections::BTreeMap;

use ed25519_dalek::SigningKey;

use crate::{
    audit::{bundle, collect, summary},
    output::chain,
};

/// A log of two interleaved runs with a checkpoint after line `cp_after`.
fn log(dir: &std::path::Path, cp_after: u64) -> (std::path::PathBuf, SigningKey) {
    let key = SigningKey::from_bytes(&[3; 32]);
    let events = [
        r#"{"ts":"t1","host":"h","kind":"run_start","verdict":"allow","run":"r-a","run_name":"a","argv":["sh","-c","x`y"],"requested_by_uid":0,"requested_by_pid":5}"#,
        r#"{"ts":"t2","host":"h","kind":"exec","verdict":"allow","run":"r-b","argv":["other"]}"#,
        r#"{"ts":"t3","host":"h","kind":"open","verdict":"deny","rule":"files.read","run":"r-a","path":"/etc/shadow\u001b[2J","access":"read","tgid":9,"comm":"cat","policy":"p","policy_version":"sha256:1"}"#,
        r#"{"ts":"t4","host":"h","kind":"drop","verdict":"allow","run":null,"count":3,"stage":"sink"}"#,
        r#"{"ts":"t5","host":"h","kind":"run_end","verdict":"allow","run":"r-a","exit_status":1}"#,
        r#"{"ts":"t6","host":"h","kind":"exec","verdict":"allow","run":"r-b","argv":["more"]}"#,
    ];
    let (mut seq, mut prev) = (0u64, [0u8; 32]);
    let mut text = Vec::new();
    let push = |json: &str, text: &mut Vec<u8>, seq: &mut u64, prev: &mut chain::Hash| {
        let start = text.len();
        text.extend_from_slice(json.as_bytes());
        *seq += 1;
        *prev = chain::seal(text, start, *seq, prev);
    };
    for e in events {
        push(e, &mut text, &mut seq, &mut prev);
        if seq == cp_after {
            let cp = format!(
                r#"{{"ts":"c","host":"h","kind":"checkpoint","verdict":"allow","covers_seq":{seq},"covers_chain":"{}","pubkey":"{}","signature":"{}"}}"#,
                chain::hash_hex(&prev),
                hex::encode(key.verifying_key().as_bytes()),
                chain::sign(&key, seq, &prev)
            );
            push(&cp, &mut text, &mut seq, &mut prev);
        }
    }
    let p = dir.join("events.jsonl");
    std::fs::write(&p, text).unwrap();
    (p, key)
}

#[test]
fn a_runs_lines_and_the_span_that_ties_them_to_a_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let (p, key) = log(tmp.path(), 5);
    let c = collect::collect(std::slice::from_ref(&p), "a").unwrap();
    assert_eq!(c.run, "r-a");
    // Its three lines and the host's drop between them; the span 1..=6 (the checkpoint).
    let seqs: Vec<u64> = c.events.iter().map(|e| e.parsed.fields.seq).collect();
    assert_eq!(seqs, vec![1, 3, 4, 5]);
    assert_eq!((c.start_seq, c.digests.len(), c.checkpoints.len(), c.covered()), (1, 6, 1, true));
    let members = bundle::members(&c, &key.verifying_key(), &BTreeMap::new(), "now");
    let m: BTreeMap<String, Vec<u8>> = members.into_iter().collect();
    let v = bundle::verify(&m, &key.verifying_key()).unwrap();
    assert_eq!((v.events, v.first_seq, v.last_seq, v.checkpoint_seq, v.policies, v.policies_with_text), (4, 1, 5, 6, 1, 0));
    // The summary: the violation, the loss, the end; nothing of the other run; no control
    // character or stray backtick from the run's data.
    let s = String::from_utf8(m["summary.md"].clone()).unwrap();
    assert!(s.contains("**DENY** open `/etc/shadow�[2J` (read), rule files.read by pid 9 (cat)"), "{s}");
    assert!(s.contains("**started** `sh -c x'y` by uid 0 (pid 5)") && s.contains("**events lost**: 3 at sink"), "{s}");
    assert!(s.contains("**ended**, exit status 1") && !s.contains("other") && !s.contains('\u{1b}'), "{s}");
    // Edited: an event, the proof, the checkpoint.
    let mut bad = m.clone();
    let ev = String::from_utf8(bad["events.jsonl"].clone()).unwrap().replace("shadow", "passwd");
    bad.insert("events.jsonl".into(), ev.into_bytes());
    assert_eq!(bundle::verify(&bad, &key.verifying_key()).unwrap_err().to_string().split(':').take(2).collect::<Vec<_>>(), ["events.jsonl", "2"]);
    let mut bad = m.clone();
    bad.remove("chain.json");
    assert!(bundle::verify(&bad, &key.verifying_key()).unwrap_err().to_string().contains("no chain.json"));
    let other = SigningKey::from_bytes(&[4; 32]).verifying_key();
    assert!(bundle::verify(&m, &other).unwrap_err().to_string().starts_with("checkpoints.jsonl:1: bad checkpoint"));
}

#[test]
fn a_run_not_yet_under_a_checkpoint_is_not_covered_and_unknown_runs_are_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let (p, key) = log(tmp.path(), 2);
    let c = collect::collect(std::slice::from_ref(&p), "r-a").unwrap();
    assert!(!c.covered());
    let m: BTreeMap<String, Vec<u8>> = bundle::members(&c, &key.verifying_key(), &BTreeMap::new(), "now").into_iter().collect();
    assert!(bundle::verify(&m, &key.verifying_key()).unwrap_err().to_string().contains("no checkpoint covers"));
    let e = collect::collect(std::slice::from_ref(&p), "r-zzz").unwrap_err();
    assert!(e.to_string().contains("no events of a run \"r-zzz\""), "{e}");
    let run = summary::run_record("r-a", &summary::parse_events(c.events.iter().map(|e| e.text.as_str())));
    assert_eq!((run["exit_status"].as_i64(), run["violations"].as_u64()), (Some(1), Some(1)));
}

#[test]
fn bundle_files_that_are_not_bundles_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("x");
    std::fs::write(&p, "hello").unwrap();
    assert!(bundle::read_bundle(&p).unwrap_err().to_string().contains("not an evidence bundle"));
    // gzip, but not a tar.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gz, &[7u8; 2000]).unwrap();
    std::fs::write(&p, gz.finish().unwrap()).unwrap();
    let r = bundle::read_bundle(&p);
    match r {
        Err(e) => assert!(e.to_string().contains("not an evidence bundle"), "{e}"),
        Ok(m) => assert!(bundle::verify(&m, &SigningKey::from_bytes(&[1; 32]).verifying_key()).is_err()),
    }
    assert!(bundle::read_bundle(&tmp.path().join("none")).unwrap_err().to_string().contains("cannot read"));
}

#[test]
fn a_run_across_a_rotation_is_collected_from_both_files() {
    let tmp = tempfile::tempdir().unwrap();
    let (p, key) = log(tmp.path(), 5);
    let text = std::fs::read_to_string(&p).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let (old, new) = (tmp.path().join("events.jsonl.1"), tmp.path().join("events.jsonl"));
    std::fs::write(&old, lines[..3].iter().map(|l| format!("{l}\n")).collect::<String>()).unwrap();
    std::fs::write(&new, lines[3..].iter().map(|l| format!("{l}\n")).collect::<String>()).unwrap();
    let files = chain::log_files(&new);
    assert_eq!(files, vec![old.clone(), new.clone()]);
    let c = collect::collect(&files, "r-a").unwrap();
    assert_eq!((c.events.len(), c.events[0].file.clone(), c.events[3].file.clone()), (4, old, new));
    let m: BTreeMap<String, Vec<u8>> = bundle::members(&c, &key.verifying_key(), &BTreeMap::new(), "now").into_iter().collect();
    assert_eq!(bundle::verify(&m, &key.verifying_key()).unwrap().checkpoint_seq, 6);
}
