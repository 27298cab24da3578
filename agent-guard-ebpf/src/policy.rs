//! Policy decisions in the kernel: the path trie (files and exec), the CIDR trie (network),
//! syscall bitmaps, and the one place where a violation becomes EPERM, SIGKILL or a
//! would_deny report. The userspace compiler side is agent-guard/src/policy.rs.
use agent_guard_common::{
    action, file_rule, grant, mode, FileNode, FileNodeKey, FileNodeShortKey, GrantKey, NetKey, NetRule, SHORT_NAME_BYTES,
    FILE_NODES_MAX, GRANTS_MAX, NAME_BYTES, NET_RULES_MAX, PATH_MAX, PORT_RANGES_MAX, SYSCALL_WORDS, Rule, Verdict,
};
use aya_ebpf::{
    helpers::generated::{bpf_loop, bpf_probe_read_kernel, bpf_send_signal},
    macros::map,
    maps::{lpm_trie::Key, HashMap, LpmTrie},
};

use crate::{kernel::Walked, run::Ruleset, scratch::{self, MatchState}};

const BPF_F_NO_PREALLOC: u32 = 1;
const SIGKILL: u32 = 9;
const SIGSTOP: u32 = 19;

/// Accesses a responder approved for a run (`agent-guard approve`): written by the daemon,
/// looked up only when an access violates the policy.
#[map]
static AG_GRANTS: HashMap<GrantKey, u32> = HashMap::with_max_entries(GRANTS_MAX, 0);

/// Whether `key` was approved; a one-time approval is used up here (only the thread whose
/// remove succeeds gets it: two racing threads cannot both use it).
#[inline(always)]
pub fn granted(key: &GrantKey) -> bool {
    // SAFETY: copied out at once.
    match unsafe { AG_GRANTS.get(key) }.copied() {
        Some(flags) if flags & grant::ONCE != 0 => AG_GRANTS.remove(key).is_ok(),
        Some(_) => true,
        None => false,
    }
}

/// Processes (tgid) stopped for a hold and not yet let go by the daemon. One of them making a
/// syscall was resumed by someone else (a SIGCONT from inside the run, a tracer): it is
/// killed there (see `syscalls::ag_sys_enter`).
#[map]
static AG_HELD: HashMap<u32, u32> = HashMap::with_max_entries(agent_guard_common::PENDING_MAX, 0);

/// A held process that ends is no longer held (its tgid may be reused).
#[inline(always)]
pub fn forget_held(tgid: u32) {
    // Looked up first: a lookup takes no lock, a delete takes the bucket's even on a miss.
    // SAFETY: presence test only.
    if unsafe { AG_HELD.get(&tgid) }.is_some() {
        let _ = AG_HELD.remove(&tgid);
    }
}

/// Whether the current process is held (see AG_HELD).
#[inline(always)]
pub fn is_held() -> bool {
    let tgid = (aya_ebpf::helpers::bpf_get_current_pid_tgid() >> 32) as u32;
    // SAFETY: presence test only.
    unsafe { AG_HELD.get(&tgid) }.is_some()
}

/// `violation`'s `hold` for an access no responder can approve.
pub const NO_HOLD: Option<fn() -> GrantKey> = None;

pub const GRANTED: Decision = Decision { verdict: Verdict::Allow, rule: Some(Rule::Grant) };

/// Whether the run's policy holds violations for review (enforce mode, on_violation freeze).
#[inline(always)]
pub fn holds(rs: &Ruleset) -> bool {
    rs.hdr.mode == mode::ENFORCE && rs.hdr.on_violation == action::FREEZE
}

/// (rule set, parent node, component) -> node. Node 0 of every rule set is "/".
#[map]
static AG_FILE_NODES: HashMap<FileNodeKey, FileNode> =
    HashMap::with_max_entries(FILE_NODES_MAX, BPF_F_NO_PREALLOC);

/// The same for components of at most `SHORT_NAME_BYTES` bytes (the daemon puts each node in
/// the map its component's length says): a 32-byte key to hash instead of 264.
#[map]
static AG_FILE_NODES_SHORT: HashMap<FileNodeShortKey, FileNode> =
    HashMap::with_max_entries(FILE_NODES_MAX, BPF_F_NO_PREALLOC);

/// (rule set, address prefix) -> allowed ports. IPv4 is stored IPv4-mapped.
#[map]
static AG_NET_RULES: LpmTrie<NetKey, NetRule> =
    LpmTrie::with_max_entries(NET_RULES_MAX, BPF_F_NO_PREALLOC);

/// A decision: the verdict taken and the rule that decided (None: no rule was violated).
#[derive(Clone, Copy)]
pub struct Decision {
    pub verdict: Verdict,
    pub rule: Option<Rule>,
}

impl Decision {
    /// `EventHeader::verdict`.
    #[inline(always)]
    pub fn verdict_raw(&self) -> u32 {
        self.verdict.as_raw()
    }

    /// `EventHeader::rule`.
    #[inline(always)]
    pub fn rule_raw(&self) -> u32 {
        Rule::raw_of(self.rule)
    }
}

pub const ALLOWED: Decision = Decision { verdict: Verdict::Allow, rule: None };

/// Turns a violation of `rule` into what happens. `can_refuse`: the hook can fail the
/// operation with EPERM (the caller does that when the verdict is DENY). Otherwise, or with
/// `on_violation = "kill"`, the whole process gets SIGKILL, which it receives before it
/// returns to user space. Monitor mode only reports.
///
/// `hold`: builds the access as a responder can approve it (called at most once, and only
/// here, on a violation: identifying a file costs kernel reads that an allowed access does
/// not need). An approved access is allowed; under `on_violation = "freeze"` the process
/// gets SIGSTOP (it stops before it returns to user space) and the daemon holds the run for
/// review. Without it ([`NO_HOLD`]: syscalls, unidentified files), freeze kills: a stop after
/// the fact would let the operation run.
#[inline(always)]
pub fn violation(rs: &Ruleset, rule: Rule, can_refuse: bool, hold: Option<impl FnOnce() -> GrantKey>) -> Decision {
    let d = refusal(rs, rule);
    let rule = d.rule.unwrap_or(rule);
    if d.verdict == Verdict::WouldDeny {
        return d;
    }
    if let Some(key) = hold {
        if granted(&key()) {
            return GRANTED;
        }
        if holds(rs) {
            stop_current();
            return Decision { verdict: Verdict::Hold, rule: Some(rule) };
        }
    }
    if can_refuse && rs.hdr.on_violation != action::KILL {
        return d;
    }
    kill_current();
    Decision { verdict: Verdict::Kill, rule: Some(rule) }
}

/// A violation as far as a hook that cannot send signals takes it (the cgroup socket
/// programs): `would_deny` in monitor mode, otherwise `deny` (the hook returns EPERM).
#[inline(always)]
pub fn refusal(rs: &Ruleset, rule: Rule) -> Decision {
    // The fail-closed rule set (id 0) answers for a cgroup no run registered.
    let rule = if rs.id == 0 { Rule::Unregistered } else { rule };
    let verdict = if rs.hdr.mode == mode::MONITOR { Verdict::WouldDeny } else { Verdict::Deny };
    Decision { verdict, rule: Some(rule) }
}

/// Stops the current process for a hold: marked held first, so it cannot run on unnoticed.
#[inline(always)]
pub fn stop_current() {
    let tgid = (aya_ebpf::helpers::bpf_get_current_pid_tgid() >> 32) as u32;
    if AG_HELD.insert(&tgid, &1, 0).is_err() {
        // No room to remember the hold: the process must not go on either way.
        kill_current();
        return;
    }
    // SAFETY: as kill_current.
    unsafe { bpf_send_signal(SIGSTOP) };
}

#[inline(always)]
pub fn kill_current() {
    // SAFETY: helper without pointer arguments; signals the current process (all threads).
    unsafe { bpf_send_signal(SIGKILL) };
}

/// Result of matching a walked path against a rule set's trie.
pub struct PathMatch {
    /// `file_rule` access bits of the longest matching rule (0: no rule matched).
    pub access: u32,
    /// An exec rule allows this exact file or a directory above it.
    pub exec: bool,
    /// The path is a decoy file (`[decoys] files`).
    pub decoy: bool,
}


/// One trie step, run by bpf_loop (so the verifier checks it once).
extern "C" fn match_step(_index: u32, _ctx: *mut core::ffi::c_void) -> i64 {
    let Some(s) = scratch::scratch_all() else { return 1 };
    // SAFETY: per-CPU scratch holds the loop state (see `event::Scratch`).
    let st = unsafe { &mut (*s).m };
    if st.i >= st.n || st.n > 64 {
        return 1;
    }
    // Components are recorded leaf first; the i-th from the root is at n-1-i.
    let idx = (st.n - 1 - st.i) & 63;
    // SAFETY: per-CPU scratch; indices are masked into the arrays.
    let (start, end) = unsafe {
        let start = (*s).comps[idx as usize] + 1;
        let end = if idx == 0 { PATH_MAX as u32 } else { (*s).comps[((idx - 1) & 63) as usize] };
        (start, end)
    };
    if end <= start || end - start >= NAME_BYTES as u32 || start >= PATH_MAX as u32 {
        return 1; // no rule has such a component
    }
    // The volatile reads hide the checks above from the optimiser, so the masks below stay
    // in the code for the verifier to see.
    // SAFETY: reads of local variables.
    let (start, len) = unsafe {
        (
            core::ptr::read_volatile(&start) & (PATH_MAX as u32 - 1),
            core::ptr::read_volatile(&(end - start)) & (NAME_BYTES as u32 - 1),
        )
    };
    // SAFETY: the key lives in per-CPU scratch; the copy reads `len` < 256 bytes from
    // buf[start..] with start < PATH_MAX inside a 2 * PATH_MAX buffer.
    let src = unsafe { (*s).buf.as_ptr().add(start as usize) };
    if len as usize <= SHORT_NAME_BYTES {
        // SAFETY: as below, for a key of SHORT_NAME_BYTES; the volatile read keeps the bound
        // check in the code for the verifier.
        let node = unsafe {
            let n = core::ptr::read_volatile(&len);
            if n as usize > SHORT_NAME_BYTES {
                return 1;
            }
            let key = &mut (*s).short;
            key.ruleset = st.ruleset;
            key.parent = st.node;
            let words = key.name.as_mut_ptr().cast::<u64>();
            for i in 0..SHORT_NAME_BYTES / 8 {
                core::ptr::write_volatile(words.add(i), 0);
            }
            if bpf_probe_read_kernel(key.name.as_mut_ptr().cast(), n, src.cast()) != 0 {
                return 1;
            }
            match AG_FILE_NODES_SHORT.get(&*key) {
                Some(n) => *n,
                None => return 1,
            }
        };
        return step(st, node);
    }
    let node = unsafe {
        let key = &mut (*s).key;
        key.ruleset = st.ruleset;
        key.parent = st.node;
        // Zero-padded for the hash: 32 word stores. Volatile, so that LLVM does not turn
        // them into a call to its byte-by-byte BPF memset (which cost more than the lookup).
        let words = key.name.as_mut_ptr().cast::<u64>();
        for i in 0..NAME_BYTES / 8 {
            core::ptr::write_volatile(words.add(i), 0);
        }
        if bpf_probe_read_kernel(key.name.as_mut_ptr().cast(), len, src.cast()) != 0 {
            return 1;
        }
        match AG_FILE_NODES.get(&*key) {
            Some(n) => *n,
            None => return 1,
        }
    };
    step(st, node)
}

/// Moves the match one component down to `node`.
#[inline(always)]
fn step(st: &mut MatchState, node: FileNode) -> i64 {
    st.node = node.id;
    st.i += 1;
    if node.flags & file_rule::ACCESS_MASK != 0 {
        st.access = node.flags & file_rule::ACCESS_MASK;
    }
    if node.flags & file_rule::EXEC_DIR != 0 && st.i < st.n {
        st.exec = 1; // a directory rule covers everything strictly below it
    }
    if node.flags & file_rule::EXEC_FILE != 0 && st.i == st.n {
        st.exec = 1;
    }
    if node.flags & file_rule::DECOY != 0 && st.i == st.n {
        st.decoy = 1;
    }
    0
}

/// Matches the path just walked into scratch (see `kernel::path_to_buf`).
#[inline(always)]
pub fn match_path(rs: &Ruleset, w: &Walked) -> PathMatch {
    let root = rs.hdr.root_flags;
    let none = PathMatch { access: 0, exec: false, decoy: false };
    let Some(s) = scratch::scratch_all() else { return none };
    // SAFETY: per-CPU scratch; the loop state is written before and read after the loop.
    unsafe {
        (*s).m = MatchState {
            ruleset: rs.id,
            node: 0,
            i: 0,
            n: w.ncomps,
            access: root & file_rule::ACCESS_MASK,
            // "/" as an exec directory rule covers every file strictly below it: not "/".
            exec: (root & file_rule::EXEC_DIR != 0 && w.ncomps > 0) as u32,
            decoy: 0,
            _pad: 0,
        };
        bpf_loop(agent_guard_common::PATH_DEPTH_MAX, match_step as *const () as *mut _, core::ptr::null_mut(), 0);
        PathMatch { access: (*s).m.access, exec: (*s).m.exec != 0, decoy: (*s).m.decoy != 0 }
    }
}

/// Decision for opening a walked path with `write` and/or `read` access. `hold`: the
/// approvable access (see [`violation`]), built only if the open violates the policy;
/// [`NO_HOLD`] where no responder can approve it.
#[inline(always)]
pub fn file_decision(
    rs: &Ruleset,
    w: &Walked,
    read: bool,
    write: bool,
    can_refuse: bool,
    hold: Option<impl FnOnce() -> GrantKey>,
) -> Decision {
    if w.truncated {
        return violation(rs, Rule::PathTooLong, can_refuse, NO_HOLD);
    }
    if w.pseudo {
        // Reopening a pipe, socket or anonymous inode the process already holds.
        return ALLOWED;
    }
    let m = match_path(rs, w);
    if m.decoy {
        // A tripwire (`[decoys] files`), whatever the rest of the policy says and in monitor
        // mode too: the process stops before it returns to user space and the daemon holds
        // the run.
        stop_current();
        return Decision { verdict: Verdict::Decoy, rule: Some(Rule::DecoyFiles) };
    }
    let rule = if m.access & file_rule::DENY != 0 {
        Rule::FilesDeny
    } else if write && m.access & file_rule::WRITE == 0 {
        Rule::FilesWrite
    } else if read && m.access & (file_rule::READ | file_rule::WRITE) == 0 {
        Rule::FilesRead
    } else {
        return ALLOWED;
    };
    violation(rs, rule, can_refuse, hold)
}

/// Decision for running the walked executable. `can_refuse`: the hook can fail the exec
/// (BPF LSM); the tracepoint fires when the image is already loaded, so there it is a kill.
/// `hold` as for [`file_decision`].
#[inline(always)]
pub fn exec_decision(rs: &Ruleset, w: &Walked, can_refuse: bool, hold: impl FnOnce() -> GrantKey) -> Decision {
    if w.truncated {
        return violation(rs, Rule::PathTooLong, can_refuse, NO_HOLD);
    }
    if w.pseudo {
        return violation(rs, Rule::Exec, can_refuse, NO_HOLD); // memfd and other fileless executables
    }
    if match_path(rs, w).exec {
        ALLOWED
    } else {
        violation(rs, Rule::Exec, can_refuse, Some(hold))
    }
}

/// (rule set, address prefix) -> ports a run may bind and listen on (`[network] listen`),
/// compiled as `[network] connect`. IPv4 is stored IPv4-mapped.
#[map]
static AG_LISTEN_RULES: LpmTrie<NetKey, NetRule> =
    LpmTrie::with_max_entries(NET_RULES_MAX, BPF_F_NO_PREALLOC);

/// Whether `[network] connect` allows `addr` (16 bytes, IPv4 as IPv4-mapped) and `port`.
#[inline(always)]
pub fn net_allowed(rs: &Ruleset, addr: &[u8; 16], port: u16) -> bool {
    ports_allowed(&AG_NET_RULES, rs, addr, port)
}

/// Whether `[network] listen` allows binding or listening on `addr` (as [`net_allowed`]) and
/// `port`.
#[inline(always)]
pub fn listen_allowed(rs: &Ruleset, addr: &[u8; 16], port: u16) -> bool {
    ports_allowed(&AG_LISTEN_RULES, rs, addr, port)
}

/// The one CIDR-and-port lookup: the longest prefix of `addr` in `trie` for the rule set, and
/// whether one of its port ranges holds `port`.
#[inline(always)]
fn ports_allowed(trie: &LpmTrie<NetKey, NetRule>, rs: &Ruleset, addr: &[u8; 16], port: u16) -> bool {
    let key = Key::new(32 + 128, NetKey { ruleset_be: rs.id.to_be_bytes(), addr: *addr });
    let Some(r) = trie.get(&key) else { return false };
    let n = if r.count as usize > PORT_RANGES_MAX { PORT_RANGES_MAX } else { r.count as usize };
    // Every slot at a constant offset, no early exit: the compiler unrolls this into plain
    // loads, where a loop with a break became a pointer walk the 6.1 verifier refuses
    // ("invalid access to map value").
    let mut allowed = false;
    for (i, pr) in r.ranges.iter().enumerate() {
        allowed |= i < n && port >= pr.lo && port <= pr.hi;
    }
    allowed
}

/// IPv4 (network byte order, as the kernel stores it) to IPv4-mapped IPv6 bytes.
#[inline(always)]
pub fn mapped_v4(ip_be: u32) -> [u8; 16] {
    let b = ip_be.to_ne_bytes();
    [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, b[0], b[1], b[2], b[3]]
}

#[inline(always)]
pub fn bit_set(bits: &[u64; SYSCALL_WORDS], nr: u32) -> bool {
    let w = (nr / 64) as usize;
    w < SYSCALL_WORDS && bits[w] & (1u64 << (nr % 64)) != 0
}
