//! Protection against load: token-bucket rate limits per principal and per cluster, and a cap on concurrent
//! expensive work (signing, key generation) that answers RESOURCE_EXHAUSTED at once instead of queueing.
//! RSA key generation has its own, smaller cap so it can never take the permits signing needs.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, SemaphorePermit};
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

#[derive(Clone, Copy, Debug)]
pub struct Rate {
    /// Sustained requests per second.
    pub per_second: f64,
    /// How many may come at once after a quiet period.
    pub burst: f64,
}

#[derive(Clone, Debug)]
pub struct LimitSettings {
    /// Every request from one client address (IPv6: its /64), checked before any authentication work.
    pub per_address: Rate,
    /// Refused calls (failed authentication, denied permission, rejected subject tokens) from one address:
    /// once spent, the address gets RESOURCE_EXHAUSTED before any further authentication work.
    pub failures_per_address: Rate,
    /// Calls without any credential, from all addresses together.
    pub anonymous: Rate,
    pub per_principal: Rate,
    pub per_cluster: Rate,
    /// Signing operations in flight at once.
    pub max_concurrent_signing: usize,
    /// RSA key generations in flight at once.
    pub max_concurrent_rsa_keygen: usize,
    /// How long repeated refusals are counted before their aggregated audit event is written.
    pub refusal_window: Duration,
}

impl Default for LimitSettings {
    fn default() -> Self {
        LimitSettings {
            per_address: Rate {
                per_second: 1000.0,
                burst: 2000.0,
            },
            failures_per_address: Rate {
                per_second: 100.0,
                burst: 1000.0,
            },
            anonymous: Rate {
                per_second: 100.0,
                burst: 200.0,
            },
            per_principal: Rate {
                per_second: 100.0,
                burst: 200.0,
            },
            per_cluster: Rate {
                per_second: 500.0,
                burst: 1000.0,
            },
            max_concurrent_signing: 64,
            max_concurrent_rsa_keygen: 2,
            refusal_window: Duration::from_secs(10),
        }
    }
}

struct Bucket {
    tokens: f64,
    last: Instant,
}

/// Token buckets by key. Idle buckets are dropped once full again, so the map stays small.
pub struct RateLimiter {
    rate: Rate,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl RateLimiter {
    pub fn new(rate: Rate) -> Self {
        RateLimiter {
            rate,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token for `key`, or says how long until one is available.
    pub fn check(&self, key: &str) -> Result<(), Duration> {
        self.check_at(key, Instant::now())
    }

    /// Whether `key` has a token left, without taking it.
    pub fn peek(&self, key: &str) -> Result<(), Duration> {
        self.take_at(key, Instant::now(), 0.0)
    }

    fn check_at(&self, key: &str, now: Instant) -> Result<(), Duration> {
        self.take_at(key, now, 1.0)
    }

    /// Refills `key`'s bucket and takes `cost` tokens if at least one is there. A rate of 0 means no limit.
    fn take_at(&self, key: &str, now: Instant, cost: f64) -> Result<(), Duration> {
        if self.rate.per_second <= 0.0 {
            return Ok(());
        }
        let Ok(mut buckets) = self.buckets.lock() else {
            return Ok(());
        };
        if buckets.len() > 10_000 {
            let (rate, burst) = (self.rate.per_second, self.rate.burst);
            buckets
                .retain(|_, b| b.tokens + now.duration_since(b.last).as_secs_f64() * rate < burst);
        }
        let bucket = buckets.entry(key.to_string()).or_insert(Bucket {
            tokens: self.rate.burst,
            last: now,
        });
        let refill =
            now.saturating_duration_since(bucket.last).as_secs_f64() * self.rate.per_second;
        bucket.tokens = (bucket.tokens + refill).min(self.rate.burst);
        bucket.last = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= cost;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                (1.0 - bucket.tokens) / self.rate.per_second.max(f64::MIN_POSITIVE),
            ))
        }
    }
}

pub fn exhausted(what: &str, retry_after: Option<Duration>) -> Status {
    let mut details = ErrorDetails::with_error_info(
        "RATE_LIMIT_EXCEEDED",
        crate::errors::ERROR_DOMAIN,
        HashMap::new(),
    );
    if let Some(delay) = retry_after {
        details.set_retry_info(Some(delay.max(Duration::from_millis(1))));
    }
    Status::with_error_details(Code::ResourceExhausted, what.to_string(), details)
}

fn busy_signing() -> Status {
    exhausted(
        "the server is busy signing; retry shortly",
        Some(Duration::from_millis(100)),
    )
}

/// Everything the adapters consult before expensive work.
pub struct Limits {
    addresses: RateLimiter,
    failures: RateLimiter,
    anonymous: RateLimiter,
    principals: RateLimiter,
    clusters: RateLimiter,
    signing: Semaphore,
    rsa_keygen: Arc<Semaphore>,
}

impl Limits {
    pub fn new(settings: &LimitSettings) -> Self {
        Limits {
            addresses: RateLimiter::new(settings.per_address),
            failures: RateLimiter::new(settings.failures_per_address),
            anonymous: RateLimiter::new(settings.anonymous),
            principals: RateLimiter::new(settings.per_principal),
            clusters: RateLimiter::new(settings.per_cluster),
            signing: Semaphore::new(settings.max_concurrent_signing.max(1)),
            rsa_keygen: Arc::new(Semaphore::new(settings.max_concurrent_rsa_keygen.max(1))),
        }
    }

    /// One request from `ip`.
    pub fn address(&self, ip: IpAddr) -> Result<(), Status> {
        let key = crate::gate::limit_key(ip).to_string();
        self.addresses.check(&key).map_err(|d| {
            exhausted(
                &format!("too many requests from {key}; retry later"),
                Some(d),
            )
        })
    }

    /// Refused at once when `ip` has used up its refusals.
    pub fn failing(&self, ip: IpAddr) -> Result<(), Status> {
        let key = crate::gate::limit_key(ip).to_string();
        self.failures.peek(&key).map_err(|d| {
            exhausted(
                &format!("too many refused requests from {key}; retry later"),
                Some(d),
            )
        })
    }

    /// Counts a refused call against `ip`.
    pub fn note_failure(&self, ip: IpAddr) {
        let key = crate::gate::limit_key(ip).to_string();
        let _ = self.failures.check(&key);
    }

    /// One call that carries no credential at all.
    pub fn anonymous(&self) -> Result<(), Status> {
        self.anonymous
            .check("")
            .map_err(|d| exhausted("too many unauthenticated requests; retry later", Some(d)))
    }

    pub fn principal(&self, member: &str) -> Result<(), Status> {
        self.principals.check(member).map_err(|d| {
            exhausted(
                &format!("rate limit for {member} exceeded; retry later"),
                Some(d),
            )
        })
    }

    pub fn cluster(&self, cluster: &str) -> Result<(), Status> {
        self.clusters.check(cluster).map_err(|d| {
            exhausted(
                &format!("rate limit for {cluster} exceeded; retry later"),
                Some(d),
            )
        })
    }

    /// A permit to sign, or RESOURCE_EXHAUSTED right away when the server is saturated.
    pub fn signing(&self) -> Result<SemaphorePermit<'_>, Status> {
        self.signing.try_acquire().map_err(|_| busy_signing())
    }

    /// RESOURCE_EXHAUSTED when no signing permit is free now: the gate asks this of a minting call before it
    /// authenticates or reads the body, so that under overload the excess costs almost nothing. Takes no permit
    /// (a slow upload must not hold one); the handler still takes its own.
    pub fn saturated(&self) -> Result<(), Status> {
        if self.signing.available_permits() == 0 {
            return Err(busy_signing());
        }
        Ok(())
    }

    /// An owned permit: it moves into the generation task, so a client that goes away does not free the slot
    /// while the generation still runs.
    pub fn rsa_keygen(&self) -> Result<OwnedSemaphorePermit, Status> {
        self.rsa_keygen.clone().try_acquire_owned().map_err(|_| {
            exhausted(
                "the server is busy generating RSA keys; retry shortly",
                Some(Duration::from_secs(1)),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_allow_bursts_then_the_rate() {
        let limiter = RateLimiter::new(Rate {
            per_second: 10.0,
            burst: 3.0,
        });
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(limiter.check_at("a", t0).is_ok());
        }
        let wait = limiter.check_at("a", t0).unwrap_err();
        assert!(wait <= Duration::from_millis(100) && wait > Duration::ZERO);
        assert!(limiter.check_at("b", t0).is_ok(), "keys are independent");
        assert!(
            limiter
                .check_at("a", t0 + Duration::from_millis(100))
                .is_ok(),
            "refilled at the rate"
        );
        assert!(
            limiter
                .check_at("a", t0 + Duration::from_millis(100))
                .is_err()
        );
    }

    #[tokio::test]
    async fn an_rsa_permit_stays_with_the_generation_when_the_caller_goes_away() {
        let limits = Limits::new(&LimitSettings {
            max_concurrent_rsa_keygen: 1,
            ..Default::default()
        });
        let (release, wait) = std::sync::mpsc::channel::<()>();
        let permit = limits.rsa_keygen().unwrap();
        // What the handler does: the permit moves into the blocking task, and the caller's future is dropped
        // (the client cancelled) while the generation still runs.
        let generation = tokio::task::spawn_blocking(move || {
            let _ = wait.recv();
            drop(permit);
        });
        drop(generation);
        assert_eq!(
            limits.rsa_keygen().unwrap_err().code(),
            Code::ResourceExhausted,
            "the slot is still taken by the running generation"
        );
        release.send(()).unwrap();
        for _ in 0..1000 {
            if limits.rsa_keygen().is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("the slot came back once the generation ended");
    }

    #[test]
    fn permits_are_refused_not_queued() {
        let limits = Limits::new(&LimitSettings {
            max_concurrent_signing: 1,
            ..Default::default()
        });
        let held = limits.signing().unwrap();
        let err = limits.signing().unwrap_err();
        assert_eq!(err.code(), Code::ResourceExhausted);
        drop(held);
        assert!(limits.signing().is_ok());
    }
}
