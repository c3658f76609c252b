//! `cargo xtask test`: the whole check, as CI runs it (`.ci/run`).
//!
//! setup → `cargo fmt --check` → clippy (`-D warnings`; the eBPF crate also for its BPF target)
//! → `cargo test` (the crates whose tests share kernel state — namespaces, XDP, pins — with
//! `--test-threads=1`, after the release binaries the lab tests run) → the bounded fuzz run.
//! Every step runs even when an earlier one failed, so one run shows everything; the last line is
//! `N passed, N failed, N skipped`. A test that skips prints a line starting with `SKIPPED:`
//! (it passes in libtest's count; here it is counted as skipped), `#[ignore]` counts as skipped,
//! and a step that fails without test results (fmt, clippy, a build error) counts as one failure.
//! A step that runs longer than [`STEP_LIMIT`] (a hung test) is killed with all its processes and
//! fails, so the run always ends.

use crate::cmd::show;
use crate::setup;
use crate::workspace::{RELEASE_BINARIES, cargo, root, target_dir};
use anyhow::{Context, Result, bail};
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// The longest a step may run (the longest, the serialized tests and the fuzz run, take ~5 min on
/// the 2-core lab machine); `SIPVEIL_STEP_LIMIT_SECS` overrides it.
const STEP_LIMIT: Duration = Duration::from_secs(15 * 60);

/// Crates whose tests create namespaces, attach XDP programs or pin maps: run one test at a time.
const SERIAL_CRATES: [&str; 2] = ["sipveil-edge", "sipveil-tests"];

/// The XDP programs' crate (built for bpfel-unknown-none by edge/build.rs).
const EBPF_CRATE: &str = "sipveil-ebpf";

/// clippy's arguments: every warning is an error.
const DENY_WARNINGS: [&str; 3] = ["--", "-D", "warnings"];

/// Fuzzing time per run of `fuzz/run.sh`, in seconds.
const FUZZ_SECONDS: &str = "60";

/// Test counts gathered from libtest's output.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub passed: u64,
    pub failed: u64,
    pub skipped: u64,
    /// `test result:` lines seen (0 means the step produced no test results).
    pub results: u64,
    /// `SKIPPED:` lines not yet taken off `passed` (see [`Counts::settle`]).
    skip_lines: u64,
}

impl Counts {
    fn add(&mut self, other: Counts) {
        self.passed += other.passed;
        self.failed += other.failed;
        self.skipped += other.skipped;
        self.results += other.results;
        self.skip_lines += other.skip_lines;
    }

    /// A test that printed `SKIPPED:` passed in libtest's count: count it as skipped only.
    /// Called once the counts of stdout and stderr are merged.
    fn settle(&mut self) {
        self.passed = self.passed.saturating_sub(self.skip_lines);
        self.skip_lines = 0;
    }

    /// Reads one line of output: a libtest summary line, or a test's `SKIPPED:` line.
    fn scan(&mut self, line: &str) {
        let line = line.trim();
        if line.starts_with("SKIPPED:") {
            self.skipped += 1;
            self.skip_lines += 1;
        } else if let Some(rest) = line.strip_prefix("test result: ") {
            self.results += 1;
            let rest = rest
                .strip_prefix("ok. ")
                .or_else(|| rest.strip_prefix("FAILED. "))
                .unwrap_or(rest);
            for part in rest.split(';') {
                let Some((number, word)) = part.trim().split_once(' ') else {
                    continue;
                };
                let Ok(number) = number.parse::<u64>() else {
                    continue;
                };
                match word {
                    "passed" => self.passed += number,
                    "failed" => self.failed += number,
                    "ignored" => self.skipped += number,
                    _ => {}
                }
            }
        }
    }
}

/// One step of the run and how it ended.
struct Step {
    name: String,
    ok: bool,
    counts: Counts,
    seconds: f64,
}

/// Runs `cmd`, copying its stdout and stderr through while counting test results.
fn run_counted(cmd: &mut Command) -> Result<(bool, Counts)> {
    println!("+ {}", show(cmd));
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start `{}`", show(cmd)))?;
    let stdout = child.stdout.take().context("no stdout pipe")?;
    let stderr = child.stderr.take().context("no stderr pipe")?;
    let copy = |stream: Box<dyn Read + Send>, to_stderr: bool| {
        thread::spawn(move || {
            let mut counts = Counts::default();
            let mut reader = BufReader::new(stream);
            let mut buf = Vec::new();
            while reader.read_until(b'\n', &mut buf).unwrap_or(0) > 0 {
                let line = String::from_utf8_lossy(&buf);
                counts.scan(&line);
                // A closed terminal must not stop the run: ignore write errors.
                if to_stderr {
                    let _ = std::io::stderr().write_all(line.as_bytes());
                } else {
                    let _ = std::io::stdout().write_all(line.as_bytes());
                }
                buf.clear();
            }
            counts
        })
    };
    let out = copy(Box::new(stdout), false);
    let err = copy(Box::new(stderr), true);
    let limit = std::env::var("SIPVEIL_STEP_LIMIT_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(STEP_LIMIT, Duration::from_secs);
    let ok = wait_bounded(&mut child, limit)?;
    let mut counts = Counts::default();
    for reader in [out, err] {
        counts.add(reader.join().unwrap_or_default());
    }
    counts.settle();
    Ok((ok, counts))
}

/// Waits for `child` at most `limit`; past it, kills the child and every process below it (a
/// hung test binary, the daemons it started) and reports the step as failed.
fn wait_bounded(child: &mut std::process::Child, limit: Duration) -> Result<bool> {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().context("waiting for the step")? {
            return Ok(status.success());
        }
        if started.elapsed() >= limit {
            eprintln!(
                "TIMED OUT: the step ran longer than {} s; killing it and its processes",
                limit.as_secs()
            );
            kill_tree(child.id());
            let _ = child.wait();
            return Ok(false);
        }
        thread::sleep(Duration::from_millis(200));
    }
}

/// SIGKILLs `root` and all its descendants (found through `/proc/*/stat`'s parent pids).
fn kill_tree(root: u32) {
    let mut parents: Vec<(u32, u32)> = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            // `pid (comm) state ppid ...`: comm may hold spaces and parentheses.
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse::<u32>().ok());
            if let Some(ppid) = ppid {
                parents.push((pid, ppid));
            }
        }
    }
    let mut doomed = vec![root];
    let mut i = 0;
    while let Some(&p) = doomed.get(i) {
        doomed.extend(parents.iter().filter(|&&(_, pp)| pp == p).map(|&(c, _)| c));
        i += 1;
    }
    let _ = Command::new("kill")
        .arg("-KILL")
        .args(doomed.iter().map(u32::to_string))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

fn step(steps: &mut Vec<Step>, name: &str, cmd: &mut Command) {
    println!("\n=== {name}");
    let started = Instant::now();
    let (ok, counts) = run_counted(cmd).unwrap_or_else(|error| {
        eprintln!("{name}: {error:#}");
        (false, Counts::default())
    });
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "=== {name}: {} in {seconds:.0} s",
        if ok { "ok" } else { "FAILED" }
    );
    steps.push(Step {
        name: name.to_owned(),
        ok,
        counts,
        seconds,
    });
}

/// Runs the whole check; an error when anything failed.
pub fn run() -> Result<()> {
    let started = Instant::now();
    setup::ensure(setup::Needs::BuildAndFuzz)?;
    let mut steps = Vec::new();
    step(&mut steps, "fmt", cargo().args(["fmt", "--all", "--check"]));
    // The eBPF crate's binaries build only for bpfel-unknown-none (its own panic handler,
    // nightly features): on the host only its library and unit tests are checked and run.
    step(
        &mut steps,
        "clippy",
        cargo()
            .args([
                "clippy",
                "--workspace",
                "--exclude",
                EBPF_CRATE,
                "--all-targets",
            ])
            .args(DENY_WARNINGS),
    );
    step(
        &mut steps,
        "clippy (eBPF crate, host unit tests)",
        cargo()
            .args(["clippy", "-p", EBPF_CRATE, "--lib", "--profile", "test"])
            .args(DENY_WARNINGS),
    );
    step(
        &mut steps,
        "clippy (eBPF crate, bpfel-unknown-none)",
        // `cargo` here is the toolchain's own binary, which knows no `+nightly`: ask rustup.
        Command::new("rustup")
            .current_dir(root())
            .args(["run", "nightly", "cargo", "clippy", "-p", EBPF_CRATE])
            .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
            .args(DENY_WARNINGS),
    );
    let mut parallel = cargo();
    parallel.args(["test", "--workspace", "--exclude", EBPF_CRATE]);
    for krate in SERIAL_CRATES {
        parallel.args(["--exclude", krate]);
    }
    parallel.args(["--", "--show-output"]);
    step(&mut steps, "test", &mut parallel);
    step(
        &mut steps,
        "test (eBPF crate, host unit tests)",
        cargo().args(["test", "-p", EBPF_CRATE, "--lib", "--", "--show-output"]),
    );
    // The lab tests run the release daemon and sv-rtp (they would build them themselves; built
    // here, a build failure shows as its own step).
    step(
        &mut steps,
        "build release binaries",
        cargo().args(RELEASE_BINARIES),
    );
    let mut serial = cargo();
    serial.env("SIPVEIL_BIN_DIR", target_dir()?.join("release"));
    serial.arg("test");
    for krate in SERIAL_CRATES {
        serial.args(["-p", krate]);
    }
    serial.args(["--", "--test-threads=1", "--show-output"]);
    step(&mut steps, "test (serialized: netns, XDP)", &mut serial);
    let fuzz = root().join("fuzz");
    let script = fuzz.join("run.sh");
    if script.exists() {
        step(
            &mut steps,
            "fuzz",
            Command::new("bash")
                .arg(&script)
                .arg(FUZZ_SECONDS)
                .current_dir(&fuzz),
        );
    } else if fuzz.exists() {
        println!("\n=== fuzz: FAILED: fuzz/ exists but fuzz/run.sh does not");
        steps.push(Step {
            name: "fuzz (fuzz/run.sh missing)".to_owned(),
            ok: false,
            counts: Counts::default(),
            seconds: 0.0,
        });
    } else {
        println!("\n=== fuzz\nSKIPPED: there is no fuzz/ directory");
        steps.push(Step {
            name: "fuzz".to_owned(),
            ok: true,
            counts: Counts {
                skipped: 1,
                ..Counts::default()
            },
            seconds: 0.0,
        });
    }

    let mut total = Counts::default();
    println!("\n=== summary ({:.0} s)", started.elapsed().as_secs_f64());
    for step in &steps {
        let counts = step.counts;
        let verdict = if step.ok { "ok" } else { "FAILED" };
        println!(
            "{:<40} {verdict:<6} {:>5.0} s  {} passed, {} failed, {} skipped",
            step.name, step.seconds, counts.passed, counts.failed, counts.skipped
        );
        total.add(counts);
        if !step.ok && counts.failed == 0 {
            // fmt, clippy, a build error or a crashed test binary: no failed test said so.
            total.failed += 1;
        } else if step.ok && counts.results == 0 && counts.skipped == 0 {
            total.passed += 1;
        }
    }
    println!(
        "{} passed, {} failed, {} skipped",
        total.passed, total.failed, total.skipped
    );
    if steps.iter().any(|step| !step.ok) {
        bail!("some steps failed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_past_its_limit_is_killed_with_its_children_and_fails() {
        // A shell whose child would outlive it by far: both must be gone at once.
        let mut child = Command::new("sh")
            .args(["-c", "sleep 300 & echo $!; wait"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("sh starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("the sleep's pid");
        let sleeper: u32 = line.trim().parse().expect("a pid");
        let started = Instant::now();
        assert!(!wait_bounded(&mut child, Duration::from_millis(300)).expect("waits"));
        assert!(started.elapsed() < Duration::from_secs(30));
        // The killed sleep is gone (or a zombie until init reaps it), never still sleeping.
        thread::sleep(Duration::from_millis(200));
        let state = std::fs::read_to_string(format!("/proc/{sleeper}/stat"))
            .ok()
            .and_then(|s| s.rsplit_once(')').map(|(_, r)| r.trim().to_owned()))
            .and_then(|r| r.chars().next());
        assert!(
            matches!(state, None | Some('Z')),
            "sleep still alive: {state:?}"
        );
        let mut quick = Command::new("true").spawn().expect("true starts");
        assert!(wait_bounded(&mut quick, Duration::from_secs(30)).expect("waits"));
    }

    #[test]
    fn libtest_summaries_and_skips_are_counted() {
        let mut counts = Counts::default();
        counts.scan(
            "test result: ok. 12 passed; 0 failed; 2 ignored; 0 measured; 0 filtered out; finished in 0.01s\n",
        );
        counts.scan(
            "test result: FAILED. 3 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out\n",
        );
        counts.scan("SKIPPED: no XDP in this kernel\n");
        counts.scan("some other line mentioning SKIPPED: in the middle\n");
        counts.settle();
        assert_eq!(
            counts,
            Counts {
                passed: 14,
                failed: 1,
                skipped: 3,
                results: 2,
                skip_lines: 0,
            }
        );
    }
}
