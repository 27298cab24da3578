//! Fuzzing the control protocol's decoder, [`parse_request`] (see `crate::fuzzing`): JSON
//! objects built from the protocol's own keys and ops with random values, requests generated
//! as values and serialised, mutated corpus lines, and arbitrary bytes (as the server hands
//! them over: invalid UTF-8 replaced). Properties: no panic, no hang, allocation linear in the
//! line, an error always says something, and every accepted request round-trips (serialised
//! again, it parses to the same request).
use std::collections::BTreeMap;

use proptest::{collection::vec, prelude::*, sample::select};
use serde_json::Value;

use super::*;
use crate::fuzzing::{bounded, bytes, corpus, fuzz, mutated};

/// Bytes a parse may allocate per byte of the line, and in all (a JSON array of empty
/// strings costs a String, 24 bytes, per 3 bytes, times the vector's growth).
const PER_BYTE: u64 = 64;
const FIXED: u64 = 64 << 10;

fn property(line: &str) -> Result<(), String> {
    match bounded("parse_request", line.len(), PER_BYTE, FIXED, || parse_request(line))? {
        Err(e) if e.is_empty() => Err("an empty error".into()),
        Err(_) => Ok(()),
        Ok(req) => round_trip(&req),
    }
}

fn round_trip(req: &Request) -> Result<(), String> {
    let line = serde_json::to_string(&Envelope { v: PROTOCOL_VERSION, req: req.clone() }).map_err(|e| e.to_string())?;
    match parse_request(&line) {
        Ok(back) if back == *req => Ok(()),
        other => Err(format!("round trip of {req:?} through {line} gave {other:?}")),
    }
}

const KEYS: &[&str] = &[
    "v", "op", "run", "name", "labels", "argv", "policy", "policy_file", "source", "text", "abi", "exit_status",
    "file", "for_run", "kill", "follow", "json", "violations", "since", "tail", "coverage",
];
const OPS: &[&str] = &[
    "ping", "register", "landlock", "end", "policy_apply", "policy_list", "policy_show", "approve", "deny", "ps",
    "status", "freeze", "thaw", "kill", "events", "explode", "",
];

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (0u64..4).prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        ".{0,12}".prop_map(Value::String),
        select(OPS).prop_map(|s| Value::String(s.into())),
    ]
}

fn json() -> impl Strategy<Value = Value> {
    scalar().prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..6).prop_map(Value::Array),
            vec((prop_oneof![3 => select(KEYS).prop_map(str::to_string), 1 => ".{0,6}"], inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// A request-shaped object: `v`, `op` and some of the protocol's keys with random values.
fn request_object() -> impl Strategy<Value = String> {
    (
        prop_oneof![3 => (1u64..=2).prop_map(Value::from), 1 => scalar()],
        select(OPS),
        vec((select(KEYS), json()), 0..5),
    )
        .prop_map(|(v, op, rest)| {
            let mut m = serde_json::Map::new();
            m.insert("v".into(), v);
            m.insert("op".into(), Value::String(op.into()));
            for (k, val) in rest {
                m.insert(k.into(), val);
            }
            Value::Object(m).to_string()
        })
}

fn text() -> BoxedStrategy<String> {
    ".{0,16}".boxed()
}

fn request() -> impl Strategy<Value = Request> {
    let run = text();
    prop_oneof![
        Just(Request::Ping),
        Just(Request::Ps),
        Just(Request::Status),
        Just(Request::Checkpoint),
        Just(Request::PolicyList),
        (
            run.clone(),
            prop::option::of(text()),
            prop::collection::btree_map(text(), text(), 0..3),
            vec(text(), 0..3),
            prop::option::of(text()),
            prop::option::of((text(), text()).prop_map(|(source, text)| PolicyText { source, text })),
        )
            .prop_map(|(run, name, labels, argv, policy, policy_file)| Request::Register {
                run,
                name,
                labels,
                argv,
                policy,
                policy_file
            }),
        (run.clone(), any::<u32>()).prop_map(|(run, abi)| Request::Landlock { run, abi }),
        (run.clone(), any::<Option<i32>>()).prop_map(|(run, exit_status)| Request::End { run, exit_status }),
        (text(), text()).prop_map(|(source, text)| Request::PolicyApply { file: PolicyText { source, text } }),
        text().prop_map(|name| Request::PolicyShow { name }),
        text().prop_map(|name| Request::PolicyHistory { name }),
        (text(), text()).prop_map(|(name, version)| Request::PolicyVersion { name, version }),
        (text(), prop::option::of(text())).prop_map(|(name, version)| Request::PolicyRollback { name, version }),
        (run.clone(), any::<bool>(), any::<Option<u64>>(), any::<Option<usize>>())
            .prop_map(|(run, for_run, hold, attempts)| Request::Approve { run, for_run, hold, attempts }),
        run.clone().prop_map(|run| Request::HoldShow { run }),
        (run.clone(), any::<bool>()).prop_map(|(run, kill)| Request::Deny { run, kill }),
        run.clone().prop_map(|run| Request::Freeze { run }),
        run.clone().prop_map(|run| Request::Thaw { run }),
        run.clone().prop_map(|run| Request::Kill { run }),
        (
            prop::option::of(run),
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
            prop::option::of(text()),
            prop::option::of(any::<usize>())
        )
            .prop_map(|(run, follow, json, violations, since, tail)| Request::Events { run, follow, json, violations, since, tail }),
    ]
}

fn line_of(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn fuzz_control_json() {
    let seeds: Vec<String> = corpus("control").iter().map(|b| line_of(b)).collect();
    fuzz("control", &seeds, request_object(), |l| property(l));
}

#[test]
fn fuzz_control_requests_round_trip() {
    let s = fuzz("control-requests", &[], request(), round_trip);
    assert!(s.cases > 0);
}

#[test]
fn fuzz_control_bytes() {
    let seeds = corpus("control");
    let strategy = prop_oneof![4 => mutated(seeds.clone()), 1 => bytes(1024)];
    fuzz("control-bytes", &seeds, strategy, |b| property(&line_of(b)));
}

#[test]
fn deep_nesting_is_an_error_not_a_stack_overflow() {
    let deep = format!("{{\"v\":2,\"op\":\"ping\",\"x\":{}{}}}", "[".repeat(100_000), "]".repeat(100_000));
    assert!(property(&deep).is_ok());
    assert!(parse_request(&deep).is_err());
    let labels: BTreeMap<String, String> = (0..1000).map(|i| (i.to_string(), "x".repeat(i % 7))).collect();
    let many = Request::Register { run: "r".into(), name: None, labels, argv: vec![String::new(); 1000], policy: None, policy_file: None };
    round_trip(&many).unwrap();
}
