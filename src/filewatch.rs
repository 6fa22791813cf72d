//! Polling files that reload without a restart (TLS certificates, auth
//! tokens and policy): a check every interval on the blocking pool, each
//! outcome reported, a failing reason said once until it changes.
//! Polling, not inotify: it also sees a Kubernetes Secret's symlink swap.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// What one check came to, when it came to something.
pub enum Polled<'a> {
    /// The files changed and what they hold is in force now.
    Reloaded,
    /// The files changed but do not load; what was in force stays.
    /// `new_reason`: not the reason the previous refusal gave (say it then).
    Refused { reason: &'a str, new_reason: bool },
}

/// Every `every` until `stop`: `check` on the blocking pool (`Ok(false)`:
/// nothing changed), and `report` with each outcome that is not "unchanged".
pub async fn poll<C, R>(every: Duration, stop: CancellationToken, check: C, mut report: R)
where
    C: Fn() -> Result<bool, String> + Clone + Send + 'static,
    R: FnMut(Polled<'_>),
{
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    let mut told = String::new();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let result = tokio::task::spawn_blocking(check.clone())
            .await
            .unwrap_or_else(|e| Err(format!("reloading panicked: {e}")));
        match result {
            Ok(false) => {}
            Ok(true) => {
                told.clear();
                report(Polled::Reloaded);
            }
            Err(reason) => {
                let new_reason = reason != told;
                report(Polled::Refused {
                    reason: &reason,
                    new_reason,
                });
                told = reason;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test(start_paused = true)]
    async fn each_outcome_is_reported_and_a_repeated_reason_is_marked_old() {
        // Checks: unchanged, reloaded, refused "a", refused "a", refused "b".
        let script: Arc<Vec<Result<bool, String>>> = Arc::new(vec![
            Ok(false),
            Ok(true),
            Err("a".into()),
            Err("a".into()),
            Err("b".into()),
        ]);
        let step = Arc::new(AtomicUsize::new(0));
        let stop = CancellationToken::new();
        let check = {
            let (script, step, stop) = (script.clone(), step.clone(), stop.clone());
            move || {
                let i = step.fetch_add(1, Ordering::SeqCst);
                if i + 1 >= script.len() {
                    stop.cancel();
                }
                script.get(i).cloned().unwrap_or(Ok(false))
            }
        };
        let mut seen = Vec::new();
        poll(Duration::from_secs(1), stop, check, |polled| {
            seen.push(match polled {
                Polled::Reloaded => "reloaded".to_string(),
                Polled::Refused { reason, new_reason } => format!("{reason}:{new_reason}"),
            })
        })
        .await;
        assert_eq!(seen, ["reloaded", "a:true", "a:false", "b:true"]);
    }
}
