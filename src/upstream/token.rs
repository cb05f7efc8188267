//! OAuth2 client-credentials tokens per connection: fetched once (single flight), refreshed before expiry,
//! and dropped on a 401 so exactly one refresh follows.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::{Method, StatusCode};
use serde::Deserialize;
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::transport::{HttpRequest, Transport, TransportError};
use crate::config::Secret;
use crate::error::{GatewayError, IssueCode, Side};
use crate::mapping::ClientAuth;

/// Where and how to get tokens for one connection.
#[derive(Debug, Clone)]
pub struct TokenSource {
    pub ehr: String,
    pub token_url: String,
    pub client_id: String,
    pub client_secret: Secret,
    pub client_auth: ClientAuth,
    pub scope: Option<String>,
    pub refresh_before: Duration,
    pub timeout: Duration,
}

/// The cache's explicit state: a token is either absent or valid until `refresh_at`.
enum TokenState {
    Empty,
    Valid { token: Secret, refresh_at: Instant },
}

pub struct TokenCache {
    source: TokenSource,
    transport: Arc<dyn Transport>,
    // Holding this lock while fetching is what makes refresh single-flight: waiters find the new token.
    state: Mutex<TokenState>,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    /// A number, or (athena) a string holding one.
    #[serde(default, deserialize_with = "lenient_seconds")]
    expires_in: Option<u64>,
}

fn lenient_seconds<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    Ok(match Option::<serde_json::Value>::deserialize(d)? {
        Some(serde_json::Value::Number(n)) => n.as_u64(),
        Some(serde_json::Value::String(s)) => s.trim().parse().ok(),
        _ => None,
    })
}

impl TokenCache {
    pub fn new(source: TokenSource, transport: Arc<dyn Transport>) -> Self {
        TokenCache { source, transport, state: Mutex::new(TokenState::Empty) }
    }

    /// A token valid for at least `refresh_before`, fetching one if needed.
    pub async fn get(&self) -> Result<Secret, GatewayError> {
        let mut state = self.state.lock().await;
        if let TokenState::Valid { token, refresh_at } = &*state
            && Instant::now() < *refresh_at
        {
            return Ok(token.clone());
        }
        let (token, lifetime) = self.fetch().await?;
        // Refresh early, but never sooner than halfway through a short-lived token.
        let early = self.source.refresh_before.min(lifetime / 2);
        *state = TokenState::Valid { token: token.clone(), refresh_at: Instant::now() + lifetime - early };
        Ok(token)
    }

    /// Forgets `stale` after the EHR rejected it; a newer token fetched meanwhile is kept.
    pub async fn invalidate(&self, stale: &Secret) {
        let mut state = self.state.lock().await;
        if matches!(&*state, TokenState::Valid { token, .. } if token == stale) {
            *state = TokenState::Empty;
        }
    }

    async fn fetch(&self) -> Result<(Secret, Duration), GatewayError> {
        let s = &self.source;
        let side = || Side::Upstream(s.ehr.clone());
        let mut headers = vec![("content-type".to_string(), "application/x-www-form-urlencoded".to_string())];
        let body = {
            let mut form = form_urlencoded::Serializer::new(String::new());
            form.append_pair("grant_type", "client_credentials");
            match s.client_auth {
                ClientAuth::Form => {
                    form.append_pair("client_id", &s.client_id);
                    form.append_pair("client_secret", s.client_secret.expose());
                }
                ClientAuth::Basic => {
                    let pair = format!("{}:{}", s.client_id, s.client_secret.expose());
                    headers.push((
                        "authorization".into(),
                        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(pair)),
                    ));
                }
            }
            if let Some(scope) = &s.scope {
                form.append_pair("scope", scope);
            }
            form.finish()
        };
        let request = HttpRequest {
            method: Method::POST,
            url: s.token_url.clone(),
            headers,
            body: Some(Bytes::from(body).into()),
            timeout: s.timeout,
        };
        let response = self.transport.send(request).await.map_err(|e| match e {
            TransportError::Timeout => GatewayError::new(
                StatusCode::GATEWAY_TIMEOUT,
                IssueCode::Timeout,
                side(),
                format!("{}'s token endpoint did not answer in time", s.ehr),
            )
            .retryable(true),
            _ => GatewayError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                IssueCode::Transient,
                side(),
                format!("{}'s token endpoint could not be reached", s.ehr),
            )
            .retryable(true),
        })?;
        match response.status {
            200 => {}
            400 | 401 | 403 => {
                return Err(GatewayError::new(
                    StatusCode::BAD_GATEWAY,
                    IssueCode::Security,
                    side(),
                    format!(
                        "{} refused the gateway's client credentials (HTTP {}); the connection's credentials need attention",
                        s.ehr, response.status
                    ),
                ));
            }
            other => {
                // e.g. athena's 429 when too many tokens were minted this minute: say when to come back.
                let retry_after = super::retry_after_of(&response.headers);
                return Err(GatewayError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    IssueCode::Transient,
                    side(),
                    format!("{}'s token endpoint failed with HTTP {other}", s.ehr),
                )
                .retryable(true)
                .with_retry_after(retry_after));
            }
        }
        let parsed: TokenResponse = serde_json::from_slice(&response.body).map_err(|_| {
            GatewayError::new(
                StatusCode::BAD_GATEWAY,
                IssueCode::Exception,
                side(),
                format!("{}'s token endpoint answered without an access_token", s.ehr),
            )
        })?;
        // Without expires_in, assume a conservative hour: the 401 path corrects us if it is shorter.
        // Clamp: an absurd expires_in must not overflow the clock or pin a token for years.
        let lifetime = Duration::from_secs(parsed.expires_in.unwrap_or(3600).clamp(1, 7 * 24 * 3600));
        Ok((Secret::new(parsed.access_token), lifetime))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mapping::engine::UpstreamResponse;
    use crate::upstream::transport::{BoxFuture, StreamingResponse};
    use std::sync::atomic::{AtomicU64, Ordering};

    /// A scripted token endpoint: counts calls, answers after a delay with numbered tokens.
    struct ScriptedTokens {
        calls: AtomicU64,
        expires_in: u64,
        status: u16,
    }

    impl Transport for ScriptedTokens {
        fn send(&self, request: HttpRequest) -> BoxFuture<'_, Result<UpstreamResponse, TransportError>> {
            Box::pin(async move {
                let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
                let body = String::from_utf8(request.body.unwrap().to_bytes().to_vec()).unwrap();
                assert!(body.contains("grant_type=client_credentials") && body.contains("client_secret=s3cret"));
                tokio::time::sleep(Duration::from_millis(50)).await;
                let body =
                    format!(r#"{{"access_token":"tok-{n}","expires_in":{},"token_type":"Bearer"}}"#, self.expires_in);
                Ok(UpstreamResponse { status: self.status, headers: Default::default(), body: body.into() })
            })
        }
        fn stream(&self, _: HttpRequest) -> BoxFuture<'_, Result<StreamingResponse, TransportError>> {
            Box::pin(async { Err(TransportError::Broken) })
        }
    }

    fn cache(expires_in: u64, status: u16) -> (Arc<TokenCache>, Arc<ScriptedTokens>) {
        let transport = Arc::new(ScriptedTokens { calls: AtomicU64::new(0), expires_in, status });
        let source = TokenSource {
            ehr: "Canvas Medical".into(),
            token_url: "http://127.0.0.1:1/auth/token/".into(),
            client_id: "id".into(),
            client_secret: Secret::new("s3cret"),
            client_auth: ClientAuth::Form,
            scope: None,
            refresh_before: Duration::from_secs(900),
            timeout: Duration::from_secs(5),
        };
        (Arc::new(TokenCache::new(source, transport.clone())), transport)
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_cold_callers_share_one_fetch() {
        let (cache, transport) = cache(36_000, 200);
        let handles: Vec<_> = (0..200)
            .map(|_| {
                let c = cache.clone();
                tokio::spawn(async move { c.get().await.unwrap().expose().to_string() })
            })
            .collect();
        for h in handles {
            assert_eq!(h.await.unwrap(), "tok-1");
        }
        assert_eq!(transport.calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn refreshes_before_expiry_not_after() {
        let (cache, transport) = cache(36_000, 200);
        assert_eq!(cache.get().await.unwrap().expose(), "tok-1");
        tokio::time::advance(Duration::from_secs(36_000 - 901)).await;
        assert_eq!(cache.get().await.unwrap().expose(), "tok-1");
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(cache.get().await.unwrap().expose(), "tok-2", "refreshed 15 minutes early");
        assert_eq!(transport.calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn invalidate_drops_only_the_stale_token() {
        let (cache, transport) = cache(36_000, 200);
        let first = cache.get().await.unwrap();
        cache.invalidate(&first).await;
        let second = cache.get().await.unwrap();
        assert_eq!(second.expose(), "tok-2");
        // A late 401 for the old token must not throw away the new one.
        cache.invalidate(&first).await;
        assert_eq!(cache.get().await.unwrap().expose(), "tok-2");
        assert_eq!(transport.calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn refused_credentials_are_a_502_security_error() {
        let (cache, _) = cache(36_000, 401);
        let e = cache.get().await.unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_GATEWAY);
        assert_eq!(e.code(), IssueCode::Security);
        assert!(!e.message().contains("s3cret"));
    }
}
