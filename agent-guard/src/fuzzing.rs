//! Bounded fuzzing for the unit tests (proptest underneath): the decoders of untrusted input
//! (policy files, control requests, kernel records) get random and mutated inputs for a fixed
//! CPU budget each, with three properties checked on every case: no panic, no hang (a case
//! over [`CASE_LIMIT`] fails; a watchdog aborts the process, naming the seed, if one never
//! returns), and bounded allocation (what a case allocates is measured by a counting global
//! allocator, so a decoder can be held to O(input)).
//!
//! The seed corpus lives in agent-guard/fuzz/corpus/<target>/, one input per file; every
//! entry is run as it is, then mutated. `AG_FUZZ_SECS` sets the CPU seconds per target
//! (default [`DEFAULT_SECS`]); `AG_FUZZ_SEED` replays a run (the seed is printed with every
//! failure). Each target appends a line to target/fuzz-stats.txt (cases, CPU time, corpus).
use std::{
    alloc::{GlobalAlloc, Layout, System},
    cell::Cell,
    fmt::Debug,
    io::Write,
    panic::{catch_unwind, AssertUnwindSafe},
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use proptest::{
    collection::vec,
    prelude::*,
    strategy::ValueTree,
    test_runner::{Config, RngAlgorithm, TestRng, TestRunner},
};

/// CPU seconds per target when AG_FUZZ_SECS is not set (eight targets: about 20 s of the
/// unit tests' wall time on two cores).
pub const DEFAULT_SECS: f64 = 4.0;
/// A single case taking longer than this (debug build) is a failure: the decoders are linear.
pub const CASE_LIMIT: Duration = Duration::from_secs(2);
/// No case returning for this long: the watchdog aborts the test binary.
const HANG_LIMIT: Duration = Duration::from_secs(30);
/// Shrinking steps after a failure.
const SHRINK_STEPS: u32 = 2000;

// ---- allocation accounting ----------------------------------------------------------------

struct Counting;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static BYTES: Cell<u64> = const { Cell::new(0) };
}

fn note(n: usize) {
    let _ = COUNTING.try_with(|on| {
        if on.get() {
            let _ = BYTES.try_with(|b| b.set(b.get() + n as u64));
        }
    });
}

// SAFETY: every call is passed on to the system allocator unchanged; the counters are
// const-initialised thread-locals without destructors (no allocation, no re-entry).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        note(l.size());
        // SAFETY: the caller's contract is System's.
        unsafe { System.alloc(l) }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        note(l.size());
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        note(new.saturating_sub(l.size()));
        // SAFETY: as above.
        unsafe { System.realloc(p, l, new) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Runs `f` and returns what it allocated on this thread, in bytes (growth of reallocations
/// included, frees not subtracted: an upper bound of its peak).
pub fn allocated<T>(f: impl FnOnce() -> T) -> (T, u64) {
    BYTES.with(|b| b.set(0));
    COUNTING.with(|c| c.set(true));
    let out = f();
    COUNTING.with(|c| c.set(false));
    (out, BYTES.with(Cell::get))
}

/// Fails when `f` on `input_len` bytes allocated more than `per_byte * input_len + fixed`.
pub fn bounded<T>(what: &str, input_len: usize, per_byte: u64, fixed: u64, f: impl FnOnce() -> T) -> Result<T, String> {
    let (out, bytes) = allocated(f);
    let limit = per_byte * input_len as u64 + fixed;
    if bytes > limit {
        return Err(format!("{what}: {bytes} bytes allocated for {input_len} bytes of input (limit {limit})"));
    }
    Ok(out)
}

// ---- the corpus ---------------------------------------------------------------------------

fn corpus_dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target)
}

/// The seed inputs of `target`, sorted by file name (never empty).
pub fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = corpus_dir(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("corpus entry").path())
        .collect();
    files.sort();
    let inputs: Vec<Vec<u8>> = files.iter().map(|p| std::fs::read(p).expect("corpus file")).collect();
    assert!(!inputs.is_empty(), "empty corpus {}", dir.display());
    inputs
}

/// Tokens that tend to matter to text decoders (TOML, JSON).
const TOKENS: &[&[u8]] = &[
    b"\"", b"'", b"[", b"]", b"{", b"}", b"=", b",", b":", b"\n", b"\\", b"\\u0000", b"\\uD800", b"#",
    b"[[", b"]]", b"\"\"\"", b"1e999", b"-0", b"18446744073709551616", b"null", b"true", b"/", b"..", b"//",
    b"\xff", b"\xc3", b"\x00", b"-", b"4294967295", b"65536", b"::", b"*", b"{a,b}",
];

#[derive(Debug, Clone)]
enum Edit {
    Flip(usize, u8),
    Insert(usize, u8),
    Delete(usize, usize),
    Token(usize, usize),
    /// Copy `len` bytes from `from` to `at` (repetition).
    Repeat { from: usize, len: usize, at: usize },
    /// Splice another corpus entry's bytes in at `at`.
    Splice { other: usize, at: usize, len: usize },
    Truncate(usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        3 => (any::<usize>(), any::<u8>()).prop_map(|(p, b)| Edit::Flip(p, b)),
        2 => (any::<usize>(), any::<u8>()).prop_map(|(p, b)| Edit::Insert(p, b)),
        2 => (any::<usize>(), 1usize..32).prop_map(|(p, n)| Edit::Delete(p, n)),
        3 => (any::<usize>(), any::<usize>()).prop_map(|(p, t)| Edit::Token(p, t)),
        1 => (any::<usize>(), 1usize..64, any::<usize>()).prop_map(|(from, len, at)| Edit::Repeat { from, len, at }),
        1 => (any::<usize>(), any::<usize>(), 1usize..256).prop_map(|(other, at, len)| Edit::Splice { other, at, len }),
        1 => any::<usize>().prop_map(Edit::Truncate),
    ]
}

fn apply(corpus: &[Vec<u8>], base: usize, edits: &[Edit]) -> Vec<u8> {
    let mut v = corpus[base].clone();
    let at = |p: usize, v: &Vec<u8>| if v.is_empty() { 0 } else { p % (v.len() + 1) };
    for e in edits {
        match *e {
            Edit::Flip(p, b) if !v.is_empty() => {
                let i = p % v.len();
                v[i] ^= b | 1;
            }
            Edit::Flip(..) => {}
            Edit::Insert(p, b) => {
                let i = at(p, &v);
                v.insert(i, b);
            }
            Edit::Delete(p, n) => {
                let i = at(p, &v);
                let end = (i + n).min(v.len());
                v.drain(i..end);
            }
            Edit::Token(p, t) => {
                let i = at(p, &v);
                let tok = TOKENS[t % TOKENS.len()];
                v.splice(i..i, tok.iter().copied());
            }
            Edit::Repeat { from, len, at: to } if !v.is_empty() => {
                let s = from % v.len();
                let chunk: Vec<u8> = v[s..(s + len).min(v.len())].to_vec();
                let i = at(to, &v);
                if v.len() + chunk.len() <= 1 << 16 {
                    v.splice(i..i, chunk);
                }
            }
            Edit::Repeat { .. } => {}
            Edit::Splice { other, at: to, len } => {
                let o = &corpus[other % corpus.len()];
                let s = if o.is_empty() { 0 } else { to % o.len() };
                let chunk = o[s..(s + len).min(o.len())].to_vec();
                let i = at(to, &v);
                v.splice(i..i, chunk);
            }
            Edit::Truncate(p) => {
                let i = at(p, &v);
                v.truncate(i);
            }
        }
    }
    v
}

/// A corpus entry with up to 8 random edits (byte flips, inserts, deletions, tokens,
/// repetitions, splices of other entries, truncation); shrinks toward the entry unedited.
pub fn mutated(corpus: Vec<Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    let corpus = Arc::new(corpus);
    let n = corpus.len();
    (0..n, vec(edit(), 0..8)).prop_map(move |(base, edits)| apply(&corpus, base, &edits))
}

/// Random bytes, shorter than `max`.
pub fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 0..max)
}

// ---- the runner ---------------------------------------------------------------------------

fn thread_cpu() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes the timespec we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn budget() -> Duration {
    let secs = std::env::var("AG_FUZZ_SECS").ok().and_then(|s| s.parse::<f64>().ok()).unwrap_or(DEFAULT_SECS);
    Duration::from_secs_f64(secs.max(0.0))
}

fn seed() -> u64 {
    if let Ok(s) = std::env::var("AG_FUZZ_SEED") {
        let parsed = match s.strip_prefix("0x") {
            Some(hex) => u64::from_str_radix(hex, 16),
            None => s.parse(),
        };
        return parsed.unwrap_or_else(|e| panic!("AG_FUZZ_SEED={s}: {e}"));
    }
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    t.as_nanos() as u64 ^ u64::from(std::process::id()).rotate_left(32)
}

/// One case: the property, with panics caught and the time limit checked.
fn check<V>(prop: &impl Fn(&V) -> Result<(), String>, v: &V) -> Result<(), String> {
    let t = Instant::now();
    let r = catch_unwind(AssertUnwindSafe(|| prop(v))).unwrap_or_else(|p| {
        let msg = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "a panic".into());
        Err(format!("panicked: {msg}"))
    });
    let took = t.elapsed();
    match r {
        Ok(()) if took > CASE_LIMIT => Err(format!("took {took:?} (limit {CASE_LIMIT:?})")),
        r => r,
    }
}

fn fail(target: &str, seed: u64, what: &str, v: &dyn Debug, why: &str) -> ! {
    let mut shown = format!("{v:?}");
    if shown.len() > 4000 {
        let mut cut = 4000;
        while !shown.is_char_boundary(cut) {
            cut -= 1;
        }
        shown.truncate(cut);
        shown.push_str("...");
    }
    panic!("fuzz {target}: {what} fails: {why}\ninput: {shown}\nreplay: AG_FUZZ_SEED={seed:#x} cargo test -p agent-guard --lib fuzz");
}

/// What a target did, as recorded in target/fuzz-stats.txt.
#[derive(Debug)]
pub struct Stats {
    pub cases: u64,
    pub cpu: Duration,
}

/// Runs `prop` on every corpus entry of `target` (as `seeds`, already converted), then on
/// values of `strategy` until the CPU budget is spent. A failure is shrunk and reported with
/// the seed that replays it (AG_FUZZ_SEED).
pub fn fuzz<S>(target: &str, seeds: &[S::Value], strategy: S, prop: impl Fn(&S::Value) -> Result<(), String>) -> Stats
where
    S: Strategy,
    S::Value: Debug,
{
    let seed = seed();
    let fail = |what: &str, v: &dyn Debug, why: &str| fail(target, seed, what, v, why);
    for (i, v) in seeds.iter().enumerate() {
        if let Err(why) = check(&prop, v) {
            fail(&format!("corpus entry {i}"), v, &why);
        }
    }

    // The watchdog: a case that never returns aborts the binary with the seed (a hang would
    // otherwise stall the whole test run without a word).
    let progress = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let watchdog = {
        let (progress, done, target) = (progress.clone(), done.clone(), target.to_string());
        std::thread::spawn(move || {
            let mut last = (u64::MAX, Instant::now());
            while !done.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(100));
                let p = progress.load(Ordering::Relaxed);
                if p != last.0 {
                    last = (p, Instant::now());
                } else if last.1.elapsed() > HANG_LIMIT {
                    eprintln!("fuzz {target}: case {p} has not returned after {HANG_LIMIT:?} (a hang); replay: AG_FUZZ_SEED={seed:#x}");
                    std::process::abort();
                }
            }
        })
    };

    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    key[8..8 + target.len().min(24)].copy_from_slice(&target.as_bytes()[..target.len().min(24)]);
    let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &key);
    let mut runner = TestRunner::new_with_rng(Config { failure_persistence: None, ..Config::default() }, rng);
    let budget = budget();
    let (cpu0, wall0) = (thread_cpu(), Instant::now());
    let mut cases = seeds.len() as u64;
    while thread_cpu() - cpu0 < budget && wall0.elapsed() < budget * 4 {
        let mut tree = strategy.new_tree(&mut runner).expect("strategy");
        cases += 1;
        progress.store(cases, Ordering::Relaxed);
        if let Err(first) = check(&prop, &tree.current()) {
            // Shrink: simplify while it still fails, complicate back when it stops failing.
            // The smallest failing value seen is the one reported.
            let mut worst = (format!("{:?}", tree.current()), first);
            let mut steps = 0;
            while steps < SHRINK_STEPS && tree.simplify() {
                steps += 1;
                progress.store(cases + u64::from(steps), Ordering::Relaxed);
                match check(&prop, &tree.current()) {
                    Err(w) => worst = (format!("{:?}", tree.current()), w),
                    Ok(()) => {
                        if !tree.complicate() {
                            break;
                        }
                    }
                }
            }
            done.store(true, Ordering::Relaxed);
            fail(&format!("case {cases}"), &format_args!("{}", worst.0), &worst.1);
        }
    }
    let stats = Stats { cases, cpu: thread_cpu() - cpu0 };
    done.store(true, Ordering::Relaxed);
    let _ = watchdog.join();
    let line = format!(
        "{target}: {} cases, {:.1} s CPU, corpus {} entries, seed {seed:#x}\n",
        stats.cases,
        stats.cpu.as_secs_f64(),
        seeds.len()
    );
    eprint!("fuzz {line}");
    let stats_file = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/fuzz-stats.txt");
    if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(stats_file) {
        let _ = f.write_all(line.as_bytes());
    }
    stats
}
