//! GCRA (generic cell rate algorithm) rate limiting, keyed, with bounded memory.
//!
//! Each key stores one number, its theoretical arrival time (TAT). A key whose TAT is in the past
//! is exactly as if it had never been seen, so idle keys can be dropped without changing any
//! decision; only when `max_keys` busy keys exist at once does eviction forget state.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Mutex;

const SHARDS: usize = 16;

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decision {
    pub allowed: bool,
    pub limit: u64,
    pub remaining: u64,
    pub reset_seconds: f64,
    pub retry_after_seconds: f64,
}

/// Errors in the limiter's configuration or arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitError(pub String);

impl std::fmt::Display for LimitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A keyed GCRA limiter: `per_minute` units per minute, up to `burst` at once.
pub struct Limiter {
    per_minute: u64,
    burst: u64,
    /// Seconds per unit.
    interval: f64,
    /// Seconds of credit a full bucket holds (`burst * interval`).
    capacity: f64,
    max_keys: usize,
    shards: Vec<Mutex<HashMap<String, f64>>>,
    hasher: std::collections::hash_map::RandomState,
}

impl Limiter {
    pub fn new(per_minute: u64, burst: Option<u64>, max_keys: usize) -> Result<Self, LimitError> {
        let burst = burst.unwrap_or(per_minute);
        if per_minute > 0 && burst == 0 {
            return Err(LimitError("burst must be at least 1".into()));
        }
        if max_keys == 0 {
            return Err(LimitError("max_keys must be at least 1".into()));
        }
        let interval = if per_minute == 0 {
            0.0
        } else {
            60.0 / per_minute as f64
        };
        Ok(Self {
            per_minute,
            burst,
            interval,
            capacity: burst as f64 * interval,
            max_keys,
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: std::collections::hash_map::RandomState::new(),
        })
    }

    pub fn enabled(&self) -> bool {
        self.per_minute > 0
    }

    pub fn per_minute(&self) -> u64 {
        self.per_minute
    }

    pub fn burst(&self) -> u64 {
        self.burst
    }

    fn shard(&self, key: &str) -> &Mutex<HashMap<String, f64>> {
        &self.shards[(self.hasher.hash_one(key) as usize) % SHARDS]
    }

    fn shard_cap(&self) -> usize {
        self.max_keys.div_ceil(SHARDS)
    }

    /// Number of keys currently held.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Admit `cost` units for `key` at time `now` (seconds, monotonic) or refuse.
    pub fn check(&self, key: &str, cost: u64, now: f64) -> Decision {
        if !self.enabled() {
            return Decision {
                allowed: true,
                limit: 0,
                remaining: 0,
                reset_seconds: 0.0,
                retry_after_seconds: 0.0,
            };
        }
        let mut map = self.shard(key).lock().unwrap_or_else(|e| e.into_inner());
        let tat = map.get(key).copied().unwrap_or(now).max(now);
        let new_tat = tat + cost as f64 * self.interval;
        let used = new_tat - now;
        // A small epsilon absorbs rounding in `k * interval` sums.
        let eps = self.interval * 1e-9;
        if used <= self.capacity + eps {
            if used > 0.0 {
                if !map.contains_key(key) && map.len() >= self.shard_cap() {
                    self.make_room(&mut map, now);
                }
                match map.get_mut(key) {
                    Some(v) => *v = new_tat,
                    None => {
                        map.insert(key.to_owned(), new_tat);
                    }
                }
            }
            Decision {
                allowed: true,
                limit: self.per_minute,
                remaining: ((self.capacity - used + eps) / self.interval)
                    .floor()
                    .max(0.0) as u64,
                reset_seconds: used.max(0.0),
                retry_after_seconds: 0.0,
            }
        } else {
            let held = tat - now;
            // For `cost > burst` (never admissible) this is the wait an over-drawn bucket would
            // need; callers should refuse such costs up front.
            let retry = used - self.capacity;
            Decision {
                allowed: false,
                limit: self.per_minute,
                remaining: ((self.capacity - held + eps) / self.interval)
                    .floor()
                    .max(0.0) as u64,
                reset_seconds: held.max(0.0),
                retry_after_seconds: retry.max(0.0),
            }
        }
    }

    /// Charge (`delta > 0`) or refund (`delta < 0`) units without a decision, e.g. to reconcile
    /// a token reservation with the actual usage. A refund never fills the bucket beyond full.
    pub fn adjust(&self, key: &str, delta: i64, now: f64) {
        if !self.enabled() || delta == 0 {
            return;
        }
        let mut map = self.shard(key).lock().unwrap_or_else(|e| e.into_inner());
        let tat = map.get(key).copied().unwrap_or(now).max(now);
        let new_tat = (tat + delta as f64 * self.interval).max(now);
        if new_tat <= now {
            map.remove(key);
            return;
        }
        if !map.contains_key(key) && map.len() >= self.shard_cap() {
            self.make_room(&mut map, now);
        }
        map.insert(key.to_owned(), new_tat);
    }

    /// Drop idle keys; if none are idle, forget the eighth of keys closest to idle.
    fn make_room(&self, map: &mut HashMap<String, f64>, now: f64) {
        map.retain(|_, tat| *tat > now);
        let cap = self.shard_cap();
        if map.len() < cap {
            return;
        }
        let mut tats: Vec<f64> = map.values().copied().collect();
        let k = (cap / 8).max(1).min(tats.len() - 1);
        tats.select_nth_unstable_by(k, |a, b| a.total_cmp(b));
        let cutoff = tats[k];
        map.retain(|_, tat| *tat > cutoff);
        if map.len() >= cap {
            // Many equal TATs: drop arbitrary keys until there is room.
            let extra: Vec<String> = map.keys().take(map.len() + 1 - cap).cloned().collect();
            for k in extra {
                map.remove(&k);
            }
        }
    }

    /// Drop every idle key (their state equals a fresh key's).
    pub fn sweep(&self, now: f64) {
        for s in &self.shards {
            s.lock()
                .unwrap_or_else(|e| e.into_inner())
                .retain(|_, tat| *tat > now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_burst_then_refuses() {
        let l = Limiter::new(60, Some(3), 100).unwrap();
        for i in 0..3 {
            let d = l.check("a", 1, 0.0);
            assert!(d.allowed, "request {i}");
            assert_eq!(d.remaining, 2 - i);
        }
        let d = l.check("a", 1, 0.0);
        assert!(!d.allowed);
        assert!((d.retry_after_seconds - 1.0).abs() < 1e-9);
        assert!(l.check("a", 1, 1.0).allowed);
        assert!(l.check("b", 1, 0.0).allowed);
    }

    #[test]
    fn never_more_than_limit_plus_burst_per_window() {
        let l = Limiter::new(10, Some(5), 100).unwrap();
        let mut admitted = Vec::new();
        let mut t = 0.0;
        while t < 300.0 {
            if l.check("k", 1, t).allowed {
                admitted.push(t);
            }
            t += 0.25;
        }
        for (i, start) in admitted.iter().enumerate() {
            let n = admitted[i..]
                .iter()
                .take_while(|x| **x < start + 60.0)
                .count();
            assert!(n <= 15, "{n} in the window starting at {start}");
        }
    }

    #[test]
    fn memory_is_bounded() {
        let l = Limiter::new(1, Some(1), 64).unwrap();
        for i in 0..10_000 {
            l.check(&format!("ip{i}"), 1, 0.0);
        }
        assert!(l.len() <= 64 + SHARDS, "{}", l.len());
        l.sweep(1e6);
        assert!(l.is_empty());
    }

    #[test]
    fn refund_never_overfills() {
        let l = Limiter::new(60, Some(10), 100).unwrap();
        assert!(l.check("k", 10, 0.0).allowed);
        l.adjust("k", -100, 0.0);
        assert!(l.check("k", 10, 0.0).allowed);
        assert!(!l.check("k", 1, 0.0).allowed);
    }

    #[test]
    fn zero_disables() {
        let l = Limiter::new(0, None, 10).unwrap();
        assert!(!l.enabled());
        for _ in 0..1000 {
            assert!(l.check("k", 1, 0.0).allowed);
        }
    }
}
