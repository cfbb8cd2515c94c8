//! Medians over repeated runs, written as docs/benchmarks/README.md with a hand-drawn SVG plot.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::Context;

use crate::load::RunResult;
use crate::{Flow, Keys};

#[derive(clap::Args)]
pub struct ReportArgs {
    /// Directory of `run --json` results (every *.json in it).
    #[arg(long)]
    results: PathBuf,
    /// Output directory: README.md and throughput.svg.
    #[arg(long)]
    out: PathBuf,
    /// Output of `openssl speed ... ecdsap256 rsa2048`, for the raw ceiling.
    #[arg(long)]
    openssl: Option<PathBuf>,
    /// The command that reproduces the report.
    #[arg(long)]
    command: String,
    /// Free text about the run (durations, repeats, what else ran on the machine).
    #[arg(long, default_value = "")]
    note: String,
}

/// One (flow, concurrency) cell: medians over its repeats.
struct Cell {
    label: String,
    flow: Flow,
    keys: Keys,
    concurrency: usize,
    repeats: usize,
    rps: f64,
    rps_min: f64,
    rps_max: f64,
    p50: f64,
    p90: f64,
    p99: f64,
    p999: f64,
    errors: BTreeMap<String, u64>,
    ok: u64,
    cpu_ms: Option<f64>,
    client_cpu_ms: Option<f64>,
    peak_rss: Option<f64>,
    overload: bool,
    /// What else loaded the server (`run --beside`).
    beside: Option<String>,
    honor_retry_delay: bool,
    /// Medians over the repeats of the refusals' p50 and p99 latency (ms), when there were refusals.
    refused_p50: Option<f64>,
    refused_p99: Option<f64>,
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The median over the runs that had refusals of one statistic of their refusal latency.
fn refused(runs: &[RunResult], stat: fn(&crate::load::Latency) -> f64) -> Option<f64> {
    let v: Vec<f64> = runs
        .iter()
        .filter_map(|r| r.refused_latency_ms.as_ref().map(stat))
        .collect();
    (!v.is_empty()).then(|| median(v))
}

fn cells(runs: Vec<RunResult>) -> Vec<Cell> {
    let mut groups: BTreeMap<(String, usize, Option<String>), Vec<RunResult>> = BTreeMap::new();
    for r in runs {
        groups
            .entry((r.label.clone(), r.concurrency, r.beside.clone()))
            .or_default()
            .push(r);
    }
    let mut out: Vec<Cell> = groups
        .into_values()
        .map(|g| {
            let pick = |f: &dyn Fn(&RunResult) -> f64| median(g.iter().map(f).collect());
            let mut errors = BTreeMap::new();
            for r in &g {
                for (k, v) in &r.errors {
                    *errors.entry(k.clone()).or_default() += v;
                }
            }
            let servers: Vec<_> = g.iter().filter_map(|r| r.server.clone()).collect();
            Cell {
                label: g[0].label.clone(),
                flow: g[0].flow,
                keys: g[0].keys,
                concurrency: g[0].concurrency,
                repeats: g.len(),
                rps: pick(&|r| r.rps),
                rps_min: g.iter().map(|r| r.rps).fold(f64::INFINITY, f64::min),
                rps_max: g.iter().map(|r| r.rps).fold(0.0, f64::max),
                p50: pick(&|r| r.latency_ms.p50),
                p90: pick(&|r| r.latency_ms.p90),
                p99: pick(&|r| r.latency_ms.p99),
                p999: pick(&|r| r.latency_ms.p999),
                errors,
                ok: g.iter().map(|r| r.ok).sum(),
                cpu_ms: (!servers.is_empty())
                    .then(|| median(servers.iter().map(|s| s.cpu_ms_per_request).collect())),
                client_cpu_ms: {
                    let v: Vec<f64> = g
                        .iter()
                        .filter_map(|r| r.client_cpu_ms_per_request)
                        .collect();
                    (!v.is_empty()).then(|| median(v))
                },
                peak_rss: servers.iter().map(|s| s.peak_rss_mib).reduce(f64::max),
                overload: g[0].overload,
                beside: g[0].beside.clone(),
                honor_retry_delay: g[0].honor_retry_delay,
                refused_p50: refused(&g, |l| l.p50),
                refused_p99: refused(&g, |l| l.p99),
            }
        })
        .collect();
    // Flows in the order of the Flow enum, cfssl last; then by concurrency.
    out.sort_by(|a, b| {
        (a.flow as u8, &a.label, a.concurrency).cmp(&(b.flow as u8, &b.label, b.concurrency))
    });
    out
}

/// sign/s and verify/s of one `openssl speed` result line ("... ecdsa (nistp256) ..." or "rsa 2048 bits ...").
fn speed_line(text: &str, marker: &str) -> Option<(f64, f64)> {
    let line = text.lines().find(|l| l.contains(marker))?;
    let nums: Vec<f64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    let n = nums.len();
    (n >= 2).then(|| (nums[n - 2], nums[n - 1]))
}

fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_gib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0 / 1024.0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{model}, {cores} logical CPUs available (nproc), {mem_gib:.1} GiB memory, Linux {}",
        kernel.trim()
    )
}

const COLOURS: [&str; 8] = [
    "#1f77b4", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f",
];
const CFSSL_COLOUR: &str = "#d62728";

/// What a panel plots of a cell.
type Metric = fn(&Cell) -> f64;

/// Two panels, throughput and p99 against concurrency (log scale), one polyline per flow.
fn svg(cells: &[Cell]) -> String {
    let mut labels: Vec<(&str, Flow)> = Vec::new();
    for c in cells {
        if !labels.iter().any(|(l, _)| *l == c.label) {
            labels.push((&c.label, c.flow));
        }
    }
    let mut conc: Vec<usize> = cells.iter().map(|c| c.concurrency).collect();
    conc.sort_unstable();
    conc.dedup();
    let (lo, hi) = (
        (*conc.first().unwrap_or(&1) as f64).log2(),
        (*conc.last().unwrap_or(&64) as f64).log2(),
    );
    let (pw, ph, left, top, gap) = (380.0, 260.0, 70.0, 40.0, 110.0);
    let width = left + 2.0 * pw + gap + 20.0;
    let legend_top = top + ph + 50.0;
    let height = legend_top + 20.0 * labels.len() as f64 + 10.0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let panels: [(&str, Metric); 2] = [
        ("throughput (requests/s)", |c| c.rps),
        ("p99 latency (ms)", |c| c.p99),
    ];
    for (k, (title, value)) in panels.iter().enumerate() {
        let x0 = left + k as f64 * (pw + gap);
        let ymax = cells.iter().map(value).fold(0.0, f64::max).max(1e-9) * 1.1;
        let x = |c: usize| {
            let t = if hi > lo {
                ((c as f64).log2() - lo) / (hi - lo)
            } else {
                0.5
            };
            x0 + t * pw
        };
        let y = |v: f64| top + ph - v / ymax * ph;
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle" font-weight="bold">{title}</text>"#,
            x0 + pw / 2.0,
            top - 15.0
        );
        let _ = writeln!(
            s,
            r##"<rect x="{x0}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>"##
        );
        for t in 0..=4 {
            let v = ymax * t as f64 / 4.0;
            let yy = y(v);
            let _ = writeln!(
                s,
                r##"<line x1="{x0}" x2="{}" y1="{yy}" y2="{yy}" stroke="#eee"/><text x="{}" y="{}" text-anchor="end">{}</text>"##,
                x0 + pw,
                x0 - 5.0,
                yy + 4.0,
                if ymax >= 100.0 {
                    format!("{v:.0}")
                } else {
                    format!("{v:.1}")
                },
            );
        }
        for &c in &conc {
            let _ = writeln!(
                s,
                r#"<text x="{}" y="{}" text-anchor="middle">{c}</text>"#,
                x(c),
                top + ph + 16.0
            );
        }
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle">concurrency</text>"#,
            x0 + pw / 2.0,
            top + ph + 34.0
        );
        for (i, (label, flow)) in labels.iter().enumerate() {
            let colour = if *flow == Flow::Cfssl {
                CFSSL_COLOUR
            } else {
                COLOURS[i % COLOURS.len()]
            };
            let points: Vec<String> = cells
                .iter()
                .filter(|c| c.label == *label)
                .map(|c| format!("{:.1},{:.1}", x(c.concurrency), y(value(c))))
                .collect();
            let dash = if *flow == Flow::Cfssl {
                r#" stroke-dasharray="6,3""#
            } else {
                ""
            };
            let _ = writeln!(
                s,
                r#"<polyline fill="none" stroke="{colour}" stroke-width="2"{dash} points="{}"/>"#,
                points.join(" ")
            );
            for p in &points {
                let (px, py) = p.split_once(',').unwrap_or(("0", "0"));
                let _ = writeln!(s, r#"<circle cx="{px}" cy="{py}" r="3" fill="{colour}"/>"#);
            }
        }
    }
    for (i, (label, flow)) in labels.iter().enumerate() {
        let colour = if *flow == Flow::Cfssl {
            CFSSL_COLOUR
        } else {
            COLOURS[i % COLOURS.len()]
        };
        let yy = legend_top + 20.0 * i as f64;
        let _ = writeln!(
            s,
            r#"<line x1="{left}" x2="{}" y1="{yy}" y2="{yy}" stroke="{colour}" stroke-width="3"/><text x="{}" y="{}">{}</text>"#,
            left + 30.0,
            left + 38.0,
            yy + 4.0,
            xml_escape(label)
        );
    }
    s.push_str("</svg>\n");
    s
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn describe(flow: Flow, keys: Keys) -> String {
    let keys = match keys {
        Keys::P256 => "P-256",
        Keys::Rsa2048 => "RSA-2048",
        Keys::Mixed => "alternating P-256 and RSA-2048",
    };
    match flow {
        Flow::ClientCert => {
            format!("AlloyDB `POST /alloydb/v1/{{cluster}}:generateClientCertificate`, JSON `publicKey` (SPKI PEM from a pool of distinct {keys} keys), `certDuration` 3600s, a fresh `requestId`; HTTP/1.1 keep-alive, one connection per worker")
        }
        Flow::ClientCertGrpc => {
            format!("AlloyDB `GenerateClientCertificate` over gRPC (h2c, tonic client with the generated stubs), {keys} keys, a fresh `request_id`, one HTTP/2 connection per worker")
        }
        Flow::OfflineCred => {
            "Edge Container `GET /edgecontainer/v1/{cluster}:generateOfflineCredential` (server-generated key, P-256 by default)".into()
        }
        Flow::AgentToken => {
            "GKE Multi-Cloud `POST /gkemulticloud/v1/{attachedCluster}:generateAttachedClusterAgentToken` with an RS256 subject token (pool of 64, signed by the RSA-2048 key whose JWKS the attached cluster holds); no bearer token".into()
        }
        Flow::Cfssl => {
            "`cfssl serve` `POST /api/v1/cfssl/sign` with a P-256 CSR from a pool of distinct keys and the profile `client` (client auth, 1 h), P-256 CA from `cfssl gencert -initca`".into()
        }
    }
}

pub fn report(args: &ReportArgs) -> anyhow::Result<()> {
    let mut runs = Vec::new();
    for entry in std::fs::read_dir(&args.results)
        .with_context(|| format!("reading {}", args.results.display()))?
    {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "json") {
            let text = std::fs::read_to_string(&path)?;
            runs.push(
                serde_json::from_str::<RunResult>(&text)
                    .with_context(|| format!("parsing {}", path.display()))?,
            );
        }
    }
    anyhow::ensure!(!runs.is_empty(), "no results in {}", args.results.display());
    let (overload, cells): (Vec<Cell>, Vec<Cell>) =
        cells(runs).into_iter().partition(|c| c.overload);
    let (beside, cells): (Vec<Cell>, Vec<Cell>) =
        cells.into_iter().partition(|c| c.beside.is_some());
    let cfssl: BTreeMap<usize, f64> = cells
        .iter()
        .filter(|c| c.flow == Flow::Cfssl)
        .map(|c| (c.concurrency, c.rps))
        .collect();
    let openssl = match &args.openssl {
        Some(p) => {
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?
        }
        None => String::new(),
    };
    let ecdsa = speed_line(&openssl, "ecdsa (nistp256)");
    let rsa = speed_line(&openssl, "rsa 2048 bits");
    let repeats = cells.iter().map(|c| c.repeats).max().unwrap_or(0);

    let mut md = String::new();
    let _ = writeln!(md, "# Load benchmark: clustercred beside cfssl\n");
    let _ = writeln!(
        md,
        "Generated by `scripts/bench` (issue 14, items 1 and 2). Reproduce on this machine with:\n\n```sh\n{}\n```\n",
        args.command
    );
    let _ = writeln!(md, "**Machine:** {}.", machine());
    let _ = writeln!(
        md,
        "The load generator (`clustercred-bench`) runs on the same machine and competes with the server for the \
         same cores, and the machine is shared with other builds and test runs: absolute figures are noisy, so \
         compare the ratios to cfssl measured in the same run. {}\n",
        args.note
    );
    let _ = writeln!(
        md,
        "Server: release build, fresh SQLite data directory (durable, on disk), rate limits lifted. Each cell is \
         the median of {repeats} run(s); latency is of successful calls, client-side, closed loop (each worker \
         sends its next call when the previous one is answered). Server CPU is user+system time from \
         /proc/PID/stat over the measured window divided by successful calls; peak RSS is the highest VmRSS \
         sampled every 50 ms.\n"
    );
    let _ = writeln!(
        md,
        "| flow | c | req/s (median; min-max) | × cfssl | p50 ms | p90 ms | p99 ms | p99.9 ms | errors | server CPU ms/req | server peak RSS MiB | bench client CPU ms/req |"
    );
    let _ = writeln!(
        md,
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: |"
    );
    for c in &cells {
        let ratio = match (c.flow, cfssl.get(&c.concurrency)) {
            (Flow::Cfssl, _) => "1".to_string(),
            (_, Some(base)) if *base > 0.0 => format!("{:.2}", c.rps / base),
            _ => "".to_string(),
        };
        let errors = if c.errors.is_empty() {
            "0".to_string()
        } else {
            let total: u64 = c.errors.values().sum();
            let detail: Vec<String> = c.errors.iter().map(|(k, v)| format!("{k}: {v}")).collect();
            format!("{total} of {} ({})", total + c.ok, detail.join(", "))
        };
        let _ = writeln!(
            md,
            "| {} | {} | {:.0} ({:.0}-{:.0}) | {ratio} | {:.2} | {:.2} | {:.2} | {:.2} | {errors} | {} | {} | {} |",
            c.label,
            c.concurrency,
            c.rps,
            c.rps_min,
            c.rps_max,
            c.p50,
            c.p90,
            c.p99,
            c.p999,
            c.cpu_ms.map_or("".into(), |v| format!("{v:.3}")),
            c.peak_rss.map_or("".into(), |v| format!("{v:.1}")),
            c.client_cpu_ms.map_or("".into(), |v| format!("{v:.3}")),
        );
    }
    let at16 = |flow: Flow| {
        cells
            .iter()
            .find(|c| c.flow == flow && c.keys == Keys::P256 && c.concurrency == 16)
    };
    if let (Some(cc), Some(cf)) = (at16(Flow::ClientCert), at16(Flow::Cfssl)) {
        let _ = writeln!(
            md,
            "\nIssue 14's target for GenerateClientCertificate over REST at c=16 is at least 4× cfssl's sign \
             throughput in the same run; this run: {:.2}×.",
            cc.rps / cf.rps
        );
    }
    let _ = writeln!(
        md,
        "\n![throughput and p99 against concurrency](throughput.svg)\n"
    );
    if !overload.is_empty() {
        overload_table(&mut md, &overload, &cells);
    }
    if !beside.is_empty() {
        beside_table(&mut md, &beside, &cells);
    }
    let _ = writeln!(md, "## Raw ceiling: `openssl speed`, one core\n");
    match (ecdsa, rsa) {
        (Some((es, ev)), Some((rs, rv))) => {
            let _ = writeln!(
                md,
                "| operation | per second, one core |\n| --- | ---: |\n| ECDSA P-256 sign | {es:.0} |\n| ECDSA P-256 verify | {ev:.0} |\n| RSA-2048 sign | {rs:.0} |\n| RSA-2048 verify | {rv:.0} |\n"
            );
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
            let _ = writeln!(
                md,
                "Every flow above signs once with a P-256 key (the certificate or the token); the agent-token flow also \
                 verifies one RS256 signature. Best throughput of each flow as a share of the P-256 signing ceiling of \
                 all {cores:.0} cores ({:.0}/s):\n",
                es * cores
            );
            let mut best: Vec<(&str, f64)> = Vec::new();
            for c in &cells {
                match best.iter_mut().find(|(l, _)| *l == c.label) {
                    Some(b) => b.1 = b.1.max(c.rps),
                    None => best.push((&c.label, c.rps)),
                }
            }
            for (label, rps) in best {
                let _ = writeln!(
                    md,
                    "- {label}: {rps:.0}/s = {:.1}%",
                    100.0 * rps / (es * cores)
                );
            }
            let _ = writeln!(md);
        }
        _ => {
            let _ = writeln!(md, "(no `openssl speed` output given)\n");
        }
    }
    let _ = writeln!(md, "## What each flow sends\n");
    let mut seen = Vec::new();
    for c in &cells {
        if !seen.contains(&c.label) {
            seen.push(c.label.clone());
            let _ = writeln!(md, "- **{}**: {}.", c.label, describe(c.flow, c.keys));
        }
    }
    let _ = writeln!(
        md,
        "\nThe bench creates its clusters through the API with the admin token (`clustercred-bench setup`). Raw \
         per-run results are JSON (`clustercred-bench run --json`); `clustercred-bench run --help` drives one \
         flow against any server.\n\nMicro-benchmarks of the hot paths (criterion, `cargo bench -p \
         clustercred-bench`): [micro.md](micro.md). What changed the figures, and where issue 14's targets stand: \
         [history.md](history.md)."
    );
    std::fs::create_dir_all(&args.out)?;
    std::fs::write(args.out.join("README.md"), md)?;
    std::fs::write(args.out.join("throughput.svg"), svg(&cells))?;
    eprintln!("wrote {}/README.md and throughput.svg", args.out.display());
    Ok(())
}

/// Overload runs beside the same flow's best admitted throughput below the admission limit.
fn overload_table(md: &mut String, overload: &[Cell], cells: &[Cell]) {
    let _ = writeln!(
        md,
        "## Overload\n\nThe same flow at a concurrency beyond the server's admission limit (`--max-concurrent-signing`, 64 by default): calls beyond it get RESOURCE_EXHAUSTED (HTTP 429, with a \
         RetryInfo delay of 100 ms). Either every refused worker calls again at once (a hostile client), or it \
         waits the delay the server asked for, as Google's client libraries do. Admitted throughput is compared \
         with the flow's best throughput in the table above; latency is of admitted calls and, separately, of \
         the refusals.\n"
    );
    let _ = writeln!(
        md,
        "| flow | c | refused workers | admitted req/s | × best below the limit | admitted p99 ms | refusals | refusal p50 ms | refusal p99 ms | server CPU ms per admitted call |\n| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    for c in overload {
        let best = cells
            .iter()
            .filter(|b| b.flow == c.flow && b.keys == c.keys && !b.label.contains("PostgreSQL"))
            .map(|b| b.rps)
            .fold(0.0, f64::max);
        let refusals: u64 = c
            .errors
            .iter()
            .filter(|(k, _)| k.as_str() == "http 429" || k.as_str() == "grpc ResourceExhausted")
            .map(|(_, v)| v)
            .sum();
        let other: u64 = c.errors.values().sum::<u64>() - refusals;
        let ms = |v: Option<f64>| v.map_or(String::new(), |v| format!("{v:.2}"));
        let _ = writeln!(
            md,
            "| {} | {} | {} | {:.0} | {} | {:.2} | {} of {}{} | {} | {} | {} |",
            c.label,
            c.concurrency,
            if c.honor_retry_delay {
                "wait the retry delay"
            } else {
                "retry at once"
            },
            c.rps,
            if best > 0.0 {
                format!("{:.2}", c.rps / best)
            } else {
                String::new()
            },
            c.p99,
            refusals,
            refusals + c.ok + other,
            if other > 0 {
                format!(" (and {other} other errors)")
            } else {
                String::new()
            },
            ms(c.refused_p50),
            ms(c.refused_p99),
            c.cpu_ms.map_or(String::new(), |v| format!("{v:.3}")),
        );
    }
    let _ = writeln!(md);
}

/// Runs made while something else loaded the server, beside the same flow alone (same label and concurrency).
fn beside_table(md: &mut String, beside: &[Cell], cells: &[Cell]) {
    let _ = writeln!(
        md,
        "## Beside other load\n\nA flow while another load runs on the same server at the same time, against the \
         same flow alone in the table above (same label and concurrency). `scripts/bench` runs these on a server \
         of their own whose settings differ only where the other load needs it (RSA-2048 keys for offline \
         credentials).\n"
    );
    let _ = writeln!(
        md,
        "| flow | c | beside | req/s alone | req/s beside | p99 ms alone | p99 ms beside | × p99 | errors |\n| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | --- |"
    );
    let mut background = false;
    for c in beside {
        let alone = cells
            .iter()
            .find(|a| a.label == c.label && a.concurrency == c.concurrency);
        background |= alone.is_none();
        let errors: u64 = c.errors.values().sum();
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {:.0} | {} | {:.2} | {} | {} |",
            c.label,
            c.concurrency,
            c.beside.as_deref().unwrap_or_default(),
            alone.map_or(String::new(), |a| format!("{:.0}", a.rps)),
            c.rps,
            alone.map_or(String::new(), |a| format!("{:.2}", a.p99)),
            c.p99,
            alone.map_or(String::new(), |a| format!("{:.2}", c.p99 / a.p99)),
            if errors == 0 {
                "0".to_string()
            } else {
                let kinds: Vec<String> = c.errors.iter().map(|(k, n)| format!("{n} {k}")).collect();
                format!("{errors} of {}: {}", errors + c.ok, kinds.join(", "))
            },
        );
    }
    let _ = writeln!(md);
    if background {
        let _ = writeln!(
            md,
            "Rows without a flow alone are the other load itself. Its HTTP 429 answers are RESOURCE_EXHAUSTED \
         refusals from the RSA key generation limit (`--max-concurrent-rsa-keygen`), whose workers wait the \
         RetryInfo delay: the limit working, not failures.\n"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openssl_speed_lines_are_parsed() {
        let text = "                              sign    verify    sign/s verify/s\n \
                    256 bits ecdsa (nistp256)   0.0000s   0.0001s  41234.5  13456.7\n\
                    rsa 2048 bits 0.000620s 0.000018s   1612.9  54054.1\n";
        assert_eq!(
            speed_line(text, "ecdsa (nistp256)"),
            Some((41234.5, 13456.7))
        );
        assert_eq!(speed_line(text, "rsa 2048 bits"), Some((1612.9, 54054.1)));
        assert_eq!(speed_line(text, "ed25519"), None);
    }

    fn cell(label: &str, flow: Flow, concurrency: usize, rps: f64) -> Cell {
        Cell {
            label: label.into(),
            flow,
            keys: Keys::P256,
            concurrency,
            repeats: 1,
            rps,
            rps_min: rps,
            rps_max: rps,
            p50: 1.0,
            p90: 2.0,
            p99: 3.0,
            p999: 4.0,
            errors: BTreeMap::new(),
            ok: 10,
            cpu_ms: None,
            client_cpu_ms: None,
            peak_rss: None,
            overload: false,
            beside: None,
            honor_retry_delay: false,
            refused_p50: None,
            refused_p99: None,
        }
    }

    #[test]
    fn overload_rows_compare_admitted_throughput_with_the_best_below_the_limit() {
        let below = cell("client-cert", Flow::ClientCert, 64, 2000.0);
        let mut over = cell("client-cert overload", Flow::ClientCert, 256, 1500.0);
        over.overload = true;
        over.errors.insert("http 429".into(), 30);
        over.refused_p99 = Some(4.5);
        let mut md = String::new();
        overload_table(&mut md, &[over], &[below]);
        let row = md
            .lines()
            .find(|l| l.starts_with("| client-cert overload"))
            .unwrap();
        assert!(row.contains("| 0.75 |"), "{row}");
        assert!(row.contains("| 30 of 40 |"), "{row}");
        assert!(row.contains("| 4.50 |"), "{row}");
        assert!(row.contains("retry at once"), "{row}");
    }

    #[test]
    fn plot_has_a_line_per_flow_in_each_panel() {
        let cells = [
            cell("client-cert", Flow::ClientCert, 1, 100.0),
            cell("client-cert", Flow::ClientCert, 64, 400.0),
            cell("cfssl <&>", Flow::Cfssl, 1, 200.0),
            cell("cfssl <&>", Flow::Cfssl, 64, 300.0),
        ];
        let svg = svg(&cells);
        assert_eq!(svg.matches("<polyline").count(), 4);
        assert!(svg.contains(CFSSL_COLOUR));
        assert!(svg.contains("cfssl &lt;&amp;&gt;"), "labels are escaped");
        assert!(svg.trim_end().ends_with("</svg>"));
    }

    #[test]
    fn median_of_even_and_odd_counts() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(vec![]).is_nan());
    }

    #[test]
    fn beside_rows_compare_p99_with_the_flow_alone() {
        let alone = cell("client-cert", Flow::ClientCert, 16, 5000.0);
        let mut with = cell("client-cert", Flow::ClientCert, 16, 2500.0);
        with.p99 = 5.25;
        with.beside = Some("RSA-2048 offline credentials".into());
        let mut background = cell("offline-cred (RSA-2048 keys)", Flow::OfflineCred, 16, 15.0);
        background.beside = Some("client-cert".into());
        background.errors.insert("http 429".into(), 5);
        let mut md = String::new();
        beside_table(&mut md, &[with, background], &[alone]);
        let row = |start: &str| {
            md.lines()
                .find(|l| l.starts_with(start))
                .unwrap()
                .to_string()
        };
        assert_eq!(
            row("| client-cert |"),
            "| client-cert | 16 | RSA-2048 offline credentials | 5000 | 2500 | 3.00 | 5.25 | 1.75 | 0 |"
        );
        assert_eq!(
            row("| offline-cred"),
            "| offline-cred (RSA-2048 keys) | 16 | client-cert |  | 15 |  | 3.00 |  | 5 of 15: 5 http 429 |"
        );
    }
}
