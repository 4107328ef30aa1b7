//! What the two HTTP adapters share: the client, the bounded body read, and what a failed
//! send means for the charge.

use std::time::Duration;

use crate::limits::PAYMENT_RESPONSE_MAX_BYTES;

use super::PaymentError;

/// Connect and whole-request timeouts of one adapter, in milliseconds.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Timeouts {
    pub connect_ms: u64,
    pub request_ms: u64,
}

/// A client that follows no redirects (a payment POST must reach the configured host or fail)
/// and gives up after the configured times.
pub(crate) fn client(timeouts: Timeouts) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_millis(timeouts.connect_ms))
        .timeout(Duration::from_millis(timeouts.request_ms))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("gyro/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// What a request that got no response means. A refused or timed-out connection sent nothing,
/// so nothing was charged (`Transient`). Anything after the connection was up (a timeout while
/// waiting for the answer, a reset) may have reached the gateway: `Unknown`, look it up.
pub(crate) fn send_failed(error: &reqwest::Error) -> PaymentError {
    if error.is_connect() {
        PaymentError::Transient
    } else {
        PaymentError::Unknown
    }
}

/// The response body, at most `PAYMENT_RESPONSE_MAX_BYTES`; `None` if it is longer or the
/// connection fails while reading it.
pub(crate) async fn body(mut response: reqwest::Response) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.ok()? {
        if PAYMENT_RESPONSE_MAX_BYTES < body.len() + chunk.len() {
            return None;
        }
        body.extend_from_slice(&chunk);
    }
    Some(body)
}

/// Statuses that mean "not now" rather than "never": request timeout, conflict (another request
/// with the same idempotency key is still running), too early, too many requests.
pub(crate) fn is_retry_later(status: reqwest::StatusCode) -> bool {
    matches!(status.as_u16(), 408 | 409 | 425 | 429)
}
