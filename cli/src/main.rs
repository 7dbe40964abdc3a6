//! The `shmproc` command: `bench` (the default), `ls`, `info`, `gc`.
//!
//! Arguments are parsed by `clap` (derive): one struct per subcommand, each
//! with its own `--help`. `shmproc` with no subcommand runs `bench`, and
//! bench's flags are accepted without the subcommand (`shmproc --quick`).
//! Usage errors exit with status 2 (clap's convention, and ours before it).

mod bench;
mod shm;

use std::io::Write;
use std::process::ExitCode;
use std::time::Instant;

use clap::{Args, CommandFactory, Parser, Subcommand};

use bench::report::{self, Row};
use bench::{Case, Config};

/// Measure shmproc against its baselines on this machine (`bench`, the
/// default), or list, inspect and clean up its segments in /dev/shm (`ls`,
/// `info`, `gc`).
#[derive(Debug, Parser)]
#[command(
    name = "shmproc",
    version,
    args_conflicts_with_subcommands = true,
    after_help = "Without a command, runs `bench` (bench's flags work without it: `shmproc --quick`).\n\n\
                  Exit status: 0 success, 1 a case or an operation failed, 2 usage error."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Flags of the default command, `bench`.
    #[command(flatten)]
    bench: BenchArgs,
}

/// The subcommands.
#[derive(Debug, PartialEq, Eq, Subcommand)]
enum Command {
    /// Measure shmproc and its baselines on this machine (the default command).
    Bench(BenchArgs),
    /// List the shmproc segments in /dev/shm (kind, size, creator, whether alive).
    Ls(LsArgs),
    /// Decode one segment's header (or say precisely why it is not a valid shmproc segment).
    Info(InfoArgs),
    /// Remove shmproc segments of this user whose creator is dead and that no
    /// process maps or holds open.
    Gc(GcArgs),
}

/// `shmproc bench`.
#[derive(Debug, Default, PartialEq, Eq, Args)]
struct BenchArgs {
    /// Less work per case: about 20 s in all on two CPUs (a full run: about 150 s).
    #[arg(long)]
    quick: bool,
    /// One JSON object per case on stdout, nothing else.
    #[arg(long)]
    json: bool,
    /// Also draw the results as an SVG bar chart into FILE.
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<String>,
    /// Developer warnings too (a case over its time budget).
    #[arg(long, short)]
    verbose: bool,
    /// Only scenario S (repeatable).
    #[arg(long = "scenario", value_name = "S", value_parser = known_scenario)]
    scenarios: Vec<String>,
    /// Only transport T (repeatable).
    #[arg(long = "transport", value_name = "T", value_parser = known_transport)]
    transports: Vec<String>,
}

/// `shmproc ls`.
#[derive(Debug, PartialEq, Eq, Args)]
struct LsArgs {
    /// One JSON object per entry on stdout.
    #[arg(long)]
    json: bool,
}

/// `shmproc info NAME`.
#[derive(Debug, PartialEq, Eq, Args)]
struct InfoArgs {
    /// The segment's name in /dev/shm (with or without a leading '/').
    name: String,
    /// One JSON object on stdout (as `ls --json` writes each entry).
    #[arg(long)]
    json: bool,
}

/// `shmproc gc`.
#[derive(Debug, PartialEq, Eq, Args)]
struct GcArgs {
    /// Only say what would be removed.
    #[arg(long)]
    dry_run: bool,
    /// Only names starting with P (repeatable).
    #[arg(long = "prefix", value_name = "P")]
    prefixes: Vec<String>,
}

/// Accepts `s` if some case has that scenario.
fn known_scenario(s: &str) -> Result<String, String> {
    known_name(s, "scenario", |c| c.scenario)
}

/// Accepts `s` if some case has that transport.
fn known_transport(s: &str) -> Result<String, String> {
    known_name(s, "transport", |c| c.transport)
}

fn known_name(s: &str, what: &str, f: impl Fn(&Case) -> &'static str) -> Result<String, String> {
    let cases = bench::all_cases();
    if cases.iter().any(|c| f(c) == s) {
        return Ok(s.to_string());
    }
    Err(format!("unknown {what} '{s}' (known: {})", known(&cases, f)))
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

/// The usage line of `shmproc bench`, as clap writes it.
fn bench_usage() -> String {
    let mut cmd = Cli::command();
    cmd.build();
    cmd.find_subcommand_mut("bench").map(|b| b.render_usage().to_string()).unwrap_or_default()
}

/// How `run_bench` reports.
#[derive(Debug, Default, Clone)]
struct Output {
    quick: bool,
    json: bool,
    verbose: bool,
    plot: Option<String>,
}

/// Runs the selected cases and prints the results; returns the exit status
/// (0: all measured, 1: some case failed, 2: no case matches the filters).
/// `probe`: the drift probe's setup (raw-spin; None in unit tests).
fn run_bench(
    cases: Vec<Case>,
    out: &Output,
    scenarios: &[String],
    transports: &[String],
    probe: Option<bench::Start>,
) -> u8 {
    let selected: Vec<&Case> = cases
        .iter()
        .filter(|c| scenarios.is_empty() || scenarios.iter().any(|s| s == c.scenario))
        .filter(|c| transports.is_empty() || transports.iter().any(|t| t == c.transport))
        .collect();
    if selected.is_empty() {
        eprintln!("shmproc bench: no case matches the given --scenario and --transport\n\n{}", bench_usage());
        return 2;
    }
    let quick = out.quick;
    let cfg = Config::for_machine(quick);
    let ncpus = cfg.cpus.len();
    let placement = match (cfg.parent_cpu, cfg.child_cpu) {
        (Some(p), Some(c)) => {
            if let Err(e) = bench::os::pin_to_cpu(p) {
                eprintln!("shmproc bench: cannot pin to CPU {p}: {e}");
            }
            format!("parent pinned to CPU {p}, child to CPU {c} ({ncpus} CPUs allowed)")
        }
        _ => "one CPU allowed: parent and child unpinned, sharing it".to_string(),
    };
    let cpu_model = cpu_model();
    eprintln!(
        "shmproc bench: {} case(s), {} run on {cpu_model}; {placement}",
        selected.len(),
        if quick { "quick" } else { "full" }
    );
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
    // About 50 cases should fit in 20 s (quick) or 80 s (full).
    let (per_case_budget, total_budget) = if quick { (0.6, 20.0) } else { (2.0, 80.0) };
    let start = Instant::now();
    let mut rows = Vec::new();
    let mut failed = 0;
    let n = selected.len();
    let bar = indicatif::ProgressBar::with_draw_target(Some(n as u64), indicatif::ProgressDrawTarget::stderr());
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    // Per-case lines go to stderr only where no bar is drawn (not a terminal).
    let say = |line: String| {
        if bar.is_hidden() {
            eprintln!("{line}");
        } else {
            bar.println(line);
        }
    };
    for (i, case) in selected.iter().enumerate() {
        bar.set_message(format!("{}/{}", case.scenario, case.transport));
        let t0 = Instant::now();
        let result = bench::measure(case, &cases, &cfg, probe).and_then(|m| {
            let o = &m.outcome;
            let finite = o.median.is_finite() && o.p99.is_none_or(f64::is_finite);
            if finite && o.runs > 0 {
                Ok(m)
            } else {
                Err(format!("the case returned an invalid figure: {o:?}"))
            }
        });
        let took = t0.elapsed().as_secs_f64();
        bar.inc(1);
        if took > per_case_budget && out.verbose {
            say(format!(
                "shmproc bench: warning: {}/{} took {took:.2} s, over the {per_case_budget:.1} s a case may take \
                 (see cli/src/bench/mod.rs, \"Time budget\")",
                case.scenario, case.transport
            ));
        }
        match result {
            Ok(m) => {
                let row = Row { scenario: case.scenario.into(), transport: case.transport.into(), m };
                if bar.is_hidden() {
                    say(format!(
                        "[{:>2}/{n}] {:<14} {:<16} {:>14}  {}  ({took:.2} s)",
                        i + 1,
                        case.scenario,
                        case.transport,
                        report::human(row.m.outcome.metric, row.m.outcome.median),
                        report::ratio_text(&row.m),
                    ));
                }
                if out.json {
                    let mut stdout = std::io::stdout().lock();
                    let _ = writeln!(stdout, "{}", report::json_line(&row));
                    let _ = stdout.flush();
                }
                rows.push(row);
            }
            Err(e) => {
                failed += 1;
                say(format!("[{:>2}/{n}] {} / {}: FAILED: {e}", i + 1, case.scenario, case.transport));
            }
        }
    }
    bar.finish_and_clear();
    bench::cleanup();
    let total = start.elapsed().as_secs_f64();
    let drifting: Vec<String> =
        rows.iter().filter(|r| r.m.drifted()).map(|r| format!("{}/{}", r.scenario, r.transport)).collect();
    let drift_note = (!drifting.is_empty()).then(|| {
        format!(
            "DRIFTING: raw-spin moved by more than {:.0}% across {} case(s) ({}): the host moved the CPUs; \
             their ratios are suspect, run again",
            bench::DRIFT_LIMIT * 100.0,
            drifting.len(),
            drifting.join(", ")
        )
    });
    let unsteady: Vec<String> =
        rows.iter().filter(|r| r.m.unsteady()).map(|r| format!("{}/{}", r.scenario, r.transport)).collect();
    let unsteady_note = (!unsteady.is_empty()).then(|| {
        format!(
            "UNSTEADY: {} case(s) ({}) had pairwise ratios more than {}x apart: the transport's own blocks swung \
             during the case; its median is no steady figure, read the range",
            unsteady.len(),
            unsteady.join(", "),
            bench::UNSTEADY_LIMIT
        )
    });
    let moved = report::moved_rows(&rows);
    let moved_note = (!moved.is_empty()).then(|| {
        let floors: Vec<Option<f64>> = rows.iter().map(|r| r.m.floor).collect();
        let usual = bench::usual_floor(&floors).unwrap_or(f64::NAN);
        format!(
            "PLACEMENT MOVED: {} case(s) ran with raw-spin more than {}x away from the run's usual {} ({}): the \
             host had placed the CPUs differently for them. Their ratios hold for that placement (column `floor`, \
             JSON `floor_ns`) and compare only with rows at about the same floor",
            moved.len(),
            bench::PLACEMENT_LIMIT,
            report::human(bench::Metric::RttNs, usual),
            moved
                .iter()
                .map(|&i| format!(
                    "{}/{} at {}",
                    rows[i].scenario,
                    rows[i].transport,
                    report::floor_text(&rows[i].m, false)
                ))
                .collect::<Vec<_>>()
                .join(", ")
        )
    });
    let heading = format!(
        "shmproc bench ({}) on {cpu_model}: {placement}. Ratios: transport / baseline in the metric's unit, \
         median of {} pairs of alternating {} ms blocks [min-max]",
        if quick { "quick" } else { "full" },
        cfg.pairs(),
        cfg.block().as_millis()
    );
    if !out.json {
        // Ignore a closed stdout (`shmproc | head`) rather than panic.
        let mut stdout = std::io::stdout().lock();
        let _ = writeln!(stdout, "{heading}");
        if let Some(n) = &load_note {
            let _ = writeln!(stdout, "{n}");
        }
        let _ = write!(stdout, "{}", report::table(&rows));
        for note in [&drift_note, &unsteady_note, &moved_note].into_iter().flatten() {
            let _ = writeln!(stdout, "{note}");
        }
        let _ = stdout.flush();
    } else {
        for note in [&drift_note, &unsteady_note, &moved_note].into_iter().flatten() {
            eprintln!("shmproc bench: {note}");
        }
    }
    if let Some(path) = &out.plot {
        let title = format!("shmproc bench ({}) on {cpu_model}, {placement}", if quick { "quick" } else { "full" });
        match bench::plot::draw(&rows, path, &title) {
            Ok(()) => eprintln!("shmproc bench: plot written to {path}"),
            Err(e) => {
                eprintln!("shmproc bench: {e}");
                failed += 1;
            }
        }
    }
    eprintln!("shmproc bench: {} measured, {failed} failed, {total:.1} s in all", rows.len());
    if total > total_budget && out.verbose {
        eprintln!("shmproc bench: warning: the run took {total:.1} s, over its budget of {total_budget:.0} s");
    }
    u8::from(failed > 0)
}

/// The CPU model from /proc/cpuinfo ("unknown CPU" if it has none).
fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

/// Prints clap's message for `e` and exits as clap does: `--help` and `help`
/// on stdout with status 0, usage errors on stderr with status 2. A usage
/// error always shows the usage (clap leaves it out of some, such as an
/// unknown `--scenario`).
fn usage_error(e: clap::Error) -> ExitCode {
    let _ = e.print();
    if e.use_stderr() {
        if !e.to_string().contains("Usage:") {
            eprintln!("\n{}", Cli::command().render_usage());
        }
        return ExitCode::from(2);
    }
    ExitCode::SUCCESS
}

fn main() -> ExitCode {
    // The `raw-exec` bench baseline: an exec of this binary that exits at once.
    if std::env::var_os(bench::process::RAW_EXEC_ENV).is_some() {
        return ExitCode::SUCCESS;
    }
    // The gate for Spawn and ForkServer children (the spawn-join bench cases):
    // a re-executed child runs its target here and exits.
    shmproc::init();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    match cli.command.unwrap_or(Command::Bench(cli.bench)) {
        Command::Bench(b) => {
            let out = Output { quick: b.quick, json: b.json, verbose: b.verbose, plot: b.plot };
            let probe: bench::Start = bench::baselines::spin_pingpong;
            ExitCode::from(run_bench(bench::all_cases(), &out, &b.scenarios, &b.transports, Some(probe)))
        }
        Command::Ls(LsArgs { json }) => {
            end_quietly_on_closed_stdout();
            ExitCode::from(shm::ls(json) as u8)
        }
        Command::Info(InfoArgs { name, json }) => {
            end_quietly_on_closed_stdout();
            ExitCode::from(shm::info(&name, json) as u8)
        }
        Command::Gc(g) => {
            end_quietly_on_closed_stdout();
            ExitCode::from(shm::gc(g.dry_run, &g.prefixes) as u8)
        }
    }
}

/// `ls`, `info` and `gc` print to whatever reads them, which may stop early
/// (`shmproc ls | head -1`): they die of `SIGPIPE` then, quietly, as other
/// command-line tools do, where Rust's default (`SIGPIPE` ignored) makes
/// `println!` panic with "failed printing to stdout". Not for `bench`, whose
/// pipes and sockets to its children must fail with `EPIPE` instead. (Each
/// gc removal is whole before the next line is printed.)
fn end_quietly_on_closed_stdout() {
    // libc: rustix has no stable wrapper for signal dispositions.
    // SAFETY: installs the default disposition; no handler code runs.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::error::ErrorKind;

    /// The command the arguments ask for (`bench` when none is named).
    fn p(args: &[&str]) -> Result<Command, clap::Error> {
        let cli = Cli::try_parse_from(std::iter::once("shmproc").chain(args.iter().copied()))?;
        Ok(cli.command.unwrap_or(Command::Bench(cli.bench)))
    }

    fn bench(quick: bool, json: bool, scenarios: &[&str], transports: &[&str]) -> Command {
        Command::Bench(BenchArgs {
            quick,
            json,
            plot: None,
            verbose: false,
            scenarios: scenarios.iter().map(|s| s.to_string()).collect(),
            transports: transports.iter().map(|s| s.to_string()).collect(),
        })
    }

    fn kind(args: &[&str]) -> ErrorKind {
        p(args).expect_err("a usage error").kind()
    }

    #[test]
    fn the_command_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn no_arguments_is_bench() {
        assert_eq!(p(&[]).unwrap(), bench(false, false, &[], &[]));
        assert_eq!(p(&["--quick"]).unwrap(), bench(true, false, &[], &[]));
    }

    #[test]
    fn bench_flags_and_filters() {
        assert_eq!(
            p(&["bench", "--json", "--scenario", "pingpong-8B", "--transport=os-pipe", "--transport", "raw-spin"])
                .unwrap(),
            bench(false, true, &["pingpong-8B"], &["os-pipe", "raw-spin"])
        );
        // The flags of the default command, without naming it.
        assert_eq!(p(&["--json", "--scenario=stream-8B"]).unwrap(), bench(false, true, &["stream-8B"], &[]));
    }

    #[test]
    fn usage_errors() {
        let e = p(&["bench", "--scenario", "nope"]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ValueValidation);
        assert!(e.to_string().contains("unknown scenario 'nope'"), "{e}");
        let e = p(&["bench", "--transport", "carrier-pigeon"]).unwrap_err();
        assert!(e.to_string().contains("unknown transport"), "{e}");
        assert!(p(&["--scenario=nope"]).unwrap_err().to_string().contains("unknown scenario 'nope'"));
        // "needs a value"
        assert_eq!(kind(&["bench", "--scenario"]), ErrorKind::InvalidValue);
        // "unknown option"
        assert_eq!(kind(&["bench", "--fast"]), ErrorKind::UnknownArgument);
        // "takes no value"
        assert_eq!(kind(&["bench", "--quick=yes"]), ErrorKind::TooManyValues);
        // "unknown command"
        assert_eq!(kind(&["frobnicate"]), ErrorKind::InvalidSubcommand);
        assert!(p(&["ls", "-l"]).is_err());
        assert!(p(&["gc", "extra"]).is_err());
        assert!(p(&["gc", "--force"]).is_err());
        // A subcommand's flags belong to it.
        assert!(p(&["--quick", "ls"]).is_err());
        assert!(p(&["ls", "--quick"]).is_err());
    }

    #[test]
    fn a_failing_case_does_not_stop_the_run_but_sets_the_exit_status() {
        use bench::{Metric, Session, Work};
        static RAN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let ok = |_: &Config| {
            RAN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Ok(Session::new(Work::Sample(Box::new(|| Ok(1.0)))))
        };
        let cases = || {
            vec![
                Case::new("s", "fails", Metric::Us, |_| Err("boom".into())),
                Case::new("s", "nan", Metric::Us, |_| Ok(Session::new(Work::Sample(Box::new(|| Ok(f64::NAN)))))),
                Case::new("s", "ok", Metric::Us, ok),
            ]
        };
        let out = Output { quick: true, json: true, ..Output::default() };
        assert_eq!(run_bench(cases(), &out, &[], &[], None), 1);
        assert_eq!(RAN.load(std::sync::atomic::Ordering::Relaxed), 1, "the case after the failures ran");
        assert_eq!(run_bench(cases(), &out, &[], &["ok".into()], None), 0);
        assert_eq!(run_bench(cases(), &out, &["t".into()], &[], None), 2);
    }

    #[test]
    fn other_commands() {
        assert_eq!(p(&["ls"]).unwrap(), Command::Ls(LsArgs { json: false }));
        assert_eq!(p(&["ls", "--json"]).unwrap(), Command::Ls(LsArgs { json: true }));
        assert_eq!(p(&["info", "x"]).unwrap(), Command::Info(InfoArgs { name: "x".into(), json: false }));
        assert!(p(&["info"]).is_err(), "info needs a name");
        // Help, top-level and per command: clap's "error" kinds that exit with 0.
        assert_eq!(kind(&["help"]), ErrorKind::DisplayHelp);
        assert_eq!(kind(&["--help"]), ErrorKind::DisplayHelp);
        assert_eq!(kind(&["-h"]), ErrorKind::DisplayHelp);
        assert_eq!(kind(&["bench", "-h"]), ErrorKind::DisplayHelp);
        assert_eq!(kind(&["help", "gc"]), ErrorKind::DisplayHelp);
        assert_eq!(p(&["help"]).unwrap_err().exit_code(), 0);
        assert_eq!(p(&["frobnicate"]).unwrap_err().exit_code(), 2);
        let gc_help = p(&["gc", "--help"]).unwrap_err().to_string();
        assert!(gc_help.contains("--dry-run") && gc_help.contains("--prefix"), "{gc_help}");
        assert!(!gc_help.contains("--quick"), "per-command help: {gc_help}");
        assert_eq!(
            p(&["gc", "--dry-run", "--prefix", "shmproc-test-", "--prefix=x"]).unwrap(),
            Command::Gc(GcArgs { dry_run: true, prefixes: vec!["shmproc-test-".into(), "x".into()] })
        );
        assert!(bench_usage().contains("shmproc bench"), "{}", bench_usage());
    }
}
