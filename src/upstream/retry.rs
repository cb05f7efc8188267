//! Which upstream failures may be retried, and how long to wait: reads on connect errors, timeouts, 5xx
//! and 429 (honouring `Retry-After`); writes only when the request provably never left the gateway.

use std::time::Duration;

use rand::Rng;

use super::transport::TransportError;

/// Longest `Retry-After` the gateway waits out itself; beyond it the client gets the 429/503.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(5);
const BASE_BACKOFF: Duration = Duration::from_millis(100);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    Status {
        status: u16,
        retry_after: Option<Duration>,
    },
    /// An answer whose mapping error rule says retrying may help (e.g. athena's throttling 403).
    Refused {
        retry_after: Option<Duration>,
    },
    Failed(TransportError),
}

/// How long to wait before attempt number `attempt + 1`, or `None` to give up.
pub fn retry_delay(outcome: &Attempt, idempotent: bool, attempt: u32, max_attempts: u32) -> Option<Duration> {
    if attempt >= max_attempts {
        return None;
    }
    let backoff = || {
        let exp = BASE_BACKOFF * 2u32.saturating_pow(attempt.saturating_sub(1));
        let jitter = rand::rng().random_range(0..=exp.as_millis() as u64 / 2);
        exp + Duration::from_millis(jitter)
    };
    match outcome {
        // Never reached the EHR: safe for any method.
        Attempt::Failed(TransportError::Connect) => Some(backoff()),
        // An answer came; it will be as large the next time.
        Attempt::Failed(TransportError::TooLarge) => None,
        Attempt::Failed(_) if idempotent => Some(backoff()),
        Attempt::Failed(_) => None,
        Attempt::Status { status: 429 | 503, retry_after: Some(after) }
        | Attempt::Refused { retry_after: Some(after) }
            if idempotent =>
        {
            (*after <= MAX_RETRY_AFTER).then_some(*after)
        }
        Attempt::Refused { .. } if idempotent => Some(backoff()),
        Attempt::Status { status, .. } if idempotent && (*status == 429 || *status >= 500) => Some(backoff()),
        Attempt::Status { .. } | Attempt::Refused { .. } => None,
    }
}

/// Parses `Retry-After` as delta-seconds or an HTTP date.
pub fn parse_retry_after(value: &str, now: std::time::SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_retry_on_server_errors_and_throttling_writes_do_not() {
        let s503 = Attempt::Status { status: 503, retry_after: None };
        assert!(retry_delay(&s503, true, 1, 3).is_some());
        assert!(retry_delay(&s503, false, 1, 3).is_none());
        assert!(retry_delay(&s503, true, 3, 3).is_none(), "attempts are bounded");
        assert!(retry_delay(&Attempt::Status { status: 404, retry_after: None }, true, 1, 3).is_none());
        assert!(retry_delay(&Attempt::Status { status: 422, retry_after: None }, true, 1, 3).is_none());
    }

    #[test]
    fn a_create_is_resent_only_when_it_never_left() {
        assert!(retry_delay(&Attempt::Failed(TransportError::Connect), false, 1, 3).is_some());
        assert!(retry_delay(&Attempt::Failed(TransportError::Timeout), false, 1, 3).is_none());
        assert!(retry_delay(&Attempt::Failed(TransportError::Broken), false, 1, 3).is_none());
        assert!(retry_delay(&Attempt::Failed(TransportError::Timeout), true, 1, 3).is_some());
    }

    #[test]
    fn answers_a_mapping_marks_retryable_are_retried_for_idempotent_requests_only() {
        let refused = Attempt::Refused { retry_after: Some(Duration::from_secs(1)) };
        assert_eq!(retry_delay(&refused, true, 1, 3), Some(Duration::from_secs(1)));
        assert_eq!(retry_delay(&refused, false, 1, 3), None);
        assert_eq!(retry_delay(&refused, true, 3, 3), None);
        assert!(retry_delay(&Attempt::Refused { retry_after: None }, true, 1, 3).is_some());
    }

    #[test]
    fn retry_after_is_honoured_up_to_a_cap() {
        let a = Attempt::Status { status: 429, retry_after: Some(Duration::from_secs(2)) };
        assert_eq!(retry_delay(&a, true, 1, 3), Some(Duration::from_secs(2)));
        let long = Attempt::Status { status: 429, retry_after: Some(Duration::from_secs(60)) };
        assert_eq!(retry_delay(&long, true, 1, 3), None);
    }

    #[test]
    fn backoff_grows_with_the_attempt() {
        let a = Attempt::Status { status: 500, retry_after: None };
        let first = retry_delay(&a, true, 1, 5).unwrap();
        let third = retry_delay(&a, true, 3, 5).unwrap();
        assert!(first >= Duration::from_millis(100) && first <= Duration::from_millis(150));
        assert!(third >= Duration::from_millis(400) && third <= Duration::from_millis(600));
    }

    #[test]
    fn retry_after_parses_seconds_and_dates() {
        let now = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert_eq!(parse_retry_after("3", now), Some(Duration::from_secs(3)));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(10));
        assert_eq!(parse_retry_after(&later, now), Some(Duration::from_secs(10)));
        assert_eq!(parse_retry_after("soon", now), None);
    }
}
