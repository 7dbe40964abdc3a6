//! The `shmproc` command: `bench` (the default), `ls`, `gc`.
//!
//! Arguments are parsed by hand: four subcommands and five flags do not need
//! an argument-parsing dependency in the library's dependency tree.

mod bench;
mod shm;

use std::io::Write;
use std::process::ExitCode;
use std::time::Instant;

use bench::report::{self, Row};
use bench::{Case, Config};

const USAGE: &str = "\
usage: shmproc [COMMAND]

commands:
  bench [--quick] [--json] [--scenario S]... [--transport T]...
        measure shmproc and its baselines on this machine (the default command)
          --quick         less work per case (the whole run takes under 15 s)
          --json          one JSON object per case on stdout, nothing else
          --scenario S    only scenario S (repeatable)
          --transport T   only transport T (repeatable)
  ls    list the shmproc segments in /dev/shm (kind, size, creator, whether alive)
  gc [--dry-run] [--prefix P]...
        remove shmproc segments of this user whose creator is dead and that no
        process maps or holds open; --dry-run only says what it would remove
  help  this message

exit status: 0 success, 1 a case or an operation failed, 2 usage error";

/// What the command line asks for.
#[derive(Debug, PartialEq, Eq)]
enum Command {
    Bench { quick: bool, json: bool, scenarios: Vec<String>, transports: Vec<String> },
    Ls,
    Gc { dry_run: bool, prefixes: Vec<String> },
    Help,
}

/// Parses the arguments after the program name. `cases` gives the known
/// scenario and transport names.
fn parse(args: &[String], cases: &[Case]) -> Result<Command, String> {
    let (cmd, rest) = match args.first().map(String::as_str) {
        None => ("bench", &args[..0]),
        Some(a) if a.starts_with('-') && !matches!(a, "-h" | "--help") => ("bench", args),
        Some(a) => (a, &args[1..]),
    };
    // Splits "--flag=value" and takes "--flag value" from the next argument.
    let mut it = rest.iter().peekable();
    let mut flags: Vec<(String, Option<String>)> = Vec::new();
    while let Some(a) = it.next() {
        if !a.starts_with("--") && a != "-h" {
            return Err(format!("unexpected argument '{a}'"));
        }
        let (flag, inline) = match a.split_once('=') {
            Some((f, v)) => (f.to_string(), Some(v.to_string())),
            None => (a.clone(), None),
        };
        let takes_value = matches!(flag.as_str(), "--scenario" | "--transport" | "--prefix");
        let value = match (takes_value, inline) {
            (true, Some(v)) => Some(v),
            (true, None) => Some(it.next().cloned().ok_or_else(|| format!("{flag} needs a value"))?),
            (false, Some(_)) => return Err(format!("{flag} takes no value")),
            (false, None) => None,
        };
        flags.push((flag, value));
    }
    let unknown = |f: &str| Err(format!("unknown option '{f}' for '{cmd}'"));
    match cmd {
        "bench" => {
            let (mut quick, mut json, mut scenarios, mut transports) = (false, false, Vec::new(), Vec::new());
            for (f, v) in flags {
                match f.as_str() {
                    "--quick" => quick = true,
                    "--json" => json = true,
                    "--scenario" => {
                        let v = v.unwrap_or_default();
                        if !cases.iter().any(|c| c.scenario == v) {
                            return Err(format!("unknown scenario '{v}' (known: {})", known(cases, |c| c.scenario)));
                        }
                        scenarios.push(v);
                    }
                    "--transport" => {
                        let v = v.unwrap_or_default();
                        if !cases.iter().any(|c| c.transport == v) {
                            return Err(format!("unknown transport '{v}' (known: {})", known(cases, |c| c.transport)));
                        }
                        transports.push(v);
                    }
                    "--help" | "-h" => return Ok(Command::Help),
                    other => return unknown(other),
                }
            }
            Ok(Command::Bench { quick, json, scenarios, transports })
        }
        "ls" => match flags.first() {
            None => Ok(Command::Ls),
            Some((f, _)) if f == "--help" || f == "-h" => Ok(Command::Help),
            Some((f, _)) => unknown(f),
        },
        "gc" => {
            let (mut dry_run, mut prefixes) = (false, Vec::new());
            for (f, v) in flags {
                match f.as_str() {
                    "--dry-run" => dry_run = true,
                    "--prefix" => prefixes.push(v.unwrap_or_default()),
                    "--help" | "-h" => return Ok(Command::Help),
                    other => return unknown(other),
                }
            }
            Ok(Command::Gc { dry_run, prefixes })
        }
        "help" | "--help" | "-h" => Ok(Command::Help),
        other => Err(format!("unknown command '{other}'")),
    }
}

/// The distinct names `f` picks from `cases`, in order, comma-separated.
fn known(cases: &[Case], f: impl Fn(&Case) -> &'static str) -> String {
    let mut seen: Vec<&str> = Vec::new();
    for c in cases {
        if !seen.contains(&f(c)) {
            seen.push(f(c));
        }
    }
    seen.join(", ")
}

/// Runs the selected cases and prints the results; returns the exit status
/// (0: all measured, 1: some case failed, 2: no case matches the filters).
fn run_bench(cases: Vec<Case>, quick: bool, json: bool, scenarios: &[String], transports: &[String]) -> u8 {
    let selected: Vec<Case> = cases
        .into_iter()
        .filter(|c| scenarios.is_empty() || scenarios.iter().any(|s| s == c.scenario))
        .filter(|c| transports.is_empty() || transports.iter().any(|t| t == c.transport))
        .collect();
    if selected.is_empty() {
        eprintln!("shmproc bench: no case matches the given --scenario and --transport\n\n{USAGE}");
        return 2;
    }
    let cfg = Config::for_machine(quick);
    let ncpus = bench::os::allowed_cpus().len();
    let placement = match (cfg.parent_cpu, cfg.child_cpu) {
        (Some(p), Some(c)) => {
            if let Err(e) = bench::os::pin_to_cpu(p) {
                eprintln!("shmproc bench: cannot pin to CPU {p}: {e}");
            }
            format!("parent pinned to CPU {p}, child to CPU {c} ({ncpus} CPUs allowed)")
        }
        _ => "one CPU allowed: parent and child unpinned, sharing it".to_string(),
    };
    eprintln!("shmproc bench: {} case(s), {} run; {placement}", selected.len(), if quick { "quick" } else { "full" });
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next()?.parse::<f64>().ok())
        .filter(|&l| l >= 0.5);
    let load_note = load.map(|l| {
        format!("warning: 1-minute load average {l:.2} before the run: other processes compete for the CPUs, expect noisy figures")
    });
    if let Some(n) = &load_note {
        eprintln!("shmproc bench: {n}");
    }
    // About 35 cases must fit in 15 s (quick) or 60 s (full).
    let (per_case_budget, total_budget) = if quick { (0.4, 15.0) } else { (1.7, 60.0) };
    let start = Instant::now();
    let mut rows = Vec::new();
    let mut failed = 0;
    let n = selected.len();
    for (i, case) in selected.iter().enumerate() {
        let t0 = Instant::now();
        let result = (case.run)(&cfg).and_then(|o| {
            let finite = o.median.is_finite() && o.p99.map_or(true, f64::is_finite);
            if finite && o.runs > 0 {
                Ok(o)
            } else {
                Err(format!("the case returned an invalid figure: {o:?}"))
            }
        });
        let took = t0.elapsed().as_secs_f64();
        if took > per_case_budget {
            eprintln!(
                "shmproc bench: warning: {}/{} took {took:.2} s, over the {per_case_budget:.1} s a case may take \
                 (see cli/src/bench/mod.rs, \"Time budget\")",
                case.scenario, case.transport
            );
        }
        match result {
            Ok(outcome) => {
                let row = Row { scenario: case.scenario.into(), transport: case.transport.into(), outcome };
                eprintln!(
                    "[{:>2}/{n}] {:<14} {:<16} {:>14}  ({took:.2} s)",
                    i + 1,
                    case.scenario,
                    case.transport,
                    report::human(row.outcome.metric, row.outcome.median)
                );
                if json {
                    let mut out = std::io::stdout().lock();
                    let _ = writeln!(out, "{}", report::json_line(&row));
                    let _ = out.flush();
                }
                rows.push(row);
            }
            Err(e) => {
                failed += 1;
                eprintln!("[{:>2}/{n}] {} / {}: FAILED: {e}", i + 1, case.scenario, case.transport);
            }
        }
    }
    let total = start.elapsed().as_secs_f64();
    if !json {
        // Ignore a closed stdout (`shmproc | head`) rather than panic.
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "shmproc bench ({}): {placement}", if quick { "quick" } else { "full" });
        if let Some(n) = &load_note {
            let _ = writeln!(out, "{n}");
        }
        let _ = write!(out, "{}", report::table(&rows));
        let _ = out.flush();
    }
    eprintln!("shmproc bench: {} measured, {failed} failed, {total:.1} s in all", rows.len());
    if total > total_budget {
        eprintln!("shmproc bench: warning: the run took {total:.1} s, over its budget of {total_budget:.0} s");
    }
    u8::from(failed > 0)
}

fn main() -> ExitCode {
    // The `raw-exec` bench baseline: an exec of this binary that exits at once.
    if std::env::var_os(bench::process::RAW_EXEC_ENV).is_some() {
        return ExitCode::SUCCESS;
    }
    // The gate for Spawn and ForkServer children (the spawn-join bench cases):
    // a re-executed child runs its target here and exits.
    shmproc::init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cases = bench::all_cases();
    match parse(&args, &cases) {
        Err(e) => {
            eprintln!("shmproc: {e}\n\n{USAGE}");
            ExitCode::from(2)
        }
        Ok(Command::Help) => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        Ok(Command::Bench { quick, json, scenarios, transports }) => {
            ExitCode::from(run_bench(cases, quick, json, &scenarios, &transports))
        }
        Ok(Command::Ls) => ExitCode::from(shm::ls() as u8),
        Ok(Command::Gc { dry_run, prefixes }) => ExitCode::from(shm::gc(dry_run, &prefixes) as u8),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<Command, String> {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        parse(&args, &bench::all_cases())
    }

    #[test]
    fn no_arguments_is_bench() {
        assert_eq!(p(&[]), Ok(Command::Bench { quick: false, json: false, scenarios: vec![], transports: vec![] }));
        assert_eq!(
            p(&["--quick"]),
            Ok(Command::Bench { quick: true, json: false, scenarios: vec![], transports: vec![] })
        );
    }

    #[test]
    fn bench_flags_and_filters() {
        assert_eq!(
            p(&["bench", "--json", "--scenario", "pingpong-8B", "--transport=os-pipe", "--transport", "raw-spin"]),
            Ok(Command::Bench {
                quick: false,
                json: true,
                scenarios: vec!["pingpong-8B".into()],
                transports: vec!["os-pipe".into(), "raw-spin".into()],
            })
        );
    }

    #[test]
    fn usage_errors() {
        assert!(p(&["bench", "--scenario", "nope"]).unwrap_err().contains("unknown scenario 'nope'"));
        assert!(p(&["bench", "--transport", "carrier-pigeon"]).unwrap_err().contains("unknown transport"));
        assert!(p(&["bench", "--scenario"]).unwrap_err().contains("needs a value"));
        assert!(p(&["bench", "--fast"]).unwrap_err().contains("unknown option"));
        assert!(p(&["bench", "--quick=yes"]).unwrap_err().contains("takes no value"));
        assert!(p(&["frobnicate"]).unwrap_err().contains("unknown command"));
        assert!(p(&["ls", "-l"]).is_err());
        assert!(p(&["gc", "extra"]).is_err());
    }

    #[test]
    fn a_failing_case_does_not_stop_the_run_but_sets_the_exit_status() {
        use bench::{Metric, Outcome};
        static RAN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let ok = |_: &Config| {
            RAN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Ok(Outcome { metric: Metric::Us, median: 1.0, p99: None, runs: 1 })
        };
        let cases = || {
            vec![
                Case { scenario: "s", transport: "fails", run: |_| Err("boom".into()) },
                Case {
                    scenario: "s",
                    transport: "nan",
                    run: |_| Ok(Outcome { metric: Metric::Us, median: f64::NAN, p99: None, runs: 1 }),
                },
                Case { scenario: "s", transport: "ok", run: ok },
            ]
        };
        assert_eq!(run_bench(cases(), true, true, &[], &[]), 1);
        assert_eq!(RAN.load(std::sync::atomic::Ordering::Relaxed), 1, "the case after the failures ran");
        assert_eq!(run_bench(cases(), true, true, &[], &["ok".into()]), 0);
        assert_eq!(run_bench(cases(), true, true, &["t".into()], &[]), 2);
    }

    #[test]
    fn other_commands() {
        assert_eq!(p(&["ls"]), Ok(Command::Ls));
        assert_eq!(p(&["help"]), Ok(Command::Help));
        assert_eq!(p(&["--help"]), Ok(Command::Help));
        assert_eq!(p(&["bench", "-h"]), Ok(Command::Help));
        assert_eq!(
            p(&["gc", "--dry-run", "--prefix", "shmproc-test-", "--prefix=x"]),
            Ok(Command::Gc { dry_run: true, prefixes: vec!["shmproc-test-".into(), "x".into()] })
        );
    }
}
