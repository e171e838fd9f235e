//! Test binaries that run themselves inside the qemu VM of `vm.sh` (Debian's
//! kernel, for what this machine's kernel lacks): `harness = false` binaries
//! whose `main` runs the host-side tests with libtest's report lines, and
//! whose `--in-vm` mode is what the VM runs.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

/// The line the in-VM run prints last when every check passed.
pub const PASSED: &str = "NODELET-VM: all passed";

/// Whether this run is the one inside the VM.
pub fn in_vm() -> bool {
    std::env::args().any(|a| a == "--in-vm")
}

/// Runs `tests` as libtest would report them (`--list` lists them), and
/// exits 101 when one failed.
pub fn harness(tests: &[(&str, fn())]) {
    if std::env::args().any(|a| a == "--list") {
        for (name, _) in tests {
            println!("{name}: test");
        }
        return;
    }
    println!("\nrunning {} tests", tests.len());
    let mut failed = 0;
    for (name, f) in tests {
        let ok = std::panic::catch_unwind(*f).is_ok();
        println!("test {name} ... {}", if ok { "ok" } else { "FAILED" });
        failed += usize::from(!ok);
    }
    let verdict = if failed == 0 { "ok" } else { "FAILED" };
    println!("\ntest result: {verdict}. {} passed; {failed} failed; 0 ignored; 0 measured; 0 filtered out\n", tests.len() - failed);
    if failed > 0 {
        std::process::exit(101);
    }
}

/// Boots the VM with this very binary in it (plus `extra` vm.sh options)
/// and runs it with `--in-vm`; the console is printed as it comes, so a hang
/// shows where it is. Passes when the run printed [`PASSED`] and exited 0.
pub fn run_self(timeout_secs: u32, extra: &[&str]) {
    let me = std::env::current_exe().unwrap();
    let me = me.to_str().unwrap();
    let timeout = timeout_secs.to_string();
    let mut args = vec!["run", "--timeout", timeout.as_str(), "--bin", me];
    args.extend(extra);
    args.extend(["--", me, "--in-vm"]);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/vm.sh");
    let mut child = Command::new(script).args(&args).stdout(Stdio::piped()).spawn().expect("run tests/support/vm.sh");
    let mut passed = false;
    for line in BufReader::new(child.stdout.take().unwrap()).lines().map_while(Result::ok) {
        println!("  vm| {line}");
        passed |= line.contains(PASSED);
    }
    let status = child.wait().unwrap();
    assert!(status.success() && passed, "the VM run failed ({status})");
}
