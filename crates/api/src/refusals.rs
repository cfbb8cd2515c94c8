//! Refused calls, audited without one write per attack request. The first refusal of a kind (source address,
//! principal, method, status) in a window is written at once, while the immediate-write budget lasts; repeats
//! are counted in memory and written as one event with their count when the window closes. The number of kinds
//! held is capped (further kinds fold into one per status), so an unauthenticated flood costs a bounded
//! number of writes per window however it is shaped, and the log still says how many calls were refused.

use std::collections::HashMap;
use std::sync::Mutex;

use clustercred_store::AuditEvent;

use crate::limits::{Rate, RateLimiter};

/// Kinds of refusal held per window before they fold together.
const MAX_KINDS: usize = 1024;

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct Kind {
    source: String,
    principal: String,
    method: String,
    status: String,
}

struct Pending {
    /// The first refusal of this kind in the window (what the aggregated event describes).
    sample: AuditEvent,
    /// Refusals not yet written.
    unwritten: u64,
}

pub struct Refusals {
    pending: Mutex<HashMap<Kind, Pending>>,
    immediate: RateLimiter,
}

impl Default for Refusals {
    fn default() -> Self {
        Refusals::new(Rate {
            per_second: 20.0,
            burst: 100.0,
        })
    }
}

impl Refusals {
    pub fn new(immediate: Rate) -> Self {
        Refusals {
            pending: Mutex::new(HashMap::new()),
            immediate: RateLimiter::new(immediate),
        }
    }

    /// Notes a refusal. Returns the event to write now, or `None` when it was counted for the window's end.
    pub fn note(&self, event: AuditEvent) -> Option<AuditEvent> {
        let source = event
            .client_address
            .parse::<std::net::SocketAddr>()
            .map(|a| crate::gate::limit_key(a.ip()).to_string())
            .unwrap_or_else(|_| event.client_address.clone());
        let mut kind = Kind {
            source,
            principal: event.principal.clone(),
            method: event.method.clone(),
            status: event.status.clone(),
        };
        let Ok(mut pending) = self.pending.lock() else {
            return Some(event);
        };
        if !pending.contains_key(&kind) && pending.len() >= MAX_KINDS {
            // Too many distinct kinds this window: count the rest together, per status.
            kind = Kind {
                source: "*".into(),
                principal: "*".into(),
                method: "*".into(),
                status: kind.status,
            };
        }
        match pending.get_mut(&kind) {
            Some(p) => {
                p.unwritten += 1;
                None
            }
            None => {
                let write_now = kind.source != "*" && self.immediate.check("").is_ok();
                let mut sample = event.clone();
                if kind.source == "*" {
                    sample.principal = "*".into();
                    sample.method = "*".into();
                    sample.client_address = "*".into();
                    sample.resource = String::new();
                    sample.user_agent = String::new();
                }
                pending.insert(
                    kind,
                    Pending {
                        sample,
                        unwritten: if write_now { 0 } else { 1 },
                    },
                );
                write_now.then_some(event)
            }
        }
    }

    /// Closes the window: one event per kind that has unwritten refusals, carrying their count.
    pub fn drain(&self, now_unix_nanos: i64) -> Vec<AuditEvent> {
        let taken = match self.pending.lock() {
            Ok(mut pending) => std::mem::take(&mut *pending),
            Err(_) => return Vec::new(),
        };
        let mut events: Vec<AuditEvent> = taken
            .into_values()
            .filter(|p| p.unwritten > 0)
            .map(|p| {
                let mut event = p.sample;
                event.detail = format!(
                    "{} refused call(s) like this since {}: {}",
                    p.unwritten, event.time_unix_nanos, event.detail
                );
                event.time_unix_nanos = now_unix_nanos;
                event.count = p.unwritten;
                event
            })
            .collect();
        events.sort_by(|a, b| a.detail.cmp(&b.detail));
        events
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(addr: &str, status: &str) -> AuditEvent {
        AuditEvent {
            principal: "anonymous".into(),
            method: "m".into(),
            status: status.into(),
            client_address: addr.into(),
            detail: "bad token".into(),
            ..Default::default()
        }
    }

    #[test]
    fn repeats_are_counted_not_written() {
        let r = Refusals::default();
        assert!(r.note(refusal("10.0.0.1:1", "UNAUTHENTICATED")).is_some());
        for port in 2..1000 {
            assert!(
                r.note(refusal(&format!("10.0.0.1:{port}"), "UNAUTHENTICATED"))
                    .is_none()
            );
        }
        let drained = r.drain(5);
        assert_eq!(drained.len(), 1);
        assert_eq!(drained[0].count, 998);
        assert!(drained[0].request_id.is_empty());
        assert!(
            drained[0].detail.starts_with("998 refused call(s)"),
            "{}",
            drained[0].detail
        );
        assert!(r.drain(6).is_empty(), "a window is drained once");
    }

    #[test]
    fn many_kinds_fold_into_one_per_status() {
        let r = Refusals::new(Rate {
            per_second: 0.001,
            burst: 1.0,
        });
        let mut written = 0;
        for i in 0..(MAX_KINDS as u32 + 5000) {
            let ip = std::net::Ipv4Addr::from(i);
            if r.note(refusal(&format!("{ip}:1"), "UNAUTHENTICATED"))
                .is_some()
            {
                written += 1;
            }
        }
        assert_eq!(written, 1, "the immediate budget bounds writes");
        let drained = r.drain(5);
        assert_eq!(
            drained.len(),
            MAX_KINDS,
            "one per kind held, plus the folded ones"
        );
        let folded: Vec<_> = drained.iter().filter(|e| e.client_address == "*").collect();
        assert_eq!(folded.len(), 1);
        assert_eq!(folded[0].count, 5000);
        assert!(
            folded[0].detail.starts_with("5000 refused"),
            "{}",
            folded[0].detail
        );
    }
}
