//! The run's command has a session of its own, and a terminal of its own when the launcher
//! has one: a process of the run cannot push keystrokes into the launcher's terminal
//! (TIOCSTI) nor signal the launcher's process group.
use std::process::Command;

use agent_guard_tests::{binary, require, require_root, s, status, stdout, Daemon};

#[test]
fn the_command_leads_a_session_of_its_own() {
    require_root!();
    let d = Daemon::start();
    // Field 6 of /proc/PID/stat is the session id: the shell leads its own.
    let o = d.run(&["--", "sh", "-c", "echo $$ $(cut -d' ' -f6 /proc/$$/stat) $(cut -d' ' -f6 /proc/$PPID/stat)"]);
    assert_eq!(status(&o), 0, "{o:?}");
    let out = stdout(&o);
    let ids: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(ids.len(), 3, "{out}");
    assert_eq!(ids[0], ids[1], "the command leads its session: {out}");
    // A signal to its own process group reaches no process outside the run.
    let o = d.run(&["--", "sh", "-c", "kill -TERM 0"]);
    assert_eq!(status(&o), 128 + 15, "the run's group got it, the launcher did not: {o:?}");
}

#[test]
fn keystrokes_pushed_with_tiocsti_stay_in_the_run() {
    require_root!();
    require!(std::path::Path::new("/usr/bin/script").exists() && std::path::Path::new("/usr/bin/python3").exists(), "needs script(1) and python3");
    let d = Daemon::start();
    let attack = "import fcntl, termios\nfor c in 'echo PWNED\\n':\n    fcntl.ioctl(0, termios.TIOCSTI, c.encode())\nprint('injected')";
    let attack_file = d.dir.path().join("attack.py");
    std::fs::write(&attack_file, attack).unwrap();
    // script(1) gives the launcher a terminal; after the run, the shell reads what is waiting
    // on that terminal: what the run pushed, if it reached it.
    let inner = format!(
        "{bin} --config {cfg} run -- /usr/bin/python3 {file}; read -t 2 x; echo \"GOT:$x:\"",
        bin = s(&binary()),
        cfg = s(&d.config),
        file = s(&attack_file)
    );
    let o = Command::new("/usr/bin/script").args(["-qec", &inner, "/dev/null"]).output().unwrap();
    let out = stdout(&o);
    assert!(out.contains("injected"), "the command's output passes through its terminal: {out:?}");
    assert!(out.contains("GOT::"), "nothing reached the launcher's terminal: {out:?}");
    assert!(!out.contains("GOT:echo PWNED"), "{out:?}");
}
