//! Protection against load: token-bucket rate limits per principal and per cluster, and a cap on concurrent
//! expensive work (signing, key generation) that answers RESOURCE_EXHAUSTED at once instead of queueing.
//! RSA key generation has its own, smaller cap so it can never take the permits signing needs.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, SemaphorePermit};
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
    pub per_principal: Rate,
    pub per_cluster: Rate,
    /// Signing operations in flight at once.
    pub max_concurrent_signing: usize,
    /// RSA key generations in flight at once.
    pub max_concurrent_rsa_keygen: usize,
}

impl Default for LimitSettings {
    fn default() -> Self {
        LimitSettings {
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

    fn check_at(&self, key: &str, now: Instant) -> Result<(), Duration> {
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
            bucket.tokens -= 1.0;
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

/// Everything the adapters consult before expensive work.
pub struct Limits {
    principals: RateLimiter,
    clusters: RateLimiter,
    signing: Semaphore,
    rsa_keygen: Semaphore,
}

impl Limits {
    pub fn new(settings: &LimitSettings) -> Self {
        Limits {
            principals: RateLimiter::new(settings.per_principal),
            clusters: RateLimiter::new(settings.per_cluster),
            signing: Semaphore::new(settings.max_concurrent_signing.max(1)),
            rsa_keygen: Semaphore::new(settings.max_concurrent_rsa_keygen.max(1)),
        }
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
        self.signing.try_acquire().map_err(|_| {
            exhausted(
                "the server is busy signing; retry shortly",
                Some(Duration::from_millis(100)),
            )
        })
    }

    pub fn rsa_keygen(&self) -> Result<SemaphorePermit<'_>, Status> {
        self.rsa_keygen.try_acquire().map_err(|_| {
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
