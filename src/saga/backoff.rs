//! Retry delays: the configured schedule, indexed by the attempt that just failed
//! (the last delay repeats), with ± jitter so failed deliveries do not retry in step.

use std::time::Duration;

use rand::Rng;

use crate::config::DeliverySettings;

/// The delay after failed attempt `n` (from 1) of the current round.
pub fn delay(settings: &DeliverySettings, n: u32) -> Duration {
    let base = settings.backoff[(n.max(1) as usize - 1).min(settings.backoff.len() - 1)];
    let jitter = settings.jitter;
    if jitter <= 0.0 {
        return base;
    }
    let factor = 1.0 + rand::rng().random_range(-jitter..=jitter);
    base.mul_f64(factor.max(0.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(jitter: f64) -> DeliverySettings {
        DeliverySettings {
            enabled: true,
            backoff: vec![Duration::from_secs(30), Duration::from_secs(120)],
            max_attempts: 5,
            jitter,
            concurrency: 1,
            lease: Duration::from_secs(60),
            poll_interval: Duration::from_secs(1),
            domains: Default::default(),
            throttle_backoff: Duration::from_secs(5),
            throttle_backoff_max: Duration::from_secs(600),
            max_per_second: 0,
        }
    }

    #[test]
    fn follows_the_schedule_and_repeats_the_last() {
        let s = settings(0.0);
        assert_eq!(delay(&s, 1), Duration::from_secs(30));
        assert_eq!(delay(&s, 2), Duration::from_secs(120));
        assert_eq!(delay(&s, 9), Duration::from_secs(120));
    }

    #[test]
    fn jitter_stays_within_bounds() {
        let s = settings(0.2);
        for _ in 0..1000 {
            let d = delay(&s, 1).as_secs_f64();
            assert!((24.0..=36.0).contains(&d), "{d}");
        }
    }
}
