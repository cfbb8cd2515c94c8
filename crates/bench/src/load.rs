//! Closed-loop load: `concurrency` workers each send one request, wait for the answer, and send the next,
//! for the warm-up plus the measured duration. Only requests started inside the measured window count.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use clustercred_proto::google::cloud::alloydb::v1 as alloydb;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;

use crate::setup::{State, read_token};
use crate::{Flow, Keys, procstat};

#[derive(clap::Args)]
pub struct RunArgs {
    #[arg(long, value_enum)]
    flow: Flow,
    /// Base URL of the server under test (clustercred, or cfssl serve for --flow cfssl).
    #[arg(long)]
    url: String,
    /// Admin bearer token file (not needed for agent-token and cfssl).
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// The state file written by `setup`.
    #[arg(long)]
    state: PathBuf,
    #[arg(long, short = 'c', default_value_t = 16)]
    concurrency: usize,
    /// Measured seconds.
    #[arg(long, short = 'd', default_value_t = 10.0)]
    duration: f64,
    /// Seconds of load before measuring (connections opened, caches warm).
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Client key types for client-cert flows.
    #[arg(long, value_enum, default_value = "p256")]
    keys: Keys,
    /// The server's process id, to report its CPU time and peak RSS over the measured window.
    #[arg(long)]
    pid: Option<u32>,
    /// Name in reports (default: the flow, with the key type when not P-256).
    #[arg(long)]
    label: Option<String>,
    /// Also write the result as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// After a RESOURCE_EXHAUSTED answer, wait the `RetryInfo` delay it carries before the worker's next call, as
    /// Google's client libraries do; without this flag a refused worker retries at once (a hostile client).
    #[arg(long)]
    honor_retry_delay: bool,
    /// Marks the run as an overload run (beyond the server's admission limit): the report puts it in its own
    /// table, with the refusals, instead of the throughput table and plot.
    #[arg(long)]
    overload: bool,
    /// What else loads the server during the run (free text): the report puts the run in a table of its own,
    /// beside the same flow's run without that load.
    #[arg(long)]
    beside: Option<String>,
}

#[derive(Serialize, Deserialize, Clone)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

#[derive(Serialize, Deserialize, Clone)]
pub struct ServerUsage {
    pub cpu_secs: f64,
    pub cpu_ms_per_request: f64,
    /// Highest VmRSS sampled every 50 ms during warm-up and measurement.
    pub peak_rss_mib: f64,
    /// VmHWM at the end: the high-water mark over the process's whole life.
    pub hwm_mib: f64,
}

#[derive(Serialize, Deserialize, Clone)]
pub struct RunResult {
    pub label: String,
    pub flow: Flow,
    pub keys: Keys,
    pub concurrency: usize,
    /// Seconds from the end of the warm-up until the last counted request finished.
    pub window_secs: f64,
    pub ok: u64,
    /// By "http NNN", "grpc CODE" or "transport".
    pub errors: BTreeMap<String, u64>,
    pub rps: f64,
    /// Of successful requests, in milliseconds.
    pub latency_ms: Latency,
    pub server: Option<ServerUsage>,
    /// CPU milliseconds this load generator spent per successful call (it shares the machine with the server).
    #[serde(default)]
    pub client_cpu_ms_per_request: Option<f64>,
    /// Latency of the RESOURCE_EXHAUSTED answers (HTTP 429), in milliseconds, when there were any.
    #[serde(default)]
    pub refused_latency_ms: Option<Latency>,
    /// Whether refused workers waited the server's retry delay (`--honor-retry-delay`).
    #[serde(default)]
    pub honor_retry_delay: bool,
    /// Run with `--overload`.
    #[serde(default)]
    pub overload: bool,
    /// Run with `--beside`: what else loaded the server.
    #[serde(default)]
    pub beside: Option<String>,
}

struct Shared {
    flow: Flow,
    base: String,
    http: reqwest::Client,
    bearer: Option<String>,
    state: State,
    keys: Vec<String>,
    subject_tokens: Vec<String>,
    honor_retry_delay: bool,
}

fn subject_tokens(state: &State, n: usize) -> anyhow::Result<Vec<String>> {
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(state.subject_key_pem.as_bytes())
        .context("subject key")?;
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some(state.kid.clone());
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    (0..n)
        .map(|i| {
            let claims = json!({
                "iss": state.issuer, "aud": [state.audience],
                "sub": format!("system:serviceaccount:bench:agent-{i}"),
                "iat": now, "nbf": now, "exp": now + 3600,
            });
            jsonwebtoken::encode(&header, &claims, &key).context("signing a subject token")
        })
        .collect()
}

/// A failed call: its label for the error counts, whether it was RESOURCE_EXHAUSTED, and the retry delay the
/// server asked for.
struct Failure {
    label: String,
    exhausted: bool,
    retry_delay: Option<Duration>,
}

impl From<String> for Failure {
    fn from(label: String) -> Self {
        Failure {
            label,
            exhausted: false,
            retry_delay: None,
        }
    }
}

impl From<&str> for Failure {
    fn from(label: &str) -> Self {
        label.to_string().into()
    }
}

type Outcome = Result<(), Failure>;

/// `"0.100s"` (a JSON google.protobuf.Duration) as a duration.
fn parse_json_duration(text: &str) -> Option<Duration> {
    let secs: f64 = text.strip_suffix('s')?.parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(60.0)))
}

/// The `RetryInfo` delay in a Google REST error body.
fn rest_retry_delay(body: &[u8]) -> Option<Duration> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    v["error"]["details"]
        .as_array()?
        .iter()
        .find(|d| d["@type"] == "type.googleapis.com/google.rpc.RetryInfo")
        .and_then(|d| parse_json_duration(d["retryDelay"].as_str()?))
}

fn transport(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timeout".into()
    } else {
        "transport".into()
    }
}

async fn finish(resp: reqwest::Response, expect: Option<&[u8]>) -> Outcome {
    let status = resp.status();
    // Read the whole body: that is part of the call, and lets the connection be reused.
    let body = resp.bytes().await.map_err(|e| transport(&e))?;
    if !status.is_success() {
        let exhausted = status == reqwest::StatusCode::TOO_MANY_REQUESTS;
        return Err(Failure {
            label: format!("http {}", status.as_u16()),
            exhausted,
            retry_delay: exhausted.then(|| rest_retry_delay(&body)).flatten(),
        });
    }
    if let Some(needle) = expect
        && !body.windows(needle.len()).any(|w| w == needle)
    {
        return Err("unexpected body".into());
    }
    Ok(())
}

async fn rest_call(s: &Shared, i: usize) -> Outcome {
    let base = &s.base;
    let req = match s.flow {
        Flow::ClientCert => s
            .http
            .post(format!(
                "{base}/alloydb/v1/{}:generateClientCertificate",
                s.state.alloydb_cluster
            ))
            .json(&json!({
                "publicKey": s.keys[i % s.keys.len()],
                "certDuration": "3600s",
                "requestId": uuid::Uuid::new_v4().to_string(),
            })),
        Flow::OfflineCred => s.http.get(format!(
            "{base}/edgecontainer/v1/{}:generateOfflineCredential",
            s.state.edge_cluster
        )),
        Flow::AgentToken => s
            .http
            .post(format!(
                "{base}/gkemulticloud/v1/{}:generateAttachedClusterAgentToken",
                s.state.attached_cluster
            ))
            .json(&json!({
                "subjectToken": s.subject_tokens[i % s.subject_tokens.len()],
                "subjectTokenType": "urn:ietf:params:oauth:token-type:jwt",
                "version": "1.30.0",
                "grantType": "urn:ietf:params:oauth:grant-type:token-exchange",
                "requestedTokenType": "urn:ietf:params:oauth:token-type:access_token",
            })),
        Flow::Cfssl => s
            .http
            .post(format!("{base}/api/v1/cfssl/sign"))
            .json(&json!({
                "certificate_request": s.state.csrs[i % s.state.csrs.len()],
                "profile": "client",
            })),
        Flow::ClientCertGrpc => return Err("not a REST flow".into()),
    };
    // The subject token is the agent-token call's credential; cfssl has none.
    let req = match (&s.bearer, s.flow) {
        (Some(token), Flow::ClientCert | Flow::OfflineCred) => req.bearer_auth(token),
        _ => req,
    };
    let resp = req.send().await.map_err(|e| transport(&e))?;
    let expect: Option<&[u8]> = match s.flow {
        Flow::Cfssl => Some(b"\"success\":true"),
        _ => None,
    };
    finish(resp, expect).await
}

async fn grpc_call(
    s: &Shared,
    client: &mut alloydb::alloy_db_admin_client::AlloyDbAdminClient<Channel>,
    auth: &Option<MetadataValue<tonic::metadata::Ascii>>,
    i: usize,
) -> Outcome {
    let mut req = tonic::Request::new(alloydb::GenerateClientCertificateRequest {
        parent: s.state.alloydb_cluster.clone(),
        request_id: uuid::Uuid::new_v4().to_string(),
        public_key: s.keys[i % s.keys.len()].clone(),
        cert_duration: Some(prost_types::Duration {
            seconds: 3600,
            nanos: 0,
        }),
        ..Default::default()
    });
    if let Some(v) = auth {
        req.metadata_mut().insert("authorization", v.clone());
    }
    client
        .generate_client_certificate(req)
        .await
        .map(|_| ())
        .map_err(|st| {
            use tonic_types::StatusExt;
            let exhausted = st.code() == tonic::Code::ResourceExhausted;
            Failure {
                label: format!("grpc {:?}", st.code()),
                exhausted,
                retry_delay: st
                    .get_details_retry_info()
                    .and_then(|r| r.retry_delay)
                    .filter(|_| exhausted),
            }
        })
}

struct WorkerOutcome {
    hist: Histogram<u64>,
    refused: Histogram<u64>,
    ok: u64,
    errors: BTreeMap<String, u64>,
    last_end: Instant,
}

fn new_hist() -> Histogram<u64> {
    // 1 µs .. 60 s at 3 significant digits; longer calls are clamped to the top.
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("static histogram bounds are valid")
}

async fn worker(
    s: Arc<Shared>,
    id: usize,
    concurrency: usize,
    measure_from: Instant,
    until: Instant,
) -> anyhow::Result<WorkerOutcome> {
    let mut grpc = None;
    let mut auth = None;
    if s.flow == Flow::ClientCertGrpc {
        // One HTTP/2 connection per worker, as separate connector processes would have.
        let channel = tonic::transport::Endpoint::from_shared(s.base.clone())?
            .connect()
            .await
            .with_context(|| format!("connecting to {}", s.base))?;
        grpc = Some(alloydb::alloy_db_admin_client::AlloyDbAdminClient::new(
            channel,
        ));
        if let Some(token) = &s.bearer {
            auth = Some(MetadataValue::try_from(format!("Bearer {token}"))?);
        }
    }
    let mut out = WorkerOutcome {
        hist: new_hist(),
        refused: new_hist(),
        ok: 0,
        errors: BTreeMap::new(),
        last_end: measure_from,
    };
    // Workers start at different places in the pools so concurrent calls use different keys.
    let mut i = id;
    loop {
        let started = Instant::now();
        if started >= until {
            break;
        }
        let outcome = match &mut grpc {
            Some(client) => grpc_call(&s, client, &auth, i).await,
            None => rest_call(&s, i).await,
        };
        let ended = Instant::now();
        i += concurrency;
        let us = (ended - started).as_micros().min(u64::MAX as u128) as u64;
        let pause = match &outcome {
            Err(f) if s.honor_retry_delay => f.retry_delay,
            _ => None,
        };
        if started >= measure_from {
            out.last_end = ended;
            match outcome {
                Ok(()) => {
                    out.ok += 1;
                    out.hist.saturating_record(us.max(1));
                }
                Err(f) => {
                    if f.exhausted {
                        out.refused.saturating_record(us.max(1));
                    }
                    *out.errors.entry(f.label).or_default() += 1;
                }
            }
        }
        if let Some(pause) = pause {
            tokio::time::sleep(pause.min(until.saturating_duration_since(Instant::now()))).await;
        }
    }
    Ok(out)
}

pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.concurrency > 0, "--concurrency must be at least 1");
    anyhow::ensure!(
        args.duration > 0.0 && args.warmup >= 0.0,
        "--duration must be positive"
    );
    let state = State::load(&args.state)?;
    let bearer = args.token_file.as_deref().map(read_token).transpose()?;
    if matches!(
        args.flow,
        Flow::ClientCert | Flow::ClientCertGrpc | Flow::OfflineCred
    ) {
        anyhow::ensure!(bearer.is_some(), "this flow needs --token-file");
    }
    let keys = match args.keys {
        Keys::P256 => state.p256_keys.clone(),
        Keys::Rsa2048 => state.rsa_keys.clone(),
        Keys::Mixed => state
            .p256_keys
            .iter()
            .zip(&state.rsa_keys)
            .flat_map(|(a, b)| [a.clone(), b.clone()])
            .collect(),
    };
    anyhow::ensure!(
        !keys.is_empty() && !state.csrs.is_empty(),
        "empty key pools in the state file"
    );
    let subject_tokens = if args.flow == Flow::AgentToken {
        subject_tokens(&state, 64)?
    } else {
        Vec::new()
    };
    let http = reqwest::Client::builder()
        .http1_only()
        .pool_max_idle_per_host(args.concurrency)
        .timeout(Duration::from_secs(60))
        .tcp_nodelay(true)
        .build()?;
    let label = args.label.clone().unwrap_or_else(|| {
        let flow = format!("{:?}", args.flow);
        let name = kebab(&flow);
        match (args.flow, args.keys) {
            (Flow::ClientCert | Flow::ClientCertGrpc, Keys::Rsa2048) => {
                format!("{name} (RSA-2048)")
            }
            (Flow::ClientCert | Flow::ClientCertGrpc, Keys::Mixed) => {
                format!("{name} (mixed keys)")
            }
            _ => name,
        }
    });
    let shared = Arc::new(Shared {
        flow: args.flow,
        base: args.url.trim_end_matches('/').to_string(),
        http,
        bearer,
        state,
        keys,
        subject_tokens,
        honor_retry_delay: args.honor_retry_delay,
    });

    let start = Instant::now();
    let measure_from = start + Duration::from_secs_f64(args.warmup);
    let until = measure_from + Duration::from_secs_f64(args.duration);

    // Peak RSS: sample VmRSS until the workers are done.
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = args.pid.map(|pid| {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut peak = 0u64;
            while !stop.load(Ordering::Relaxed) {
                if let Some(kib) = procstat::status_kib(pid, "VmRSS") {
                    peak = peak.max(kib);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            peak
        })
    });

    let workers: Vec<_> = (0..args.concurrency)
        .map(|id| {
            tokio::spawn(worker(
                shared.clone(),
                id,
                args.concurrency,
                measure_from,
                until,
            ))
        })
        .collect();
    tokio::time::sleep_until(measure_from.into()).await;
    let cpu_before = args.pid.and_then(procstat::cpu_secs);
    let own_before = procstat::cpu_secs(std::process::id());

    let mut hist = new_hist();
    let mut refused = new_hist();
    let mut ok = 0;
    let mut errors = BTreeMap::<String, u64>::new();
    let mut last_end = measure_from;
    for w in workers {
        let w = w.await.context("worker panicked")??;
        hist.add(&w.hist).context("merging histograms")?;
        refused.add(&w.refused).context("merging histograms")?;
        ok += w.ok;
        for (k, v) in w.errors {
            *errors.entry(k).or_default() += v;
        }
        last_end = last_end.max(w.last_end);
    }
    let cpu_after = args.pid.and_then(procstat::cpu_secs);
    let own_after = procstat::cpu_secs(std::process::id());
    stop.store(true, Ordering::Relaxed);
    let peak_kib = match sampler {
        Some(task) => Some(task.await.unwrap_or(0)),
        None => None,
    };
    let window_secs = (last_end - measure_from)
        .as_secs_f64()
        .max(args.duration.min(1e-3));
    let server = match (args.pid, cpu_before, cpu_after) {
        (Some(pid), Some(before), Some(after)) => Some(ServerUsage {
            cpu_secs: after - before,
            cpu_ms_per_request: if ok > 0 {
                (after - before) * 1000.0 / ok as f64
            } else {
                0.0
            },
            peak_rss_mib: peak_kib.unwrap_or(0) as f64 / 1024.0,
            hwm_mib: procstat::status_kib(pid, "VmHWM").unwrap_or(0) as f64 / 1024.0,
        }),
        _ => None,
    };
    let result = RunResult {
        label,
        flow: args.flow,
        keys: args.keys,
        concurrency: args.concurrency,
        window_secs,
        ok,
        errors,
        rps: ok as f64 / window_secs,
        latency_ms: latency(&hist),
        refused_latency_ms: (!refused.is_empty()).then(|| latency(&refused)),
        honor_retry_delay: args.honor_retry_delay,
        overload: args.overload,
        beside: args.beside.clone(),
        server,
        client_cpu_ms_per_request: match (own_before, own_after) {
            (Some(b), Some(a)) if ok > 0 => Some((a - b) * 1000.0 / ok as f64),
            _ => None,
        },
    };
    print_result(&result);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&result)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn latency(hist: &Histogram<u64>) -> Latency {
    let ms = |us: u64| us as f64 / 1000.0;
    Latency {
        p50: ms(hist.value_at_quantile(0.50)),
        p90: ms(hist.value_at_quantile(0.90)),
        p99: ms(hist.value_at_quantile(0.99)),
        p999: ms(hist.value_at_quantile(0.999)),
        max: ms(hist.max()),
        mean: hist.mean() / 1000.0,
    }
}

/// `ClientCertGrpc` -> `client-cert-grpc`, the name clap uses on the command line.
pub fn kebab(camel: &str) -> String {
    let mut out = String::new();
    for (i, ch) in camel.chars().enumerate() {
        if ch.is_ascii_uppercase() {
            if i > 0 {
                out.push('-');
            }
            out.push(ch.to_ascii_lowercase());
        } else {
            out.push(ch);
        }
    }
    out
}

fn print_result(r: &RunResult) {
    let errors = if r.errors.is_empty() {
        "none".to_string()
    } else {
        r.errors
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!(
        "{:<28} c={:<3} {:>9.1} req/s  ok {:>7}  p50 {:>8.2} ms  p90 {:>8.2}  p99 {:>8.2}  p99.9 {:>8.2}  errors: {errors}",
        r.label,
        r.concurrency,
        r.rps,
        r.ok,
        r.latency_ms.p50,
        r.latency_ms.p90,
        r.latency_ms.p99,
        r.latency_ms.p999
    );
    if let Some(s) = &r.server {
        println!(
            "{:<28}        server CPU {:.2} s ({:.3} ms/request), peak RSS {:.1} MiB (lifetime high-water {:.1} MiB)",
            "", s.cpu_secs, s.cpu_ms_per_request, s.peak_rss_mib, s.hwm_mib
        );
    }
    if let Some(l) = &r.refused_latency_ms {
        println!(
            "{:<28}        RESOURCE_EXHAUSTED answers: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms{}",
            "",
            l.p50,
            l.p99,
            l.max,
            if r.honor_retry_delay {
                " (workers waited the retry delay)"
            } else {
                " (workers retried at once)"
            }
        );
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn kebab_matches_clap_names() {
        assert_eq!(super::kebab("ClientCertGrpc"), "client-cert-grpc");
        assert_eq!(super::kebab("Cfssl"), "cfssl");
    }
}
