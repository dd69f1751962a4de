//! Arrival schedules of open-loop tenants, reproducible from a seed.

use std::time::Duration;

use rand::{Rng, SeedableRng};

use crate::scenario::Arrival;

/// Offsets from the start of the run at which an open-loop tenant sends, up to `horizon` or
/// `limit` requests. `None` for a closed loop (it has no schedule).
pub fn schedule(
    arrival: &Arrival,
    seed: u64,
    horizon: Duration,
    limit: u64,
) -> Option<Vec<Duration>> {
    let horizon = horizon.as_secs_f64();
    let mut out = Vec::new();
    let mut push = |t: f64| {
        if t < horizon && (out.len() as u64) < limit {
            out.push(Duration::from_secs_f64(t));
            true
        } else {
            false
        }
    };
    match *arrival {
        Arrival::Poisson { rate } => {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let mut t = 0.0;
            loop {
                // Exponential inter-arrival time by inversion.
                t += -(1.0 - rng.gen::<f64>()).ln() / rate;
                if !push(t) {
                    break;
                }
            }
        }
        Arrival::Constant { rate } => {
            let mut i = 0u64;
            while push(i as f64 / rate) {
                i += 1;
            }
        }
        Arrival::Bursts { size, every_secs } => {
            let mut burst = 0u64;
            'outer: loop {
                for _ in 0..size {
                    if !push(burst as f64 * every_secs) {
                        break 'outer;
                    }
                }
                burst += 1;
            }
        }
        Arrival::ClosedLoop { .. } => return None,
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poisson_is_reproducible_and_has_the_right_mean() {
        let arrival = Arrival::Poisson { rate: 20.0 };
        let long = Duration::from_secs(1_000_000);
        let a = schedule(&arrival, 7, long, 10_000).unwrap();
        let b = schedule(&arrival, 7, long, 10_000).unwrap();
        assert_eq!(a, b, "same seed, same schedule");
        assert_ne!(a, schedule(&arrival, 8, long, 10_000).unwrap());
        assert_eq!(a.len(), 10_000);
        let mean_gap = a.last().unwrap().as_secs_f64() / a.len() as f64;
        let expected = 1.0 / 20.0;
        assert!(
            (mean_gap - expected).abs() / expected < 0.05,
            "mean gap {mean_gap}"
        );
    }

    #[test]
    fn constant_and_bursts() {
        let c = schedule(
            &Arrival::Constant { rate: 4.0 },
            0,
            Duration::from_secs(1),
            100,
        )
        .unwrap();
        assert_eq!(c.len(), 4);
        assert_eq!(c[1], Duration::from_millis(250));
        let b = schedule(
            &Arrival::Bursts {
                size: 3,
                every_secs: 2.0,
            },
            0,
            Duration::from_secs(5),
            100,
        )
        .unwrap();
        assert_eq!(b.len(), 9);
        assert_eq!(b[3], Duration::from_secs(2));
        assert!(schedule(
            &Arrival::ClosedLoop { concurrency: 2 },
            0,
            Duration::from_secs(1),
            9
        )
        .is_none());
    }
}
